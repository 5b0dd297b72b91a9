"""Softmax cross-entropy (softmax + negative log-likelihood) on logits."""

from __future__ import annotations

from .. import _backend as B
from .base import Loss, check_labels


def log_softmax(Z):
    """Row-wise log-softmax in log-sum-exp form: finite for logits of any size."""
    xp = B.namespace(Z)
    S = Z - xp.max(Z, axis=1, keepdims=True)
    return S - xp.log(xp.sum(xp.exp(S), axis=1, keepdims=True))


def one_hot(y, n_classes, dtype):
    xp = B.namespace(y)
    classes = xp.arange(n_classes, device=B.device(y))
    return xp.astype(y[:, None] == classes[None, :], dtype)


class SoftmaxCrossEntropy(Loss):
    """Mean over the batch of ``-log softmax(Z)[i, y_i]``.

    logits Z: (N, C) floating; y: (N,) integer labels in [0, C).
    Returns (loss: 0-d, dZ: (N, C)) with ``dZ = (softmax(Z) - onehot(y)) / N``.
    """

    classification = True

    def check_targets(self, y, n_outputs):
        return check_labels(y, n_outputs)

    def __call__(self, Z, y):
        xp = B.namespace(Z, y)
        N = Z.shape[0]
        logP = log_softmax(Z)
        picked = xp.take_along_axis(logP, xp.astype(y, xp.int64)[:, None], axis=1)
        loss = -xp.sum(picked) / N
        dZ = (xp.exp(logP) - one_hot(y, Z.shape[1], Z.dtype)) / N
        return loss, dZ
