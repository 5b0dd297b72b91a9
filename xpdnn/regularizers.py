"""Regularizers, gradient clipping and max-norm constraints, as the trainer's hooks use them.

* Regularizers (``Trainer(regularizers=[...])``): ``penalty = r(net)`` adds the penalty's gradient
  into the layers' ``grads`` and returns the penalty (a 0-d array, or ``0.0`` for a net without
  parameters), which the trainer adds to the logged loss.  By default they act on the weights
  a layer lists in ``decay`` (``W``), not on biases; ``include_bias=True`` covers every parameter.
* Clipping (``Trainer(clip=...)``): ``clip(net)`` rescales the gradients before the step.
* Constraints (``Trainer(constraints=[...])``): ``c(net)`` projects the parameters after the step.

Each also takes further modules with parameters, ``r(net, loss_fn)``, as ``optimizer.step`` does.

L2 added to the loss makes plain SGD's update ``W <- (1 - lr * lam) W - lr * dW`` (coupled weight
decay, the same as ``SGD(weight_decay=lam)``); the decoupled form is :class:`xpdnn.optim.adaptive.AdamW`.
"""

from __future__ import annotations

import math

from . import _backend as B


def _parameters(modules):
    """(layer, name) of every parameter of ``modules`` (a net and, e.g., a loss with parameters)."""
    return [(layer, name) for module in modules for _, layer, name in module.parameters()]


def _selected(modules, include_bias):
    """(layer, name) of the parameters a regularizer acts on."""
    return [(layer, name) for layer, name in _parameters(modules) if include_bias or name in layer.decay]


def _check_strength(what, lam):
    lam = float(lam)
    if not lam >= 0 or math.isinf(lam):
        raise ValueError(f"{what} must be a finite number >= 0, got {lam}")
    return lam


class Regularizer:
    """Base class: ``r(net, *more)`` adds ``gradient(W)`` into each selected gradient of ``net``
    (and of ``more`` modules with parameters) and returns the summed ``penalty(W)``."""

    def __init__(self, include_bias: bool = False):
        self.include_bias = bool(include_bias)

    def penalty(self, W):
        raise NotImplementedError

    def gradient(self, W):
        raise NotImplementedError

    def __call__(self, net, *more):
        total = 0.0
        for layer, name in _selected((net, *more), self.include_bias):
            W = layer.params[name]
            layer.grads[name] = layer.grads[name] + self.gradient(W)
            total = total + self.penalty(W)
        return total


class L2(Regularizer):
    """``lam / 2 * sum(W**2)``; gradient ``lam * W``."""

    def __init__(self, lam: float, include_bias: bool = False):
        super().__init__(include_bias)
        self.lam = _check_strength("L2 strength lam", lam)

    def penalty(self, W):
        xp = B.namespace(W)
        return 0.5 * self.lam * xp.sum(W * W)

    def gradient(self, W):
        return self.lam * W

    def __repr__(self):
        return f"L2(lam={self.lam}, include_bias={self.include_bias})"


class L1(Regularizer):
    """``lam * sum(|W|)``; subgradient ``lam * sign(W)`` (0 where ``W == 0``)."""

    def __init__(self, lam: float, include_bias: bool = False):
        super().__init__(include_bias)
        self.lam = _check_strength("L1 strength lam", lam)

    def penalty(self, W):
        xp = B.namespace(W)
        return self.lam * xp.sum(xp.abs(W))

    def gradient(self, W):
        xp = B.namespace(W)
        return self.lam * xp.sign(W)

    def __repr__(self):
        return f"L1(lam={self.lam}, include_bias={self.include_bias})"


class ElasticNet(Regularizer):
    """L1 plus L2: ``l1 * sum(|W|) + l2 / 2 * sum(W**2)``; gradient ``l1 * sign(W) + l2 * W``.
    (The ``lam1 |w| + lam2 w**2`` of CS231n's elastic net is ``ElasticNet(l1=lam1, l2=2 * lam2)``.)"""

    def __init__(self, l1: float, l2: float, include_bias: bool = False):
        super().__init__(include_bias)
        self.l1 = _check_strength("ElasticNet l1", l1)
        self.l2 = _check_strength("ElasticNet l2", l2)

    def penalty(self, W):
        xp = B.namespace(W)
        return self.l1 * xp.sum(xp.abs(W)) + 0.5 * self.l2 * xp.sum(W * W)

    def gradient(self, W):
        xp = B.namespace(W)
        return self.l1 * xp.sign(W) + self.l2 * W

    def __repr__(self):
        return f"ElasticNet(l1={self.l1}, l2={self.l2}, include_bias={self.include_bias})"


class MaxNorm:
    """Max-norm constraint: after each update, every unit's incoming weight vector (a row of
    ``Linear``'s ``W``, shape (n_out, n_in); for higher-rank weights, everything but axis 0) is
    projected onto the ball ``||w||_2 <= c``: ``w <- w * c / max(||w||, c)``.  Rows already inside
    are left bit-for-bit unchanged.  Acts on the ``decay`` weights with ``ndim >= 2``."""

    def __init__(self, c: float = 3.0):
        c = float(c)
        if not c > 0 or math.isinf(c):
            raise ValueError(f"max-norm bound c must be a finite number > 0, got {c}")
        self.c = c

    def __call__(self, net, *more):
        for layer, name in _selected((net, *more), include_bias=False):
            W = layer.params[name]
            if W.ndim < 2:
                continue
            xp = B.namespace(W)
            norms = xp.sqrt(xp.sum(W * W, axis=tuple(range(1, W.ndim)), keepdims=True))
            W *= self.c / xp.maximum(norms, self.c)
            layer.params[name] = W

    def __repr__(self):
        return f"MaxNorm(c={self.c})"


def _modules(net):
    return tuple(net) if isinstance(net, (list, tuple)) else (net,)


def clip_grad_norm(net, max_norm: float, norm_type: float = 2.0):
    """Rescale all of ``net``'s gradients (``net`` may be a list of modules, e.g. a net and a loss
    with parameters) together so that their global ``norm_type``-norm is at
    most ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``: with ``total`` the norm of all
    gradients concatenated, every gradient is multiplied by ``min(1, max_norm / (total + 1e-6))``.
    Returns ``total`` (a 0-d array, before clipping; ``0.0`` for a net without parameters)."""
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    grads = _parameters(_modules(net))
    if not grads:
        return 0.0
    xp = B.namespace(*(layer.grads[name] for layer, name in grads))
    if math.isinf(norm_type):
        total = xp.max(xp.stack([xp.max(xp.abs(layer.grads[name])) for layer, name in grads]))
    else:
        total = sum(xp.sum(xp.abs(layer.grads[name]) ** norm_type) for layer, name in grads) ** (1.0 / norm_type)
    scale = xp.clip(max_norm / (total + 1e-6), max=1.0)
    for layer, name in grads:
        layer.grads[name] = layer.grads[name] * scale
    return total


def clip_grad_value(net, clip_value: float):
    """Clamp every gradient element of ``net`` (a module or a list of them) into
    ``[-clip_value, clip_value]``, as ``torch.nn.utils.clip_grad_value_``."""
    clip_value = float(clip_value)
    if not clip_value > 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value}")
    for layer, name in _parameters(_modules(net)):
        g = layer.grads[name]
        layer.grads[name] = B.namespace(g).clip(g, min=-clip_value, max=clip_value)


class ClipGradNorm:
    """``Trainer(clip=ClipGradNorm(max_norm))``: :func:`clip_grad_norm` before every step;
    ``last_norm`` keeps the latest total norm (a 0-d array)."""

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)
        if not self.max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        if not self.norm_type > 0:
            raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
        self.last_norm = None

    def __call__(self, net, *more):
        self.last_norm = clip_grad_norm((net, *more), self.max_norm, self.norm_type)
        return self.last_norm

    def __repr__(self):
        return f"ClipGradNorm(max_norm={self.max_norm}, norm_type={self.norm_type})"


class ClipGradValue:
    """``Trainer(clip=ClipGradValue(v))``: :func:`clip_grad_value` before every step."""

    def __init__(self, clip_value: float):
        self.clip_value = float(clip_value)
        if not self.clip_value > 0:
            raise ValueError(f"clip_value must be > 0, got {clip_value}")

    def __call__(self, net, *more):
        clip_grad_value((net, *more), self.clip_value)

    def __repr__(self):
        return f"ClipGradValue(clip_value={self.clip_value})"
