"""Optimizer protocol: ``optimizer.step(net)`` updates every parameter of ``net`` from its
accumulated gradient.  State is keyed by the parameter's stable path, ``"layers.0/W"``.

Hyperparameters are checked when an optimizer is built (a one-line ValueError naming the
parameter: finite numbers in range, True/False flags), and a saved state is checked in full by
:meth:`Optimizer.check_state` before :meth:`Optimizer.load_state_dict` changes anything.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _backend as B

OPTIMIZERS: dict[str, type] = {}


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def real(name: str, v) -> float:
    """``v`` as a finite float, or a ValueError naming ``name``."""
    if isinstance(v, (bool, np.bool_, str, bytes, complex)) or v is None:
        raise ValueError(f"{name} must be a finite number, got {_show(v)}")
    try:
        f = float(v)
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"{name} must be a finite number, got {_show(v)}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {_show(v)}")
    return f


def positive(name: str, v) -> float:
    """A finite float > 0."""
    f = real(name, v)
    if not f > 0:
        raise ValueError(f"{name} must be > 0, got {_show(v)}")
    return f


def nonnegative(name: str, v) -> float:
    """A finite float >= 0."""
    f = real(name, v)
    if not f >= 0:
        raise ValueError(f"{name} must be >= 0, got {_show(v)}")
    return f


def in_unit(name: str, v, *, closed: bool = False) -> float:
    """A float in [0, 1) (``closed``: [0, 1])."""
    f = real(name, v)
    if not (0.0 <= f <= 1.0 if closed else 0.0 <= f < 1.0):
        raise ValueError(f"{name} must be in [0, 1{']' if closed else ')'}, got {_show(v)}")
    return f


def integer(name: str, v, *, low: int | None = None, high: int | None = None) -> int:
    """An int (an integral float is accepted) in ``[low, high)``."""
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {_show(v)}")
    if isinstance(v, numbers.Integral):
        i = int(v)
    elif isinstance(v, numbers.Real) and math.isfinite(float(v)) and float(v).is_integer():
        i = int(v)
    else:
        raise ValueError(f"{name} must be an integer, got {_show(v)}")
    if low is not None and i < low:
        raise ValueError(f"{name} must be >= {low}, got {_show(v)}")
    if high is not None and i >= high:
        raise ValueError(f"{name} must be < {high}, got {_show(v)}")
    return i


def flag(name: str, v) -> bool:
    """True or False (0 and 1 are accepted)."""
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, numbers.Integral) and int(v) in (0, 1)):
        return bool(v)
    raise ValueError(f"{name} must be True or False, got {_show(v)}")


class Optimizer:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZERS[cls.__name__] = cls

    def __init__(self, lr: float):
        self.lr = positive("lr (the learning rate)", lr)
        self.state: dict[str, dict] = {}
        self.steps = 0

    def step(self, net, *more, skip=()) -> None:
        """One update of every parameter of ``net`` (and of ``more`` modules with parameters,
        such as a hierarchical-softmax loss, keyed ``loss<i>.<path>/<name>``) from its gradient
        in ``layer.grads``, except the keys in ``skip`` (updated already by a fusing gradient
        sink, see :mod:`xpdnn.step`).  Parameters and state are stored back, so libraries with
        immutable arrays (JAX) lose no update."""
        for key, layer, name in parameter_keys((net, *more)):
            if key not in skip:
                layer.params[name] = self.update(key, layer.params[name], layer.grads[name],
                                                 decay=name in layer.decay)
        self.steps += 1

    # -- the update fused into backprop (see xpdnn.step.FusedSGD) -------------------------------
    can_fuse = False

    def fused_update(self, key, W, dY, X, *, decay: bool) -> bool:
        """Update the weight ``W`` whose gradient is ``dY.T @ X`` right now, inside backprop,
        without storing that gradient; False (nothing done) when this optimizer cannot."""
        return False

    def _scratch(self, key, like):
        """A reusable work buffer shaped like ``like`` (never saved)."""
        scratch = self.__dict__.setdefault("_scratch_buffers", {})
        buf = scratch.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = scratch[key] = B.namespace(like).empty_like(like)
        return buf

    def update(self, key, W, dW, *, decay: bool):
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> tuple[dict, dict]:
        """(JSON-able scalars, {name: array}) describing the whole optimizer state."""
        arrays = {f"{key}/{slot}": a for key, slots in sorted(self.state.items()) for slot, a in sorted(slots.items())}
        return {"type": type(self).__name__, "config": self.get_config(), "steps": self.steps, "lr": self.lr}, arrays

    def slots(self) -> tuple[str, ...]:
        """The state slots this optimizer keeps per parameter (all created together)."""
        return ()

    def check_state(self, meta: dict, arrays: dict, shapes: dict | None = None) -> tuple[int, float, dict]:
        """Validate a saved state for this optimizer without changing it: ``meta`` from
        :meth:`state_dict` (same optimizer type; ``steps`` an int in [0, 2**63); ``lr`` finite and >= 0,
        0 being where a schedule may end), ``arrays`` {"<key>/<slot>": array} with exactly
        :meth:`slots` per key, finite floating values, and, when ``shapes`` ({key: shape} of the
        parameters) is given, a key of a parameter and that parameter's shape.  Returns (steps,
        lr, {key: {slot: host array}}); raises ValueError naming the problem."""
        if not isinstance(meta, dict):
            raise ValueError(f"optimizer state must be a JSON object, got {type(meta).__name__}")
        kind = meta.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"the saved optimizer state is for {kind!r}, this optimizer is a {type(self).__name__}")
        for name in ("steps", "lr"):
            if name not in meta:
                raise ValueError(f"optimizer state has no {name!r}")
        steps = integer("optimizer steps", meta["steps"], low=0, high=2 ** 63)
        lr = nonnegative("optimizer lr", meta["lr"])
        if not isinstance(arrays, dict):
            raise ValueError("optimizer arrays must be a dict")
        expected = set(self.slots())
        state: dict = {}
        for full, a in arrays.items():
            if not isinstance(full, str) or full.count("/") < 2:
                raise ValueError(f"optimizer tensor {full!r} is not named <path>/<parameter>/<slot>")
            key, slot = full.rsplit("/", 1)
            if slot not in expected:
                raise ValueError(f"optimizer tensor {full!r}: unknown slot {slot!r} for {type(self).__name__} "
                                 f"with this configuration (slots: {sorted(expected)})")
            host = B.to_numpy(a)
            if host.dtype.kind != "f":
                raise ValueError(f"optimizer tensor {full!r} has dtype {host.dtype}, not floating point")
            if shapes is not None:
                if key not in shapes:
                    raise ValueError(f"optimizer tensor {full!r}: no parameter {key!r} in the network")
                if tuple(host.shape) != tuple(shapes[key]):
                    raise ValueError(f"optimizer tensor {full!r} has shape {tuple(host.shape)}, "
                                     f"the parameter {key!r} has {tuple(shapes[key])}")
            if not np.all(np.isfinite(host)):
                raise ValueError(f"optimizer tensor {full!r} contains NaN or Inf")
            state.setdefault(key, {})[slot] = host
        for key, slots in state.items():
            missing = sorted(expected - set(slots))
            if missing:
                raise ValueError(f"optimizer state of {key!r} lacks slot(s) {missing}")
            if len({tuple(a.shape) for a in slots.values()}) > 1:
                raise ValueError(f"optimizer state of {key!r}: slots of different shapes")
        return steps, lr, state

    def load_state_dict(self, meta: dict, arrays: dict, like=None, shapes: dict | None = None) -> None:
        """Install a state from :meth:`state_dict` after :meth:`check_state` accepted it in full
        (nothing changes when it raises); arrays go next to ``like`` (default: where they are)."""
        steps, lr, host_state = self.check_state(meta, arrays, shapes)
        state: dict = {}
        for key, slots in host_state.items():
            for slot, host in slots.items():
                # always a private, writable copy: updates are in place and must not reach the caller's arrays
                target = like if like is not None else arrays[f"{key}/{slot}"]
                state.setdefault(key, {})[slot] = B.from_numpy(np.array(host, copy=True), like=target)
        self.steps, self.lr, self.state = steps, lr, state


def parameter_keys(modules):
    """(key, layer, name) of every parameter of ``modules`` (a net, then e.g. a loss with
    parameters), keyed ``<path>/<name>`` for the first and ``loss<i>.<path>/<name>`` after."""
    for i, module in enumerate(modules):
        prefix = f"loss{i}." if i else ""
        for path, layer, name in module.parameters():
            yield f"{prefix}{path}/{name}", layer, name


def optimizer_from_state(meta: dict):
    """A new optimizer built from the configuration in ``meta`` (its state is not loaded)."""
    if not isinstance(meta, dict):
        raise ValueError(f"optimizer metadata must be a JSON object, got {type(meta).__name__}")
    kind = meta.get("type")
    cls = OPTIMIZERS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown optimizer {kind!r}")
    config = meta.get("config")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"{kind} configuration must be a JSON object, got {config!r}"[:300])
    try:
        return cls(**config)
    except TypeError as exc:
        raise ValueError(f"{kind} configuration is invalid ({exc})") from None
