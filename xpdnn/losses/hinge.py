"""Hinge (max-margin, SVM) losses on raw scores.

* :class:`MulticlassHinge` -- Weston-Watkins multiclass SVM, ``sum_{j != y} max(0, f_j - f_y + margin)``
  and its squared form;
* :class:`MultilabelHinge` -- one binary SVM per attribute, ``sum_j max(0, margin - y_j f_j)``
  with ``y_j`` in {-1, +1}.

``reduction`` acts over the batch: ``"mean"`` (the seeds' ``L = (1/N) sum_i L_i``), ``"sum"``,
or ``"none"`` (loss is the (N,) array of per-example losses and dZ the gradient of their sum).
"""

from __future__ import annotations

from .. import _backend as B
from .base import Loss, check_labels
from .cross_entropy import one_hot

REDUCTIONS = ("mean", "sum", "none")
NORMALIZATIONS = ("none", "torch")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_scores(Z, n_targets):
    if Z.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got {tuple(Z.shape)}")
    if Z.shape[0] != n_targets:
        raise ValueError(f"scores have {Z.shape[0]} rows but there are {n_targets} targets")


def _reduce(xp, L, dZ, reduction):
    """Per-example losses L: (N,) and their gradient dZ: (N, C) -> the reduced pair."""
    if reduction == "mean":
        N = L.shape[0]
        return xp.sum(L) / max(N, 1), dZ / max(N, 1)
    if reduction == "sum":
        return xp.sum(L), dZ
    return L, dZ


class MulticlassHinge(Loss):
    """Weston-Watkins multiclass SVM loss on scores Z: (N, C) with labels y: (N,) in [0, C):

        L_i = sum_{j != y_i} max(0, Z_ij - Z_iy + margin) ** p,   p = 2 if ``squared`` else 1.

    ``normalize="torch"`` divides L_i by C, which is what PyTorch's ``MultiMarginLoss(p, margin)``
    computes; the default ``"none"`` is the seeds' (CS231n) formula.  Returns (loss, dZ: (N, C)):
    dZ_ij = p * m_ij ** (p - 1) for j != y_i (m_ij the hinge, 0 where inactive) and
    dZ_iy = -sum_{j != y_i} dZ_ij, times the normalization and reduction factors.
    """

    classification = True
    head = "margin"

    def __init__(self, margin: float = 1.0, *, squared: bool = False, normalize: str = "none",
                 reduction: str = "mean"):
        margin = float(margin)
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.margin, self.squared, self.normalize = margin, bool(squared), normalize
        self.reduction = _check_reduction(reduction)

    def check_targets(self, y, n_outputs):
        return check_labels(y, n_outputs)

    def get_config(self):
        return {"margin": self.margin, "squared": self.squared, "normalize": self.normalize,
                "reduction": self.reduction}

    def __call__(self, Z, y, *, check: bool = True):
        xp = B.namespace(Z, y)
        if y.ndim != 1:
            raise ValueError(f"labels must be a 1-D array of class indices, got shape {tuple(y.shape)}")
        _check_scores(Z, y.shape[0])
        C = Z.shape[1]
        if check:       # a label out of range must never index another class
            y = check_labels(y, C)
        y = xp.astype(y, xp.int64)
        Y = one_hot(y, C, Z.dtype)
        Zy = xp.take_along_axis(Z, y[:, None], axis=1)
        # the correct class's own term (margin) is masked out; inactive hinges are 0
        M = xp.maximum(Z - Zy + self.margin, xp.zeros_like(Z)) * (1.0 - Y)
        if self.squared:
            L, G = xp.sum(M * M, axis=1), 2.0 * M
        else:
            L, G = xp.sum(M, axis=1), xp.astype(M > 0, Z.dtype)
        dZ = G - Y * xp.sum(G, axis=1, keepdims=True)
        if self.normalize == "torch":
            L, dZ = L / C, dZ / C
        return _reduce(xp, L, dZ, self.reduction)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class SquaredMulticlassHinge(MulticlassHinge):
    """:class:`MulticlassHinge` with squared hinges, ``sum_{j != y} max(0, Z_j - Z_y + margin)^2``
    (PyTorch's ``MultiMarginLoss(p=2)`` with ``normalize="torch"``)."""

    def __init__(self, margin: float = 1.0, *, normalize: str = "none", reduction: str = "mean"):
        super().__init__(margin, squared=True, normalize=normalize, reduction=reduction)

    def get_config(self):
        config = super().get_config()
        del config["squared"]
        return config


def check_signed_targets(y, n_outputs, what="y"):
    """Attribute targets: shape (N, K) with every value -1 or +1 (integer or floating)."""
    xp = B.namespace(y)
    if not (xp.isdtype(y.dtype, "real floating") or xp.isdtype(y.dtype, "signed integer")):
        raise TypeError(f"{what} must hold -1/+1 attribute labels as a signed integer or floating array, "
                        f"got dtype {B.dtype_name(y.dtype)}")
    if y.ndim != 2:
        raise ValueError(f"{what} must have shape (N, K) with one -1/+1 column per attribute, "
                         f"got {tuple(y.shape)}")
    if n_outputs is not None and y.shape[1] != n_outputs:
        raise ValueError(f"{what} has {y.shape[1]} attribute columns but the model has {n_outputs} outputs")
    if not bool(xp.all((y == 1) | (y == -1))):
        bad = bool(xp.any(y == 0))
        hint = " (0/1 labels? map them with 2 * y - 1)" if bad else ""
        raise ValueError(f"{what} must contain only -1 and +1{hint}")
    return y


class MultilabelHinge(Loss):
    """Attribute (multi-label) hinge: one binary SVM per column, for scores Z: (N, K) and
    targets y: (N, K) in {-1, +1} (attribute j present / absent in example i):

        L_i = sum_j max(0, margin - y_ij Z_ij) ** p,   p = 2 if ``squared`` else 1.

    Returns (loss, dZ: (N, K)) with dZ_ij = -p y_ij m_ij ** (p - 1) on active hinges.
    Labels are validated by ``check_targets`` (once per data set), not on every call.
    """

    head = "signed"

    def __init__(self, margin: float = 1.0, *, squared: bool = False, reduction: str = "mean"):
        margin = float(margin)
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin, self.squared = margin, bool(squared)
        self.reduction = _check_reduction(reduction)

    def check_targets(self, y, n_outputs):
        return check_signed_targets(y, n_outputs)

    def get_config(self):
        return {"margin": self.margin, "squared": self.squared, "reduction": self.reduction}

    def __call__(self, Z, y, *, check: bool = True):
        xp = B.namespace(Z, y)
        _check_scores(Z, y.shape[0])
        if tuple(y.shape) != tuple(Z.shape):
            raise ValueError(f"targets of shape {tuple(y.shape)} do not match scores of shape {tuple(Z.shape)}")
        Y = xp.astype(y, Z.dtype)
        M = xp.maximum(self.margin - Y * Z, xp.zeros_like(Z))
        if self.squared:
            L, G = xp.sum(M * M, axis=1), 2.0 * M
        else:
            L, G = xp.sum(M, axis=1), xp.astype(M > 0, Z.dtype)
        return _reduce(xp, L, -Y * G, self.reduction)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"
