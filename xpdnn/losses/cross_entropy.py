"""Softmax cross-entropy (softmax + negative log-likelihood) on logits.

The portable code below is the reference.  On a CuPy array with integer labels,
:class:`SoftmaxCrossEntropy` runs the fused CUDA kernel of :mod:`xpdnn.kernels.softmax_xent`
instead (same options, same numbers up to rounding), and NumPy logits with integer labels and
no class weights or smoothing take the one-pass fast path of :func:`xpdnn.kernels.cpu.softmax_xent`;
``fused=False`` keeps the portable path.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import kernels
from .base import Loss, check_labels

REDUCTIONS = ("mean", "sum", "none")


def log_softmax(Z):
    """Row-wise log-softmax in log-sum-exp form: finite for logits of any size.

    Z: (N, C) floating.  Returns (N, C): ``Z - max - log(sum(exp(Z - max)))``.
    """
    xp = B.namespace(Z)
    S = Z - xp.max(Z, axis=1, keepdims=True)
    return S - xp.log(xp.sum(xp.exp(S), axis=1, keepdims=True))


def one_hot(y, n_classes, dtype):
    """y: (N,) integer labels.  Returns (N, n_classes) of ``dtype`` with a 1 at ``[i, y_i]``
    (rows whose label is outside ``[0, n_classes)`` are all zero)."""
    xp = B.namespace(y)
    classes = xp.arange(n_classes, device=B.device(y))
    return xp.astype(y[:, None] == classes[None, :], dtype)


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_class_weights(weight, what="weight"):
    """Host float64 copy of per-class weights (finite, >= 0, 1-D), or None."""
    if weight is None:
        return None
    w = np.asarray(B.to_numpy(weight) if B.is_array(weight) else weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence with one weight per class, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{what} contains NaN or Inf")
    if np.any(w < 0):
        raise ValueError(f"{what} contains negative values; class weights must be >= 0")
    return w


def check_probability_targets(T, n_classes: int | None, what="y", tol=None):
    """Probability targets: (N, C) floating, finite, >= 0, every row summing to 1 (within
    ``tol``: 1e-6 for float64, 1e-3 otherwise)."""
    xp = B.namespace(T)
    if not xp.isdtype(T.dtype, "real floating"):
        raise TypeError(f"{what}: probability targets must be floating-point, got {B.dtype_name(T.dtype)}")
    if T.ndim != 2 or (n_classes is not None and T.shape[1] != n_classes):
        raise ValueError(f"{what}: probability targets must have shape (N, {n_classes}), got {tuple(T.shape)}")
    B.check_finite(T, what)
    if T.shape[0] == 0:
        return T
    if bool(xp.any(T < 0)):
        raise ValueError(f"{what}: probability targets contain negative entries")
    if tol is None:
        tol = 1e-6 if B.dtype_name(T.dtype) == "float64" else 1e-3
    err = float(xp.max(xp.abs(xp.sum(T, axis=1) - 1.0)))
    if err > tol:
        raise ValueError(f"{what}: every row of probability targets must sum to 1; "
                         f"the worst row is off by {err:.3g} (tolerance {tol:g})")
    return T


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of ``softmax(Z)`` against class labels or class probabilities, with
    PyTorch's ``CrossEntropyLoss`` semantics.

    Z: (N, C) floating logits.  Targets: either (N,) integer labels in ``[0, C)`` (or equal to
    ``ignore_index``), or (N, C) probabilities (rows summing to 1; ``ignore_index`` does not
    apply to them).  Returns ``(loss, dZ)`` with dZ of Z's shape and dtype.

    With ``w`` the class weights (all 1 without ``weight``) and ``eps = label_smoothing``, row
    ``i`` with label ``y`` has the weighted target ``t_c = (1 - eps) w_y [c == y] + eps w_c / C``
    and loss ``l_i = -sum_c t_c log softmax(Z_i)_c``; for probability targets ``q``,
    ``t_c = w_c ((1 - eps) q_c + eps / C)``.  Ignored rows have ``l_i = 0``.

    * ``reduction="mean"``: ``sum_i l_i / sum_i w_{y_i}`` over the non-ignored rows (the plain
      count of those rows without weights); for probability targets ``sum_i l_i / N``.  If that
      normaliser is 0 (every label ignored, or an empty batch) the loss is 0 with a zero
      gradient, where PyTorch returns NaN.
    * ``reduction="sum"``: ``sum_i l_i``.
    * ``reduction="none"``: the per-row losses, shape (N,); dZ is then the gradient of their
      sum.

    ``dZ_i = scale * (softmax(Z_i) * sum_c t_c - t)``, with ``scale`` the reduction's factor.
    ``ignore_index=None`` (the default) ignores nothing, so every label must be a class
    (PyTorch's default is -100).  ``fused`` lets CuPy inputs with integer labels use the fused
    CUDA kernel; ``inplace=True`` lets that kernel write dZ into the logits' buffer (the logits
    are then lost: use it only when nothing else needs them).
    """

    classification = True
    head = "softmax"

    def __init__(self, weight=None, ignore_index: int | None = None, label_smoothing: float = 0.0,
                 reduction: str = "mean", fused: bool = True, inplace: bool = False):
        self.weight = check_class_weights(weight)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.reduction = check_reduction(reduction)
        self.fused, self.inplace = bool(fused), bool(inplace)
        self._weight_cache: dict = {}

    def get_config(self) -> dict:
        return {"weight": None if self.weight is None else [float(v) for v in self.weight],
                "ignore_index": self.ignore_index, "label_smoothing": self.label_smoothing,
                "reduction": self.reduction, "fused": self.fused, "inplace": self.inplace}

    def _check_n_classes(self, C):
        if self.weight is not None and C is not None and self.weight.shape[0] != C:
            raise ValueError(f"weight has {self.weight.shape[0]} entries but the model has {C} outputs")

    def check_targets(self, y, n_outputs):
        """Validate (N,) labels (returned as int64) or (N, C) probabilities (returned as they are)."""
        self._check_n_classes(n_outputs)
        xp = B.namespace(y)
        if y.ndim == 2 and xp.isdtype(y.dtype, "real floating"):
            return check_probability_targets(y, n_outputs)
        return check_labels(y, n_outputs, ignore_index=self.ignore_index)

    def weights_like(self, Z, dtype=None):
        """The class weights as a (C,) array next to ``Z`` (cached per library/device/dtype)."""
        dtype = dtype or Z.dtype
        key = (type(Z), str(B.device(Z)), str(dtype))
        w = self._weight_cache.get(key)
        if w is None:
            xp = B.namespace(Z)
            w = xp.astype(B.from_numpy(self.weight, like=Z), dtype)
            self._weight_cache = {key: w}
        return w

    def mean_denominator(self, targets):
        """The weighted mean's denominator ``sum_i w_{y_i}`` over the non-ignored labels (a 0-d
        array next to ``targets``) when class weights or ``ignore_index`` make it depend on the
        labels; else as :meth:`Loss.mean_denominator`."""
        if self.reduction != "mean" or targets.ndim != 1 or (self.weight is None and self.ignore_index is None):
            return super().mean_denominator(targets)
        xp = B.namespace(targets)
        y = xp.astype(targets, xp.int64)
        valid = xp.ones(y.shape, dtype=xp.bool, device=B.device(y)) if self.ignore_index is None \
            else y != self.ignore_index
        y_safe = xp.where(valid, y, xp.zeros_like(y))
        if self.weight is None:
            return xp.asarray(xp.sum(xp.astype(valid, xp.float64)))
        w = B.from_numpy(self.weight.astype(np.float64), like=targets)
        zeros = xp.zeros(y.shape, dtype=w.dtype, device=B.device(y))
        return xp.asarray(xp.sum(xp.where(valid, xp.take(w, y_safe, axis=0), zeros)))

    def __call__(self, Z, targets, *, check: bool = True):
        """``check=False`` skips the labels' range check (one host read-back), for labels already
        validated by :meth:`check_targets` (what the trainer does once per data set)."""
        xp = B.namespace(Z, targets)
        if Z.ndim != 2:
            raise ValueError(f"logits must be 2-D (N, C), got shape {tuple(Z.shape)}")
        self._check_n_classes(Z.shape[1])
        soft = targets.ndim == 2
        if soft and tuple(targets.shape) != tuple(Z.shape):
            raise ValueError(f"probability targets of shape {tuple(targets.shape)} do not match "
                             f"the logits' shape {tuple(Z.shape)}")
        if not soft and targets.shape[0] != Z.shape[0]:
            raise ValueError(f"{Z.shape[0]} rows of logits but {targets.shape[0]} labels")
        if soft:
            return self._soft(xp, Z, targets)
        # a label out of range must never index another class: checked on the host, or by the CUDA
        # kernel's prepass on the device
        return kernels.softmax_xent_loss(Z, targets, weight=self.weight, weight_like=lambda dt: self.weights_like(Z, dt),
                                    ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                                    reduction=self.reduction, fused=self.fused, inplace=self.inplace, check=check,
                                    validate=lambda y: check_labels(y, Z.shape[1], ignore_index=self.ignore_index),
                                    portable=lambda y: self._labels(xp, Z, y))

    def _reduce(self, xp, Z, losses, G, den):
        """Apply the reduction to per-row ``losses`` (N,) and unscaled gradient G (N, C)."""
        if self.reduction == "none":
            return losses, G
        total = xp.sum(losses)
        if self.reduction == "sum":
            return xp.asarray(total), G
        ok = den > 0
        scale = xp.where(ok, 1.0 / xp.where(ok, den, xp.ones_like(den)), xp.zeros_like(den))
        # NumPy reductions give scalars; the protocol promises a 0-d array
        return xp.asarray(total * scale), G * scale

    def _labels(self, xp, Z, y):
        """Integer labels, portable: two N x C arrays in all (the shifted logits, then their
        exponentials, which become the gradient in place) and a label scatter, so no one-hot
        matrix and no log-probability matrix are built."""
        N, C = Z.shape
        eps = self.label_smoothing
        y = xp.astype(y, xp.int64)
        if self.ignore_index is not None:
            valid = y != self.ignore_index
            y_safe = xp.where(valid, y, xp.zeros_like(y))
            mask = xp.astype(valid, Z.dtype)
        else:
            y_safe, mask = y, xp.ones(y.shape, dtype=Z.dtype, device=B.device(Z))
        S = Z - xp.max(Z, axis=1, keepdims=True)            # shifted logits, <= 0
        s_y = xp.take_along_axis(S, y_safe[:, None], axis=1)[:, 0]
        E = xp.exp(S)
        s = xp.sum(E, axis=1)
        lse = xp.log(s)                                      # log p_c = S_c - lse
        if self.weight is None:
            w_all, w_y, W = None, mask, float(C)
        else:
            w_all = self.weights_like(Z)
            w_y = xp.take(w_all, y_safe, axis=0) * mask
            W = float(np.sum(self.weight))
        losses = (1.0 - eps) * w_y * (lse - s_y)
        if eps > 0:                                          # -sum_c w_c log p_c
            wS = xp.sum(S, axis=1) if w_all is None else xp.sum(S * w_all[None, :], axis=1)
            losses = losses + (eps / C) * (W * lse - wS) * mask
        del S
        # t = (1 - eps) w_y onehot(y) + (eps / C) w;  dl/dZ = (softmax(Z) sum(t) - t) * scale
        den = xp.sum(w_y)
        if self.reduction == "mean":
            ok = den > 0
            scale = xp.where(ok, 1.0 / xp.where(ok, den, xp.ones_like(den)), xp.zeros_like(den))
        else:
            scale = xp.ones((), dtype=Z.dtype, device=B.device(Z))
        T = (1.0 - eps) * w_y + (eps * W / C) * mask
        G = E
        G *= (T * scale / s)[:, None]
        if eps > 0:
            smooth_t = ((eps / C) * mask * scale)[:, None]
            G -= smooth_t if w_all is None else smooth_t * w_all[None, :]
        G = B.add_at_labels(G, y_safe, -(1.0 - eps) * w_y * scale)
        if self.reduction == "none":
            return losses, G
        total = xp.sum(losses)
        return xp.asarray(total if self.reduction == "sum" else total * scale), G

    def _soft(self, xp, Z, Q):
        N, C = Z.shape
        eps = self.label_smoothing
        Q = xp.astype(Q, Z.dtype)
        if eps > 0:
            Q = Q * (1.0 - eps) + eps / C
        if self.weight is not None:
            Q = Q * self.weights_like(Z)[None, :]
        logP = log_softmax(Z)
        losses = -xp.sum(Q * logP, axis=1)
        G = xp.exp(logP) * xp.sum(Q, axis=1, keepdims=True) - Q
        den = xp.asarray(float(N), dtype=Z.dtype, device=B.device(Z))
        return self._reduce(xp, Z, losses, G, den)
