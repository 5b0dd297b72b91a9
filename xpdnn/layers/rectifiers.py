"""Rectifiers with a non-zero negative side: LeakyReLU, PReLU, RReLU and ELU.

All are elementwise: X of any shape -> Y of the same shape.  Like PyTorch, the positive branch
is taken for ``X > 0``, so the gradient at exactly 0 is the negative side's; at a NaN input
output and gradient are NaN (the rules of :mod:`xpdnn.layers.activations`).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _backend as B
from .. import random as xrandom
from .activations import propagate_nan
from .base import ACCUMULATE, Layer


def leaky_relu(X, alpha):
    """``Y = X`` where ``X > 0``, else ``alpha * X``; ``alpha`` a float or an array that
    broadcasts against X."""
    xp = B.namespace(X)
    return xp.where(X > 0, X, alpha * X)


def leaky_relu_backward(dY, X, alpha):
    """``dY`` where ``X > 0``, ``alpha * dY`` where ``X <= 0``, NaN where X is NaN."""
    xp = B.namespace(dY)
    return propagate_nan(X, xp.where(X > 0, dY, alpha * dY))


def elu(X, alpha=1.0):
    """``Y = X`` where ``X > 0``, else ``alpha * (exp(X) - 1)`` (via expm1, no overflow)."""
    xp = B.namespace(X)
    neg = xp.minimum(X, xp.zeros_like(X))
    return xp.where(X > 0, X, alpha * xp.expm1(neg))


def elu_backward(dY, X, alpha=1.0):
    # d/dX alpha * (exp(X) - 1) = alpha * exp(X); NaN at NaN through exp
    xp = B.namespace(dY)
    neg = xp.minimum(X, xp.zeros_like(X))
    return xp.where(X > 0, dY, dY * (alpha * xp.exp(neg)))


class LeakyReLU(Layer):
    """``Y = max(0, X) + alpha * min(0, X)``, a fixed small slope on the negative side."""

    def __init__(self, alpha: float = 0.01, *, dtype: str = "float32"):
        super().__init__(dtype)
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"LeakyReLU alpha must be finite, got {alpha}")
        self.alpha = alpha

    def get_config(self):
        return {"alpha": self.alpha, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        alpha = self.alpha
        return leaky_relu(X, alpha), lambda dY: leaky_relu_backward(dY, X, alpha)


class PReLU(Layer):
    """Parametric ReLU: ``Y = X`` where ``X > 0``, else ``alpha * X`` with a learned ``alpha``.

    ``n_units=None``: one slope shared by every element, ``alpha`` has shape (1,).
    ``n_units=k``: one slope per unit, ``alpha`` has shape (k,) and X must be (N, k, ...)
    (the unit axis is axis 1, as in ``torch.nn.PReLU``).  ``alpha`` starts at ``init`` and is
    not weight-decayed (``decay = ()``), as PyTorch recommends.
    """

    decay = ()

    def __init__(self, n_units: int | None = None, *, init: float = 0.25, dtype: str = "float32"):
        super().__init__(dtype)
        if n_units is not None and int(n_units) < 1:
            raise ValueError(f"PReLU n_units must be None or a positive integer, got {n_units}")
        init = float(init)
        if not math.isfinite(init):
            raise ValueError(f"PReLU init must be finite, got {init}")
        self.n_units = None if n_units is None else int(n_units)
        self.init = init
        self.reset_parameters()

    def reset_parameters(self, rng=None) -> None:
        """Set every slope back to ``init`` (``rng`` is accepted for the common signature)."""
        self.set_parameters(alpha=np.full((self.n_units or 1,), self.init))

    def get_config(self):
        return {"n_units": self.n_units, "init": self.init, "dtype": self.dtype}

    def output_size(self, n_in):
        if self.n_units is not None and n_in is not None and n_in != self.n_units:
            raise ValueError(f"PReLU has {self.n_units} slopes but gets {n_in} input features")
        return n_in

    def forward(self, X, *, train=False, rng=None):
        xp = B.namespace(X)
        alpha = self.params["alpha"]
        if self.n_units is None:
            A, sum_axes = alpha, tuple(range(X.ndim))
        else:
            if X.ndim < 2 or X.shape[1] != self.n_units:
                raise ValueError(f"PReLU with {self.n_units} units expects input of shape "
                                 f"(N, {self.n_units}, ...), got {tuple(X.shape)}")
            A = xp.reshape(alpha, (1, self.n_units) + (1,) * (X.ndim - 2))
            sum_axes = (0,) + tuple(range(2, X.ndim))
        Y = leaky_relu(X, A)

        def backprop(dY, sink=ACCUMULATE):
            neg = xp.where(X > 0, xp.zeros_like(X), X)
            dA = xp.sum(neg * dY, axis=sum_axes) if sum_axes else neg * dY
            sink.add(self, "alpha", xp.reshape(dA, alpha.shape))
            return leaky_relu_backward(dY, X, A)

        return Y, backprop


class RReLU(Layer):
    """Randomized leaky ReLU: ``Y = X`` where ``X > 0``, else ``a * X``.

    In training every element draws its own slope ``a = lower + (upper - lower) * u`` with
    ``u`` uniform in [0, 1) from :func:`xpdnn.random.uniform` at ``rng.take()`` (computed on the
    host in float64, so the same seed gives the same slopes on every backend); without ``rng``
    the layer uses a stream of its own seeded with ``seed``.  In evaluation ``a = (lower +
    upper) / 2``, like ``torch.nn.functional.rrelu(training=False)``.
    """

    def __init__(self, lower: float = 1.0 / 8, upper: float = 1.0 / 3, *, seed: int = 0,
                 dtype: str = "float32"):
        super().__init__(dtype)
        lower, upper = float(lower), float(upper)
        if not (math.isfinite(lower) and math.isfinite(upper)) or not 0.0 <= lower <= upper:
            raise ValueError(f"RReLU needs finite 0 <= lower <= upper, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.seed = lower, upper, int(seed)
        self._own = xrandom.Stream(self.seed)

    def get_config(self):
        return {"lower": self.lower, "upper": self.upper, "seed": self.seed, "dtype": self.dtype}

    def slopes(self, seed: int, counter: int, shape, like, offset: int = 0):
        """The training slopes of call ``(seed, counter)`` for an input of ``shape`` (element
        ``i`` from uniform number ``offset + i``), in the library, device and dtype of ``like``."""
        u = xrandom.uniform(seed, counter, shape, dtype="float64", offset=offset)
        a = (self.lower + (self.upper - self.lower) * u).astype(B.dtype_name(like.dtype))
        return B.from_numpy(a, like=like)

    def forward(self, X, *, train=False, rng=None):
        if not train:
            a = 0.5 * (self.lower + self.upper)
            return leaky_relu(X, a), lambda dY: leaky_relu_backward(dY, X, a)
        stream = rng or self._own
        seed, counter = stream.take()
        A = self.slopes(seed, counter, tuple(X.shape), X, stream.offset(X.shape))
        return leaky_relu(X, A), lambda dY: leaky_relu_backward(dY, X, A)


class ELU(Layer):
    """``Y = X`` where ``X > 0``, else ``alpha * (exp(X) - 1)``."""

    def __init__(self, alpha: float = 1.0, *, dtype: str = "float32"):
        super().__init__(dtype)
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"ELU alpha must be finite, got {alpha}")
        self.alpha = alpha

    def get_config(self):
        return {"alpha": self.alpha, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        alpha = self.alpha
        return elu(X, alpha), lambda dY: elu_backward(dY, X, alpha)
