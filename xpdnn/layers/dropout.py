"""Inverted dropout with counter-based masks.

Three paths, chosen by :func:`xpdnn.kernels.apply_dropout`, compute the same ``Y = X * keep / (1 - rate)``
with the same keep mask (:func:`xpdnn.random.keep_mask`, addressed by ``(seed, counter, element index)``):

* CuPy with ``fused=True``: one CUDA kernel (:mod:`xpdnn.kernels.dropout`) that draws the mask
  in registers; backward regenerates it from ``(seed, counter)``, so no mask is stored;
* NumPy: the mask is drawn in place as a bool array (1 byte per element) and applied with
  in-place ufuncs;
* anything else (PyTorch, array-api-strict, CuPy with ``fused=False``): the portable reference,
  a host mask moved next to ``X`` and applied with Array API operations.
"""

from __future__ import annotations

from .. import _backend as B
from .. import kernels
from .. import random as xrandom
from .base import Layer


def dropout_mask(X, rate: float, seed: int, counter: int, offset: int = 0):
    """The scaled keep mask ``keep / (1 - rate)`` for ``X``, an array of X's shape, library,
    device and dtype (``0`` where dropped, ``1 / (1 - rate)`` where kept); element ``i`` is
    addressed ``offset + i`` (see :meth:`xpdnn.random.Stream.offset`)."""
    keep = B.from_numpy(xrandom.keep_mask(seed, counter, tuple(X.shape), rate, offset=offset), like=X)
    xp = B.namespace(X)
    return xp.astype(keep, X.dtype) * (1.0 / (1.0 - rate))


class Dropout(Layer):
    """Inverted dropout: in training ``Y = X * keep / (1 - rate)`` where each element is dropped
    with probability ``rate`` (as in PyTorch); in evaluation (or with ``rate=0``) ``Y = X``.

    X: any shape, floating dtype -> Y: same shape and dtype.  The mask for a call comes from
    ``rng.take()`` (a :class:`xpdnn.random.Stream`), addressed by (seed, counter, element index),
    see :mod:`xpdnn.random`; without ``rng`` the layer uses a stream of its own seeded with
    ``seed``.  The same stream state gives the same mask on every backend.  ``fused=True`` uses
    the CUDA kernel for CuPy arrays (bit-identical results, no stored mask).
    """

    def __init__(self, rate: float = 0.5, *, seed: int = 0, fused: bool = True, dtype: str = "float32"):
        super().__init__(dtype)
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate, self.seed, self.fused = rate, int(seed), bool(fused)
        self._own = xrandom.Stream(self.seed)

    def get_config(self):
        return {"rate": self.rate, "seed": self.seed, "fused": self.fused, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        if not train or self.rate == 0.0:
            return X, lambda dY: dY
        B.check_floating(X)
        rate = self.rate
        stream = rng or self._own
        seed, counter = stream.take()
        offset = stream.offset(X.shape)          # a data-parallel shard's rows: the whole batch's masks
        return kernels.apply_dropout(X, rate, seed, counter, fused=self.fused, offset=offset,
                                     portable_mask=lambda: dropout_mask(X, rate, seed, counter, offset))
