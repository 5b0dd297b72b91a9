"""Regression losses for linear output units: squared, absolute and Huber error.

Each takes predictions Y: (N, K) and targets T: (N, K) (or (N,) when K == 1) and returns
``(loss, dY)``.  ``reduction`` is PyTorch's: ``"mean"`` over all N*K elements, ``"sum"``, or
``"none"`` (loss is the (N, K) array of elementwise losses and dY the gradient of their sum;
the trainer needs a 0-d loss, so ``"none"`` is for use outside it).
"""

from __future__ import annotations

from .. import _backend as B
from .base import Loss

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_regression_targets(y, n_outputs, what="y"):
    xp = B.namespace(y)
    if not xp.isdtype(y.dtype, "real floating"):
        raise TypeError(f"{what} must be floating-point regression targets, got {B.dtype_name(y.dtype)}")
    if y.ndim == 1 and n_outputs == 1:
        y = y[:, None]
    if y.ndim != 2 or (n_outputs is not None and y.shape[1] != n_outputs):
        raise ValueError(f"{what} must have shape (N, {n_outputs}), got {tuple(y.shape)}")
    B.check_finite(y, what)
    return y


def _difference(Y, T):
    """D = Y - T with T cast to Y's dtype; T may be (N,) when Y is (N, 1)."""
    xp = B.namespace(Y, T)
    if Y.ndim != 2:
        raise ValueError(f"predictions must have shape (N, K), got {tuple(Y.shape)}")
    if T.ndim == 1 and Y.shape[1] == 1:
        T = T[:, None]
    if tuple(T.shape) != tuple(Y.shape):
        raise ValueError(f"targets of shape {tuple(T.shape)} do not match predictions of shape {tuple(Y.shape)}")
    return Y - xp.astype(T, Y.dtype)


def _reduce(xp, L, dL, reduction):
    """Apply the reduction to elementwise losses L and their elementwise derivatives dL."""
    if reduction == "mean":
        n = L.shape[0] * L.shape[1]
        return xp.sum(L) / n, dL / n
    if reduction == "sum":
        return xp.sum(L), dL
    return L, dL


class _Regression(Loss):
    head = "identity"

    def __init__(self, reduction: str = "mean"):
        self.reduction = _check_reduction(reduction)

    def check_targets(self, y, n_outputs):
        return _check_regression_targets(y, n_outputs)

    def get_config(self):
        return {"reduction": self.reduction}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class MSE(_Regression):
    """Squared error ``(Y - T)^2``, by default the mean over all elements (PyTorch's MSELoss).

    Y: (N, K); T: (N, K) or (N,) when K == 1.  With ``reduction="mean"``, dY = 2 (Y - T) / (N K).
    """

    def __call__(self, Y, T, *, check: bool = True):
        xp = B.namespace(Y, T)
        D = _difference(Y, T)
        return _reduce(xp, D * D, 2.0 * D, self.reduction)


class MAE(_Regression):
    """Absolute error ``|Y - T|`` (PyTorch's L1Loss); its derivative is ``sign(Y - T)``
    (0 where Y == T, as in PyTorch).  Y: (N, K); T: (N, K) or (N,) when K == 1."""

    def __call__(self, Y, T, *, check: bool = True):
        xp = B.namespace(Y, T)
        D = _difference(Y, T)
        return _reduce(xp, xp.abs(D), xp.sign(D), self.reduction)


class Huber(_Regression):
    """Huber loss (PyTorch's HuberLoss): with ``D = Y - T``, ``0.5 D^2`` where ``|D| <= delta``
    and ``delta (|D| - 0.5 delta)`` elsewhere, so its derivative is ``clip(D, -delta, delta)``:
    quadratic near the target, linear (robust to outliers) far from it.
    Y: (N, K); T: (N, K) or (N,) when K == 1."""

    def __init__(self, delta: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        delta = float(delta)
        if not delta > 0:
            raise ValueError(f"Huber delta must be positive, got {delta}")
        self.delta = delta

    def get_config(self):
        return {"delta": self.delta, "reduction": self.reduction}

    def __call__(self, Y, T, *, check: bool = True):
        xp = B.namespace(Y, T)
        D = _difference(Y, T)
        d = self.delta
        G = xp.clip(D, -d, d)
        C = xp.abs(G)
        # C (|D| - C / 2) is 0.5 D^2 where |D| <= delta and delta (|D| - delta / 2) beyond, with
        # no D^2 formed where |D| > delta (it would overflow long before the loss does)
        L = C * (xp.abs(D) - 0.5 * C)
        return _reduce(xp, L, G, self.reduction)


MeanSquaredError = MSE
MeanAbsoluteError = MAE
L1Loss = MAE
HuberLoss = Huber
