"""Stochastic gradient descent with (Nesterov) momentum and L2 weight decay."""

from __future__ import annotations

from .. import _backend as B
from .. import kernels
from .base import Optimizer, flag, in_unit, nonnegative


class SGD(Optimizer):
    """PyTorch's SGD, parameter by parameter (W and dW of any shape):

    ``g = dW + weight_decay * W`` (coupled L2; weights in ``layer.decay`` only, not biases), then
    with momentum ``v = g`` on the first step and ``v = momentum * v + (1 - dampening) * g`` after,
    and ``W -= lr * v`` (``W -= lr * (g + momentum * v)`` with Nesterov); without momentum
    ``W -= lr * g``.  Batch, mini-batch and stochastic gradient descent differ only in the
    trainer's batch size.  State: ``velocity`` per parameter (with momentum).
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0):
        super().__init__(lr)
        momentum, weight_decay = in_unit("momentum", momentum), nonnegative("weight_decay", weight_decay)
        dampening, nesterov = in_unit("dampening", dampening, closed=True), flag("nesterov", nesterov)
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.dampening = dampening

    def slots(self):
        return ("velocity",) if self.momentum else ()

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov, "dampening": self.dampening}

    @property
    def can_fuse(self) -> bool:
        return not self.nesterov and not self.dampening

    def fused_update(self, key, W, dY, X, *, decay) -> bool:
        """The update of a weight whose gradient is ``dY.T @ X``, with that GEMM doing the
        momentum too: ``v = momentum * v + dY.T @ X`` in one BLAS call (beta = momentum), then
        ``v += weight_decay * W`` and ``W -= lr * v``, all in place.  The gradient is never
        stored.  Returns False (nothing done) when this optimizer or these arrays cannot fuse
        (see :func:`xpdnn.kernels.fused_gemm_available`)."""
        if not self.can_fuse or not kernels.fused_gemm_available(W, dY, X):
            return False
        wd = self.weight_decay if decay else 0.0
        if not self.momentum:                   # W -= lr * (dY.T @ X + wd * W)
            if wd:
                W *= W.dtype.type(1.0 - self.lr * wd)
            kernels.gemm_tn_acc_(dY * W.dtype.type(-self.lr), X, W, 1.0)
            return True
        slots = self.state.setdefault(key, {})
        v = slots.get("velocity")
        first = v is None
        if first:
            v = slots["velocity"] = B.namespace(W).empty_like(W)
        kernels.gemm_tn_acc_(dY, X, v, 0.0 if first else self.momentum)
        if wd:
            kernels.blas_axpy_(wd, W, v, self._scratch(key, W))
        kernels.blas_axpy_(-self.lr, v, W, self._scratch(key, W))
        return True

    def update(self, key, W, dW, *, decay):
        g = dW + self.weight_decay * W if decay and self.weight_decay else dW
        if self.momentum:
            slots = self.state.setdefault(key, {})
            v = slots.get("velocity")
            if v is None:
                v = slots["velocity"] = g * 1.0      # a fresh array, never an alias of the gradient
            elif self.can_fuse and kernels.momentum_step_(W, g, v, self.lr, self.momentum, self._scratch(key, W)):
                return W
            else:                    # v = momentum * v + (1 - dampening) * g, in place where allowed
                v = B.imul(v, self.momentum)
                v = slots["velocity"] = B.iadd(v, (1.0 - self.dampening) * g if self.dampening else g)
            g = g + self.momentum * v if self.nesterov else v
        if kernels.axpy_(-self.lr, g, W, self._scratch(key, W)):
            return W
        return B.isub(W, self.lr * g)
