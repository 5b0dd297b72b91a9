"""Maxout: the maximum over k affine pieces, a layer with weights of its own."""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import init as initializers
from .base import ACCUMULATE, Layer


class Maxout(Layer):
    """``Y[n, j] = max_p (X @ W[p].T + b[p])[n, j]``.

    X: (N, n_in) -> Y: (N, n_out).  ``W``: (pieces, n_out, n_in), one Linear-shaped weight
    matrix per piece; ``b``: (pieces, n_out).  Backward routes ``dY`` to the winning piece only
    (the first one on an exact tie).  Each piece is drawn on the host with ``init`` from
    :mod:`xpdnn.init` (He by default), so fan-in and fan-out are those of one piece.
    """

    decay = ("W",)

    def __init__(self, n_in: int, n_out: int, pieces: int = 2, *, init="he", bias: float = 0.0,
                 seed: int = 0, dtype: str = "float32"):
        super().__init__(dtype)
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError(f"Maxout needs positive sizes, got n_in={n_in}, n_out={n_out}")
        if int(pieces) < 1:
            raise ValueError(f"Maxout needs at least one piece, got pieces={pieces}")
        self._n_in, self.n_out, self.pieces = int(n_in), int(n_out), int(pieces)
        self.init, self.bias, self.seed = init, float(bias), int(seed)
        self.n_neurons = self.n_out
        self.reset_parameters(np.random.default_rng(self.seed))

    @property
    def n_in(self):
        return self._n_in

    def reset_parameters(self, rng) -> None:
        draw = initializers.get(self.init)
        W = np.stack([draw(rng, self._n_in, self.n_out) for _ in range(self.pieces)])
        self.set_parameters(W=W, b=np.full((self.pieces, self.n_out), self.bias))

    def output_size(self, n_in):
        return self.n_out

    def get_config(self):
        return {"n_in": self._n_in, "n_out": self.n_out, "pieces": self.pieces,
                "init": self.init if isinstance(self.init, str) else "he", "bias": self.bias,
                "seed": self.seed, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        xp = B.namespace(X)
        W, b = self.params["W"], self.params["b"]
        if X.ndim != 2 or X.shape[1] != self._n_in:
            raise ValueError(f"Maxout expects input of shape (N, {self._n_in}), got {tuple(X.shape)}")
        k, n_out, N = self.pieces, self.n_out, X.shape[0]
        W2 = xp.reshape(W, (k * n_out, self._n_in))
        Z = xp.reshape(X @ W2.T, (N, k, n_out)) + b
        win = xp.argmax(Z, axis=1)                                   # (N, n_out)
        Y = xp.squeeze(xp.take_along_axis(Z, win[:, None, :], axis=1), axis=1)

        def backprop(dY, sink=ACCUMULATE):
            pieces = xp.reshape(xp.arange(k, device=B.device(X)), (1, k, 1))
            dZ = xp.astype(pieces == win[:, None, :], dY.dtype) * dY[:, None, :]   # (N, k, n_out)
            dZ2 = xp.reshape(dZ, (N, k * n_out))
            sink.add(self, "W", xp.reshape(dZ2.T @ X, (k, n_out, self._n_in)))
            sink.add(self, "b", xp.sum(dZ, axis=0))
            return dZ2 @ W2

        return Y, backprop
