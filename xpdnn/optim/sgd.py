"""Stochastic gradient descent with (Nesterov) momentum and L2 weight decay."""

from __future__ import annotations

from .base import Optimizer


class SGD(Optimizer):
    """PyTorch's SGD: ``g = dW + weight_decay * W`` (weights only, not biases), then
    ``v = momentum * v + g`` and ``W -= lr * v`` (``W -= lr * (g + momentum * v)`` with Nesterov).
    Batch, mini-batch and stochastic gradient descent differ only in the trainer's batch size.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = float(momentum), float(weight_decay), bool(nesterov)

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}

    def update(self, key, W, dW, *, decay):
        g = dW + self.weight_decay * W if decay and self.weight_decay else dW
        if self.momentum:
            slots = self.state.setdefault(key, {})
            v = slots.get("velocity")
            # a fresh array, never an alias of the gradient buffer
            v = g * 1.0 if v is None else self.momentum * v + g
            slots["velocity"] = v
            g = g + self.momentum * v if self.nesterov else v
        W -= self.lr * g
        return W
