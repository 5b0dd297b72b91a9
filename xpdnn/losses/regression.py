"""Regression losses for linear output units."""

from __future__ import annotations

from .. import _backend as B
from .base import Loss


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


class MSE(Loss):
    """Mean squared error over all elements: ``mean((Y - T)^2)`` (PyTorch's MSELoss).

    Y: (N, K) predictions; T: (N, K) or (N,) when K == 1.  dY = 2 (Y - T) / (N K).
    """

    def check_targets(self, y, n_outputs):
        return _check_regression_targets(y, n_outputs)

    def __call__(self, Y, T):
        xp = B.namespace(Y, T)
        if T.ndim == 1:
            T = T[:, None]
        D = Y - xp.astype(T, Y.dtype)
        n = D.shape[0] * D.shape[1]
        return xp.sum(D * D) / n, D * (2.0 / n)


MeanSquaredError = MSE
