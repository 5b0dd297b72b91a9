"""Properties of the training loop (:mod:`xpdnn.trainer`, :mod:`xpdnn.step`,
:mod:`xpdnn.nan_guard`, :mod:`xpdnn.callbacks`) that mutation testing showed no test asserted
(tests/MUTATION.md): ``validation_split`` at its boundaries (Keras's ``validation_split``: the
last rows, taken before shuffling), refusals naming the problem, the progress bar only in a
terminal (Keras's ``verbose=1``), data-parallel training on a stream, the NaN guard's windows
and what its rollback restores, and early stopping / checkpoints at their edges."""

from __future__ import annotations

import io
import re
import threading
import time

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn import distributed
from xpdnn.datasets.streaming import BatchStream
from xpdnn.distributed.comm import Communicator


def _data(n=40, d=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, c, n).astype(np.int64)
    return X, y


def _trainer(epochs=2, batch_size=8, d=4, c=3, **kw):
    net = xd.Sequential(xd.Linear(d, c, dtype="float64"))
    kw.setdefault("progress", False)
    kw.setdefault("seed", 0)
    return xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), batch_size=batch_size,
                      epochs=epochs, **kw)


def _weights(net):
    return {k: B.to_numpy(v).copy() for k, v in net.state_arrays().items()}


# -- validation_split ---------------------------------------------------------------------------

def test_validation_split_may_leave_one_training_row_and_refuses_to_leave_no_validation_row():
    """Keras holds out ``N - int(N * (1 - split))`` rows: the split is valid as long as both
    parts keep a row, one training row included; a fraction so small that no row is held out is
    refused with a message saying so."""
    X, y = _data(n=4)
    t = _trainer(epochs=1)
    history = t.fit(X, y, validation_split=0.75)          # int(4 * 0.25) = 1 training row
    assert len(history["val_loss"]) == 1
    assert t.evaluate(X[1:], y[1:])["loss"] == pytest.approx(history["val_loss"][0], rel=1e-12)
    t = _trainer(epochs=1)
    with pytest.raises(ValueError, match="no training or no validation sample"):
        t.fit(X, y, validation_split=1e-20)                # 1 - 1e-20 == 1.0: no row held out
    assert t.history == {} and t.epoch == 0


@pytest.mark.parametrize("split", ["0.2", [0.2], np.array([0.2])], ids=["str", "list", "array"])
def test_validation_split_that_is_not_a_number_is_a_value_error(split):
    X, y = _data()
    with pytest.raises(ValueError, match="validation_split must be a fraction in"):
        _trainer().fit(X, y, validation_split=split)


def test_validation_split_refusals_name_the_problem():
    X, y = _data()
    t = _trainer()
    with pytest.raises(ValueError, match=r"^pass either validation=\(X_val, y_val\) or validation_split"):
        t.fit(X, y, validation=(X, y), validation_split=0.2)
    with pytest.raises(ValueError, match=r"^validation_split needs arrays X and y \(not a stream\)"):
        t.fit(X, None, validation_split=0.2)
    with pytest.raises(ValueError, match=r"^validation_split needs arrays X and y \(not a stream\)"):
        t.fit(BatchStream(X, y, batch_size=8), y, validation_split=0.2)
    with pytest.raises(ValueError, match=r"^X has 40 samples but y has 39$"):
        t.fit(X, y[:-1], validation_split=0.2)
    with pytest.raises(TypeError, match=r"^X must be an array"):
        t.fit(object(), y, validation_split=0.2)
    with pytest.raises(TypeError, match=r"^y must be an array"):
        t.fit(X, object(), validation_split=0.2)
    assert t.history == {} and t.epoch == 0


def test_a_stream_without_labels_is_refused_naming_the_problem():
    X, _ = _data()
    t = _trainer()
    with pytest.raises(ValueError, match=r"^the BatchStream has no labels \(y=None\); training needs them$"):
        t.fit(BatchStream(X, None, batch_size=8))
    assert t.global_step == 0 and t.history == {}


def test_a_bad_streamed_batch_is_named_as_such():
    """A stream is validated batch by batch; the message says the bad values came from a
    streamed batch (not from the X passed to fit)."""
    X, y = _data()
    X[13, 2] = np.nan
    with pytest.raises(ValueError, match=r"^X \(streamed batch\) contains NaN or Inf values$"):
        _trainer().fit(BatchStream(X, y, batch_size=8, shuffle=False))
    with pytest.raises(ValueError, match=r"^X \(streamed batch\) has 5 features but the model expects 4$"):
        _trainer().fit(BatchStream(np.zeros((8, 5)), y[:8], batch_size=8))


# -- the progress bar: only in a terminal -------------------------------------------------------

class _Bar:
    """Records what the trainer does with a tqdm bar."""

    made: list = []

    def __init__(self, total, desc, **kw):
        self.total, self.desc, self.kw, self.n, self.posts, self.closed = total, desc, kw, 0, [], False
        _Bar.made.append(self)

    def update(self, n):
        self.n += n

    def set_postfix(self, post, refresh=True):
        self.posts.append((self.n, dict(post)))

    def close(self):
        self.closed = True


class _Tty(io.StringIO):
    def isatty(self):
        return True


class _NoIsatty:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


class _Closed(io.StringIO):
    def isatty(self):
        raise ValueError("I/O operation on closed file")


@pytest.fixture
def bars(monkeypatch):
    import tqdm.auto

    _Bar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    return _Bar.made


def test_progress_bar_in_a_terminal_counts_every_sample_and_shows_the_running_loss(bars, monkeypatch, capsys):
    """``progress=1`` (Keras ``verbose=1``) with stderr a terminal: one bar per epoch over the
    samples the epoch uses, its postfix the running mean loss and accuracy every 10 steps and at
    the last step (which equal the history's values there), closed at the epoch's end."""
    monkeypatch.setattr("sys.stderr", _Tty())
    X, y = _data(n=100)
    t = _trainer(epochs=2, batch_size=4, progress=1, drop_last=True)
    history = t.fit(X[:98], y[:98])                      # 24 steps of 4 rows: 96 samples used
    assert len(bars) == 2
    for epoch, bar in enumerate(bars):
        assert bar.desc == f"epoch {epoch + 1}/2" and bar.total == 96 and bar.n == 96 and bar.closed
        assert bar.kw == {"unit": "sample", "leave": False, "dynamic_ncols": True}   # removed when the epoch ends
        assert [n for n, _ in bar.posts] == [40, 80, 96]
        last = bar.posts[-1][1]
        assert last == {"loss": f"{history['loss'][epoch]:.4f}", "acc": f"{history['accuracy'][epoch]:.3f}"}
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]) == 2


@pytest.mark.parametrize("stderr", [io.StringIO, _NoIsatty, _Closed], ids=["pipe", "no-isatty", "closed"])
def test_no_progress_bar_outside_a_terminal(bars, monkeypatch, capsys, stderr):
    monkeypatch.setattr("sys.stderr", stderr())
    X, y = _data()
    _trainer(epochs=1, progress=1).fit(X, y)
    assert bars == [] and capsys.readouterr().out.startswith("epoch 1: loss ")


def test_progress_2_never_draws_a_bar(bars, monkeypatch):
    monkeypatch.setattr("sys.stderr", _Tty())
    X, y = _data()
    _trainer(epochs=1, progress=2).fit(X, y)
    assert bars == []


# -- data-parallel training on a stream -----------------------------------------------------------

class _ThreadComm(Communicator):
    """Rank ``rank`` of a job whose ranks are threads of this process (sums in rank order)."""

    backend = "threads"

    def __init__(self, group, rank):
        self.group, self.rank, self.size, self.local_rank = group, rank, group["size"], rank

    def _exchange(self, a):
        g = self.group
        g["slots"][self.rank] = np.array(a, copy=True)
        g["barrier"].wait()
        got = list(g["slots"])
        g["barrier"].wait()
        return got

    def _allreduce_host_(self, a):
        got = self._exchange(a)
        total = got[0].copy()
        for x in got[1:]:
            total += x
        a[...] = total

    def _broadcast_host_(self, a, root):
        a[...] = self._exchange(a)[root]

    def barrier(self):
        self.group["barrier"].wait()


def _on_ranks(size, fn):
    group = {"size": size, "slots": [None] * size, "barrier": threading.Barrier(size, timeout=60)}
    results, errors = [None] * size, [None] * size

    def target(r):
        try:
            results[r] = fn(_ThreadComm(group, r))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors[r] = exc
            group["barrier"].abort()

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(size)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if real or any(errors):
        raise (real or [e for e in errors if e is not None])[0]
    return results


@pytest.fixture
def _no_current_communicator(monkeypatch):
    monkeypatch.setattr(distributed, "_CURRENT", None)


@pytest.mark.usefixtures("_no_current_communicator")
@pytest.mark.parametrize("ranks", [2, 3])
def test_data_parallel_training_on_a_stream_follows_the_one_process_run(ranks, capsys):
    """Each rank trains on its contiguous slice of every streamed global batch and the gradients
    are summed (PyTorch DistributedDataParallel's semantics); each rank scores its slice of the
    validation data and the metrics are summed.  The ranks give the one-process run's weights
    and history to float64 rounding, the last, shorter batch (5 rows) included, and only rank 0
    prints the epoch lines."""
    X, y = _data(n=37)
    Xv, yv = _data(n=11, seed=4)

    def run(comm=None):
        t = _trainer(epochs=2, comm=comm, progress=2)
        history = t.fit(BatchStream(X, y, batch_size=8, seed=3), validation=(Xv, yv))
        return _weights(t.net), history

    ref_w, ref = run()
    assert len(capsys.readouterr().out.splitlines()) == 2
    for w, history in _on_ranks(ranks, run):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(history[key], ref[key], rtol=1e-12, err_msg=key)
        for k in ref_w:
            np.testing.assert_allclose(w[k], ref_w[k], rtol=1e-12, atol=1e-15, err_msg=k)
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == ["epoch 1", "epoch 2"]


@pytest.mark.usefixtures("_no_current_communicator")
@pytest.mark.parametrize("case, problem", [
    ("loss", r"data-parallel training does not support a loss with parameters \(HierarchicalSoftmax\) yet"),
    ("fused", r"fused_step=True cannot be honoured in data-parallel training: the gradients must be summed over "
              r"the ranks before the update; leave it None"),
])
def test_data_parallel_refusals_name_the_problem(case, problem):
    X, y = _data()

    def run(comm):
        if case == "loss":
            t = xd.Trainer(xd.Sequential(xd.Linear(4, 4, dtype="float64")), loss=xd.HierarchicalSoftmax(4, 3),
                           optimizer=xd.SGD(lr=0.1), comm=comm, progress=0)
        else:
            t = _trainer(comm=comm, fused_step=True)
        with pytest.raises(ValueError, match=f"^{problem}$"):
            t.fit(X, y)
        return t.global_step

    assert _on_ranks(2, run) == [0, 0]


# -- the NaN guard: windows and what a rollback restores -----------------------------------------

def _state(t):
    """Everything a step advances (the NaN guard's documented snapshot), as host copies."""
    host = lambda arrays: {k: B.to_numpy(v).copy() for k, v in arrays.items()}
    return {"net": host(t.net.state_arrays()),
            "loss": host(t.loss.state_arrays()) if isinstance(t.loss, xd.HierarchicalSoftmax) else None,
            "opt": {k: host(slots) for k, slots in t.optimizer.state.items()},
            "opt_steps": t.optimizer.steps, "lr": t.optimizer.lr, "counter": t.rng.counter,
            "global_step": t.global_step}


def _assert_same_state(got, want):
    for part in ("net", "loss"):
        if want[part] is None:
            assert got[part] is None
            continue
        assert got[part].keys() == want[part].keys()
        for k in want[part]:
            np.testing.assert_array_equal(got[part][k], want[part][k], err_msg=f"{part} {k}")
    assert got["opt"].keys() == want["opt"].keys()
    for k in want["opt"]:
        assert got["opt"][k].keys() == want["opt"][k].keys()
        for s in want["opt"][k]:
            np.testing.assert_array_equal(got["opt"][k][s], want["opt"][k][s], err_msg=f"opt {k} {s}")
    for k in ("opt_steps", "lr", "counter", "global_step"):
        assert got[k] == want[k], k


class _Record(xd.Callback):
    """The state before each step (first callback: the one the guard snapshots), by global step."""

    def __init__(self):
        self.states = {}

    def on_batch_begin(self, trainer, step):
        self.states[trainer.global_step] = _state(trainer)


class _PoisonAt(xd.Callback):
    """Makes the first weight NaN before global step ``at`` (every later loss is NaN too)."""

    def __init__(self, at):
        self.at = at

    def on_batch_begin(self, trainer, step):
        if trainer.global_step == self.at:
            W = trainer.net.layers[0].params["W"]
            W[0, 0] = np.nan


def _guarded_run(poison_at, check_every, snapshot_every, n=80, epochs=3):
    """A net with dropout, a loss with parameters, Adam and a per-step learning-rate schedule:
    every part of the state a step advances changes at every step."""
    X, y = _data(n=n, c=5)
    net = xd.Sequential(xd.Linear(4, 6, dtype="float64"), xd.Tanh(), xd.Dropout(0.3))
    loss = xd.HierarchicalSoftmax(6, 5, seed=1, init="xavier_uniform", dtype="float64")
    record = _Record()
    t = xd.Trainer(net, loss=loss, optimizer=xd.Adam(lr=0.01), batch_size=8, epochs=epochs, seed=2,
                   progress=False, nan_check_every=check_every, snapshot_every=snapshot_every,
                   callbacks=[record, xd.ExponentialDecay(0.9, per="step"), _PoisonAt(poison_at)])
    with pytest.raises(xd.TrainingError) as info:
        t.fit(X, y)
    return t, record.states, str(info.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("check_every, snapshot_every, poison_at, back_to, where", [
    (1, 1, 5, 4, "at epoch 1, step 6;"),                 # the state before the step that made NaN weights
    (4, 2, 5, 2, "at epoch 1, between steps 5 and 8;"),  # the pending snapshot of step 4 is unchecked
    (4, 2, 3, 0, "at epoch 1, between steps 1 and 4;"),  # the first window: the state fit started from
    (4, 32, 15, 10, "at epoch 2, between steps 5 and 8;"),  # an epoch's first step is always snapshotted
    (4, 32, 13, 0, "at epoch 2, between steps 1 and 4;"),   # ... but good only once its window is checked
    (4, 32, 19, 10, "at epoch 2, between steps 9 and 10;"),  # the last, shorter window of an epoch
    (3, 32, 9, 0, "at epoch 1, step 10;"),               # a last window of one step
    (1, 3, 7, 6, "at epoch 1, step 8;"),                 # snapshots every 3 steps: 3, 6, ...
])
def test_rollback_restores_everything_the_step_advanced(check_every, snapshot_every, poison_at, back_to, where):
    """10 steps an epoch.  The loss is checked every ``check_every`` steps of an epoch and at its
    last step; the rollback goes to the last snapshot whose window was checked finite, which is
    at most ``snapshot_every + check_every`` steps back, and restores all of it: weights, the
    loss's parameters, the optimizer's slots, step count and learning rate, the Philox counter
    (dropout) and the global step.  The message names the window and the restored state."""
    t, states, msg = _guarded_run(poison_at, check_every, snapshot_every)
    assert msg.startswith(f"loss became NaN or Inf {where} training stopped")
    epoch, step = divmod(back_to, 10)
    assert msg.endswith(f"rolled back to its state before step {step + 1} of epoch {epoch + 1}, the last "
                        "state whose loss was checked finite (try a lower learning rate)")
    _assert_same_state(_state(t), states[back_to])
    failed_at = max(states) + 1                               # steps taken when the check failed
    assert t.global_step == back_to
    assert t.epoch == len(t.history.get("loss", [])) == (failed_at - 1) // 10   # the completed epochs are kept
    assert failed_at - back_to <= snapshot_every + check_every
    assert states[back_to]["counter"] > 0 or back_to == 0     # dropout advanced the counter


class _NaNLossAt(xd.SoftmaxCrossEntropy):
    """Softmax cross-entropy whose loss (not its gradient) is NaN at the given training steps."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = set(at), 0

    def __call__(self, logits, targets, **kw):
        loss, dZ = super().__call__(logits, targets, **kw)
        self.calls += 1
        return (loss * np.nan if self.calls - 1 in self.at else loss), dZ


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("at, check_every, where", [
    (1, 4, "at epoch 1, between steps 1 and 4;"),     # NaN early in the window, finite at its check
    (12, 4, "at epoch 2, between steps 1 and 4;"),
    (17, 4, "at epoch 2, between steps 5 and 8;"),
    (18, 4, "at epoch 2, between steps 9 and 10;"),   # the last, shorter window
    (6, 1, "at epoch 1, step 7;"),
])
def test_a_nan_loss_anywhere_in_a_check_window_is_caught(at, check_every, where):
    """The guard folds every step's loss into its flag: one non-finite loss inside a window is
    caught at the window's check even when the losses after it (and the weights) are finite."""
    X, y = _data(n=80)
    record = _Record()
    t = xd.Trainer(xd.Sequential(xd.Linear(4, 3, dtype="float64")), loss=_NaNLossAt([at]), optimizer=xd.SGD(lr=0.1),
                   batch_size=8, epochs=3, progress=False, nan_check_every=check_every, callbacks=[record])
    with pytest.raises(xd.TrainingError, match=f"^loss became NaN or Inf {where}") as info:
        t.fit(X, y)
    back = str(info.value).split("state before step ")[1]
    step, epoch = int(back.split()[0]) - 1, int(back.split("of epoch ")[1].split(",")[0]) - 1
    _assert_same_state(_state(t), record.states[10 * epoch + step])
    assert max(record.states) == (at // 10) * 10 + min(9, at % 10 - at % 10 % check_every + check_every - 1)


class _PoisonAfter(xd.Callback):
    """Makes a bias Inf after global step ``at`` (the update of an epoch's last step)."""

    def __init__(self, at):
        self.at = at

    def on_batch_end(self, trainer, step, logs):
        if trainer.global_step - 1 == self.at:
            trainer.net.layers[0].params["b"][1] = np.inf


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("check_every, back_to", [(1, 19), (4, 18)])
def test_non_finite_weights_after_an_epochs_last_step_are_rolled_back(check_every, back_to):
    """The last step's update is checked through the weights at the epoch's end; with checks and
    snapshots every step exactly that step is undone, and the message names the weight and the
    epoch."""
    X, y = _data(n=80, c=5)
    record = _Record()
    net = xd.Sequential(xd.Linear(4, 6, dtype="float64"), xd.Tanh(), xd.Dropout(0.3))
    t = xd.Trainer(net, loss=xd.HierarchicalSoftmax(6, 5, seed=1, init="xavier_uniform", dtype="float64"),
                   optimizer=xd.Adam(lr=0.01), batch_size=8, epochs=3, seed=2, progress=False,
                   nan_check_every=check_every, snapshot_every=1,
                   callbacks=[record, xd.ExponentialDecay(0.9, per="step"), _PoisonAfter(19)])
    epoch, step = divmod(back_to, 10)
    with pytest.raises(xd.TrainingError, match=f"^layers.0.b became NaN or Inf in the last step of epoch 2; .* "
                                               f"before step {step + 1} of epoch {epoch + 1}, the last state"):
        t.fit(X, y)
    _assert_same_state(_state(t), record.states[back_to])
    assert t.epoch == len(t.history["loss"]) == 1              # epoch 2 did not complete


# -- EarlyStopping and ModelCheckpoint at their edges --------------------------------------------

from test_properties import _FakeNet as _Net   # noqa: E402  (a stand-in network: weights W, state arrays)


class _T:
    """What a callback sees of the trainer (no ``progress`` attribute unless given)."""

    def __init__(self, epoch=0, **kw):
        self.net, self.epoch, self.stop_training = _Net(), epoch, False
        self.__dict__.update(kw)


def _drive(cb, values, t=None):
    """Run ``cb`` over scripted ``val_loss`` values from ``t.epoch`` on, as Trainer.fit does;
    returns (the epoch at which it stopped the run or None, the weights left at the end, t)."""
    t = t or _T()
    cb.on_train_begin(t)
    stopped, first = None, t.epoch
    for i, value in enumerate(values):
        if t.stop_training:
            break
        epoch = first + i
        t.net.W = np.array([epoch, -epoch], dtype=float)
        t.epoch = epoch + 1
        cb.on_epoch_end(t, epoch, {"val_loss": value})
        if t.stop_training:
            stopped = epoch
            break
    cb.on_train_end(t)
    return stopped, t.net.W, t


def test_early_stopping_defaults_monitor_val_loss_with_patience_5_and_restore_the_best():
    es = xd.EarlyStopping()
    assert es.state_dict() == ({"best": np.inf, "best_epoch": None, "wait": 0, "stopped_epoch": None}, {})
    assert es.best_state is None
    stopped, W, _ = _drive(es, [1.0, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 0.1])
    assert stopped == 6 and list(W) == [1.0, -1.0]            # 5 epochs without improvement on epoch 1
    stopped, _, _ = _drive(xd.EarlyStopping(), [1.0, 1.0 - 2**-40, 1.0 - 2**-39, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    assert stopped == 7                                       # min_delta 0: any decrease is an improvement
    with pytest.raises(ValueError, match=r"^EarlyStopping monitors 'val_loss', which is not logged \(logged: "
                                         r"\['accuracy', 'loss'\]\); pass validation data to fit\(\)$"):
        xd.EarlyStopping().on_epoch_end(_T(), 0, {"loss": 1.0, "accuracy": 0.5})


def test_early_stopping_on_a_continued_run_counts_from_its_own_first_epoch():
    """A new EarlyStopping given to a trainer that already trained (epoch 3) starts with no
    record: its first epoch is an improvement and it waits ``patience`` epochs after its best."""
    es = xd.EarlyStopping(patience=2)
    stopped, W, _ = _drive(es, [5.0, 6.0, 7.0, 8.0], _T(epoch=3, progress=1))
    assert stopped == 5 and es.best_epoch == 3 and es.stopped_epoch == 5 and list(W) == [3.0, -3.0]
    es = xd.EarlyStopping(patience=2)
    stopped, W, _ = _drive(es, [5.0, 6.0], _T(epoch=3))
    assert stopped is None and es.wait == 1 and es.stopped_epoch is None and list(W) == [3.0, -3.0]


def test_early_stopping_reused_for_a_fresh_run_starts_over():
    es = xd.EarlyStopping(patience=1)
    assert _drive(es, [0.1, 0.2])[0] == 1 and es.best == 0.1
    stopped, W, _ = _drive(es, [3.0, 2.0, 2.5])                # a new trainer: epoch 0
    assert stopped == 2 and es.best == 2.0 and es.best_epoch == 1 and list(W) == [1.0, -1.0]
    # the count of epochs without improvement starts over too: an infinite value never improves
    es = xd.EarlyStopping(patience=2)
    assert _drive(es, [1.0, 2.0])[0] is None and es.wait == 1
    stopped, _, _ = _drive(es, [np.inf, np.inf, np.inf])
    assert stopped == 1 and es.best_epoch is None and es.wait == 2


@pytest.mark.parametrize("wait, stops", [(2, True), (3, True), (1, False)])
def test_a_resumed_record_stops_at_once_only_if_its_patience_ran_out(wait, stops):
    """A run resumed from a checkpoint written after early stopping stopped it trains no
    further; one resumed before that continues and stops when the patience runs out."""
    es = xd.EarlyStopping(patience=2)
    es.load_state_dict({"best": 0.5, "best_epoch": 3, "wait": wait, "stopped_epoch": None},
                       {"W": np.array([3.0, -3.0])})
    t = _T(epoch=4 + wait)
    es.on_train_begin(t)
    assert t.stop_training is stops
    if not stops:
        stopped, W, _ = _drive(es, [0.6, 0.7], _T(epoch=4 + wait))
        assert stopped == 4 + wait and es.stopped_epoch == stopped and list(W) == [3.0, -3.0]


def test_early_stopping_state_round_trips_through_check_and_load():
    es = xd.EarlyStopping(patience=2)
    _drive(es, [3.0, 1.0, 2.0, 2.0, 0.5])                      # stops after epoch 3, best epoch 1
    state, arrays = es.state_dict()
    assert state == {"best": 1.0, "best_epoch": 1, "wait": 2, "stopped_epoch": 3}
    np.testing.assert_array_equal(arrays["W"], [1.0, -1.0])
    other = xd.EarlyStopping(patience=2)
    other.check_state(state, arrays, _T())
    other.load_state_dict(state, arrays)
    assert (other.best, other.best_epoch, other.wait, other.stopped_epoch) == (1.0, 1, 2, 3)
    arrays["W"][0] = 99.0                                      # a copy: the source can change
    np.testing.assert_array_equal(other.best_state["W"], [1.0, -1.0])
    other.load_state_dict({"best": 2, "best_epoch": None, "wait": 0}, {})
    assert other.best == 2.0 and isinstance(other.best, float) and other.best_state is None
    assert other.stopped_epoch is None and other.best_epoch is None


@pytest.mark.parametrize("state, problem", [
    ({"best": "1.0", "best_epoch": 0, "wait": 0}, r"best must be a number, got '1\.0'"),
    ({"best": True, "best_epoch": 0, "wait": 0}, r"best must be a number, got True"),
    ({"best_epoch": 0, "wait": 0}, r"best must be a number, got None"),
    ({"best": 1.0, "best_epoch": -1, "wait": 0}, r"best_epoch must be an integer >= 0, got -1"),
    ({"best": 1.0, "best_epoch": True, "wait": 0}, r"best_epoch must be an integer >= 0, got True"),
    ({"best": 1.0, "best_epoch": 1.0, "wait": 0}, r"best_epoch must be an integer >= 0, got 1\.0"),
    ({"best": 1.0, "best_epoch": 0}, r"wait must be an integer >= 0, got None"),
    ({"best": 1.0, "best_epoch": 0, "wait": -1}, r"wait must be an integer >= 0, got -1"),
    ({"best": 1.0, "best_epoch": 0, "wait": 0, "stopped_epoch": -2}, r"stopped_epoch must be an integer >= 0, got -2"),
    ({"best": 1.0, "best_epoch": 0, "wait": 0, "stopped_epoch": "3"}, r"stopped_epoch must be an integer >= 0, got '3'"),
])
def test_early_stopping_refuses_a_bad_saved_state_naming_the_field(state, problem):
    with pytest.raises(ValueError, match=f"^{problem}$"):
        xd.EarlyStopping().check_state(state, {}, _T())


@pytest.mark.parametrize("state", [
    {"best": 1, "best_epoch": None, "wait": 0},
    {"best": np.inf, "best_epoch": 0, "wait": 0, "stopped_epoch": None},
    {"best": -1.5, "best_epoch": 7, "wait": 3, "stopped_epoch": 0},
])
def test_early_stopping_accepts_every_valid_saved_state(state):
    xd.EarlyStopping().check_state(state, {"W": np.ones(2)}, _T())
    xd.EarlyStopping().check_state(state, {}, _T())


@pytest.mark.parametrize("arrays", [{"V": np.ones(2)}, {"W": np.ones(3)}, {"W": np.ones(2), "b": np.ones(1)},
                                    {"W": np.ones((2, 1))}])
def test_early_stopping_refuses_best_weights_of_another_network(arrays):
    with pytest.raises(ValueError, match=r"^its best weights do not match this trainer's network$"):
        xd.EarlyStopping().check_state({"best": 1.0, "best_epoch": 0, "wait": 0}, arrays, _T())


def test_early_stopping_reports_only_with_progress_on(capsys):
    es = xd.EarlyStopping(patience=3)
    _drive(es, [2.0, 0.5, 0.75, 0.75, 0.75], _T(progress=2))
    assert capsys.readouterr().out.splitlines() == [
        "early stopping: val_loss did not improve for 3 epochs; stopped after epoch 5",
        "early stopping: restored the weights of epoch 2 (val_loss 0.5000)"]
    for t in (_T(progress=0), _T()):                           # progress off, or a trainer without it
        _drive(xd.EarlyStopping(patience=3), [2.0, 0.5, 0.75, 0.75, 0.75], t)
    _drive(xd.EarlyStopping(patience=3), [2.0, 0.5, 0.75], _T(progress=1))   # did not stop: nothing
    assert capsys.readouterr().out == ""


def test_without_restore_best_no_weights_are_kept_or_put_back():
    es = xd.EarlyStopping(patience=1, restore_best=False)
    stopped, W, _ = _drive(es, [1.0, 2.0])
    assert stopped == 1 and list(W) == [1.0, -1.0] and es.best_state is None and es.state_dict()[1] == {}
    es.load_state_dict({"best": 1.0, "best_epoch": 0, "wait": 0}, {"W": np.array([7.0, -7.0])})
    stopped, W, _ = _drive(es, [3.0], _T(epoch=2))             # a saved record with weights: still not restored
    assert list(W) == [2.0, -2.0]


def test_callback_base_keeps_no_state():
    cb = xd.Callback()
    assert cb.state_dict() is None
    cb.check_state({}, {}, _T())
    with pytest.raises(NotImplementedError, match=r"^Callback keeps no state$"):
        cb.load_state_dict({}, {})


class _Saver(_T):
    def __init__(self, epoch=0):
        super().__init__(epoch)
        self.written = []

    def save(self, path):
        self.written.append(path)


def _run_checkpoint(ck, values, t=None, key="val_loss"):
    t = t or _Saver()
    ck.on_train_begin(t)
    first = t.epoch
    for i, v in enumerate(values):
        t.epoch = first + i + 1
        ck.on_epoch_end(t, first + i, {key: v, "loss": 1.0})
    return t.written


def test_model_checkpoint_defaults_save_every_epoch():
    ck = xd.ModelCheckpoint("m-{epoch}.xpd")
    assert _run_checkpoint(ck, [3.0, 1.0, 2.0]) == ["m-1.xpd", "m-2.xpd", "m-3.xpd"] == ck.saved
    assert ck.best_epoch is None                              # nothing was saved as best
    ck = xd.ModelCheckpoint("m.xpd", save_best_only=True)      # monitors val_loss, lower is better
    assert _run_checkpoint(ck, [3.0, 1.0, 2.0, 1.0, 0.5]) == ["m.xpd"] * 3
    assert ck.best == 0.5 and ck.best_epoch == 4
    assert ck.state_dict() == ({"best": 0.5, "best_epoch": 4}, {})


@pytest.mark.parametrize("mode, values, saved, best", [
    ("min", [1e300, 2e300, 5e299], [0, 2], 5e299),
    ("max", [-5.0, -6.0, -4.0, -4.0], [0, 2], -4.0),            # a tie is no improvement
    ("max", [0.5, 0.75, 0.75 + 2**-40], [0, 1, 2], 0.75 + 2**-40),
])
def test_model_checkpoint_best_only_saves_each_strict_improvement(mode, values, saved, best):
    ck = xd.ModelCheckpoint("e{epoch}.xpd", mode=mode, monitor="val_accuracy", save_best_only=True)
    assert _run_checkpoint(ck, values, key="val_accuracy") == [f"e{e + 1}.xpd" for e in saved]
    assert ck.best == best and ck.best_epoch == saved[-1]


@pytest.mark.parametrize("mode, values, saved", [
    ("min", [1.0, 0.75, 0.75 - 2**-40, 0.5 - 2**-40, 0.25], [0, 2, 4]),   # better by more than 0.25
    ("max", [0.0, 0.25, 0.25 + 2**-40, 0.5 + 2**-40, 0.75], [0, 2, 4]),
])
def test_model_checkpoint_min_delta_is_a_strict_margin(mode, values, saved):
    ck = xd.ModelCheckpoint("e{epoch}.xpd", mode=mode, save_best_only=True, min_delta=0.25)
    assert _run_checkpoint(ck, values) == [f"e{e + 1}.xpd" for e in saved]


def test_model_checkpoint_keeps_its_best_only_across_a_resumed_run():
    ck = xd.ModelCheckpoint("b.xpd", save_best_only=True)
    _run_checkpoint(ck, [2.0, 1.0])
    assert _run_checkpoint(ck, [1.5, 0.5], t=_Saver(epoch=2)) == ["b.xpd"] and ck.saved == ["b.xpd"]
    assert ck.best == 0.5 and ck.best_epoch == 3
    assert _run_checkpoint(ck, [9.0]) == ["b.xpd"] and ck.best_epoch == 0   # a fresh run starts over
    ck = xd.ModelCheckpoint("e{epoch}-{val_loss:.1f}.xpd", every=3)          # 1-based epochs 3, 6, 9, ...
    assert _run_checkpoint(ck, [0.3 * e for e in range(7)]) == ["e3-0.6.xpd", "e6-1.5.xpd"]
    assert _run_checkpoint(ck, [0.0] * 2, t=_Saver(epoch=7)) == ["e9-0.0.xpd"] == ck.saved


@pytest.mark.parametrize("kwargs, problem", [
    ({"mode": "MIN"}, r"mode must be one of \('min', 'max'\), got 'MIN'"),
    ({"every": 0}, r"every must be an integer >= 1, got 0"),
    ({"every": True}, r"every must be an integer >= 1, got True"),
    ({"every": 2.0}, r"every must be an integer >= 1, got 2\.0"),
    ({"min_delta": -0.1}, r"min_delta must be >= 0, got -0\.1"),
    ({"min_delta": float("nan")}, r"min_delta must be >= 0, got nan"),
])
def test_model_checkpoint_refuses_bad_settings_naming_them(kwargs, problem):
    with pytest.raises(ValueError, match=f"^{problem}$"):
        xd.ModelCheckpoint("m.xpd", **kwargs)


def test_model_checkpoint_accepts_the_smallest_settings():
    ck = xd.ModelCheckpoint("m.xpd", every=1, min_delta=0)
    assert ck.every == 1 and ck.min_delta == 0.0 and ck.path == "m.xpd"


def test_model_checkpoint_refusals_while_training_name_the_problem():
    ck = xd.ModelCheckpoint("m.xpd", save_best_only=True, monitor="val_accuracy")
    with pytest.raises(ValueError, match=r"^ModelCheckpoint monitors 'val_accuracy', which is not logged "
                                         r"\(logged: \['loss', 'val_loss'\]\); pass validation data to fit\(\)$"):
        _run_checkpoint(ck, [1.0])
    ck = xd.ModelCheckpoint("{nope}.xpd")
    with pytest.raises(ValueError, match=r"^ModelCheckpoint path '\{nope\}\.xpd' cannot be filled from epoch and "
                                         r"the logs \['loss', 'val_loss'\]: 'nope'$"):
        _run_checkpoint(ck, [1.0])


@pytest.mark.parametrize("state, problem", [
    ({"best": None, "best_epoch": 0}, r"best must be a number, got None"),
    ({"best": False, "best_epoch": 0}, r"best must be a number, got False"),
    ({"best": 1.0, "best_epoch": -1}, r"best_epoch must be an integer >= 0 or None, got -1"),
    ({"best": 1.0, "best_epoch": True}, r"best_epoch must be an integer >= 0 or None, got True"),
    ({"best": 1.0, "best_epoch": 2.0}, r"best_epoch must be an integer >= 0 or None, got 2\.0"),
])
def test_model_checkpoint_refuses_a_bad_saved_state(state, problem):
    with pytest.raises(ValueError, match=f"^{problem}$"):
        xd.ModelCheckpoint("m.xpd").check_state(state, {}, _T())


def test_model_checkpoint_state_round_trips():
    ck = xd.ModelCheckpoint("m.xpd", mode="max", save_best_only=True)
    for state in ({"best": 3, "best_epoch": 0}, {"best": -np.inf, "best_epoch": None}):
        ck.check_state(state, {}, _T())
        ck.load_state_dict(state, {})
        assert ck.state_dict() == (state, {}) and isinstance(ck.best, float)


# -- the epoch: its batches and its metrics --------------------------------------------------------

def _softmax_xent(Z, y):
    Z = Z - Z.max(axis=1, keepdims=True)
    logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


@pytest.mark.parametrize("n, batch_size, drop_last", [(37, 8, False), (37, 8, True), (5, 5, True), (6, 1, False)])
def test_epoch_batches_follow_the_documented_permutation_and_metrics_weigh_samples(n, batch_size, drop_last):
    """Epoch e visits the rows in the order of ``np.random.default_rng([seed, e]).permutation(N)``
    in batches of ``batch_size`` (the last one shorter unless ``drop_last``); each batch's logged
    loss is its rows' loss under the weights before the step; the epoch's ``loss`` and
    ``accuracy`` are means over the samples used (Keras averages per sample), ``lr`` the rate."""
    X, y = _data(n=n)
    seen = []

    class Watch(xd.Callback):
        def on_batch_begin(self, trainer, step):
            order = np.random.default_rng([trainer.seed, trainer.epoch]).permutation(n)
            idx = order[step * batch_size:(step + 1) * batch_size]
            Z = B.to_numpy(trainer.net.forward(X[idx], train=False)[0])
            seen.append({"epoch": trainer.epoch, "rows": len(idx), "loss": _softmax_xent(Z, y[idx]),
                         "hits": int((Z.argmax(axis=1) == y[idx]).sum())})

        def on_batch_end(self, trainer, step, logs):
            assert logs["size"] == seen[-1]["rows"]
            np.testing.assert_allclose(float(logs["loss"]), seen[-1]["loss"], rtol=1e-12)

    t = _trainer(epochs=2, batch_size=batch_size, drop_last=drop_last, callbacks=[Watch()], seed=5)
    start = time.perf_counter()
    history = t.fit(X, y)
    elapsed = time.perf_counter() - start
    steps = n // batch_size if drop_last else -(-n // batch_size)
    assert len(seen) == 2 * steps and t.global_step == 2 * steps
    used = steps * batch_size if drop_last else n
    for e in range(2):
        batches = [b for b in seen if b["epoch"] == e]
        assert sum(b["rows"] for b in batches) == used
        np.testing.assert_allclose(history["loss"][e], sum(b["loss"] * b["rows"] for b in batches) / used, rtol=1e-12)
        assert history["accuracy"][e] == sum(b["hits"] for b in batches) / used
        assert history["lr"][e] == 0.1 and 0 < history["time"][e] <= elapsed
        assert history["samples_per_s"][e] == pytest.approx(used / history["time"][e], rel=1e-12)


def test_drop_last_with_a_batch_larger_than_the_data_is_refused():
    X, y = _data(n=10)
    with pytest.raises(ValueError, match=r"^drop_last with batch_size 11 > 10 samples leaves no batch$"):
        _trainer(batch_size=11, drop_last=True).fit(X, y)
    assert len(_trainer(batch_size=11, epochs=1).fit(X, y)["loss"]) == 1      # without drop_last: one batch


@pytest.mark.parametrize("kwargs, problem", [
    ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
    ({"epochs": -1}, r"epochs must be >= 0, got -1"),
    ({"nan_check_every": 0}, r"nan_check_every must be >= 1, got 0"),
    ({"snapshot_every": 0}, r"snapshot_every must be >= 1, got 0"),
    ({"progress": 3}, r"progress must be True/False or a Keras verbosity 0, 1 or 2, got 3"),
])
def test_trainer_settings_are_refused_naming_them(kwargs, problem):
    with pytest.raises(ValueError, match=f"^{problem}$"):
        _trainer(**kwargs)


def test_the_smallest_settings_are_accepted():
    X, y = _data()
    t = _trainer(batch_size=1, epochs=0, nan_check_every=1, snapshot_every=1, progress=0)
    assert t.fit(X, y) == {} and t.epoch == 0 and t.global_step == 0
    t = _trainer(batch_size=40, epochs=1, nan_check_every=1, snapshot_every=1)
    assert t.fit(X, y)["loss"] and t.global_step == 1


@pytest.mark.parametrize("edit, problem", [
    (lambda X, y, Xv, yv: (X, y, Xv[:, :3], yv), r"X_val has 3 features but the model expects 4"),
    (lambda X, y, Xv, yv: (X, y, Xv, yv[:-1]), r"X_val has 10 samples but y_val has 9"),
    (lambda X, y, Xv, yv: (X, y, Xv[:, 0], yv), r"X_val must be 2-D \(samples, features\), got shape \(10,\)"),
    (lambda X, y, Xv, yv: (X, y, Xv[:0], yv[:0]), r"X_val is empty: no samples to train on"),
    (lambda X, y, Xv, yv: (X, y, np.where(Xv > 1, np.inf, Xv), yv), r"X_val contains NaN or Inf values"),
    (lambda X, y, Xv, yv: (X[:, :3], y, Xv, yv), r"X has 3 features but the model expects 4"),
    (lambda X, y, Xv, yv: (X, y[:-1], Xv, yv), r"X has 40 samples but y has 39"),
    (lambda X, y, Xv, yv: (X[:, 0], y, Xv, yv), r"X must be 2-D \(samples, features\), got shape \(40,\)"),
    (lambda X, y, Xv, yv: (X[:0], y[:0], Xv, yv), r"X is empty: no samples to train on"),
])
def test_bad_training_or_validation_data_is_refused_naming_which(edit, problem):
    X, y = _data()
    Xv, yv = _data(n=10, seed=1)
    X, y, Xv, yv = edit(X, y, Xv, yv)
    t = _trainer()
    with pytest.raises(ValueError, match=f"^{problem}$"):
        t.fit(X, y, validation=(Xv, yv))
    assert t.global_step == 0 and t.history == {}


# -- the step: fusion is only an optimization ------------------------------------------------------

class _PlainSGD:
    """An optimizer of the user's own, duck-typed: ``W -= lr * dW`` (no ``can_fuse``, no
    ``fused_update``)."""

    def __init__(self, lr):
        self.lr, self.state, self.steps = lr, {}, 0

    def step(self, net, *more, skip=()):
        from xpdnn.optim.base import parameter_keys
        assert not skip
        for _, layer, name in parameter_keys((net, *more)):
            layer.params[name] = layer.params[name] - self.lr * layer.grads[name]
        self.steps += 1


def test_an_optimizer_of_ones_own_trains_like_the_library_sgd():
    X, y = _data(n=37, c=3)

    def run(opt, **kw):
        net = xd.Sequential(xd.Linear(4, 8, dtype="float64"), xd.ReLU(), xd.Linear(8, 3, dtype="float64"))
        t = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=opt, batch_size=8, epochs=2, seed=1,
                       progress=False, **kw)
        return t.fit(X, y)["loss"], _weights(net), t

    loss, w, t = run(_PlainSGD(0.1))
    ref_loss, ref_w, _ = run(xd.SGD(lr=0.1), fused_step=False)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for k in ref_w:
        np.testing.assert_allclose(w[k], ref_w[k], rtol=1e-12, atol=1e-15, err_msg=k)
    assert t.optimizer.steps == t.global_step == 10
    fused_loss, fused_w, _ = run(xd.SGD(lr=0.1))                  # automatic fusion: the same numbers
    np.testing.assert_allclose(fused_loss, ref_loss, rtol=1e-12)
    for k in ref_w:
        np.testing.assert_allclose(fused_w[k], ref_w[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_fused_step_true_is_refused_naming_what_needs_the_gradients():
    from xpdnn.diagnostics import GradientFlowMonitor
    from xpdnn.regularizers import L2

    X, y = _data()
    with pytest.raises(ValueError, match=r"^fused_step=True cannot be honoured with regularizers, clip or callbacks "
                                         r"that may read gradients in on_batch_end \(GradientFlowMonitor\); they "
                                         r"need the gradient stored before the step; leave it None$"):
        _trainer(fused_step=True, callbacks=[GradientFlowMonitor()]).fit(X, y)
    with pytest.raises(ValueError, match=r"in on_batch_end \(none\); they need"):
        _trainer(fused_step=True, regularizers=[L2(1e-3)]).fit(X, y)


# -- restore: all or nothing, refusals naming the problem ----------------------------------------

def _ck_trainer(loss=None, optimizer=None, callbacks=None, fit=True, width=4):
    from xpdnn.optim.schedules import StepDecay

    X, y = _data(n=40, c=3)
    net = xd.Sequential(xd.Linear(4, width, seed=1, dtype="float64"), xd.ReLU())
    loss = xd.HierarchicalSoftmax(width, 3, seed=2, dtype="float64") if loss is None else loss
    callbacks = [xd.EarlyStopping(patience=5), StepDecay(1, gamma=0.5)] if callbacks is None else callbacks
    t = xd.Trainer(net, loss=loss, optimizer=optimizer or xd.Adam(lr=0.01), batch_size=16, epochs=1, seed=3,
                   progress=False, callbacks=callbacks)
    if fit:
        t.fit(X, y, validation=(X[:10], y[:10]))
    return t


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "ck.xpd"
    _ck_trainer().save(path)
    return path


def _restore_refused(t, path, problem):
    before = (_weights(t.net), t.epoch, t.global_step, t.optimizer.steps, t.rng.counter, dict(t.history))
    with pytest.raises(xd.ModelFileError, match="^" + re.escape(str(path)) + ": " + problem):
        t.restore(path)
    after = (_weights(t.net), t.epoch, t.global_step, t.optimizer.steps, t.rng.counter, dict(t.history))
    for k in before[0]:
        np.testing.assert_array_equal(after[0][k], before[0][k])
    assert after[1:] == before[1:]


def test_restore_refusals_name_the_mismatch(checkpoint):
    from xpdnn.optim.schedules import ExponentialDecay

    _restore_refused(_ck_trainer(callbacks=[xd.EarlyStopping(patience=5)]), checkpoint,
                     r"callback 1 in the checkpoint is a StepDecay with saved state, but this trainer's callback 1 "
                     r"is missing; pass the same callbacks, in the same order, to resume$")
    _restore_refused(_ck_trainer(callbacks=[xd.EarlyStopping(patience=5), ExponentialDecay(0.5)]), checkpoint,
                     r"callback 1 in the checkpoint is a StepDecay with saved state, but this trainer's callback 1 "
                     r"is ExponentialDecay; pass the same callbacks")
    _restore_refused(_ck_trainer(loss=xd.SoftmaxCrossEntropy()), checkpoint,
                     r"the checkpoint holds loss parameters \(\['W', 'b'\]\.\.\.\) but this trainer's loss "
                     r"SoftmaxCrossEntropy has none$")
    _restore_refused(_ck_trainer(optimizer=xd.SGD(lr=0.01)), checkpoint,
                     r"the checkpoint's optimizer is a Adam, this trainer's is a SGD; resume with the same optimizer$")
    _restore_refused(_ck_trainer(optimizer=xd.Adam(lr=0.01, amsgrad=True)), checkpoint,
                     r"the optimizer state does not fit this trainer's Adam \{.*'amsgrad': True.*\}: ")
    _restore_refused(_ck_trainer(width=5), checkpoint,
                     r"the checkpoint does not fit this trainer's network: layers\.0\.W has shape \(4, 4\) in the "
                     r"file, \(5, 4\) in this trainer's network$")


def test_restore_refuses_a_callback_state_that_does_not_fit(checkpoint, tmp_path):
    import json
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(checkpoint), framework="numpy") as f:
        meta = json.loads(f.metadata()["xpdnn"])
    meta["trainer"]["callbacks"][0]["state"]["wait"] = -1
    bad = tmp_path / "bad.xpd"
    save_file(load_file(str(checkpoint)), str(bad), metadata={"xpdnn": json.dumps(meta)})
    _restore_refused(_ck_trainer(), bad, r"the state of callback 0 \(EarlyStopping\) is invalid: ValueError: wait "
                                         r"must be an integer >= 0, got -1$")


def test_restore_of_a_loss_without_its_parameters_is_refused(tmp_path):
    path = tmp_path / "plain.xpd"
    _ck_trainer(loss=xd.SoftmaxCrossEntropy()).save(path)
    _restore_refused(_ck_trainer(), path, r"the checkpoint has no parameters for the loss HierarchicalSoftmax, "
                                          r"which has some$")


def test_restore_of_a_plain_model_file_loads_the_weights_and_keeps_the_run(tmp_path):
    """A file written by ``xd.save(net)`` has no trainer record: restore puts its weights in
    (a later fit starts from them instead of initializing) and leaves epoch and history alone."""
    src = _ck_trainer(loss=xd.SoftmaxCrossEntropy(), callbacks=[])
    xd.save(src.net, tmp_path / "net.xpd")
    t = _ck_trainer(loss=xd.SoftmaxCrossEntropy(), callbacks=[], fit=False)
    t.restore(tmp_path / "net.xpd")
    for k, v in _weights(src.net).items():
        np.testing.assert_array_equal(_weights(t.net)[k], v)
    assert t.epoch == 0 and t.history == {} and t.global_step == 0 and t.net.fresh is False
    seen = {}

    class First(xd.Callback):
        def on_batch_begin(self, trainer, step):
            seen.setdefault("w", _weights(trainer.net))

    t.callbacks.append(First())
    X, y = _data(n=40, c=3)
    t.fit(X, y)
    for k, v in _weights(src.net).items():
        np.testing.assert_array_equal(seen["w"][k], v)


# -- the loop: hooks, history, epoch lines, evaluation ---------------------------------------------

class _Hooks(xd.Callback):
    def __init__(self, stop_after=None, extra_from=None):
        self.calls, self.stop_after, self.extra_from = [], stop_after, extra_from

    def on_train_begin(self, trainer):
        self.calls.append(("train_begin", trainer.epoch))

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_begin(self, trainer, step):
        self.calls.append(("batch_begin", step))

    def on_batch_end(self, trainer, step, logs):
        self.calls.append(("batch_end", step))

    def on_epoch_end(self, trainer, epoch, logs):
        self.calls.append(("epoch_end", epoch, trainer.epoch, len(trainer.history["loss"])))
        if self.extra_from is not None and epoch >= self.extra_from:
            logs["extra"] = 10.0 * epoch              # a value of this callback's own, from then on
        if epoch == self.stop_after:
            trainer.stop_training = True

    def on_train_end(self, trainer):
        self.calls.append(("train_end", trainer.epoch))


def test_hooks_run_in_order_and_stop_training_ends_the_run_after_that_epoch():
    X, y = _data(n=20)
    hooks = _Hooks(stop_after=1, extra_from=1)
    t = _trainer(epochs=5, batch_size=10, callbacks=[hooks])
    history = t.fit(X, y)
    epoch = lambda e: [("epoch_begin", e), ("batch_begin", 0), ("batch_end", 0), ("batch_begin", 1),
                       ("batch_end", 1), ("epoch_end", e, e + 1, e + 1)]       # recorded before callbacks run
    assert hooks.calls == [("train_begin", 0)] + epoch(0) + epoch(1) + [("train_end", 2)]
    assert t.epoch == 2 and len(history["loss"]) == 2
    assert history["extra"] == [None, 10.0]               # a key added later is padded for earlier epochs
    hooks.calls.clear()
    t.fit(X, y)                                           # stop_training is reset: the run goes on
    assert [c for c in hooks.calls if c[0] == "epoch_end"] == [("epoch_end", e, e + 1, e + 1) for e in (2, 3, 4)]
    assert history["extra"] == [None, 10.0, 20.0, 30.0, 40.0] and t.epoch == 5
    hooks.calls.clear()
    assert t.fit(X, y) is history                         # nothing left to train
    assert hooks.calls == [("train_begin", 5), ("train_end", 5)] and len(history["loss"]) == 5


def test_a_run_that_stopped_early_and_is_resumed_trains_no_further_but_ends_properly():
    X, y = _data(n=20)
    hooks = _Hooks()
    es = xd.EarlyStopping(patience=1)
    t = _trainer(epochs=5, batch_size=10, callbacks=[es, hooks])
    es.load_state_dict({"best": 0.0, "best_epoch": 0, "wait": 1, "stopped_epoch": 1}, {})
    t.epoch, t.history = 2, {"loss": [1.0, 1.0]}          # as restored from a checkpoint after the stop
    assert t.fit(X, y) is t.history
    assert hooks.calls == [("train_begin", 2), ("train_end", 2)] and t.global_step == 0


class _OwnRecord(xd.Callback):
    """Records its value in the history itself (one entry per epoch) and logs it too."""

    def on_epoch_end(self, trainer, epoch, logs):
        trainer.history.setdefault("own", []).append(float(epoch))
        logs["own"] = float(epoch)


def test_a_value_a_callback_records_itself_is_not_recorded_twice():
    X, y = _data(n=20)
    t = _trainer(epochs=3, batch_size=10, callbacks=[_OwnRecord()])
    assert t.fit(X, y)["own"] == [0.0, 1.0, 2.0]


def test_epoch_lines_show_the_logged_values(capsys):
    X, y = _data(n=20)
    t = _trainer(epochs=2, batch_size=10, progress=2)
    history = t.fit(X, y, validation=(X[:6], y[:6]))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for e, line in enumerate(lines):
        head = (f"epoch {e + 1}: loss {history['loss'][e]:.4f}  accuracy {history['accuracy'][e]:.4f}  "
                f"val_loss {history['val_loss'][e]:.4f}  val_accuracy {history['val_accuracy'][e]:.4f}  (")
        assert line.startswith(head) and re.fullmatch(r"[\d,]+ samples/s\)", line[len(head):])
    t = xd.Trainer(xd.Sequential(xd.Linear(4, 1, dtype="float64")), loss=xd.MSE(), optimizer=xd.SGD(lr=0.01),
                   epochs=1, progress=1)                  # no accuracy for a regression loss
    t.fit(X, X[:, :1])
    assert re.fullmatch(r"epoch 1: loss \d+\.\d{4}  \([\d,]+ samples/s\)\n", capsys.readouterr().out)


@pytest.mark.parametrize("batch_size", [1, 7, 40, 4096])
def test_evaluate_is_the_mean_over_all_rows_whatever_the_batch_size(batch_size):
    X, y = _data(n=40)
    net = xd.Sequential(xd.Linear(4, 8, dtype="float64"), xd.Dropout(0.5), xd.Linear(8, 3, dtype="float64"))
    t = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), epochs=1, progress=False)
    t.fit(X, y)
    Z = B.to_numpy(t.net.forward(X, train=False)[0])          # evaluation: dropout off
    got = t.evaluate(X, y, batch_size=batch_size)
    np.testing.assert_allclose(got["loss"], _softmax_xent(Z, y), rtol=1e-12)
    assert got["accuracy"] == np.mean(Z.argmax(axis=1) == y)
    got = xd.Trainer(t.net, loss=xd.MSE(), optimizer=xd.SGD(lr=0.1), progress=False).evaluate(X, Z + 1.0)
    assert got == {"loss": pytest.approx(1.0, rel=1e-12)}    # mean over rows and outputs; no accuracy


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("nan_check_every, poison_at, back_to, where", [
    (None, 45, 32, "step 46;"),                           # CPU: every step is checked; snapshots every 32
    (None, 70, 64, "step 71;"),
    (None, 64, 32, "step 65;"),                           # the snapshot of step 64 is not checked yet
    (40, 85, 40, "between steps 81 and 100;"),            # snapshots every max(32, 40) = 40 steps
])
def test_the_guard_defaults_check_every_step_on_the_cpu(nan_check_every, poison_at, back_to, where):
    X, y = _data(n=800, c=5)
    record = _Record()
    net = xd.Sequential(xd.Linear(4, 6, dtype="float64"), xd.Tanh(), xd.Dropout(0.3))
    t = xd.Trainer(net, loss=xd.HierarchicalSoftmax(6, 5, seed=1, init="xavier_uniform", dtype="float64"),
                   optimizer=xd.Adam(lr=0.01), batch_size=8, epochs=1, seed=2, progress=False,
                   nan_check_every=nan_check_every, callbacks=[record, _PoisonAt(poison_at)])
    with pytest.raises(xd.TrainingError, match=f"^loss became NaN or Inf at epoch 1, {where}"):
        t.fit(X, y)
    _assert_same_state(_state(t), record.states[back_to])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_numpy_sgd_updates_every_weight_inside_backprop(monkeypatch, momentum):
    """With SGD on NumPy and nothing reading gradients, each Linear weight's update runs inside
    backprop from ``dY`` and ``X`` (the gradient GEMM does the momentum step) at every step."""
    results = []
    real = xd.SGD.fused_update

    def spy(self, key, W, dY, X, **kw):
        done = real(self, key, W, dY, X, **kw)
        results.append((key, done, W.shape == (dY.shape[1], X.shape[1])))
        return done

    monkeypatch.setattr(xd.SGD, "fused_update", spy)
    X, y = _data(n=37, c=3)
    net = xd.Sequential(xd.Linear(4, 8, dtype="float64"), xd.ReLU(), xd.Linear(8, 3, dtype="float64"))
    t = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1, momentum=momentum), batch_size=8,
                   epochs=2, progress=False)
    t.fit(X, y)
    assert sorted(results) == sorted([("layers.0/W", True, True), ("layers.2/W", True, True)] * t.global_step)


# -- fit on the training rows only ---------------------------------------------------------------

@pytest.mark.parametrize("make", [xd.preprocessing.Standardizer, xd.preprocessing.MinMaxScaler,
                                  lambda: xd.preprocessing.PCA(3), xd.preprocessing.ZCA],
                         ids=["Standardizer", "MinMaxScaler", "PCA", "ZCA"])
def test_an_unfitted_preprocessing_is_fitted_on_the_training_rows_alone(make):
    """As scikit-learn's Pipeline.fit does: the transformer learns its statistics from the
    training data only, never from the validation data."""
    rng = np.random.default_rng(0)
    X, Xv = rng.standard_normal((40, 4)), rng.standard_normal((20, 4)) * 5 + 3
    y, yv = rng.integers(0, 3, 40), rng.integers(0, 3, 20)
    net = xd.Sequential(xd.Linear(make().fit(X).output_size(), 3, dtype="float64"), preprocessing=make())
    xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), epochs=1, batch_size=16,
               progress=False).fit(X, y, validation=(Xv, yv))
    got, want = net.preprocessing.get_state()[1], make().fit(X).get_state()[1]
    assert net.preprocessing.fitted and got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(B.to_numpy(got[k]), B.to_numpy(want[k]), err_msg=k)


def test_an_unfitted_preprocessing_cannot_be_fitted_from_a_stream():
    X, y = _data()
    net = xd.Sequential(xd.Linear(4, 3, dtype="float64"), preprocessing=xd.preprocessing.Standardizer())
    t = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), progress=False)
    with pytest.raises(ValueError, match=r"^the network's Standardizer is not fitted; fit it on the training data "
                                         r"before training on a BatchStream$"):
        t.fit(BatchStream(X, y, batch_size=8))
    assert not net.preprocessing.fitted and t.global_step == 0


def test_data_given_to_fit_is_named_in_refusals_before_the_preprocessing_is_fitted():
    _, y = _data()
    net = xd.Sequential(xd.Linear(4, 3, dtype="float64"), preprocessing=xd.preprocessing.Standardizer())
    t = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), progress=False)
    with pytest.raises(TypeError, match=r"^X must be an array"):
        t.fit(object(), y)
    assert not net.preprocessing.fitted


def test_validation_data_from_another_library_is_refused_before_training():
    torch = pytest.importorskip("torch")
    X, y = _data()
    t = _trainer()
    with pytest.raises(TypeError, match="different array libraries"):
        t.fit(X, y, validation=(torch.from_numpy(X[:10].copy()), torch.from_numpy(y[:10].copy())))
    assert t.global_step == 0 and t.history == {}


# -- evaluate takes raw data, as fit's validation does ------------------------------------------

def test_evaluate_passes_raw_data_through_the_fitted_preprocessing(backend):
    """``evaluate(X, y)`` on raw rows equals the ``val_loss``/``val_accuracy`` that ``fit``
    recorded for the same rows (both standardized with the training statistics), as Keras's
    ``Model.evaluate`` scores what ``fit(validation_data=...)`` scored."""
    rng = np.random.default_rng(0)
    X = rng.normal(50.0, 10.0, (40, 4))
    y = (X[:, 0] > 50).astype(np.int64) + (X[:, 1] > 50)
    Xv, yv = X[30:], y[30:]
    net = xd.Sequential(xd.Linear(4, 3, dtype="float64"), preprocessing=xd.preprocessing.Standardizer())
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), batch_size=8,
                         epochs=2, seed=0, progress=False)
    hist = trainer.fit(backend.asarray(X[:30]), backend.asarray(y[:30]),
                       validation=(backend.asarray(Xv), backend.asarray(yv)))
    got = trainer.evaluate(backend.asarray(Xv), backend.asarray(yv), batch_size=3)
    assert got["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-12)
    assert got["accuracy"] == pytest.approx(hist["val_accuracy"][-1], rel=1e-12)


def test_evaluate_refuses_bad_input_naming_it():
    net = xd.Sequential(xd.Linear(4, 3, dtype="float64"), preprocessing=xd.preprocessing.Standardizer())
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), progress=False)
    X, y = np.ones((5, 4)), np.zeros(5, dtype=np.int64)
    with pytest.raises(ValueError, match=r"^the network's Standardizer is not fitted: train the network"):
        trainer.evaluate(X, y)
    net.preprocessing = None
    with pytest.raises(ValueError, match="X has 3 features but the model expects 4"):
        trainer.evaluate(np.ones((5, 3)), y)
    with pytest.raises(ValueError, match="X has 5 samples but y has 4"):
        trainer.evaluate(X, y[:4])
    X[1, 2] = np.nan
    with pytest.raises(ValueError, match="X"):
        trainer.evaluate(X, y)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            trainer.evaluate(np.ones((5, 4)), y, batch_size=bad)
