"""The layer protocol.

``Y, backprop = layer.forward(X, train=..., rng=...)``; ``dX = backprop(dY)`` adds the
layer's parameter gradients into ``layer.grads`` and returns the input gradient.  Whatever
backward needs lives in the closure, never on ``self``.

Parameters, gradients and buffers are name-keyed dicts walked in sorted order.  A layer is
rebuilt from ``type(layer).__name__`` and ``layer.get_config()`` (plain JSON values), which is
how models are saved without pickle.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B

LAYERS: dict[str, type] = {}


class Layer:
    """Base class.  Subclasses set ``params`` (host NumPy arrays at construction) and
    implement ``forward``; parametrized layers list their decayed weights in ``decay``."""

    decay: tuple[str, ...] = ()      # parameter names that weight decay / L1 / max-norm act on
    lazy_zero_grad = False           # True if backprop writes every gradient via add_grad
    _unset: set = frozenset()
    _fused = None                    # (optimizer, path prefix) while a trainer fuses the step
    n_neurons: int = 0               # neurons this layer adds (for summaries)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LAYERS[cls.__name__] = cls
        # opt-in per class, never inherited: a subclass's backprop may still use `+=`
        cls.lazy_zero_grad = cls.__dict__.get("lazy_zero_grad", False)

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
        """Start a new gradient accumulation.  Layers whose backprop writes every gradient
        through :meth:`add_grad` skip the memset: their next write overwrites instead of adding."""
        for _, layer in self.named_layers():
            if layer.params and layer.lazy_zero_grad:
                layer._unset = set(layer.params)
            else:
                for name, g in layer.grads.items():
                    g[...] = 0

    def add_grad(self, name, value):
        """``grads[name] += value``, or ``= value`` right after ``zero_grad``."""
        if name in self._unset:
            self._unset.discard(name)
            self.grads[name] = value
        else:
            self.grads[name] += value

    def attach_fused_step(self, optimizer) -> bool:
        """Let layers that can (Linear's weights on NumPy) hand their weight gradient straight to
        ``optimizer.fused_step`` inside backprop instead of storing it; ``None`` detaches.
        Only for a net whose layers are all distinct objects (a layer used twice accumulates
        two gradients, which must not be applied one at a time).  Returns whether it attached."""
        layers = [layer for _, layer in self.named_layers()]
        if optimizer is not None and (len({id(la) for la in layers}) != len(layers)
                                      or not getattr(optimizer, "can_fuse", False)):
            optimizer = None
        for path, layer in self.named_layers():
            layer._fused = None if optimizer is None else (optimizer, f"{path}/")
        return optimizer is not None

    def settle_grads(self):
        """Zero any gradient still pending from a lazy ``zero_grad`` (a parameter that received
        no gradient this step), so optimizers and clipping read true zeros."""
        for _, layer in self.named_layers():
            for name in layer._unset:
                layer.grads[name][...] = 0
            layer._unset = set()

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
        if like is not None and not isinstance(like, np.ndarray):
            self.to(like=like)
        else:
            self._reset_grads()

    def _reset_grads(self):
        for name, p in self.params.items():
            self.grads[name] = B.namespace(p).zeros_like(p)
        self._unset = set()

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
