"""Sequential: a chain of layers and of their backprops."""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .activations import ReLU, Softmax
from .linear import Linear
from .base import ACCUMULATE, Layer, layer_from_config, layer_to_config
from .. import heads


class Sequential(Layer):
    """``Sequential(layer_1, ..., layer_k)`` computes ``layer_k(...layer_1(X))``.

    ``forward`` returns the output and a backprop, ``backprop(dY, sink=ACCUMULATE)``, that runs the
    layers' backprops in reverse, handing the gradient sink to the layers with parameters.
    A :class:`Linear` directly followed by a :class:`ReLU` runs as one fused unit (decided here,
    when the network is built).

    ``preprocessing`` (an :mod:`xpdnn.preprocessing` transformer, e.g. ``Standardizer()``) is part
    of the model: ``Trainer.fit`` fits it on the training data alone if it is not fitted yet,
    ``fit``/``predict`` apply it to raw inputs, and ``xd.save`` keeps it in the model file.

    ``head`` says how the outputs are read by ``predict_proba`` / ``predict`` (``"softmax"``,
    ``"sigmoid"``, ``"margin"``, ``"signed"``, ``"identity"``, ``"features"``: see
    :mod:`xpdnn.heads`).  Left None, the first :class:`~xpdnn.Trainer` fit sets it from its loss
    (a binary cross-entropy net then predicts with a sigmoid, a regression net refuses
    ``predict_proba``), and it is saved with the model.  A net that has no head yet is read as
    softmax logits (a final :class:`Softmax` is not applied twice), except a one-output net,
    which is refused.
    """

    def __init__(self, *layers: Layer, head: str | None = None, preprocessing=None):
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
        self.head = heads.check_head(head)
        self._plan_key = None
        self._units()         # the fusion plan is decided here, when the network is built
        self.fresh = True   # never initialized from a seed, trained or loaded
        # an xpdnn.preprocessing transformer applied to raw inputs by fit/predict (saved with the
        # model); the trainer fits it on the training data if it is not fitted yet
        self.preprocessing = preprocessing

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

    def _units(self):
        """The forward plan, decided once per list of layers: (index, fuse_relu, has_params) per
        unit, where a Linear followed by a ReLU is one unit (the ReLU applied in the Linear's
        output pass), and units with parameters get the gradient sink in backprop."""
        key = tuple(map(id, self.layers))
        if self._plan_key != key:         # remade only if the list of layers was edited
            units, i, layers = [], 0, self.layers
            while i < len(layers):
                fuse = type(layers[i]) is Linear and i + 1 < len(layers) and type(layers[i + 1]) is ReLU
                has_params = any(sub.params for _, sub in layers[i].named_layers())
                units.append((i, fuse, has_params))
                i += 2 if fuse else 1
            self._plan, self._plan_key = units, key
        return self._plan

    def forward(self, X, *, train=False, rng=None, input_grad=True):
        """``input_grad=False`` (what the trainer passes) lets a first Linear layer skip the
        input gradient nobody reads; backprop then returns None."""
        backprops = []
        for i, fuse, has_params in self._units():
            layer = self.layers[i]
            skip_dX = {"input_grad": False} if i == 0 and not input_grad and type(layer) is Linear else {}
            X, bp = layer.forward(X, train=train, rng=rng, **({"fuse_relu": True} if fuse else {}), **skip_dX)
            backprops.append((bp, fuse, has_params))

        def backprop(dY, sink=ACCUMULATE):
            given = dY
            for bp, fuse, has_params in reversed(backprops):
                if fuse:
                    # a fused ReLU may overwrite its dY in place only when that array is not the
                    # caller's (pass-through layers such as Identity or Dropout(0) hand it on as is)
                    dY = bp(dY, sink, own_dY=not B.may_alias(dY, given))
                else:
                    dY = bp(dY, sink) if has_params else bp(dY)
            return dY     # None only after a first layer told to skip its input gradient

        return X, backprop

    def get_config(self):
        config = {"layers": [layer_to_config(layer) for layer in self.layers]}
        if self.head is not None:
            config["head"] = self.head
        return config

    @classmethod
    def from_config(cls, config):
        return cls(*[layer_from_config(spec) for spec in config["layers"]], head=config.get("head"))

    def set_head(self, head):
        """Record how the outputs are read (what a trainer does from its loss on the first fit);
        a net that already has a different head refuses, before anything changes."""
        heads.check_head(head)
        if head is None or self.head == head:
            return
        if self.head is not None:
            raise ValueError(f"this network's outputs are read as {self.head!r} but the loss trains "
                             f"{head!r} outputs; build it with Sequential(..., head={head!r}) or set "
                             f"net.head = None first")
        self.head = head

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

    def _read_head(self):
        """The head outputs are read with: ``head``, or softmax logits for a net without one."""
        if self.head is not None:
            return self.head
        if self.output_size(self.n_in) == 1:
            raise ValueError("this one-output network does not know how its outputs are read: train it "
                             "with a loss first, or build it with Sequential(..., head='sigmoid') (binary) "
                             "or head='identity' (regression)")
        return "softmax"

    def _outputs(self, X, batch_size, read):
        head = self._read_head()
        X = self.prepare(X)
        xp = B.namespace(X)
        done = bool(self.layers) and isinstance(self.layers[-1], Softmax)   # already probabilities
        outs = [read(head, self.forward(X[s:min(s + batch_size, X.shape[0]), ...], train=False)[0],
                     probabilities_already=done)
                for s in range(0, X.shape[0], int(batch_size))]
        if outs:
            return xp.concat(outs, axis=0)
        empty = read(head, xp.zeros((1, self.output_size(self.n_in) or 1), dtype=X.dtype))
        return empty[:0, ...]

    def predict_proba(self, X, batch_size: int = 4096):
        """Probabilities for X (N, n_in), in X's library and on its device: (N, C) class
        probabilities (softmax head), (N, 2) ``[P(0), P(1)]`` for a one-output sigmoid net,
        (N, K) per-label probabilities for a K-output sigmoid net; other heads refuse (see
        :mod:`xpdnn.heads`)."""
        heads.check_probabilities(self._read_head())
        return self._outputs(X, batch_size, heads.probabilities)

    def predict(self, X, batch_size: int = 4096):
        """Predictions for X (N, n_in) as the head reads them: class labels (N,) int64
        (softmax, margin, one-output sigmoid), (N, K) 0/1 or -1/+1 labels (multilabel sigmoid,
        signed), or the outputs themselves (identity, regression)."""
        return self._outputs(X, batch_size, heads.labels)

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
