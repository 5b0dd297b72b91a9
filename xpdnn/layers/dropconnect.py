"""DropConnect: a fully connected layer whose individual weights are dropped in training."""

from __future__ import annotations

from .. import _backend as B
from .. import random as xrandom
from .base import ACCUMULATE
from .linear import Linear


def weight_mask(W, rate: float, seed: int, counter: int):
    """The scaled keep mask ``keep / (1 - rate)`` of ``W``'s shape, in W's library and dtype;
    element ``(j, k)`` is kept iff Philox word ``j * n_in + k`` of call ``counter`` says so."""
    keep = xrandom.keep_mask(seed, counter, tuple(W.shape), rate)
    scale = keep.astype(B.dtype_name(W.dtype)) * (1.0 / (1.0 - rate))
    return B.from_numpy(scale, like=W)


class DropConnect(Linear):
    """DropConnect (Wan et al., 2013): ``Y = X @ (W * M).T + b`` in training, where each weight
    is kept with probability ``1 - rate`` (``M = keep / (1 - rate)``, inverted scaling, one mask
    per forward call shared by the whole batch); in evaluation ``Y = X @ W.T + b``.
    Biases are never dropped.

    X: (N, n_in) -> Y: (N, n_out); ``W``: (n_out, n_in), ``b``: (n_out,).  The mask comes from
    ``seed, counter = rng.take()`` (a :class:`xpdnn.random.Stream`); without ``rng`` the layer
    uses a stream of its own seeded with ``seed``.
    """

    def __init__(self, n_in: int, n_out: int, rate: float = 0.5, *, init="he", bias: float = 0.0,
                 use_bias: bool = True, seed: int = 0, dtype: str = "float32"):
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropConnect rate must be in [0, 1), got {rate}")
        super().__init__(n_in, n_out, init=init, bias=bias, use_bias=use_bias, seed=seed, dtype=dtype)
        self.rate = rate
        self._own = xrandom.Stream(self.seed)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}

    def forward(self, X, *, train=False, rng=None):
        if not train or self.rate == 0.0:
            return super().forward(X, train=train, rng=rng)
        W = self.params["W"]
        if X.ndim != 2 or X.shape[1] != self._n_in:
            raise ValueError(f"DropConnect expects input of shape (N, {self._n_in}), got {tuple(X.shape)}")
        seed, counter = (rng or self._own).take()
        M = weight_mask(W, self.rate, seed, counter)
        Wd = W * M
        Y = X @ Wd.T
        if self.use_bias:
            Y = Y + self.params["b"]

        def backprop(dY, sink=ACCUMULATE):
            xp = B.namespace(dY)
            sink.add(self, "W", (dY.T @ X) * M)
            if self.use_bias:
                sink.add(self, "b", xp.sum(dY, axis=0))
            return dY @ Wd

        return Y, backprop
