"""Reparametrized fully connected layers: weight normalization and cosine normalization."""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import init as initializers
from .base import ACCUMULATE, Layer


def _check_input(X, n_in, name):
    if X.ndim != 2 or X.shape[1] != n_in:
        raise ValueError(f"{name} expects input of shape (N, {n_in}), got {tuple(X.shape)}")


class _Dense(Layer):
    """Shared constructor parts: sizes, initializer name, seed."""

    def __init__(self, n_in: int, n_out: int, init, seed: int, dtype: str):
        super().__init__(dtype)
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError(f"{type(self).__name__} needs positive sizes, got n_in={n_in}, n_out={n_out}")
        self._n_in, self.n_out = int(n_in), int(n_out)
        self.init, self.seed = init, int(seed)
        self.n_neurons = self.n_out

    @property
    def n_in(self):
        return self._n_in

    def output_size(self, n_in):
        return self.n_out

    def _draw(self, rng):
        return initializers.get(self.init)(rng, self._n_in, self.n_out)

    def _config(self):
        return {"n_in": self._n_in, "n_out": self.n_out, "init": self.init if isinstance(self.init, str) else "he",
                "seed": self.seed}


def weight_norm(v, g):
    """(W, norm): ``W = g * v / ||v||`` row by row; v: (n_out, n_in), g: (n_out,), norm: (n_out,)."""
    xp = B.namespace(v)
    norm = xp.sqrt(xp.sum(v * v, axis=1))
    return v * (g / norm)[:, None], norm


def weight_norm_backward(dW, v, g, norm):
    """(dv, dg) from the gradient ``dW`` of ``W = weight_norm(v, g)``:
    ``dg = dW . v / ||v||`` and ``dv = g / ||v|| * (dW - dg * v / ||v||)`` per row."""
    xp = B.namespace(dW)
    dg = xp.sum(dW * v, axis=1) / norm
    dv = (g / norm)[:, None] * (dW - (dg / norm)[:, None] * v)
    return dv, dg


class WeightNormLinear(_Dense):
    """Weight-normalized fully connected layer (Salimans & Kingma, 2016):
    ``Y = X @ W.T + b`` with ``W = g * v / ||v||``, each row (unit) normalized on its own.

    X: (N, n_in) -> Y: (N, n_out).  Parameters ``v``: (n_out, n_in) (drawn by ``init``, He by
    default; the decayed weight), ``g``: (n_out,) (starts at ``||v||`` per row, so the initial
    ``W`` equals ``v``, as ``torch.nn.utils.parametrizations.weight_norm`` does), ``b``: (n_out,).
    """

    decay = ("v",)

    def __init__(self, n_in: int, n_out: int, *, init="he", bias: float = 0.0, seed: int = 0,
                 dtype: str = "float32"):
        super().__init__(n_in, n_out, init, seed, dtype)
        self.bias = float(bias)
        self.reset_parameters(np.random.default_rng(self.seed))

    def reset_parameters(self, rng) -> None:
        v = self._draw(rng)
        self.set_parameters(v=v, g=np.sqrt(np.sum(v * v, axis=1)), b=np.full((self.n_out,), self.bias))

    def get_config(self):
        return {**self._config(), "bias": self.bias, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        _check_input(X, self._n_in, "WeightNormLinear")
        v, g = self.params["v"], self.params["g"]
        W, norm = weight_norm(v, g)
        Y = X @ W.T + self.params["b"]

        def backprop(dY, sink=ACCUMULATE):
            xp = B.namespace(dY)
            dv, dg = weight_norm_backward(dY.T @ X, v, g, norm)
            sink.add(self, "v", dv)
            sink.add(self, "g", dg)
            sink.add(self, "b", xp.sum(dY, axis=0))
            return dY @ W

        return Y, backprop


class CosineLinear(_Dense):
    """Cosine normalization (Luo et al., 2017): unit ``j`` outputs the cosine between its
    weights and the input, ``Y[i, j] = w_j . x_i / (|x_i| |w_j|)``, in [-1, 1]; no bias.

    X: (N, n_in) -> Y: (N, n_out); ``W``: (n_out, n_in).  Norms are smoothed as
    ``|a| = sqrt(sum(a**2) + eps**2)``, which keeps the layer differentiable (and finite) at a
    zero input or zero weight row and changes nothing measurable elsewhere.
    """

    decay = ("W",)

    def __init__(self, n_in: int, n_out: int, eps: float = 1e-8, *, init="he", seed: int = 0,
                 dtype: str = "float32"):
        super().__init__(n_in, n_out, init, seed, dtype)
        if not float(eps) > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = float(eps)
        self.reset_parameters(np.random.default_rng(self.seed))

    def reset_parameters(self, rng) -> None:
        self.set_parameters(W=self._draw(rng))

    def get_config(self):
        return {**self._config(), "eps": self.eps, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        _check_input(X, self._n_in, "CosineLinear")
        xp = B.namespace(X)
        W = self.params["W"]
        e2 = self.eps * self.eps
        nx = xp.sqrt(xp.sum(X * X, axis=1) + e2)[:, None]     # (N, 1)
        nw = xp.sqrt(xp.sum(W * W, axis=1) + e2)[None, :]     # (1, n_out)
        S = X @ W.T
        Y = S / (nx * nw)

        def backprop(dY, sink=ACCUMULATE):
            dS = dY / (nx * nw)
            # d|x_i|: -sum_j dY_ij Y_ij / |x_i|, and d|x_i| / dx_i = x_i / |x_i|
            gx = xp.sum(dY * Y, axis=1, keepdims=True) / (nx * nx)
            gw = xp.sum(dY * Y, axis=0, keepdims=True) / (nw * nw)
            sink.add(self, "W", dS.T @ X - gw.T * W)
            return dS @ W - gx * X

        return Y, backprop
