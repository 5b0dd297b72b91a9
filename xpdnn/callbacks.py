"""Callbacks: the hooks the trainer calls (:class:`Callback`), early stopping and checkpoints."""

from __future__ import annotations

import math
import os

from . import _backend as B


class Callback:
    """Hooks called by :class:`Trainer`; set ``trainer.stop_training = True`` to stop.

    ``on_batch_end`` runs after the optimizer step; a callback that reads ``layer.grads`` does it
    there.  A trainer whose callbacks define ``on_batch_end`` therefore keeps every gradient
    (it does not fuse the SGD update into backprop, see ``Trainer``'s ``fused_step``)."""

    def state_dict(self):
        """(JSON-able dict, {name: array}) of what this callback has learned during training, which
        a checkpoint keeps so a resumed run continues exactly; None for a stateless callback."""
        return None

    def load_state_dict(self, state: dict, arrays: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no state")

    def check_state(self, state: dict, arrays: dict, trainer) -> None:
        """Raise ValueError if a saved state cannot be this callback's in ``trainer`` (called by
        ``Trainer.restore`` before anything changes)."""

    def on_train_begin(self, trainer): ...
    def on_epoch_begin(self, trainer, epoch): ...
    def on_batch_begin(self, trainer, step): ...
    def on_batch_end(self, trainer, step, logs): ...
    def on_epoch_end(self, trainer, epoch, logs): ...
    def on_train_end(self, trainer): ...


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs
    (a tie is no improvement); with ``restore_best`` the best epoch's weights are put back at the
    end.  ``best_epoch`` and ``stopped_epoch`` (None while it has not stopped the run) are 0-based
    epoch indices; with the trainer's ``progress`` on, it prints a line when it stops and one
    naming the epoch whose weights it restored.  Its record (best value and epoch, epochs waited,
    the epoch it stopped at, best weights) is saved in a checkpoint, so a run resumed after it
    stopped stays stopped, as the uninterrupted run did."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best=True):
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, int(patience), float(min_delta), restore_best
        self.best, self.best_epoch, self.best_state, self.wait = math.inf, None, None, 0
        self.stopped_epoch = None

    def on_train_begin(self, trainer):
        if trainer.epoch == 0:       # a fresh run; a resumed or continued one keeps its record
            self.best, self.best_epoch, self.best_state, self.wait = math.inf, None, None, 0
            self.stopped_epoch = None
        elif self.wait >= self.patience:
            # the run this record comes from stopped here: a resumed (or repeated) fit trains no
            # further, as the uninterrupted run did not; pass a new EarlyStopping to train on
            trainer.stop_training = True

    def state_dict(self):
        return ({"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                 "stopped_epoch": self.stopped_epoch},
                dict(self.best_state or {}))

    def check_state(self, state, arrays, trainer):
        best = state.get("best")
        if isinstance(best, bool) or not isinstance(best, (int, float)):
            raise ValueError(f"best must be a number, got {best!r}")
        for name, v in (("best_epoch", state.get("best_epoch")), ("wait", state.get("wait")),
                        ("stopped_epoch", state.get("stopped_epoch"))):
            if (v is not None or name == "wait") and not _is_count(v):
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        net = trainer.net.state_arrays()
        if arrays and (set(arrays) != set(net) or any(tuple(a.shape) != tuple(net[k].shape) for k, a in arrays.items())):
            raise ValueError("its best weights do not match this trainer's network")

    def load_state_dict(self, state, arrays):
        self.best, self.best_epoch, self.wait = float(state["best"]), state["best_epoch"], int(state["wait"])
        self.stopped_epoch = state.get("stopped_epoch")
        self.best_state = {k: B.to_numpy(v).copy() for k, v in arrays.items()} or None

    def on_epoch_end(self, trainer, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which is not logged "
                             f"(logged: {sorted(logs)}); pass validation data to fit()")
        value = logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = {k: B.to_numpy(v).copy() for k, v in trainer.net.state_arrays().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop_training = True
                self.stopped_epoch = epoch
                if getattr(trainer, "progress", False):
                    print(f"early stopping: {self.monitor} did not improve for {self.wait} epochs; stopped "
                          f"after epoch {epoch + 1}", flush=True)

    def on_train_end(self, trainer):
        if self.restore_best and self.best_state is not None:
            trainer.net.load_state_arrays(self.best_state)
            if getattr(trainer, "progress", False) and self.stopped_epoch is not None:
                print(f"early stopping: restored the weights of epoch {self.best_epoch + 1} "
                      f"({self.monitor} {self.best:.4f})", flush=True)

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
