"""Learning-rate schedules, as trainer callbacks that set ``trainer.optimizer.lr``.

Each schedule has a pure form, ``lr_at(t)``: the learning rate for epoch ``t`` (``per="epoch"``,
set at the start of the epoch) or for optimizer step ``t`` (``per="step"``, set before the step;
``t`` is ``trainer.global_step``, counted from 0 across epochs).  ``lr0`` is the starting rate;
left ``None`` it is read from the optimizer when training begins (pass it explicitly when resuming
a checkpoint, whose optimizer holds an already decayed rate).

================================  ==============================================  ===========================
schedule                          ``lr_at(t)``                                    PyTorch
================================  ==============================================  ===========================
``StepDecay(step_size, gamma)``   ``lr0 * gamma ** (t // step_size)``             ``StepLR``
``ExponentialDecay(gamma)``       ``lr0 * gamma ** t``                            ``ExponentialLR``
``InverseTimeDecay(k)``           ``lr0 / (1 + k * t)``                           ``LambdaLR``
``CosineWarmup(total, warmup)``   linear warmup, then half a cosine to min_lr     ``LinearLR`` + ``CosineAnnealingLR``
``ReduceLROnPlateau(...)``        ``lr * factor`` after ``patience`` bad epochs    ``ReduceLROnPlateau``
================================  ==============================================  ===========================
"""

from __future__ import annotations

import math

from ..trainer import Callback
from .base import integer, nonnegative, positive, real

PERIODS = ("epoch", "step")


def _positive(name, v, integer_=False):
    return integer(name, v, low=1) if integer_ else positive(name, v)


class Schedule(Callback):
    """Base class: subclasses implement ``lr_at(t)`` from ``self.lr0``."""

    reads_gradients = False

    def __init__(self, lr0: float | None = None, per: str = "epoch"):
        if not isinstance(per, str) or per not in PERIODS:
            raise ValueError(f"per must be one of {PERIODS}, got {per!r}")
        self.lr0 = None if lr0 is None else _positive("lr0", lr0)
        self.per = per

    def lr_at(self, t: int) -> float:
        raise NotImplementedError

    def _base(self):
        if self.lr0 is None:
            raise ValueError(f"{type(self).__name__} has no lr0 yet: pass lr0= or start training first")
        return self.lr0

    def on_train_begin(self, trainer):
        if self.lr0 is None:
            self.lr0 = float(trainer.optimizer.lr)

    def state_dict(self):
        # the base rate, taken from the optimizer when training began: a resumed run must not
        # take the already-decayed rate in the checkpoint as its new base
        return {"lr0": self.lr0}, {}

    def load_state_dict(self, state, arrays):
        """Checks everything before it changes anything (ValueError naming the problem)."""
        self.lr0 = self._check_saved(state, arrays)["lr0"]

    def _check_saved(self, state, arrays) -> dict:
        if not isinstance(state, dict):
            raise ValueError(f"{type(self).__name__} state must be a JSON object, got {type(state).__name__}")
        if arrays:
            raise ValueError(f"{type(self).__name__} keeps no arrays, the state has {sorted(arrays)[:3]}")
        lr0 = state.get("lr0")
        return {"lr0": None if lr0 is None else nonnegative("lr0", lr0)}

    def on_epoch_begin(self, trainer, epoch):
        if self.per == "epoch":
            trainer.optimizer.lr = self.lr_at(epoch)

    def on_batch_begin(self, trainer, step):
        if self.per == "step":
            trainer.optimizer.lr = self.lr_at(trainer.global_step)


class StepDecay(Schedule):
    """``lr0 * gamma ** (t // step_size)``: multiply by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int, gamma: float = 0.1, lr0: float | None = None, per: str = "epoch"):
        super().__init__(lr0, per)
        self.step_size = _positive("step_size", step_size, integer_=True)
        self.gamma = _positive("gamma", gamma)

    def lr_at(self, t):
        return self._base() * self.gamma ** (int(t) // self.step_size)


class ExponentialDecay(Schedule):
    """``lr0 * gamma ** t``."""

    def __init__(self, gamma: float, lr0: float | None = None, per: str = "epoch"):
        super().__init__(lr0, per)
        self.gamma = _positive("gamma", gamma)

    def lr_at(self, t):
        return self._base() * self.gamma ** int(t)


class InverseTimeDecay(Schedule):
    """1/t decay: ``lr0 / (1 + k * t)``."""

    def __init__(self, k: float, lr0: float | None = None, per: str = "epoch"):
        super().__init__(lr0, per)
        self.k = nonnegative("k", k)

    def lr_at(self, t):
        return self._base() / (1.0 + self.k * int(t))


class CosineWarmup(Schedule):
    """Per step by default.  Warmup: ``lr0 * (t + 1) / (warmup + 1)`` for ``t < warmup`` (rising
    linearly, never 0); then ``min_lr + (lr0 - min_lr) * (1 + cos(pi * p)) / 2`` with
    ``p = (t - warmup) / (total - warmup)``, reaching ``min_lr`` at ``t = total`` and staying there."""

    def __init__(self, total: int, warmup: int = 0, lr0: float | None = None, min_lr: float = 0.0,
                 per: str = "step"):
        super().__init__(lr0, per)
        self.total = _positive("total", total, integer_=True)
        self.warmup = integer("warmup", warmup)
        if not 0 <= self.warmup < self.total:
            raise ValueError(f"warmup must be in [0, total={self.total}), got {warmup}")
        self.min_lr = nonnegative("min_lr", min_lr)

    def lr_at(self, t):
        lr0, t = self._base(), int(t)
        if t < self.warmup:
            return lr0 * (t + 1) / (self.warmup + 1)
        p = min(t - self.warmup, self.total - self.warmup) / (self.total - self.warmup)
        return self.min_lr + (lr0 - self.min_lr) * (1.0 + math.cos(math.pi * p)) / 2.0


class ReduceLROnPlateau(Schedule):
    """Multiply the rate by ``factor`` (not below ``min_lr``) once ``monitor`` (a logged value such
    as ``"val_loss"``) has not improved for more than ``patience`` epochs, then wait ``cooldown``
    epochs; PyTorch's rule.  Improvement (``mode="min"``): ``value < best * (1 - threshold)``
    (``threshold_mode="rel"``) or ``value < best - threshold`` (``"abs"``); ``"max"`` mirrors it.

    Pure form: ``lr_at(t, values)`` is the rate for epoch ``t`` given the monitored ``values`` of
    epochs ``0 .. t-1`` (by default the values this callback has seen)."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, min_lr: float = 0.0,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, mode: str = "min",
                 lr0: float | None = None):
        super().__init__(lr0, "epoch")
        if not isinstance(monitor, str):
            raise ValueError(f"monitor must be the name of a logged value, got {monitor!r}")
        if not 0.0 < real("factor", factor) < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        patience, cooldown = integer("patience", patience, low=0), integer("cooldown", cooldown, low=0)
        if not isinstance(mode, str) or mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not isinstance(threshold_mode, str) or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), patience
        self.min_lr, self.threshold = nonnegative("min_lr", min_lr), nonnegative("threshold", threshold)
        self.threshold_mode, self.cooldown, self.mode = threshold_mode, cooldown, mode
        self.values: list[float] = []

    def _better(self, value, best):
        if self.mode == "min":
            return value < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return value > (best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    def lr_at(self, t, values=None):
        values = self.values if values is None else list(values)
        t = int(t)
        if not 0 <= t <= len(values):
            raise ValueError(f"lr_at({t}) needs the monitored values of epochs 0..{t - 1}, got {len(values)}")
        lr = self._base()
        best = math.inf if self.mode == "min" else -math.inf
        bad = cooling = 0
        for value in values[:t]:
            if self._better(float(value), best):
                best, bad = float(value), 0
            else:
                bad += 1
            if cooling > 0:
                cooling -= 1
                bad = 0
            if bad > self.patience:
                new = max(lr * self.factor, self.min_lr)
                if lr - new > 1e-8:
                    lr = new
                cooling, bad = self.cooldown, 0
        return lr

    def on_train_begin(self, trainer):
        super().on_train_begin(trainer)
        if trainer.epoch == 0:       # a fresh run; a resumed or continued one keeps its values
            self.values = []

    def state_dict(self):
        return {"lr0": self.lr0, "values": list(self.values)}, {}

    def load_state_dict(self, state, arrays):
        """Checks everything before it changes anything (ValueError naming the problem)."""
        saved = self._check_saved(state, arrays)
        values = state.get("values", [])
        if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"ReduceLROnPlateau state: values must be a list of numbers, got {values!r}"[:300])
        try:
            values = [float(v) for v in values]
        except OverflowError:
            raise ValueError("ReduceLROnPlateau state: a value does not fit a float") from None
        self.lr0, self.values = saved["lr0"], values

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(f"ReduceLROnPlateau monitors {self.monitor!r}, which is not logged "
                             f"(logged: {sorted(logs)}); pass validation data to fit()")
        self.values.append(float(logs[self.monitor]))
        trainer.optimizer.lr = self.lr_at(len(self.values))
