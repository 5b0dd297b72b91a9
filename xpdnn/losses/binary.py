"""Logistic losses on logits for sigmoid output units: binary cross-entropy (one or more
independent yes/no outputs) and its multi-label form (one logistic regression per attribute).

Both use the softplus form ``-log sigmoid(x) = softplus(-x)``, ``-log(1 - sigmoid(x)) =
softplus(x)`` with ``softplus(x) = max(x, 0) + log1p(exp(-|x|))``, so no ``log(0)`` is ever
taken and logits of any size give finite losses and gradients.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .base import Loss
from .cross_entropy import check_class_weights, check_reduction


def softplus(X):
    """``log(1 + exp(X))`` without overflow; same shape as X."""
    xp = B.namespace(X)
    return xp.maximum(X, xp.zeros_like(X)) + xp.log1p(xp.exp(-xp.abs(X)))


def logistic_terms(X, T, pos_weight=None):
    """Elementwise binary cross-entropy of logits X against targets T in [0, 1] (same shape)
    and its derivative: ``l = pw T softplus(-X) + (1 - T) softplus(X)``,
    ``dl/dX = (1 - T) sigmoid(X) - pw T sigmoid(-X)`` (``pw = 1`` without ``pos_weight``,
    which broadcasts against the last axis).

    The gradient is not formed as ``sigmoid(X) - T``: for a confident right answer that
    difference cancels (X = 40, T = 1 gives 0 instead of ``-exp(-40)``).  With
    ``e = exp(-|X|)`` and ``r = 1 / (1 + e)``, ``sigmoid(|X|) = r`` and ``sigmoid(-|X|) = e r``
    both have full relative accuracy, so ``dl/dX = r ((1 - T) - pw T e)`` for ``X >= 0`` and
    ``r ((1 - T) e - pw T)`` below; the softplus terms share ``e`` too
    (``softplus(+-X) = max(+-X, 0) + log1p(e)``)."""
    xp = B.namespace(X, T)
    E = xp.exp(-xp.abs(X))
    R = 1.0 / (1.0 + E)
    tail = xp.log1p(E)
    zero = xp.zeros_like(X)
    PT = T if pos_weight is None else pos_weight * T
    NT = 1.0 - T
    L = PT * (xp.maximum(-X, zero) + tail) + NT * (xp.maximum(X, zero) + tail)
    return L, R * xp.where(X >= 0, NT - PT * E, NT * E - PT)


def _check_binary_targets(y, n_outputs, what, binary_only):
    xp = B.namespace(y)
    if xp.isdtype(y.dtype, "bool"):
        y = xp.astype(y, xp.float32)
    if not (xp.isdtype(y.dtype, "real floating") or xp.isdtype(y.dtype, "integral")):
        raise TypeError(f"{what} must hold 0/1 targets as numbers or booleans, got {B.dtype_name(y.dtype)}")
    if y.ndim == 1 and n_outputs in (1, None):
        y = y[:, None]
    if y.ndim != 2 or (n_outputs is not None and y.shape[1] != n_outputs):
        raise ValueError(f"{what} must have shape (N, {n_outputs}), got {tuple(y.shape)}")
    if xp.isdtype(y.dtype, "real floating"):
        B.check_finite(y, what)
    if y.shape[0] == 0:
        return y
    if binary_only:
        if not bool(xp.all((y == 0) | (y == 1))):
            raise ValueError(f"{what} must be a 0/1 label matrix; it contains other values")
    elif bool(xp.any(y < 0)) or bool(xp.any(y > 1)):
        raise ValueError(f"{what} must lie in [0, 1] (probabilities of the positive class)")
    return y


def _targets_like(T, X):
    xp = B.namespace(X, T)
    if T.ndim == 1 and X.ndim == 2 and X.shape[1] == 1:
        T = T[:, None]
    if tuple(T.shape) != tuple(X.shape):
        raise ValueError(f"targets of shape {tuple(T.shape)} do not match the logits' shape {tuple(X.shape)}")
    return xp.astype(T, X.dtype)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits (a sigmoid output unit per column), PyTorch's
    ``BCEWithLogitsLoss``.

    X: (N, K) logits; T: (N, K) targets in [0, 1] ((N,) when K == 1).  Element loss
    ``l = -[pw T log sigmoid(X) + (1 - T) log(1 - sigmoid(X))]`` with ``pw = pos_weight``
    ((K,) or a scalar, default 1).  ``reduction``: ``"mean"`` over all N K elements, ``"sum"``,
    or ``"none"`` (the (N, K) element losses; dX is then the gradient of their sum).
    Returns ``(loss, dX)`` with dX of X's shape.

    ``classification`` is False: the trainer's accuracy is an argmax over outputs, which is
    meaningless for independent sigmoid units.
    """

    classification = False
    head = "sigmoid"

    def __init__(self, pos_weight=None, reduction: str = "mean"):
        if pos_weight is None:
            self.pos_weight = None
        else:
            pw = np.asarray(B.to_numpy(pos_weight) if B.is_array(pos_weight) else pos_weight, dtype=np.float64)
            if pw.ndim > 1 or pw.size == 0:
                raise ValueError(f"pos_weight must be a scalar or a 1-D sequence (one per output), got shape {pw.shape}")
            if not np.all(np.isfinite(pw)) or np.any(pw < 0):
                raise ValueError("pos_weight must be finite and >= 0")
            self.pos_weight = pw.reshape(-1)
        self.reduction = check_reduction(reduction)

    def get_config(self) -> dict:
        pw = None if self.pos_weight is None else [float(v) for v in self.pos_weight]
        return {"pos_weight": pw, "reduction": self.reduction}

    def check_targets(self, y, n_outputs):
        if self.pos_weight is not None and n_outputs is not None and self.pos_weight.shape[0] not in (1, n_outputs):
            raise ValueError(f"pos_weight has {self.pos_weight.shape[0]} entries but the model has {n_outputs} outputs")
        return _check_binary_targets(y, n_outputs, "y", binary_only=False)

    def __call__(self, X, T, *, check: bool = True):
        xp = B.namespace(X, T)
        if X.ndim != 2:
            raise ValueError(f"logits must be 2-D (N, K), got shape {tuple(X.shape)}")
        T = _targets_like(T, X)
        pw = None
        if self.pos_weight is not None:
            if self.pos_weight.shape[0] not in (1, X.shape[1]):
                raise ValueError(f"pos_weight has {self.pos_weight.shape[0]} entries but the logits have "
                                 f"{X.shape[1]} columns")
            pw = xp.astype(B.from_numpy(self.pos_weight, like=X), X.dtype)
        L, G = logistic_terms(X, T, pw)
        if self.reduction == "none":
            return L, G
        if self.reduction == "sum":
            return xp.asarray(xp.sum(L)), G
        n = X.shape[0] * X.shape[1]
        if n == 0:
            return xp.asarray(xp.sum(L)), G
        return xp.asarray(xp.sum(L) / n), G / n


class MultiLabelLogistic(Loss):
    """Independent logistic regression per attribute over a {0, 1} label matrix, PyTorch's
    ``MultiLabelSoftMarginLoss``.

    X: (N, C) logits; T: (N, C) with entries 0 or 1.  Row loss
    ``l_i = (1 / C) sum_c w_c [T softplus(-X) + (1 - T) softplus(X)]_ic`` (``w``: optional
    per-attribute ``weight``, (C,)).  ``reduction``: ``"mean"`` over rows (so the mean over
    attributes, then over the batch), ``"sum"`` of rows, or ``"none"`` (the (N,) row losses;
    dX is then the gradient of their sum).  Returns ``(loss, dX)``.

    ``classification`` is False (several labels per row: the argmax accuracy does not apply).
    """

    classification = False
    head = "sigmoid"

    def __init__(self, weight=None, reduction: str = "mean"):
        self.weight = check_class_weights(weight)
        self.reduction = check_reduction(reduction)

    def get_config(self) -> dict:
        w = None if self.weight is None else [float(v) for v in self.weight]
        return {"weight": w, "reduction": self.reduction}

    def check_targets(self, y, n_outputs):
        if self.weight is not None and n_outputs is not None and self.weight.shape[0] != n_outputs:
            raise ValueError(f"weight has {self.weight.shape[0]} entries but the model has {n_outputs} outputs")
        return _check_binary_targets(y, n_outputs, "y", binary_only=True)

    def __call__(self, X, T, *, check: bool = True):
        xp = B.namespace(X, T)
        if X.ndim != 2:
            raise ValueError(f"logits must be 2-D (N, C), got shape {tuple(X.shape)}")
        T = _targets_like(T, X)
        N, C = X.shape
        L, G = logistic_terms(X, T)
        if self.weight is not None:
            if self.weight.shape[0] != C:
                raise ValueError(f"weight has {self.weight.shape[0]} entries but the logits have {C} columns")
            w = xp.astype(B.from_numpy(self.weight, like=X), X.dtype)[None, :]
            L, G = L * w, G * w
        rows = xp.sum(L, axis=1) / C
        G = G / C
        if self.reduction == "none":
            return rows, G
        if self.reduction == "sum" or N == 0:
            return xp.asarray(xp.sum(rows)), G
        return xp.asarray(xp.sum(rows) / N), G / N
