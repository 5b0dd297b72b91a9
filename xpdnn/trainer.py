"""Mini-batch training loop: data checks and placement, epochs and batches, callbacks,
checkpoints.  The step itself is :mod:`xpdnn.step`, the NaN guard :mod:`xpdnn.nan_guard`, the
callbacks :mod:`xpdnn.callbacks`."""

from __future__ import annotations

import functools
import math
import sys
import threading
import time

import numpy as np

from . import _backend as B
from . import heads
from .layers.base import Layer
from .layers.sequential import Sequential
from .losses.base import Loss
from .random import Stream
from .callbacks import Callback, EarlyStopping
from .nan_guard import NaNGuard, TrainingError
from .step import AllReduceGrads, FusedSGD, Step, StepGrads, can_fuse

# the callbacks and the guard live in their own modules; importing them from here still works
__all__ = ["Trainer", "Callback", "EarlyStopping", "NaNGuard", "TrainingError"]


class Trainer:
    """Trains ``net`` with ``loss`` and ``optimizer`` on mini-batches.

    ``fit(X, y, validation=(X_val, y_val))`` runs ``epochs`` epochs of ``ceil(N / batch_size)``
    steps each (``batch_size=N`` is batch gradient descent, ``1`` is stochastic), reshuffling
    every epoch, and returns the history: per-epoch ``loss``, ``accuracy`` (classification
    losses), ``val_loss``, ``val_accuracy``, ``time`` and ``lr``.

    One ``seed`` drives everything: the initial weights (a fresh network is initialized from
    it), the shuffling (epoch ``e`` uses the permutation of NumPy's generator seeded with
    ``[seed, e]``) and the dropout masks (a Philox :class:`~xpdnn.random.Stream`).

    Options: ``device`` ("cuda", "torch", ...) moves the data there first; ``regularizers``
    (``r(net) -> penalty``, adding its gradient before the step), ``clip`` (``clip(net)``
    rescales the gradients before the step) and ``constraints`` (``c(net)`` projects the
    parameters after the step, e.g. max-norm); ``nan_check_every`` is how often the loss is read
    back to check for NaN/Inf (default: every step on the CPU, every 32 steps on a GPU, with a
    rollback snapshot); ``drop_last`` skips the last, shorter batch (BatchNorm needs >= 2 rows).

    With ``device`` set, host data goes to the device whole when it fits (less than half the
    device's free memory), else batch by batch as it is needed; ``stream_to_device`` (True /
    False) overrides that choice.  Either way the batches and the result are the same.

    ``snapshot_every`` (default 32, or ``nan_check_every`` when that is larger) is how often the
    :class:`NaNGuard` copies the state it rolls back to.

    ``progress`` is Keras's ``verbose``: 0 (False) silent; 1 (True) a progress bar per epoch when
    stderr is a terminal and, either way, one line per epoch on stdout; 2 only the epoch lines.
    Written to a log, a pipe or a notebook's captured output, there are no carriage returns.

    A net's output head (how ``predict`` reads its outputs, see :mod:`xpdnn.heads`) is set from
    ``loss.head`` on the first fit; the history's ``accuracy`` follows it.

    A trainer is not thread-safe: a second ``fit`` of the same trainer, or of another trainer on
    the same net, while one runs in another thread raises RuntimeError instead of interleaving.

    ``fused_step`` (default None: automatic) lets the optimizer update a Linear layer's weights
    inside backprop on NumPy, where SGD folds momentum into the weight-gradient GEMM
    (``v = momentum * v + dY.T @ X`` in one BLAS call) and never stores that gradient.  The
    result is the same update up to rounding; it is used only when no regularizer, clipping or
    gradient-reading callback is present, and those weights' ``layer.grads`` are then left
    stale.  ``False`` turns it off.

    ``comm`` (default: the communicator of :func:`xpdnn.distributed.init`, if it was called)
    trains data-parallel over its ranks: every rank holds the same data and settings, trains
    on its contiguous slice of each global batch of ``batch_size`` rows, and the gradients are
    summed over the ranks each step, so the run follows the one-process run with the same seed
    (the same dropout masks, the same updates to float rounding).  Metrics are all-reduced;
    only rank 0 prints and writes checkpoints.  See :mod:`xpdnn.distributed`.
    """

    def __init__(self, net: Sequential, *, loss: Loss, optimizer, batch_size: int = 64, epochs: int = 10,
                 seed: int = 0, callbacks=(), progress: bool | int = True, device=None,
                 regularizers=(), clip=None, constraints=(), nan_check_every: int | None = None,
                 drop_last: bool = False, fused_step: bool | None = None,
                 stream_to_device: bool | None = None, snapshot_every: int | None = None, comm=None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        self.net, self.loss, self.optimizer = net, loss, optimizer
        self.batch_size, self.epochs, self.seed = int(batch_size), int(epochs), int(seed)
        self.callbacks = list(callbacks)
        self.regularizers, self.clip, self.constraints = list(regularizers), clip, list(constraints)
        if isinstance(progress, bool) or progress in (0, 1, 2):
            self.progress = int(progress)
        else:
            raise ValueError(f"progress must be True/False or a Keras verbosity 0, 1 or 2, got {progress!r}")
        self.device = device
        self.rng = Stream(self.seed)
        for name, every in (("nan_check_every", nan_check_every), ("snapshot_every", snapshot_every)):
            if every is not None and int(every) < 1:
                raise ValueError(f"{name} must be >= 1, got {every}")
        self.nan_check_every = nan_check_every
        self.snapshot_every = snapshot_every
        self.drop_last = bool(drop_last)
        self.fused_step = fused_step
        self.stream_to_device = stream_to_device
        self.comm = comm
        self._dp = None              # this fit's communicator when it has more than one rank
        self._streaming = False
        self.epoch = 0               # epochs completed so far (a resumed run starts here)
        self.global_step = 0         # optimizer steps taken so far
        self.history: dict[str, list] = {}
        self.stop_training = False
        self.guard: NaNGuard | None = None

    # -- validation of inputs -------------------------------------------------------
    def _check_data(self, X, y, what="", pre=None):
        X = B.as_array(X, f"X{what}")
        y = B.as_array(y, f"y{what}")
        B.namespace(X, y)      # raises on mixed libraries
        B.same_device(X, y)
        B.check_floating(X, f"X{what}")
        if X.ndim != 2:
            raise ValueError(f"X{what} must be 2-D (samples, features), got shape {tuple(X.shape)}")
        if X.shape[0] == 0:
            raise ValueError(f"X{what} is empty: no samples to train on")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X{what} has {X.shape[0]} samples but y{what} has {y.shape[0]}")
        n_in = getattr(self.net, "n_features", self.net.n_in)
        if n_in is not None and X.shape[1] != n_in:
            raise ValueError(f"X{what} has {X.shape[1]} features but the model expects {n_in}")
        B.check_finite(X, f"X{what}")
        y = self.loss.check_targets(y, self.net.output_size(self.net.n_in))
        xp = B.namespace(X)
        X = xp.astype(X, B.resolve_dtype(xp, self.net.dtype), copy=False)
        pre = pre or getattr(self.net, "preprocessing", None)
        if pre is not None:
            X = xp.astype(pre.transform(X), B.resolve_dtype(xp, self.net.dtype), copy=False)
        return X, y

    def _place(self, X, y):
        """Honour ``device=`` by moving the data there (e.g. ``"cuda"`` for CuPy)."""
        if self.device is None:
            return X, y
        from .devices import put
        return put(X, self.device), put(y, self.device)

    def _streams(self, *arrays) -> bool:
        """Whether host data stays on the host and goes to ``device`` one batch at a time:
        ``stream_to_device=True``, or (``None``) when the device's free memory is less than twice
        the data.  Batches and their order are the same either way."""
        if self.device is None or not arrays or not all(B.is_numpy(a) for a in arrays):
            return False
        if self.stream_to_device is not None:
            return bool(self.stream_to_device)
        from .devices import free_bytes
        free = free_bytes(self.device)
        return free is not None and 2 * sum(int(a.nbytes) for a in arrays) > free

    # -- training -------------------------------------------------------------------
    def fit(self, X, y=None, validation=None, validation_split=None):
        """Train on arrays ``X`` (N, n_in) and ``y``, or on a :class:`~xpdnn.datasets.BatchStream`
        passed as ``X`` (batches streamed from host or memory-mapped arrays, each validated as
        it arrives; its own batch size, shuffling and seed apply).

        ``validation_split`` (a fraction in (0, 1)) holds out the last ``N - int(N * (1 -
        fraction))`` rows of X and y, taken before any shuffling (as Keras does), as the
        validation data; it cannot be combined with ``validation`` or a stream."""
        if validation_split is not None:
            X, y, validation = _split_validation(X, y, validation, validation_split)
        with _exclusive(self, self.net):
            return self._fit(X, y, validation)

    def _fit(self, X, y, validation):
        self._dp = self._communicator()
        stream, X, y, val = self._prepare_data(X, y, validation)
        if self._dp is not None:
            N = stream.X.shape[0] if stream is not None else X.shape[0]
            self._dp.check_same("the training run", samples=N, batch_size=self.batch_size, seed=self.seed,
                                epochs=self.epochs, epoch=self.epoch, counter=self.rng.counter)
        if hasattr(self.net, "set_head"):
            self.net.set_head(heads.head_of(self.loss))     # refuses a conflicting head before any change
        if getattr(self.net, "fresh", False):
            self.net.initialize(self.seed)
        if self._dp is not None:
            self._dp.broadcast_params(self.net)             # every rank starts from rank 0's weights
        self.stop_training, self.guard, self._step = False, None, self._make_step()
        return self._fit_epochs(stream, X, y, val)

    def _prepare_data(self, X, y, validation):
        """Validate the data (a stream: per batch, later), choose whole or batch-wise placement
        on ``device`` and place it; returns (stream or None, X, y, validation pair or None)."""
        from .datasets.streaming import BatchStream

        stream = X if isinstance(X, BatchStream) else None
        pre = self._training_preprocessing(stream, X)
        if stream is None:
            X, y = self._check_data(X, y, pre=pre)
        val = None if validation is None else self._check_data(*validation, what="_val", pre=pre)
        self._streaming = stream is None and self._streams(X, y, *(val or ()))
        if stream is None and not self._streaming:
            X, y = self._place(X, y)
        if val is not None:
            val = val if self._streaming else self._place(*val)
            if stream is None:
                B.namespace(X, val[0])
                B.same_device(X, val[0])
        if pre is not None:
            self.net.preprocessing = pre          # fitted on the training rows only, now kept
        return stream, X, y, val

    def _training_preprocessing(self, stream, X):
        """The net's preprocessing, fitted on the training data X alone if it is not fitted yet
        (a copy: the net gets it only once every check has passed); None if it has none."""
        import copy

        pre = getattr(self.net, "preprocessing", None)
        if pre is None or pre.fitted:
            return pre
        if stream is not None:
            raise ValueError(f"the network's {type(pre).__name__} is not fitted; fit it on the training data "
                             "before training on a BatchStream")
        return copy.deepcopy(pre).fit(B.as_array(X, "X"))

    def _communicator(self):
        """This fit's communicator if it has more than one rank (``comm``, else the one of
        :func:`xpdnn.distributed.init`), after refusing what data-parallel training cannot do."""
        from . import distributed

        comm = self.comm if self.comm is not None else distributed.current()
        if comm is None or comm.size == 1:
            return None
        if isinstance(self.loss, Layer):
            raise ValueError(f"data-parallel training does not support a loss with parameters "
                             f"({type(self.loss).__name__}) yet")
        if self.fused_step:
            raise ValueError("fused_step=True cannot be honoured in data-parallel training: the gradients must be "
                             "summed over the ranks before the update; leave it None")
        distributed._adopt(comm)
        return comm

    def _rank0(self) -> bool:
        return self._dp is None or self._dp.rank == 0

    def _shard(self, rows: int) -> tuple[int, int]:
        """This rank's contiguous rows ``[lo, hi)`` of a global batch of ``rows`` rows."""
        if self._dp is None:
            return 0, rows
        r, n = self._dp.rank, self._dp.size
        return r * rows // n, (r + 1) * rows // n

    def _make_step(self) -> Step:
        """This fit's step: its gradient sink is :class:`~xpdnn.step.FusedSGD` when the update
        may run inside backprop (``fused_step``), else :class:`~xpdnn.step.StepGrads`."""
        modules = (self.net, self.loss) if isinstance(self.loss, Layer) else (self.net,)
        if self._dp is not None:
            sink = AllReduceGrads(modules, self._dp)
        else:
            sink = FusedSGD(modules, self.optimizer) if self._fuses(modules) else StepGrads(modules)
        return Step(self.net, self.loss, self.optimizer, sink=sink, regularizers=self.regularizers,
                    clip=self.clip, constraints=self.constraints)

    def _fuses(self, modules) -> bool:
        """Whether this fit may run the optimizer inside backprop (``fused_step``): asked for or
        left automatic, and nothing between backprop and the step reads or changes gradients
        (no regularizers, no clipping, no callback with an ``on_batch_end``)."""
        if self.fused_step is False:
            return False
        reads = [type(cb).__name__ for cb in self.callbacks if type(cb).on_batch_end is not Callback.on_batch_end]
        quiet = not self.regularizers and self.clip is None and not reads
        if self.fused_step and not quiet:
            raise ValueError("fused_step=True cannot be honoured with regularizers, clip or callbacks that may read "
                             f"gradients in on_batch_end ({', '.join(reads) or 'none'}); they need the gradient "
                             "stored before the step; leave it None")
        return quiet and can_fuse(modules, self.optimizer)

    def _fit_epochs(self, stream, X, y, val):
        for cb in self.callbacks:
            cb.on_train_begin(self)
        for epoch in range(self.epoch, self.epochs):
            if self.stop_training:       # a callback ended the run already (a resumed early stop)
                break
            for cb in self.callbacks:
                cb.on_epoch_begin(self, epoch)
            logs = self._train_epoch(stream, X, y, epoch)
            if val is not None:
                logs.update({f"val_{k}": v for k, v in self._evaluate(*val).items()})
            self.epoch = epoch + 1
            self._end_epoch(epoch, logs)
            if self.stop_training:
                break
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _train_epoch(self, stream, X, y, epoch) -> dict:
        """One pass over the arrays (or the stream); the weights are checked finite after it."""
        if stream is None:
            logs = self._run_epoch(self._array_batches(X, y, epoch), epoch, *self._epoch_size(X.shape[0]))
        else:
            stream.set_epoch(epoch)
            N, bs = stream.X.shape[0], stream.batch_size
            logs = self._run_epoch(self._checked(stream), epoch, len(stream), min(N, len(stream) * bs))
        if self.guard is not None:
            self.guard.end_epoch(epoch)
        return logs

    def _end_epoch(self, epoch, logs) -> None:
        """Record the epoch in the history before the callbacks run (a checkpoint saved by one
        holds it), run them, record keys they added to ``logs``, print the epoch's line."""
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)
        logged = set(logs)
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, logs)
        n = len(self.history["loss"])
        for k in sorted(logs.keys() - logged):
            values = self.history.setdefault(k, [])
            if len(values) < n:            # not recorded by the callback itself
                values.extend([None] * (n - 1 - len(values)) + [logs[k]])
        if self.progress and self._rank0():
            print(self._format_logs(epoch, logs), flush=True)

    def _epoch_size(self, N):
        """(steps, samples used) of an epoch over N samples."""
        steps = N // self.batch_size if self.drop_last else -(-N // self.batch_size)
        if steps == 0:
            raise ValueError(f"drop_last with batch_size {self.batch_size} > {N} samples leaves no batch")
        return steps, min(N, steps * self.batch_size)

    def _array_batches(self, X, y, epoch):
        """The mini-batches of one epoch: NumPy's ``default_rng([seed, epoch])`` permutation."""
        xp = B.namespace(X)
        N = X.shape[0]
        order = np.random.default_rng([self.seed, epoch]).permutation(N)
        order = B.from_numpy(order.astype(np.int64), like=y)
        for step in range(self._epoch_size(N)[0]):
            start = step * self.batch_size
            rows = min(start + self.batch_size, N) - start
            lo, hi = self._shard(rows)              # data-parallel: this rank's slice of the batch
            idx = order[start + lo:start + hi]
            batch = xp.take(X, idx, axis=0), xp.take(y, idx, axis=0)
            yield (self._place(*batch) if self._streaming else batch), rows, lo

    def _checked(self, stream):
        for Xb, yb in stream:
            if yb is None:
                raise ValueError("the BatchStream has no labels (y=None); training needs them")
            rows = Xb.shape[0]
            lo, hi = self._shard(rows)
            Xb, yb = self._check_data(Xb, yb, what=" (streamed batch)")
            yield self._place(Xb[lo:hi, ...], yb[lo:hi, ...]), rows, lo

    def _run_epoch(self, batches, epoch, steps, N_used):
        meter = _EpochMeter(self, epoch, N_used, steps)
        for step, ((Xb, yb), rows, first_row) in enumerate(batches):
            if step == 0:
                self.net.ensure_like(Xb)
                if isinstance(self.loss, Layer):     # a loss with parameters (hierarchical softmax)
                    self.loss.ensure_like(Xb)
                self.guard = self.guard or self._make_guard(Xb)
            self.guard.before_step(epoch, step)
            for cb in self.callbacks:
                cb.on_batch_begin(self, step)
            check = functools.partial(self.guard.after_loss, epoch=epoch, step=step, last=step == steps - 1)
            self.rng.first_row = first_row          # random layers draw the global batch's numbers
            loss, Z = self._step(Xb, yb, self.rng, check, global_rows=rows)
            self.global_step += 1
            meter.update(step, loss, Z, yb, rows)
            for cb in self.callbacks:
                cb.on_batch_end(self, step, {"loss": loss, "size": rows})
        self.rng.first_row = 0
        return meter.logs(self.optimizer.lr, self._dp)

    def _make_guard(self, X) -> NaNGuard:
        """The NaN guard of this fit: the loss is read back every step on the CPU, every 32 steps
        on a GPU (``nan_check_every`` overrides)."""
        check_every = self.nan_check_every or (32 if B.on_accelerator(X) else 1)
        return NaNGuard(self, check_every, self.snapshot_every or max(32, check_every))

    def _bar(self, epoch, N):
        """A progress bar for ``progress=1`` (True) when stderr is a terminal; in a log, a pipe or a
        notebook's captured output only the epoch lines are written (no carriage returns)."""
        if self.progress != 1 or not _isatty(sys.stderr) or not self._rank0():
            return None
        from tqdm.auto import tqdm
        return tqdm(total=N, desc=f"epoch {epoch + 1}/{self.epochs}", unit="sample", leave=False,
                    dynamic_ncols=True)

    @staticmethod
    def _format_logs(epoch, logs):
        keys = ["loss", "accuracy", "val_loss", "val_accuracy"]
        parts = [f"{k} {logs[k]:.4f}" for k in keys if k in logs]
        return f"epoch {epoch + 1}: " + "  ".join(parts) + f"  ({logs['samples_per_s']:,.0f} samples/s)"

    def evaluate(self, X, y, batch_size: int = 4096) -> dict:
        """Mean loss (and ``accuracy`` where the loss's output head has one, see
        :mod:`xpdnn.heads`) of the net on (X, y): raw data, checked as ``fit`` checks it and
        passed through the network's fitted preprocessing (as ``fit`` does with ``validation``
        and ``predict`` with its input), like Keras's ``Model.evaluate``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        pre = getattr(self.net, "preprocessing", None)
        if pre is not None and not pre.fitted:
            raise ValueError(f"the network's {type(pre).__name__} is not fitted: train the network (fit) "
                             "before evaluating it")
        X, y = self._check_data(X, y)
        return self._evaluate(X, y, batch_size)

    def _evaluate(self, X, y, batch_size: int = 4096) -> dict:
        """:meth:`evaluate` on data already checked and preprocessed (``fit``'s validation pair)."""
        place = self.device is not None and B.is_numpy(X)     # host data for a net on ``device``
        head = heads.head_of(self.loss)
        N = X.shape[0]
        lo, hi = self._shard(N)                  # data-parallel: each rank scores its slice
        total, correct, scored = 0.0, 0, 0
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            Xb, yb = X[start:stop, ...], y[start:stop, ...]
            if place:
                Xb, yb = self._place(Xb, yb)
            Z = self.net.forward(Xb, train=False)[0]
            loss = self.loss(Z, yb)[0]
            total += float(loss) * Xb.shape[0]
            if heads.has_accuracy(head):
                hits, k = heads.correct(head, Z, yb)
                correct, scored = correct + int(hits), scored + k
        if self._dp is not None:
            total, correct, scored = (float(v) for v in self._dp.allreduce_values([total, correct, scored]))
        out = {"loss": total / N}
        if heads.has_accuracy(head):
            out["accuracy"] = correct / scored
        return out

    # -- checkpoints ------------------------------------------------------------------
    def save(self, path) -> None:
        """Checkpoint the net, optimizer state, Philox counter and epoch (see :func:`xpdnn.save`)."""
        from .io import save
        if self._rank0():
            save(self.net, path, trainer=self)
        if self._dp is not None:                 # the file is complete before any rank reads it
            self._dp.barrier()

    def restore(self, path) -> None:
        """Load a checkpoint written by :meth:`save` into this trainer (net, optimizer, a loss's
        parameters, RNG, epoch and the state of its callbacks); ``fit`` then continues from the
        saved epoch up to ``epochs``.

        All or nothing: the whole file is checked first (as :func:`xpdnn.load` checks it), then
        against this trainer (the network's and a loss's parameter names and shapes, the
        optimizer's type and state, the callbacks), and only then is anything changed; any
        problem raises :class:`xpdnn.io.ModelFileError` and leaves the trainer as it was."""
        from .io import read_checkpoint

        ck = read_checkpoint(path)
        ck.build_net()                                 # a file load would refuse is refused here too
        ck.match("this trainer's network", self.net.state_arrays(), ck.weights)
        self._check_loss_state(ck)
        shapes = self._check_optimizer_state(ck)
        saved = ck.trainer
        commit_callbacks = self._restore_callbacks(path, saved.get("callbacks", []), ck.callbacks) if saved else None
        # everything checked: apply
        like = next(iter(self.net.state_arrays().values()), None)
        self.net.load_state_arrays(ck.weights)
        self.net.fresh = False
        if ck.loss:
            self.loss.load_state_arrays({k: B.from_numpy(v, like=like) if like is not None else v
                                         for k, v in ck.loss.items()})
        if ck.optimizer is not None:
            self.optimizer.load_state_dict(*ck.optimizer, like=like, shapes=shapes)
        if saved is not None:
            self.rng.load_state_dict(saved["rng"])
            self.epoch, self.seed = saved["epoch"], saved["seed"]
            self.global_step = saved.get("global_step", 0)
            self.history = {k: list(v) for k, v in saved.get("history", {}).items()}
            commit_callbacks()

    def _check_loss_state(self, ck) -> None:
        """A loss with parameters needs them in the checkpoint, matching; any other loss none."""
        name = type(self.loss).__name__
        if isinstance(self.loss, Layer) and self.loss.params:
            if not ck.loss:
                raise ck.error(f"the checkpoint has no parameters for the loss {name}, which has some")
            ck.match(f"this trainer's loss {name}", self.loss.state_arrays(), ck.loss)
        elif ck.loss:
            raise ck.error(f"the checkpoint holds loss parameters ({sorted(ck.loss)[:3]}...) but this "
                           f"trainer's loss {name} has none")

    def _check_optimizer_state(self, ck) -> dict:
        """The checkpoint's optimizer must be this trainer's type with a state that fits its
        parameters; returns those parameters' shapes by optimizer key."""
        from .optim.base import parameter_keys

        modules = (self.net, self.loss) if isinstance(self.loss, Layer) and self.loss.params else (self.net,)
        shapes = {key: tuple(layer.params[name].shape) for key, layer, name in parameter_keys(modules)}
        if ck.optimizer is None:
            return shapes
        opt_meta, opt_arrays = ck.optimizer
        mine = type(self.optimizer).__name__
        if opt_meta.get("type") != mine:
            raise ck.error(f"the checkpoint's optimizer is a {opt_meta.get('type')}, this trainer's is a "
                           f"{mine}; resume with the same optimizer")
        try:
            self.optimizer.check_state(opt_meta, opt_arrays, shapes)
        except ValueError as exc:
            raise ck.error(f"the optimizer state does not fit this trainer's {mine} "
                           f"{self.optimizer.get_config()}: {exc}") from None
        return shapes

    def _restore_callbacks(self, path, saved, arrays):
        """Check each saved callback state against this trainer's callback at the same index by
        loading it into a copy of that callback; returns a function that installs the copies'
        state (nothing changes before it is called).  Raises :class:`xpdnn.io.ModelFileError`."""
        import copy
        from .io import ModelFileError

        staged = []
        for i, entry in enumerate(saved):
            if entry.get("state") is None:
                continue
            mine = self.callbacks[i] if i < len(self.callbacks) else None
            if mine is None or type(mine).__name__ != entry["type"]:
                raise ModelFileError(
                    f"{path}: callback {i} in the checkpoint is a {entry['type']} with saved state, but this "
                    f"trainer's callback {i} is {type(mine).__name__ if mine is not None else 'missing'}; "
                    "pass the same callbacks, in the same order, to resume")
            state, got = entry["state"], arrays.get(i, {})
            try:
                new = copy.copy(mine)
                new.check_state(state, got, self)
                new.load_state_dict(state, got)
            except Exception as exc:
                raise ModelFileError(f"{path}: the state of callback {i} ({entry['type']}) is invalid: "
                                     f"{type(exc).__name__}: {exc}") from None
            staged.append((mine, new))

        def commit():
            for mine, new in staged:
                mine.__dict__.update(new.__dict__)
        return commit


def _split_validation(X, y, validation, fraction):
    """(X_train, y_train, (X_val, y_val)): the last ``fraction`` of the rows held out."""
    if validation is not None:
        raise ValueError("pass either validation=(X_val, y_val) or validation_split, not both")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"validation_split must be a fraction in (0, 1), got {fraction!r}")
    from .datasets.streaming import BatchStream

    if isinstance(X, BatchStream) or y is None:
        raise ValueError("validation_split needs arrays X and y (not a stream); pass validation=... instead")
    X, y = B.as_array(X, "X"), B.as_array(y, "y")
    N = X.shape[0]
    if y.shape[0] != N:
        raise ValueError(f"X has {N} samples but y has {y.shape[0]}")
    split = int(N * (1.0 - fraction))
    if not 0 < split < N:
        raise ValueError(f"validation_split={fraction} of {N} samples leaves no training or no validation sample")
    return X[:split, ...], y[:split, ...], (X[split:, ...], y[split:, ...])


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _EpochMeter:
    """An epoch's running loss and accuracy (0-d arrays on the device, read back only for the
    progress bar every 10 steps and at the end) and its progress bar."""

    def __init__(self, trainer, epoch, N_used, steps):
        self.head = heads.head_of(trainer.loss)
        self.scored_acc = heads.has_accuracy(self.head)
        self.bar, self.steps = trainer._bar(epoch, N_used), steps
        self.total = self.correct = None
        self.seen = self.scored = 0
        self.t0 = time.perf_counter()

    def update(self, step, loss, Z, y, rows):
        n = rows                                 # the global batch (its loss is the global one)
        self.seen += n
        self.total = loss * n if self.total is None else self.total + loss * n
        if self.scored_acc:
            hits, k = heads.correct(self.head, Z, y)
            self.correct = hits if self.correct is None else self.correct + hits
            self.scored += k
        if self.bar is not None:
            self.bar.update(n)
            if step % 10 == 9 or step == self.steps - 1:
                post = {"loss": f"{float(self.total) / self.seen:.4f}"}
                if self.scored_acc:
                    post["acc"] = f"{int(self.correct) / self.scored:.3f}"
                self.bar.set_postfix(post, refresh=False)

    def logs(self, lr, comm=None) -> dict:
        if comm is not None and self.scored_acc:   # each rank scored its own rows
            self.correct, self.scored = (int(v) for v in comm.allreduce_values([float(self.correct), self.scored]))
        seconds = time.perf_counter() - self.t0
        if self.bar is not None:
            self.bar.close()
        logs = {"loss": float(self.total) / self.seen, "time": seconds,
                "samples_per_s": self.seen / seconds if seconds else math.inf, "lr": lr}
        if self.scored_acc:
            logs["accuracy"] = int(self.correct) / self.scored
        return logs


_BUSY: set = set()
_BUSY_LOCK = threading.Lock()


class _exclusive:
    """Marks a trainer and its net as training for the length of a ``with`` block; a second
    fit of either from another thread (or from a callback) raises instead of interleaving."""

    def __init__(self, *objects):
        self.keys = [id(o) for o in objects]

    def __enter__(self):
        with _BUSY_LOCK:
            if any(k in _BUSY for k in self.keys):
                raise RuntimeError("this Trainer or its network is already training (in another thread?); "
                                   "xpdnn trainers are not thread-safe: fit one at a time, or give each "
                                   "thread its own network and trainer")
            _BUSY.update(self.keys)
        return self

    def __exit__(self, *exc):
        with _BUSY_LOCK:
            _BUSY.difference_update(self.keys)
