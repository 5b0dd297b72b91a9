"""The NaN guard: stops a fit at a non-finite loss and rolls the trainer back to a good state."""

from __future__ import annotations

from . import _backend as B
from .layers.base import Layer


class TrainingError(RuntimeError):
    """Training stopped because the loss (or, after an epoch's last step, a weight) became NaN
    or Inf; the trainer's net and optimizer were rolled back to the last good state first (see
    :class:`NaNGuard`)."""


class NaNGuard:
    """Stops a fit at a non-finite loss and puts back the last state known to be good.

    Every step's loss is folded into a flag on the device, read back every ``check_every``
    steps of an epoch and at its last step (a GPU is not synchronized per step).  Before an
    epoch's first step and every ``snapshot_every`` steps, the guard copies everything a step advances: the net's
    parameters and buffers, a loss's parameters, the optimizer's state, step count and learning
    rate, the Philox counter and the global step.  That copy becomes the *good* state once a
    check finds every loss since it finite; the state the fit started from is the first one.
    On a non-finite loss, or non-finite weights after an epoch's last step, the trainer is rolled
    back to the good state (at most ``snapshot_every + check_every`` steps back; with both 1,
    exactly the state before the step that produced the bad weights) and :class:`TrainingError`
    says which state it restored.  The epoch counter and history keep the completed epochs.
    """

    def __init__(self, trainer, check_every: int, snapshot_every: int):
        self.trainer, self.check_every, self.snapshot_every = trainer, check_every, snapshot_every
        self.good, self.pending, self.since, self.flag = self._snapshot(trainer.epoch, 0), None, 0, None

    def _snapshot(self, epoch, step):
        t = self.trainer
        copy = lambda arrays: {k: B.namespace(v).asarray(v, copy=True) for k, v in arrays.items()}
        loss = copy(t.loss.state_arrays()) if isinstance(t.loss, Layer) else None
        opt = {k: copy(slots) for k, slots in t.optimizer.state.items()}
        return {"where": (epoch, step), "net": copy(t.net.state_arrays()), "loss": loss, "opt": opt,
                "opt_steps": t.optimizer.steps, "lr": t.optimizer.lr, "counter": t.rng.counter,
                "global_step": t.global_step}

    def before_step(self, epoch, step):
        """Take a snapshot at an epoch's start and every ``snapshot_every`` steps (one at a time)."""
        if self.pending is None and self.since and (step == 0 or self.since >= self.snapshot_every):
            self.pending, self.since = self._snapshot(epoch, step), 0
        self.since += 1

    def after_loss(self, loss, epoch, step, last: bool):
        """Fold ``loss`` into the flag; at a check, accept the pending snapshot or roll back and raise."""
        xp = B.namespace(loss)
        ok = xp.isfinite(loss)
        self.flag = ok if self.flag is None else self.flag & ok
        if (step + 1) % self.check_every and not last:      # windows are aligned to the epoch
            return
        if bool(self.flag):
            self.flag = None
            if self.pending is not None:
                self.good, self.pending = self.pending, None
            return
        first = step - step % self.check_every
        since = f"between steps {first + 1} and {step + 1}" if step > first else f"step {step + 1}"
        self._fail(f"loss became NaN or Inf at epoch {epoch + 1}, {since}")

    def end_epoch(self, epoch):
        """After an epoch's last step: the weights must be finite too (its update is unchecked)."""
        for k, v in self.trainer.net.state_arrays().items():
            xp = B.namespace(v)
            if xp.isdtype(v.dtype, "real floating") and not bool(xp.all(xp.isfinite(v))):
                self._fail(f"{k} became NaN or Inf in the last step of epoch {epoch + 1}")

    def _fail(self, what):
        self.rollback(self.good)
        epoch, step = self.good["where"]
        raise TrainingError(
            f"{what}; training stopped and the model (weights, optimizer state, random counter) was rolled "
            f"back to its state before step {step + 1} of epoch {epoch + 1}, the last state whose loss was "
            "checked finite (try a lower learning rate)")

    def rollback(self, snap):
        t = self.trainer
        t.net.load_state_arrays(snap["net"])
        if snap["loss"] is not None:
            t.loss.load_state_arrays(snap["loss"])
        t.optimizer.state = {k: dict(slots) for k, slots in snap["opt"].items()}
        t.optimizer.steps, t.optimizer.lr = snap["opt_steps"], snap["lr"]
        t.rng.counter, t.global_step = snap["counter"], snap["global_step"]
