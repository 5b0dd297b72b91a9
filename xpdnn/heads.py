"""How a network's outputs are read: its output head.

A loss names the head of the outputs it trains (``Loss.head``) and a :class:`~xpdnn.Sequential`
records it when it is first trained (``net.head``, saved in the model file), so prediction and
accuracy follow the training loss:

==============  ===============================  ===============================  ==============================
head            losses                           ``predict_proba``                ``predict``
==============  ===============================  ===============================  ==============================
``"softmax"``   SoftmaxCrossEntropy              ``softmax(Z)``: (N, C)           class ``argmax(Z)``: (N,)
``"sigmoid"``   BinaryCrossEntropy,              one output (binary): (N, 2) =    one output: (N,) 0/1;
                MultiLabelLogistic               ``[1 - p, p]`` as scikit-learn;  K outputs: (N, K) 0/1 per
                                                 K outputs: (N, K) per label      label (``Z > 0``, ``p > 0.5``)
``"margin"``    MulticlassHinge (SVM scores)     refused (no probabilities)       class ``argmax(Z)``: (N,)
``"signed"``    MultilabelHinge (-1/+1 targets)  refused                          (N, K) in {-1, +1}
``"identity"``  MSE, MAE, Huber (regression)     refused                          the outputs Z: (N, K)
``"features"``  HierarchicalSoftmax              refused: the classes are read by the loss's own layer
==============  ===============================  ===============================  ==============================

The trainer's ``accuracy`` follows the same head: the fraction of rows whose predicted class is
the label (softmax, margin), or of outputs whose predicted 0/1 (-1/+1) matches the target
(sigmoid, signed; Keras's ``binary_accuracy`` with threshold 0.5, which for one output is the
plain binary accuracy); regression and feature heads log no accuracy.
"""

from __future__ import annotations

from . import _backend as B
from .layers.activations import sigmoid, softmax

HEADS = ("softmax", "sigmoid", "margin", "signed", "identity", "features")
_WITH_PROBA = ("softmax", "sigmoid")
_WITH_ACCURACY = ("softmax", "sigmoid", "margin", "signed")


def check_head(head, what="head"):
    """``head`` if it names a head (or is None), else a ValueError listing the valid ones."""
    if head is not None and head not in HEADS:
        raise ValueError(f"{what} must be one of {', '.join(HEADS)} (or None), got {head!r}")
    return head


def head_of(loss):
    """The head a loss trains: ``loss.head``, else softmax for a loss that declares
    ``classification = True`` (argmax accuracy), else None (nothing to read, no accuracy)."""
    head = getattr(loss, "head", None)
    if head is None and getattr(loss, "classification", False):
        return "softmax"
    return check_head(head, f"{type(loss).__name__}.head")


def has_accuracy(head) -> bool:
    return head in _WITH_ACCURACY


def check_probabilities(head):
    """Raise the clear error of a head that has no probabilities (regression, hinge scores...)."""
    if head not in _WITH_PROBA:
        raise ValueError(f"a model with a {head!r} output head has no class probabilities "
                         f"({_HEAD_HINT.get(head, '')}); use predict()")


def probabilities(head, Z, *, probabilities_already=False):
    """Probabilities from outputs Z: (N, K) for a head that has them (see the module table).
    ``probabilities_already``: Z came out of a final Softmax layer."""
    check_probabilities(head)
    xp = B.namespace(Z)
    if head == "softmax":
        return Z if probabilities_already else softmax(Z)
    if Z.shape[1] == 1:                      # binary: [P(0), P(1)], each without 1 - p cancellation
        return xp.concat([sigmoid(-Z), sigmoid(Z)], axis=1)
    return sigmoid(Z)


def labels(head, Z, *, probabilities_already=False):
    """Predictions from outputs Z: (N, K) (see the module table)."""
    xp = B.namespace(Z)
    if head in ("softmax", "margin"):
        return xp.astype(xp.argmax(Z, axis=1), xp.int64)
    if head == "sigmoid":
        P = xp.astype(Z > 0, xp.int64)
        return P[:, 0] if Z.shape[1] == 1 else P
    if head == "signed":
        return xp.astype(Z > 0, xp.int64) * 2 - 1
    if head == "identity":
        return Z
    raise ValueError(f"a model with a {head!r} output head cannot predict by itself ({_HEAD_HINT.get(head, '')})")


def correct(head, Z, y):
    """(hits, scored): a 0-d int64 count of correct predictions in a batch (outputs Z: (N, K),
    targets y as the loss takes them), on Z's device with no host sync, and how many predictions
    were scored: the N rows for softmax/margin, the N K outputs for sigmoid/signed."""
    xp = B.namespace(Z)
    if head in ("softmax", "margin"):
        target = xp.argmax(y, axis=1) if y.ndim == 2 else y      # probability targets: their argmax
        return xp.sum(xp.astype(xp.argmax(Z, axis=1) == target, xp.int64)), Z.shape[0]
    T = y[:, None] if y.ndim == 1 else y
    hit = (Z > 0) == (T > 0.5) if head == "sigmoid" else (Z > 0) == (T > 0)   # signed: -1/+1 targets
    return xp.sum(xp.astype(hit, xp.int64)), Z.shape[0] * Z.shape[1]


_HEAD_HINT = {
    "margin": "hinge-loss scores are not probabilities",
    "signed": "hinge-loss scores are not probabilities",
    "identity": "it is a regression model",
    "features": "its outputs are features for a HierarchicalSoftmax; read classes with hs.forward(net(X))",
}
