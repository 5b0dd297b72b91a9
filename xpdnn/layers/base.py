"""The layer protocol.

``Y, backprop = layer.forward(X, train=..., rng=...)``; ``dX = backprop(dY)`` returns the input
gradient.  A layer with parameters reports each parameter gradient to a gradient sink,
``backprop(dY, sink)``: ``sink.add(layer, name, g)``, or ``sink.matmul_grad(layer, name, dY, X)``
for a weight whose gradient is ``dY.T @ X``.  Without a sink they are added into
``layer.grads`` (:data:`ACCUMULATE`); the trainer's sinks are in :mod:`xpdnn.step`.  A backprop
never writes into ``dY`` or ``X`` (the caller's), and whatever it needs lives in the closure,
never on ``self``.

Parameters, gradients and buffers are name-keyed dicts walked in sorted order.  A layer is
rebuilt from ``type(layer).__name__`` and ``layer.get_config()`` (plain JSON values), which is
how models are saved without pickle.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B

LAYERS: dict[str, type] = {}


class Accumulate:
    """The default gradient sink: ``layer.grads[name] += g`` (the arrays a layer hands over are
    new ones it computed, never ``dY`` or ``X``)."""

    def add(self, layer, name, g):
        layer.grads[name] = B.iadd(layer.grads[name], g)

    def matmul_grad(self, layer, name, dY, X):
        self.add(layer, name, dY.T @ X)


ACCUMULATE = Accumulate()


class Layer:
    """Base class.  Subclasses set ``params`` (host NumPy arrays at construction) and
    implement ``forward``; parametrized layers list their decayed weights in ``decay``."""

    decay: tuple[str, ...] = ()      # parameter names that weight decay / L1 / max-norm act on
    n_neurons: int = 0               # neurons this layer adds (for summaries)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LAYERS[cls.__name__] = cls

    def __init__(self, dtype: str = "float32"):
        B.resolve_dtype(np, dtype)
        self.dtype = dtype
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}

    # -- protocol --------------------------------------------------------------
    def forward(self, X, *, train: bool = False, rng=None):
        raise NotImplementedError

    def __call__(self, X):
        """Evaluation-mode output for ``X`` (the parameters move next to ``X`` if needed)."""
        self.ensure_like(X)
        return self.forward(X, train=False)[0]

    def get_config(self) -> dict:
        return {"dtype": self.dtype}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def output_size(self, n_in: int | None) -> int | None:
        """Number of output features given ``n_in`` input features (None if unknown)."""
        return n_in

    @property
    def n_in(self):
        return None

    # -- state -----------------------------------------------------------------
    def sublayers(self) -> list[tuple[str, "Layer"]]:
        return []

    def named_layers(self, prefix: str = ""):
        """Yield (path, layer) for this layer and all sublayers, depth first."""
        yield prefix, self
        for name, sub in self.sublayers():
            yield from sub.named_layers(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        """Yield (path, layer, name) for every parameter, in a fixed order."""
        for path, layer in self.named_layers():
            for name in sorted(layer.params):
                yield path, layer, name

    def n_params(self) -> int:
        return sum(int(np.prod(lay.params[n].shape)) for _, lay, n in self.parameters())

    def zero_grad(self):
        """Set every gradient to zero, before accumulating a new one with ``backprop(dY)``."""
        for _, layer in self.named_layers():
            for name, g in layer.grads.items():
                layer.grads[name] = B.zeros_into(g)

    def state_arrays(self) -> dict:
        """Every parameter and buffer by stable path, e.g. ``layers.0.W``."""
        out = {}
        for path, layer in self.named_layers():
            pre = f"{path}." if path else ""
            for name in sorted(layer.params):
                out[pre + name] = layer.params[name]
            for name in sorted(layer.buffers):
                out[pre + name] = layer.buffers[name]
        return out

    def load_state_arrays(self, arrays: dict) -> None:
        expected = self.state_arrays()
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        if missing or extra:
            raise ValueError(f"state does not match the architecture: missing {missing}, unexpected {extra}")
        for path, layer in self.named_layers():
            pre = f"{path}." if path else ""
            for store in (layer.params, layer.buffers):
                for name in sorted(store):
                    new = arrays[pre + name]
                    if tuple(new.shape) != tuple(store[name].shape):
                        raise ValueError(
                            f"{pre + name}: shape {tuple(new.shape)} in the file, "
                            f"{tuple(store[name].shape)} in the architecture")
                    host = B.to_numpy(new)
                    if host.dtype.kind == "f":
                        host = host.astype(layer.dtype, copy=False)
                    store[name] = B.from_numpy(host, like=store[name])
            layer._reset_grads()

    # -- placement ---------------------------------------------------------------
    def set_parameters(self, **host_arrays) -> None:
        """Install freshly drawn host arrays as parameters, cast to the layer's dtype and put
        where the previous parameters lived (library and device); gradients restart at zero."""
        like = next(iter(self.params.values()), None)
        for name, a in host_arrays.items():
            self.params[name] = np.asarray(a, dtype=self.dtype)
        if like is not None and not B.is_numpy(like):
            self.to(like=like)
        else:
            self._reset_grads()

    def _reset_grads(self):
        for name, p in self.params.items():
            self.grads[name] = B.namespace(p).zeros_like(p)

    def to(self, like=None, dtype: str | None = None):
        """Move (and cast) every parameter and buffer into the library/device of ``like``
        (an array); ``like=None`` keeps the current placement.  Returns ``self``."""
        for _, layer in self.named_layers():
            if dtype is not None:
                B.resolve_dtype(np, dtype)
                layer.dtype = dtype
            for store in (layer.params, layer.buffers):
                for name, a in store.items():
                    target = like if like is not None else a
                    host = B.to_numpy(a)
                    if host.dtype.kind == "f":
                        host = host.astype(layer.dtype, copy=False)
                    store[name] = B.from_numpy(host, like=target)
            layer._reset_grads()
        return self

    def astype(self, dtype: str):
        return self.to(None, dtype=dtype)

    def placement(self):
        """(namespace, device) of the parameters, or None for a layer without state."""
        for _, layer, name in self.parameters():
            p = layer.params[name]
            return B.namespace(p), B.device(p)
        for _, layer in self.named_layers():
            for a in layer.buffers.values():
                return B.namespace(a), B.device(a)
        return None

    def ensure_like(self, X):
        """Move the parameters next to ``X`` (same library and device) if they are not."""
        where = self.placement()
        if where is None:
            return
        xp, dev = where
        if xp is not B.namespace(X) or dev != B.device(X):
            self.to(like=X)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "dtype")
        return f"{type(self).__name__}({args})"


def layer_from_config(spec: dict) -> Layer:
    """Rebuild a layer from ``{"type": name, "config": {...}}``."""
    try:
        cls = LAYERS[spec["type"]]
    except KeyError:
        raise ValueError(f"unknown layer type {spec.get('type')!r} in the architecture") from None
    return cls.from_config(dict(spec.get("config", {})))


def layer_to_config(layer: Layer) -> dict:
    return {"type": type(layer).__name__, "config": layer.get_config()}


# -- expected state from a config, without building the layer --------------------------------
MAX_DEPTH = 64          # nesting of Sequentials accepted in a saved architecture


def _int_field(config, key, default=None, *, low=1, optional=False):
    v = config.get(key, default)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{key} must be an integer, got {repr(v)[:80]}")
    if int(v) < low:
        raise ValueError(f"{key} must be >= {low}, got {repr(v)[:80]}")
    return int(v)


def _bool_field(config, key, default):
    v = config.get(key, default)
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{key} must be true or false, got {repr(v)[:80]}")
    return bool(v)


def _dense(W="W", bias="b", pieces=False):
    """Shapes of a dense layer: W (n_out, n_in) (with pieces: (pieces, n_out, n_in)), bias (n_out,)."""
    def rule(c):
        n_in, n_out = _int_field(c, "n_in"), _int_field(c, "n_out")
        if pieces:
            k = _int_field(c, "pieces", 2)
            return {W: (k, n_out, n_in), bias: (k, n_out)}, {}
        params = {W: (n_out, n_in)}
        if bias and _bool_field(c, "use_bias", True):
            params[bias] = (n_out,)
        return params, {}
    return rule


def _affine(buffers):
    def rule(c):
        n = _int_field(c, "n_features")
        return {"gamma": (n,), "beta": (n,)}, {name: (n,) for name in buffers}
    return rule


def _weight_norm(c):
    n_in, n_out = _int_field(c, "n_in"), _int_field(c, "n_out")
    return {"v": (n_out, n_in), "g": (n_out,), "b": (n_out,)}, {}


def _prelu(c):
    return {"alpha": (_int_field(c, "n_units", optional=True) or 1,)}, {}


def _hierarchical(c):
    n_in, n_classes = _int_field(c, "n_in"), _int_field(c, "n_classes", low=2)
    return {"W": (n_classes - 1, n_in), "b": (n_classes - 1,)}, {}


# (parameter shapes, buffer shapes) of the built-in layers with state, from their config; every
# one is checked against a real construction by tests/test_audit_files.py
STATE_RULES = {
    "Linear": _dense(), "DropConnect": _dense(), "CosineLinear": _dense(bias=None),
    "Maxout": _dense(pieces=True), "WeightNormLinear": _weight_norm,
    "BatchNorm1d": _affine(("running_mean", "running_var")), "LayerNorm": _affine(()),
    "SyncBatchNorm": _affine(("running_mean", "running_var")),
    "PReLU": _prelu, "HierarchicalSoftmax": _hierarchical,
}
# built-in layers that hold no parameters or buffers
STATELESS = frozenset({"Identity", "ReLU", "Sigmoid", "Tanh", "Softmax", "Dropout", "GaussianNoise", "LeakyReLU",
                       "RReLU", "ELU", "Softplus", "GELU", "SiLU"})


def state_shapes(spec: dict, prefix: str = "", _depth: int = 0) -> list[tuple[str, str, str, tuple]]:
    """What a layer built from ``spec`` ({"type", "config"}) holds, without building it:
    ``(path, name, kind, shape)`` per parameter (``kind="param"``) and buffer (``"buffer"``),
    in :meth:`Layer.state_arrays` order (the array's name is ``f"{path}.{name}"``, or ``name`` at
    the root).  Built-in layers are read from their config alone, so a config declaring a huge
    layer costs nothing; a layer type registered elsewhere is built once to read its state.
    Raises ValueError for a malformed spec."""
    if _depth > MAX_DEPTH:
        raise ValueError(f"the architecture is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(spec, dict):
        raise ValueError(f"a layer spec must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("type")
    # private base classes (``_Affine``, ...) are never saved: a file naming one is refused
    cls = LAYERS.get(kind) if isinstance(kind, str) and not kind.startswith("_") else None
    if cls is None:
        raise ValueError(f"unknown layer type {repr(kind)[:80]} in the architecture")
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"the config of a {kind} must be a JSON object, got {type(config).__name__}")
    builtin = cls.__module__.startswith("xpdnn.")
    if builtin and kind == "Sequential":
        layers = config.get("layers")
        if not isinstance(layers, list):
            raise ValueError(f"a Sequential config needs a list of layers, got {layers!r}"[:200])
        out = []
        for i, sub in enumerate(layers):
            path = f"{prefix}.layers.{i}" if prefix else f"layers.{i}"
            out += state_shapes(sub, path, _depth + 1)
        return out
    if builtin and kind in STATELESS:
        return []
    if builtin and kind in STATE_RULES:
        try:
            params, buffers = STATE_RULES[kind](config)
        except ValueError as exc:
            raise ValueError(f"{kind} config: {exc}") from None
        return ([(prefix, n, "param", params[n]) for n in sorted(params)]
                + [(prefix, n, "buffer", buffers[n]) for n in sorted(buffers)])
    layer = layer_from_config(spec)
    out = []
    for path, sub in layer.named_layers(prefix):
        out += [(path, n, "param", tuple(sub.params[n].shape)) for n in sorted(sub.params)]
        out += [(path, n, "buffer", tuple(sub.buffers[n].shape)) for n in sorted(sub.buffers)]
    return out
