"""Fully connected layer: Y = X W^T + b."""

from __future__ import annotations

import numpy as np

from .. import init as initializers
from .. import kernels
from .base import ACCUMULATE, Layer


class Linear(Layer):
    """``Y = X @ W.T + b``.

    X: (N, n_in) -> Y: (N, n_out).  ``W``: (n_out, n_in), one row of incoming weights per unit;
    ``b``: (n_out,).  ``init`` names an initializer in :mod:`xpdnn.init` (He by default);
    ``bias`` is the constant the biases start at.
    """

    decay = ("W",)

    def __init__(self, n_in: int, n_out: int, *, init="he", bias: float = 0.0, use_bias: bool = True,
                 seed: int = 0, dtype: str = "float32"):
        super().__init__(dtype)
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError(f"Linear needs positive sizes, got n_in={n_in}, n_out={n_out}")
        self._n_in, self.n_out = int(n_in), int(n_out)
        self.init, self.bias, self.use_bias, self.seed = init, float(bias), bool(use_bias), int(seed)
        self.n_neurons = self.n_out
        self.reset_parameters(np.random.default_rng(self.seed))

    @property
    def n_in(self):
        return self._n_in

    def reset_parameters(self, rng) -> None:
        W = initializers.get(self.init)(rng, self._n_in, self.n_out)
        if self.use_bias:
            self.set_parameters(W=W, b=np.full((self.n_out,), self.bias))
        else:
            self.set_parameters(W=W)

    def output_size(self, n_in):
        return self.n_out

    def get_config(self):
        return {"n_in": self._n_in, "n_out": self.n_out, "init": self.init if isinstance(self.init, str) else "he",
                "bias": self.bias, "use_bias": self.use_bias, "seed": self.seed, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None, fuse_relu=False, input_grad=True):
        """``fuse_relu`` applies ReLU to the output in place (what ``Sequential`` does for a
        Linear followed by a ReLU); ``backprop(dY, sink, own_dY=True)`` lets that ReLU's backward
        overwrite ``dY`` (its caller says that nobody else holds it);
        ``input_grad=False`` skips ``dX = dY @ W`` (backprop returns None), for a first layer."""
        W = self.params["W"]
        if X.ndim != 2 or X.shape[1] != self._n_in:
            raise ValueError(f"Linear expects input of shape (N, {self._n_in}), got {tuple(X.shape)}")
        # Y is new: the bias (and ReLU) go in place on NumPy, rebound on JAX
        Y = kernels.bias_act_(X @ W.T, self.params["b"] if self.use_bias else None, relu=fuse_relu)

        def backprop(dY, sink=ACCUMULATE, own_dY=False):
            dY, db = kernels.relu_backward_bias(dY, Y if fuse_relu else None, bias=self.use_bias, inplace=own_dY)
            dX = dY @ W if input_grad else None      # before a fused step changes W
            sink.matmul_grad(self, "W", dY, X)
            if db is not None:
                sink.add(self, "b", db)
            return dX

        return Y, backprop
