"""Optimizer protocol: ``optimizer.step(net)`` updates every parameter of ``net`` from its
accumulated gradient.  State is keyed by the parameter's stable path, ``"layers.0/W"``."""

from __future__ import annotations

import numpy as np

from .. import _backend as B

OPTIMIZERS: dict[str, type] = {}


class Optimizer:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZERS[cls.__name__] = cls

    def __init__(self, lr: float):
        if not float(lr) > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)
        self.state: dict[str, dict] = {}
        self.steps = 0

    def step(self, net, *more) -> None:
        """One update of every parameter of ``net`` (and of ``more`` modules with parameters,
        such as a hierarchical-softmax loss, keyed ``loss<i>.<path>/<name>``), except those
        already updated during backprop by :meth:`fused_step`."""
        done = self.__dict__.get("_fused_done") or ()
        for i, module in enumerate((net, *more)):
            module.settle_grads()
            prefix = f"loss{i}." if i else ""
            for path, layer, name in module.parameters():
                key = f"{prefix}{path}/{name}"
                if key in done:
                    continue
                layer.params[name] = self.update(key, layer.params[name], layer.grads[name],
                                                 decay=name in layer.decay)
        self.steps += 1
        if done:
            done.clear()

    # -- optimizer-in-backward ----------------------------------------------------------
    can_fuse = False

    def fused_step(self, key, W, dY, X, *, decay: bool) -> bool:
        """Update the weight ``W`` (key ``key``) whose gradient is ``dY.T @ X`` right now, inside
        backprop, without storing that gradient; the next :meth:`step` skips it.  Returns False
        when this optimizer does not fuse (the caller then stores the gradient as usual).
        Layers call this only while a :class:`~xpdnn.Trainer` has attached the optimizer
        (``layer.attach_fused_step``), which it does only when nothing else reads the gradients."""
        if self.fused_update(key, W, dY, X, decay=decay):
            self.__dict__.setdefault("_fused_done", set()).add(key)
            return True
        return False

    def fused_update(self, key, W, dY, X, *, decay: bool) -> bool:
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

    def load_state_dict(self, meta: dict, arrays: dict, like=None) -> None:
        self.steps = int(meta["steps"])
        self.lr = float(meta["lr"])
        self.state = {}
        for full, a in arrays.items():
            key, slot = full.rsplit("/", 1)
            # always a private, writable copy: updates are in place and must not reach the caller's arrays
            host = np.array(B.to_numpy(a), copy=True)
            self.state.setdefault(key, {})[slot] = B.from_numpy(host, like=like if like is not None else a)


def optimizer_from_state(meta: dict):
    try:
        cls = OPTIMIZERS[meta["type"]]
    except KeyError:
        raise ValueError(f"unknown optimizer {meta.get('type')!r}") from None
    return cls(**meta["config"])
