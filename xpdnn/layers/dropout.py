"""Inverted dropout with counter-based masks."""

from __future__ import annotations

from .. import _backend as B
from .. import random as xrandom
from .base import Layer


def dropout_mask(X, rate: float, seed: int, counter: int):
    """The scaled keep mask ``keep / (1 - rate)`` for ``X``, in X's library and dtype."""
    keep = xrandom.keep_mask(seed, counter, tuple(X.shape), rate)
    scale = keep.astype(B.dtype_name(X.dtype)) * (1.0 / (1.0 - rate))
    return B.from_numpy(scale, like=X)


class Dropout(Layer):
    """Inverted dropout: in training ``Y = X * keep / (1 - rate)`` where each element is dropped
    with probability ``rate`` (as in PyTorch); in evaluation ``Y = X``.

    The mask for a call comes from ``rng.take()`` (a :class:`xpdnn.random.Stream`), addressed by
    (seed, counter, element index), see :mod:`xpdnn.random`.  Without ``rng`` the layer uses a
    stream of its own seeded with ``seed``.
    """

    def __init__(self, rate: float = 0.5, *, seed: int = 0, dtype: str = "float32"):
        super().__init__(dtype)
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate, self.seed = rate, int(seed)
        self._own = xrandom.Stream(self.seed)

    def get_config(self):
        return {"rate": self.rate, "seed": self.seed, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        if not train or self.rate == 0.0:
            return X, lambda dY: dY
        seed, counter = (rng or self._own).take()
        M = dropout_mask(X, self.rate, seed, counter)
        return X * M, lambda dY: dY * M
