"""Input-noise data augmentation: additive Gaussian noise in training."""

from __future__ import annotations

import math

import numpy as np

from .. import _backend as B
from .. import random as xrandom
from .base import Layer


def gaussian(seed: int, counter: int, shape, offset: int = 0) -> np.ndarray:
    """Host float64 standard normal numbers of ``shape`` for call ``counter`` (Box-Muller).

    Element ``i`` takes the call's uniforms (see :func:`xpdnn.random.uniform`) number
    ``2 (offset + i)`` and ``2 (offset + i) + 1``, ``u1`` and ``u2``, and is
    ``sqrt(-2 log(1 - u1)) * cos(2 pi u2)``; ``1 - u1`` is in (0, 1], so it is finite.  Each
    element's numbers depend on its own index only, so a shard of rows (``offset``, see
    :meth:`xpdnn.random.Stream.offset`) draws what those rows draw in the whole batch.
    """
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    u = xrandom.uniform(seed, counter, (2 * n,), dtype="float64", offset=2 * int(offset))
    r = np.sqrt(-2.0 * np.log1p(-u[0::2]))
    return (r * np.cos(2.0 * np.pi * u[1::2])).reshape(shape)


class GaussianNoise(Layer):
    """Data augmentation by input noise: in training ``Y = X + std * Z`` with ``Z`` standard
    normal, drawn afresh for every call from ``seed, counter = rng.take()`` (same numbers on
    every backend); in evaluation ``Y = X``.  ``dX = dY`` in both.

    X: (N, D) (any shape) -> Y: same shape.  ``std >= 0`` is in the units of X (standardize
    the inputs first).  Without ``rng`` the layer uses a stream of its own seeded with ``seed``.
    """

    def __init__(self, std: float = 0.1, *, seed: int = 0, dtype: str = "float32"):
        super().__init__(dtype)
        std = float(std)
        if not (math.isfinite(std) and std >= 0.0):
            raise ValueError(f"GaussianNoise std must be a finite number >= 0, got {std}")
        self.std, self.seed = std, int(seed)
        self._own = xrandom.Stream(self.seed)

    def get_config(self):
        return {"std": self.std, "seed": self.seed, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        if not train or self.std == 0.0:
            return X, lambda dY: dY
        stream = rng or self._own
        seed, counter = stream.take()
        Z = gaussian(seed, counter, tuple(X.shape), stream.offset(X.shape)).astype(B.dtype_name(X.dtype))
        return X + self.std * B.from_numpy(Z, like=X), lambda dY: dY
