"""Callbacks beyond the trainer's own (:class:`~xpdnn.trainer.EarlyStopping`): checkpoints."""

from __future__ import annotations

import math
import os

from .trainer import Callback

_MODES = ("min", "max")


class ModelCheckpoint(Callback):
    """Save the trainer (net, optimizer state, RNG, epoch, history: :meth:`Trainer.save`) at the
    end of epochs.  Every write is atomic (a temporary file renamed over the target), so a crash
    never leaves a half-written checkpoint.

    ``path`` may hold ``{epoch}`` (1-based) and any logged value (``{val_loss:.4f}``) to keep one
    file per save.  ``save_best_only=True`` saves only when ``monitor`` improves on the best value
    so far by more than ``min_delta`` (``mode="min"`` for losses, ``"max"`` for accuracies; a tie
    is no improvement); otherwise it saves every ``every`` epochs.  After a fit, ``best``,
    ``best_epoch`` (0-based, None if nothing was saved as best) and ``saved`` (the paths written,
    in order) tell what happened.  The best value is kept in checkpoints, so a resumed run saves
    only what beats the run it continues.
    """

    def __init__(self, path, *, monitor: str = "val_loss", mode: str = "min", save_best_only: bool = False,
                 every: int = 1, min_delta: float = 0.0):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not float(min_delta) >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.path, self.monitor, self.mode = os.fspath(path), monitor, mode
        self.save_best_only, self.every, self.min_delta = bool(save_best_only), every, float(min_delta)
        self.best, self.best_epoch, self.saved = self._worst(), None, []

    def _worst(self):
        return math.inf if self.mode == "min" else -math.inf

    def _improves(self, value) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, trainer):
        if trainer.epoch == 0:               # a fresh run; a resumed one keeps its best value
            self.best, self.best_epoch = self._worst(), None
        self.saved = []

    def on_epoch_end(self, trainer, epoch, logs):
        if self.save_best_only:
            if self.monitor not in logs:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which is not logged "
                                 f"(logged: {sorted(logs)}); pass validation data to fit()")
            value = float(logs[self.monitor])
            if not self._improves(value):
                return
            self.best, self.best_epoch = value, epoch
        elif (epoch + 1) % self.every:
            return
        try:
            path = self.path.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint path {self.path!r} cannot be filled from epoch and the logs "
                             f"{sorted(logs)}: {exc}") from None
        trainer.save(path)
        self.saved.append(path)

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch}, {}

    def check_state(self, state, arrays, trainer):
        best, epoch = state.get("best"), state.get("best_epoch")
        if isinstance(best, bool) or not isinstance(best, (int, float)):
            raise ValueError(f"best must be a number, got {best!r}")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ValueError(f"best_epoch must be an integer >= 0 or None, got {epoch!r}")

    def load_state_dict(self, state, arrays):
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
