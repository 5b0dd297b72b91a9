"""Adaptive learning-rate optimizers: Adagrad, RMSProp, Adam and AdamW.

Each follows ``torch.optim`` exactly (where eps goes, bias correction, weight decay), except that
weight decay acts only on the weights a layer lists in ``decay`` (never on biases).  ``W`` and
``dW`` are one parameter and its gradient, any shape; per-parameter state lives in
``self.state[key][slot]`` (arrays shaped like ``W``), the step count ``t`` is ``self.steps + 1``.
"""

from __future__ import annotations

import math

from .. import _backend as B
from .. import kernels
from .base import Optimizer, flag, in_unit, nonnegative


def _slots(opt, key, W, names, fill=0.0):
    """The state slots ``names`` of parameter ``key``, created as ``fill``-valued arrays like W."""
    slots = opt.state.setdefault(key, {})
    xp = B.namespace(W)
    for name in names:
        if name not in slots:
            slots[name] = xp.full_like(W, fill) if fill else xp.zeros_like(W)
    return slots


class Adagrad(Optimizer):
    """``g = dW + weight_decay * W``; ``sum += g**2``;
    ``W -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)``.  State: ``sum``."""

    def __init__(self, lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        super().__init__(lr)
        self.lr_decay, self.weight_decay = nonnegative("lr_decay", lr_decay), nonnegative("weight_decay", weight_decay)
        self.initial_accumulator_value = nonnegative("initial_accumulator_value", initial_accumulator_value)
        self.eps = nonnegative("eps", eps)

    def slots(self):
        return ("sum",)

    def get_config(self):
        return {"lr": self.lr, "lr_decay": self.lr_decay, "weight_decay": self.weight_decay,
                "initial_accumulator_value": self.initial_accumulator_value, "eps": self.eps}

    def update(self, key, W, dW, *, decay):
        xp = B.namespace(W, dW)
        g = dW + self.weight_decay * W if decay and self.weight_decay else dW
        slots = _slots(self, key, W, ("sum",), self.initial_accumulator_value)
        total = slots["sum"] = B.iadd(slots["sum"], g * g)
        denom = B.iadd(xp.sqrt(total), self.eps)
        update = B.imul(g / denom, self.lr / (1.0 + self.steps * self.lr_decay))
        return B.isub(W, update)


class RMSProp(Optimizer):
    """``g = dW + weight_decay * W``; ``sq = alpha * sq + (1 - alpha) * g**2``;
    ``avg = sqrt(sq) + eps`` (centered: ``ga = alpha * ga + (1 - alpha) * g`` and
    ``avg = sqrt(sq - ga**2) + eps``); ``W -= lr * g / avg``, or with momentum
    ``buf = momentum * buf + g / avg`` and ``W -= lr * buf``.
    State: ``square_avg`` (+ ``grad_avg`` centered, + ``momentum_buffer`` with momentum)."""

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False):
        super().__init__(lr)
        self.alpha, self.eps = in_unit("alpha", alpha), nonnegative("eps", eps)
        self.weight_decay = nonnegative("weight_decay", weight_decay)
        self.momentum, self.centered = in_unit("momentum", momentum), flag("centered", centered)

    def slots(self):
        return ("square_avg",) + (("grad_avg",) if self.centered else ()) \
            + (("momentum_buffer",) if self.momentum else ())

    def get_config(self):
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum, "centered": self.centered}

    def update(self, key, W, dW, *, decay):
        xp = B.namespace(W, dW)
        a = self.alpha
        g = dW + self.weight_decay * W if decay and self.weight_decay else dW
        slots = _slots(self, key, W, self.slots())
        sq = slots["square_avg"] = B.iadd(B.imul(slots["square_avg"], a), (1.0 - a) * (g * g))
        if self.centered:
            ga = slots["grad_avg"] = B.iadd(B.imul(slots["grad_avg"], a), (1.0 - a) * g)
            avg = xp.sqrt(sq - ga * ga)
        else:
            avg = xp.sqrt(sq)
        avg = B.iadd(avg, self.eps)
        update = g / avg
        if self.momentum:
            buf = slots["momentum_buffer"] = B.iadd(B.imul(slots["momentum_buffer"], self.momentum), update)
            return B.isub(W, self.lr * buf)
        return B.isub(W, B.imul(update, self.lr))


class Adam(Optimizer):
    """``g = dW + weight_decay * W`` (coupled L2); ``m = b1 m + (1 - b1) g``;
    ``v = b2 v + (1 - b2) g**2``; ``W -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)``.
    With ``amsgrad`` the denominator uses ``vmax = max(vmax, v)`` instead of ``v``.
    State: ``exp_avg``, ``exp_avg_sq`` (+ ``max_exp_avg_sq``)."""

    decoupled = False

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False):
        super().__init__(lr)
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers, got {betas!r}")
        b1, b2 = in_unit("betas[0]", betas[0]), in_unit("betas[1]", betas[1])
        self.betas, self.eps = (b1, b2), nonnegative("eps", eps)
        self.weight_decay, self.amsgrad = nonnegative("weight_decay", weight_decay), flag("amsgrad", amsgrad)

    def slots(self):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def get_config(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
                "amsgrad": self.amsgrad}

    def update(self, key, W, dW, *, decay):
        xp = B.namespace(W, dW)
        b1, b2 = self.betas
        t = self.steps + 1
        g = dW
        if decay and self.weight_decay:
            if self.decoupled:
                W = B.imul(W, 1.0 - self.lr * self.weight_decay)
            else:
                g = dW + self.weight_decay * W
        slots = _slots(self, key, W, self.slots())
        if kernels.adam_step_(W, g, slots["exp_avg"], slots["exp_avg_sq"], slots.get("max_exp_avg_sq"),
                              lr=self.lr, b1=b1, b2=b2, eps=self.eps, t=t, scratch=self._scratch(key, W),
                              scratch2=self._scratch(key + "#2", W)):
            return W
        # in place where the library allows (five temporaries instead of twelve), stored back
        m = slots["exp_avg"] = B.iadd(B.imul(slots["exp_avg"], b1), (1.0 - b1) * g)
        v = slots["exp_avg_sq"] = B.iadd(B.imul(slots["exp_avg_sq"], b2), (1.0 - b2) * (g * g))
        if self.amsgrad:
            v = slots["max_exp_avg_sq"] = xp.maximum(slots["max_exp_avg_sq"], v)
        denom = B.iadd(B.idiv(xp.sqrt(v), math.sqrt(1.0 - b2 ** t)), self.eps)
        update = B.imul(m / denom, self.lr / (1.0 - b1 ** t))
        return B.isub(W, update)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``W *= 1 - lr * weight_decay``
    (weights only) before the Adam step, which sees the raw gradient ``dW``.  Same state as Adam."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False):
        super().__init__(lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


RMSprop = RMSProp      # PyTorch's spelling
