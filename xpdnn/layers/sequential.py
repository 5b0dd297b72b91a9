"""Sequential: a chain of layers and of their backprops."""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .activations import ReLU, Softmax, softmax
from .linear import Linear
from .base import Layer, layer_from_config, layer_to_config


class Sequential(Layer):
    """``Sequential(layer_1, ..., layer_k)`` computes ``layer_k(...layer_1(X))``.

    ``forward`` returns the output and a backprop that runs the layers' backprops in reverse.
    ``predict_proba`` / ``predict`` are evaluation-mode conveniences for classifiers whose last
    layer outputs logits (a final :class:`Softmax` is not applied twice).
    """

    def __init__(self, *layers: Layer):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential item {i} is a {type(layer).__name__}, not a Layer")
        dtypes = {layer.dtype for layer in layers if layer.params}
        super().__init__(dtypes.pop() if len(dtypes) == 1 else "float32")
        if dtypes:
            raise ValueError("layers with different dtypes; call .astype() on the Sequential")
        self.layers = list(layers)
        self.fresh = True   # never initialized from a seed, trained or loaded
        # a fitted xpdnn.preprocessing transformer applied to raw inputs by fit/predict (saved with the model)
        self.preprocessing = None

    @property
    def n_features(self):
        """Features of the raw input: the preprocessing's if there is one, else the first layer's."""
        if self.preprocessing is not None:
            return self.preprocessing.n_features
        return self.n_in

    def sublayers(self):
        return [(f"layers.{i}", layer) for i, layer in enumerate(self.layers)]

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    @property
    def n_in(self):
        for layer in self.layers:
            if layer.n_in is not None:
                return layer.n_in
        return None

    def output_size(self, n_in):
        for layer in self.layers:
            n_in = layer.output_size(n_in)
        return n_in

    def initialize(self, seed: int = 0):
        """Redraw every parameter on the host from ``seed`` (layer ``i`` uses the NumPy
        generator seeded with ``[seed, i]``)."""
        for i, (_, layer) in enumerate(self.named_layers()):
            if hasattr(layer, "reset_parameters") and layer is not self:
                layer.reset_parameters(np.random.default_rng([int(seed), i]))
        self.fresh = False
        return self

    def forward(self, X, *, train=False, rng=None, input_grad=True):
        """``input_grad=False`` (what the trainer passes) lets a first Linear layer skip the
        input gradient nobody reads; backprop then returns None."""
        backprops = []
        layers, i, last = self.layers, 0, len(self.layers) - 1
        while i <= last:
            layer = layers[i]
            skip_dX = {"input_grad": False} if i == 0 and not input_grad and type(layer) is Linear else {}
            if type(layer) is Linear and i < last and type(layers[i + 1]) is ReLU:
                # Linear + ReLU in one pass; the ReLU's backward may overwrite a dY that an
                # inner layer produced (never the caller's, which reaches only the last layer)
                X, bp = layer.forward(X, train=train, rng=rng, fuse_relu=True, own_dY=i + 1 < last, **skip_dX)
                i += 2
            else:
                X, bp = layer.forward(X, train=train, rng=rng, **skip_dX)
                i += 1
            backprops.append(bp)

        def backprop(dY):
            for bp in reversed(backprops):
                dY = bp(dY)   # None only after a first layer told to skip its input gradient
            self.settle_grads()
            return dY

        return X, backprop

    def get_config(self):
        return {"layers": [layer_to_config(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config):
        return cls(*[layer_from_config(spec) for spec in config["layers"]])

    # -- inference ------------------------------------------------------------------
    def __call__(self, X):
        """Evaluation-mode output for ``X`` (validated, cast to the model's dtype)."""
        return self.forward(self.prepare(X), train=False)[0]

    def prepare(self, X, what="X"):
        """Validate ``X``, move the parameters next to it and cast it to the model's dtype."""
        X = B.as_array(X, what)
        B.check_floating(X, what)
        if X.ndim != 2:
            raise ValueError(f"{what} must be 2-D (samples, features), got shape {tuple(X.shape)}")
        n_in = self.n_features
        if n_in is not None and X.shape[1] != n_in:
            raise ValueError(f"{what} has {X.shape[1]} features but the model expects {n_in}")
        B.check_finite(X, what)
        self.ensure_like(X)
        xp = B.namespace(X)
        if self.preprocessing is not None:
            X = self.preprocessing.transform(X)
        return xp.astype(X, B.resolve_dtype(xp, self.dtype), copy=False)

    def predict_proba(self, X, batch_size: int = 4096):
        """Class probabilities (N, C) for X (N, n_in), in X's library and on its device."""
        X = self.prepare(X)
        xp = B.namespace(X)
        outs = []
        for start in range(0, X.shape[0], batch_size):
            Y = self.forward(X[start:min(start + batch_size, X.shape[0]), ...], train=False)[0]
            outs.append(Y if isinstance(self.layers[-1], Softmax) else softmax(Y))
        return xp.concat(outs, axis=0) if outs else xp.zeros((0, self.output_size(None) or 0))

    def predict(self, X, batch_size: int = 4096):
        """Predicted class labels (N,) as int64."""
        xp = B.namespace(X) if B.is_array(X) else None
        P = self.predict_proba(X, batch_size)
        xp = xp or B.namespace(P)
        return xp.astype(xp.argmax(P, axis=1), xp.int64)

    def summary(self, n_in: int | None = None) -> "Summary":
        """Neurons and learnable parameters per layer (see :class:`Summary`)."""
        rows = []
        size = n_in if n_in is not None else self.n_in
        for i, layer in enumerate(self.layers):
            size = layer.output_size(size)
            rows.append((f"{i}: {type(layer).__name__}", size, layer.n_neurons, layer.n_params()))
        return Summary(rows)


class Summary:
    """Per-layer table: (name, output features, neurons, parameters); totals as attributes."""

    def __init__(self, rows):
        self.rows = rows
        self.neurons = sum(r[2] for r in rows)
        self.params = sum(r[3] for r in rows)

    def __str__(self):
        head = ("layer", "out", "neurons", "params")
        body = [(n, "?" if o is None else str(o), str(k), f"{p:,}") for n, o, k, p in self.rows]
        body.append(("total", "", str(self.neurons), f"{self.params:,}"))
        widths = [max(len(r[i]) for r in [head] + body) for i in range(4)]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        rule = "-" * (sum(widths) + 6)
        return "\n".join([fmt(head), rule] + [fmt(r) for r in body[:-1]] + [rule, fmt(body[-1])])

    __repr__ = __str__
