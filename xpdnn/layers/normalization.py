"""Normalization of activations: batch normalization and layer normalization.

Both compute ``Y = gamma * Xhat + beta`` with ``Xhat = (X - mean) / sqrt(var + eps)``; batch
normalization takes mean and variance over the batch (axis 0, per feature), layer normalization
over the features of each sample (axis 1).  With ``D`` values in a normalization group and
``dXhat = dY * gamma`` the input gradient is
``dX = inv_std / D * (D * dXhat - sum(dXhat) - Xhat * sum(dXhat * Xhat))``.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .base import ACCUMULATE, Layer


def normalize(X, axis: int, eps: float):
    """(Xhat, inv_std, mean, var): ``X`` standardized along ``axis`` with its mean and biased
    variance (the last three keep ``axis`` with size 1)."""
    xp = B.namespace(X)
    mean = xp.mean(X, axis=axis, keepdims=True)
    Xc = X - mean
    var = xp.mean(Xc * Xc, axis=axis, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    return Xc * inv_std, inv_std, mean, var


def normalize_backward(dXhat, Xhat, inv_std, axis: int):
    """Input gradient of :func:`normalize` given the gradient ``dXhat`` of its output."""
    xp = B.namespace(dXhat)
    D = Xhat.shape[axis]
    # d(mean) and d(var) terms folded into the two sums along the normalized axis
    s1 = xp.sum(dXhat, axis=axis, keepdims=True)
    s2 = xp.sum(dXhat * Xhat, axis=axis, keepdims=True)
    return inv_std * (dXhat - s1 / D - Xhat * (s2 / D))


def _check_features(X, n_features, name):
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"{name} expects input of shape (N, {n_features}), got {tuple(X.shape)}")


class _Affine(Layer):
    """Shared parts: learnable per-feature scale ``gamma`` (ones) and shift ``beta`` (zeros)."""

    def __init__(self, n_features: int, eps: float, dtype: str):
        super().__init__(dtype)
        if int(n_features) < 1:
            raise ValueError(f"{type(self).__name__} needs n_features >= 1, got {n_features}")
        if not float(eps) > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.n_features, self.eps = int(n_features), float(eps)
        self.reset_parameters(None)

    @property
    def n_in(self):
        return self.n_features

    def output_size(self, n_in):
        return self.n_features

    def _fresh_state(self) -> None:
        self.params["gamma"] = np.ones((self.n_features,), dtype=self.dtype)
        self.params["beta"] = np.zeros((self.n_features,), dtype=self.dtype)

    def reset_parameters(self, rng=None) -> None:
        """gamma = 1, beta = 0 (and fresh running statistics where there are some); ``rng`` is
        accepted for the common signature and not used."""
        like = self.params.get("gamma")
        self._fresh_state()
        if like is not None:
            self.to(like=like)
        else:
            self._reset_grads()

    def _affine_backward(self, dY, Xhat, sink):
        """Reports dgamma, dbeta to ``sink``; returns dXhat."""
        xp = B.namespace(dY)
        sink.add(self, "gamma", xp.sum(dY * Xhat, axis=0))
        sink.add(self, "beta", xp.sum(dY, axis=0))
        return dY * self.params["gamma"]


class BatchNorm1d(_Affine):
    """Batch normalization over the batch axis, as ``torch.nn.BatchNorm1d``.

    X: (N, n_features) -> Y: (N, n_features).  Parameters ``gamma``, ``beta``: (n_features,).
    Buffers ``running_mean`` (zeros) and ``running_var`` (ones): (n_features,), saved with
    the model, never trained.

    * training (``train=True``): mean and biased variance of the batch normalize ``X``; needs
      N >= 2.  The forward then updates the buffers (the one change to ``self`` a forward
      makes): ``running = (1 - momentum) * running + momentum * batch_stat``, with the
      unbiased variance ``var * N / (N - 1)`` for ``running_var`` (PyTorch's convention).
    * evaluation: ``running_mean`` and ``running_var`` normalize ``X``; any N.
    """

    def __init__(self, n_features: int, momentum: float = 0.1, eps: float = 1e-5, *, dtype: str = "float32"):
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm1d momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        super().__init__(n_features, eps, dtype)

    def _fresh_state(self) -> None:
        super()._fresh_state()
        self.buffers["running_mean"] = np.zeros((self.n_features,), dtype=self.dtype)
        self.buffers["running_var"] = np.ones((self.n_features,), dtype=self.dtype)

    def get_config(self):
        return {"n_features": self.n_features, "momentum": self.momentum, "eps": self.eps, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        _check_features(X, self.n_features, "BatchNorm1d")
        xp = B.namespace(X)
        gamma, beta = self.params["gamma"], self.params["beta"]
        if train:
            N = X.shape[0]
            if N < 2:
                raise ValueError(
                    f"BatchNorm1d needs at least 2 samples per batch in training, got {N} "
                    "(the batch variance of one sample is 0); use a larger batch, drop the last "
                    "incomplete batch, or LayerNorm")
            Xhat, inv_std, mean, var = normalize(X, 0, self.eps)
            m = self.momentum
            self.buffers["running_mean"] = (1.0 - m) * self.buffers["running_mean"] + m * mean[0, :]
            self.buffers["running_var"] = (1.0 - m) * self.buffers["running_var"] + m * (var[0, :] * (N / (N - 1)))

            def backprop(dY, sink=ACCUMULATE):
                return normalize_backward(self._affine_backward(dY, Xhat, sink), Xhat, inv_std, 0)
        else:
            inv_std = 1.0 / xp.sqrt(self.buffers["running_var"] + self.eps)
            Xhat = (X - self.buffers["running_mean"]) * inv_std

            def backprop(dY, sink=ACCUMULATE):
                return self._affine_backward(dY, Xhat, sink) * inv_std

        return Xhat * gamma + beta, backprop


class LayerNorm(_Affine):
    """Layer normalization over the features of each sample, as ``torch.nn.LayerNorm(n_features)``.

    X: (N, n_features) -> Y: (N, n_features); each row is standardized with its own mean and
    biased variance, then scaled by ``gamma`` and shifted by ``beta`` (both (n_features,)).
    The same computation in training and evaluation; works for any batch size, 1 included.
    """

    def __init__(self, n_features: int, eps: float = 1e-5, *, dtype: str = "float32"):
        super().__init__(n_features, eps, dtype)

    def get_config(self):
        return {"n_features": self.n_features, "eps": self.eps, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        _check_features(X, self.n_features, "LayerNorm")
        Xhat, inv_std, _, _ = normalize(X, 1, self.eps)

        def backprop(dY, sink=ACCUMULATE):
            return normalize_backward(self._affine_backward(dY, Xhat, sink), Xhat, inv_std, 1)

        return Xhat * self.params["gamma"] + self.params["beta"], backprop


class SyncBatchNorm(BatchNorm1d):
    """:class:`BatchNorm1d` whose training statistics are those of the whole global batch in
    data-parallel training, as ``torch.nn.SyncBatchNorm``: the ranks' per-feature sums (with
    the row count), then their sums of squared deviations from the global mean, are all-reduced
    in the forward pass, and the two sums of the backward pass (``sum(dXhat)``,
    ``sum(dXhat * Xhat)``) in one more; so a rank's rows are normalized exactly as in the
    one-process run.  In one process, or in evaluation, it is :class:`BatchNorm1d`.  The
    communicator is :func:`xpdnn.distributed.current`.
    """

    def forward(self, X, *, train=False, rng=None):
        from ..distributed import current

        comm = current()
        if not train or comm is None or comm.size == 1:
            return super().forward(X, train=train, rng=rng)
        _check_features(X, self.n_features, "SyncBatchNorm")
        xp = B.namespace(X)
        F = self.n_features
        acc = xp.float64 if X.dtype == xp.float64 else xp.float32
        count = xp.asarray([float(X.shape[0])], dtype=acc, device=B.device(X))
        sums = comm.allreduce(xp.concat([xp.astype(xp.sum(X, axis=0), acc), count]))
        N = int(round(float(sums[F])))
        if N < 2:
            raise ValueError(f"SyncBatchNorm needs at least 2 samples per global batch in training, got {N}")
        mean = xp.astype(sums[:F] / N, X.dtype)[None, :]
        Xc = X - mean
        var = xp.astype(comm.allreduce(xp.astype(xp.sum(Xc * Xc, axis=0), acc)) / N, X.dtype)[None, :]
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        Xhat = Xc * inv_std
        m = self.momentum
        self.buffers["running_mean"] = (1.0 - m) * self.buffers["running_mean"] + m * mean[0, :]
        self.buffers["running_var"] = (1.0 - m) * self.buffers["running_var"] + m * (var[0, :] * (N / (N - 1)))

        def backprop(dY, sink=ACCUMULATE):
            dXhat = self._affine_backward(dY, Xhat, sink)
            s = comm.allreduce(xp.concat([xp.astype(xp.sum(dXhat, axis=0), acc),
                                          xp.astype(xp.sum(dXhat * Xhat, axis=0), acc)]))
            s1, s2 = xp.astype(s[:F], X.dtype)[None, :], xp.astype(s[F:], X.dtype)[None, :]
            return inv_std * (dXhat - s1 / N - Xhat * (s2 / N))

        return Xhat * self.params["gamma"] + self.params["beta"], backprop
