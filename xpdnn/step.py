"""The training step, in one place: forward, loss, backprop into a gradient sink, update.

One :class:`Step` call on a batch (X, y) does, in this order::

    Z, backprop = net.forward(X, train=True, rng=rng)   # layers keep what backward needs
    loss, dZ = loss_fn(Z, y, check=False)               # labels were validated once per fit
    guard(loss)                                         # the NaN guard may stop here: no update yet
    backprop(dZ, sink)                                  # every parameter gradient goes to the sink
    sink.finish()                                       # parameters that got none: zero
    loss += r(net) for r in regularizers                # each adds its gradient into layer.grads
    clip(net)                                           # rescales layer.grads
    optimizer.step(net, skip=sink.applied)              # what the sink did not update already
    c(net) for c in constraints                         # projects the parameters (max-norm)

A loss with parameters (hierarchical softmax) is one more module: it gets the sink too, and
regularizers, clipping, the optimizer and constraints see it after the net.

Gradient sinks receive each gradient as backprop produces it (``sink.add(layer, name, g)``,
``sink.matmul_grad(layer, name, dY, X)`` for ``g = dY.T @ X``), the way PyTorch's
``register_post_accumulate_grad_hook`` and ChainerMN's multi-node optimizer sit between backward
and the update:

* :data:`~xpdnn.layers.base.ACCUMULATE` -- ``layer.grads[name] += g`` (a direct ``backprop(dY)``);
* :class:`StepGrads` -- the trainer's: a parameter's first gradient of the step replaces the old
  one (no memset), :meth:`~StepGrads.finish` zeroes the ones that got none;
* :class:`FusedSGD` -- NumPy with SGD (no Nesterov, no dampening), when nothing reads gradients
  between backprop and the update: the weight GEMM does the momentum update
  ``v = momentum v + dY.T @ X`` in one BLAS call and ``W -= lr v``; that gradient is never
  stored, so the update is the same up to rounding and those ``layer.grads`` are left stale.

* :class:`AllReduceGrads` -- data-parallel training (:mod:`xpdnn.distributed`): each rank
  backpropagates its shard's share of the GLOBAL mean loss (``dZ`` scaled by its share of the
  loss's denominator, see :meth:`~AllReduceGrads.weigh`), and :meth:`~AllReduceGrads.finish`
  sums the gradients and the loss over the ranks in one packed buffer, the way Horovod and
  PyTorch's DistributedDataParallel fuse gradients into buckets; the NaN guard then reads the
  global loss, so every rank takes the same decision.
"""

from __future__ import annotations

import inspect

import numpy as np

from . import _backend as B
from .layers.base import ACCUMULATE, Layer
from .optim.base import parameter_keys


class StepGrads:
    """The trainer's sink for ``modules`` (the net, then a loss with parameters): gradients go
    into ``layer.grads``; the first one of a parameter in a step replaces the old value."""

    applied: frozenset = frozenset()      # keys a sink updated itself (none here)

    def __init__(self, modules):
        self.keys = {(id(layer), name): key for key, layer, name in parameter_keys(modules)}
        self.params = [(layer, name) for _, layer, name in parameter_keys(modules)]
        self.seen: set = set()

    def begin(self) -> None:
        self.seen = set()

    def add(self, layer, name, g) -> None:
        if (id(layer), name) in self.seen:
            ACCUMULATE.add(layer, name, g)
        else:                             # g is a new array backprop hands over: keep it
            self.seen.add((id(layer), name))
            layer.grads[name] = g

    def matmul_grad(self, layer, name, dY, X) -> None:
        if (id(layer), name) in self.seen:
            ACCUMULATE.matmul_grad(layer, name, dY, X)
        else:                             # written into the old gradient's memory where possible
            from . import kernels
            self.seen.add((id(layer), name))
            layer.grads[name] = kernels.matmul_tn(dY, X, out=layer.grads[name])

    def finish(self) -> None:
        """Zero the gradients of parameters that received none this step."""
        for layer, name in self.params:
            if (id(layer), name) not in self.seen:
                layer.grads[name] = B.zeros_into(layer.grads[name])


class FusedSGD(StepGrads):
    """:class:`StepGrads` that lets ``optimizer.fused_update`` apply a weight's update inside
    backprop, from ``dY`` and ``X``, where it can (NumPy SGD); those keys are in ``applied``."""

    def __init__(self, modules, optimizer):
        super().__init__(modules)
        self.optimizer = optimizer
        self.applied: set = set()

    def begin(self) -> None:
        super().begin()
        self.applied = set()

    def matmul_grad(self, layer, name, dY, X) -> None:
        key = self.keys[(id(layer), name)]
        if (id(layer), name) not in self.seen and self.optimizer.fused_update(
                key, layer.params[name], dY, X, decay=name in layer.decay):
            self.seen.add((id(layer), name))
            self.applied.add(key)
        else:
            super().matmul_grad(layer, name, dY, X)


class AllReduceGrads(StepGrads):
    """:class:`StepGrads` for data-parallel training over ``comm``: after backprop, every
    gradient and the step's loss are summed over the ranks in ONE packed buffer (one
    all-reduce per step), so each rank holds the gradient of the global batch's loss.

    On NumPy and CuPy the gradients live in that buffer: ``layer.grads`` are views of one flat
    array with a last slot for the loss, backprop's weight GEMMs write straight into them, and
    the all-reduce runs in place, so packing costs no copy.  Other libraries are packed with
    ``concat`` and unpacked after the all-reduce."""

    collective = True

    def __init__(self, modules, comm):
        super().__init__(modules)
        self.comm = comm
        self.buffer, self.views = None, {}   # the flat buffer and the gradient views into it
        self.share = None                    # this rank's part of the global loss (0-d)
        self.loss = None                     # the global loss after finish()

    def begin(self) -> None:
        super().begin()
        self.share = None
        if any(layer.grads[name] is not self.views.get((id(layer), name)) for layer, name in self.params):
            self._bind()

    def _bind(self) -> None:
        """Move the gradients into views of one flat buffer (NumPy or CuPy, one dtype)."""
        grads = [layer.grads[name] for layer, name in self.params]
        self.buffer, self.views = None, {}
        if not grads or not all(B.has_views(g) for g in grads) or len({g.dtype for g in grads}) > 1:
            return
        xp = B.namespace(grads[0])
        sizes = [int(np.prod(g.shape)) if g.shape else 1 for g in grads]
        self.buffer = xp.zeros((sum(sizes) + 1,), dtype=grads[0].dtype, device=B.device(grads[0]))
        start = 0
        for (layer, name), g, n in zip(self.params, grads, sizes):
            view = xp.reshape(self.buffer[start:start + n], tuple(g.shape))
            view[...] = g
            layer.grads[name] = self.views[(id(layer), name)] = view
            start += n

    def add(self, layer, name, g) -> None:
        view = self.views.get((id(layer), name))
        if view is None or (id(layer), name) in self.seen:
            return super().add(layer, name, g)
        self.seen.add((id(layer), name))
        view[...] = g

    def matmul_grad(self, layer, name, dY, X) -> None:
        view = self.views.get((id(layer), name))
        if view is None or (id(layer), name) in self.seen:
            return super().matmul_grad(layer, name, dY, X)
        from . import kernels
        self.seen.add((id(layer), name))
        out = kernels.matmul_tn(dY, X, out=view)
        if out is not view:
            view[...] = out

    def weigh(self, loss_fn, loss, dZ, y, rows: int, global_rows: int):
        """This rank's ``dZ`` for the GLOBAL loss: its mean-loss gradient times its share
        ``den / global_den`` of the loss's denominator (rows for a plain mean, the summed class
        weights of non-ignored labels for a weighted one, 1 for a sum; see
        :meth:`xpdnn.losses.Loss.mean_denominator`).  A rank with no rows contributes zero."""
        den = loss_fn.mean_denominator(y)        # called on every rank: a weighted one is all-reduced
        if den is None:                          # a plain mean over the rows
            scale = rows / global_rows
        elif isinstance(den, int):               # a sum: every rank's sum counts in full
            scale = 1.0
        else:                                    # a weighted mean: the denominators summed over ranks
            den = float(den)
            total = float(self.comm.allreduce_values([den])[0])
            scale = den / total if total > 0 else 0.0
        if rows == 0:
            return dZ
        self.share = loss * scale
        return dZ * scale

    def finish(self) -> None:
        super().finish()
        if self.buffer is not None:
            self.buffer[-1] = 0 if self.share is None else self.share
            summed = self.comm.allreduce(self.buffer)
            if summed is not self.buffer:        # an engine without a device path returns a new
                self.buffer[...] = summed        # array: the gradients are views of ours
            xp = B.namespace(self.buffer)
            self.loss = xp.asarray(self.buffer[-1], copy=True)
            return
        self._packed_finish()

    def _packed_finish(self) -> None:
        """Pack with ``concat``, all-reduce, unpack (libraries without writable views)."""
        grads = [layer.grads[name] for layer, name in self.params]
        share = self.share
        like = grads[0] if grads else share
        if like is None:                         # no parameters and no rows here: a 0 on the host
            like = np.zeros((), dtype=np.float64)
        xp = B.namespace(like)
        dtype = like.dtype if grads else xp.float64
        part = xp.zeros((1,), dtype=dtype, device=B.device(like)) if share is None \
            else xp.reshape(xp.astype(share, dtype), (1,))
        flat = [xp.reshape(g, (-1,)) for g in grads] + [part]
        packed = xp.concat(flat) if len({g.dtype for g in flat}) == 1 else \
            xp.concat([xp.astype(g, xp.float64) for g in flat])
        packed = self.comm.allreduce(packed)
        start = 0
        for (layer, name), g in zip(self.params, grads):
            n = int(np.prod(g.shape)) if g.shape else 1
            layer.grads[name] = xp.astype(xp.reshape(packed[start:start + n], tuple(g.shape)), g.dtype)
            start += n
        self.loss = packed[start]


def can_fuse(modules, optimizer) -> bool:
    """Whether :class:`FusedSGD` may serve these modules: the optimizer fuses, and no layer
    object appears twice (a shared layer gets two gradients, which must be summed first)."""
    layers = [layer for module in modules for _, layer in module.named_layers()]
    return getattr(optimizer, "can_fuse", False) and len({id(la) for la in layers}) == len(layers)


class Step:
    """One training step of ``net`` on a batch (see the module docstring for the order).

    ``sink`` is :class:`StepGrads` or :class:`FusedSGD` built for ``(net, loss)``;
    ``step(X, y, rng, guard)`` returns ``(loss with penalties, Z)``; ``guard(loss)`` is called
    before backprop and may raise to stop the step before any update."""

    def __init__(self, net, loss_fn, optimizer, *, sink, regularizers=(), clip=None, constraints=()):
        from .layers.sequential import Sequential

        self.net, self.loss_fn, self.optimizer, self.sink = net, loss_fn, optimizer, sink
        self.extra = (loss_fn,) if isinstance(loss_fn, Layer) else ()     # a loss with parameters
        self.regularizers, self.clip, self.constraints = list(regularizers), clip, list(constraints)
        # nobody reads the input gradient; labels were checked once (a loss of the user's own
        # that takes no ``check`` argument checks them again); a loss with parameters gets the sink
        self.forward_kw = {"input_grad": False} if isinstance(net, Sequential) else {}
        params = inspect.signature(loss_fn).parameters
        self.loss_kw = {"check": False} if "check" in params else {}
        if self.extra:
            self.loss_kw["sink"] = sink

    def __call__(self, X, y, rng, guard, global_rows=None):
        net, extra, sink = self.net, self.extra, self.sink
        Z, backprop = net.forward(X, train=True, rng=rng, **self.forward_kw)
        sink.begin()
        if getattr(sink, "collective", False):       # data-parallel: this rank's share, summed in finish
            rows = X.shape[0]
            loss, dZ = self.loss_fn(Z, y, **self.loss_kw) if rows else (None, B.namespace(Z).zeros_like(Z))
            backprop(sink.weigh(self.loss_fn, loss, dZ, y, rows, global_rows), sink)
            sink.finish()
            loss = sink.loss
            guard(loss)                              # the global loss: every rank decides alike
        else:
            loss, dZ = self.loss_fn(Z, y, **self.loss_kw)
            guard(loss)
            backprop(dZ, sink)
            sink.finish()
        for reg in self.regularizers:
            loss = loss + reg(net, *extra)
        if self.clip is not None:
            self.clip(net, *extra)
        self.optimizer.step(net, *extra, skip=sink.applied)
        for constraint in self.constraints:
            constraint(net, *extra)
        return loss, Z
