"""Model and checkpoint files: what save refuses to write, what load, load_optimizer and
Trainer.restore refuse to read (one error type, nothing changed), optimizer and schedule
hyperparameters, temporary files and file modes."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save as st_save, save_file

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn.layers.base import LAYERS, layer_to_config
from xpdnn.optim.adaptive import Adagrad, Adam, AdamW, RMSProp
from xpdnn.optim.schedules import (CosineWarmup, ExponentialDecay, InverseTimeDecay, ReduceLROnPlateau,
                                   StepDecay)
from xpdnn.optim.sgd import SGD

# the tests still run (and fail for the right reasons) where the class does not exist yet
ModelFileError = getattr(xd, "ModelFileError", ValueError)


def _blobs(seed=0, n=60):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)
    return X, y


def _trainer(epochs=2, seed=7, optimizer=None, callbacks=None, fit_epochs=None):
    """A trainer with a bit of everything a checkpoint holds: a parameterized loss, Adam state,
    BatchNorm buffers, preprocessing statistics and callbacks with state."""
    X, y = _blobs()
    net = xd.Sequential(xd.Linear(5, 8, seed=1), xd.BatchNorm1d(8), xd.ReLU())
    net.preprocessing = xd.preprocessing.Standardizer().fit(X)
    callbacks = [xd.EarlyStopping(patience=10), StepDecay(1, gamma=0.5)] if callbacks is None else callbacks
    t = xd.Trainer(net, loss=xd.HierarchicalSoftmax(8, 3, seed=2), optimizer=optimizer or Adam(lr=0.01),
                   batch_size=16, epochs=epochs, seed=seed, progress=False, callbacks=callbacks)
    if fit_epochs:
        t.epochs = fit_epochs
        t.fit(X, y, validation=(X[:20], y[:20]))
        t.epochs = epochs
    return t


def _snapshot(t):
    """Everything restore may change, as host copies."""
    host = lambda arrays: {k: B.to_numpy(v).copy() for k, v in arrays.items()}
    cbs = []
    for cb in t.callbacks:
        d = {k: v for k, v in vars(cb).items() if k != "best_state"}
        cbs.append((copy.deepcopy(d), None if getattr(cb, "best_state", None) is None else host(cb.best_state)))
    return {"net": host(t.net.state_arrays()), "loss": host(t.loss.state_arrays()),
            "opt": {k: host(s) for k, s in t.optimizer.state.items()}, "opt_steps": t.optimizer.steps,
            "lr": t.optimizer.lr, "epoch": t.epoch, "global_step": t.global_step, "seed": t.seed,
            "rng": t.rng.state_dict(), "history": copy.deepcopy(t.history), "callbacks": cbs,
            "fresh": getattr(t.net, "fresh", None)}


def _assert_same(a, b):
    def eq(x, y, where):
        if isinstance(x, dict):
            assert isinstance(y, dict) and set(x) == set(y), where
            for k in x:
                eq(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=where)
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), where
            for i, (p, q) in enumerate(zip(x, y)):
                eq(p, q, f"{where}[{i}]")
        elif isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), where
        else:
            assert x == y, where
    eq(a, b, "trainer")


_SAVER: dict = {}


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "ckpt.xpd"
    saver = _trainer(fit_epochs=2)
    saver.save(path)
    _SAVER["snapshot"] = _snapshot(saver)
    return path


def _meta_and_tensors(path):
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["xpdnn"])
    return meta, load_file(str(path))


def _write(path, meta_text, tensors):
    save_file(tensors, str(path), metadata={"xpdnn": meta_text})


def _readers(path):
    """Each reader as a thunk; restore goes into a trainer whose state differs from the file's."""
    return {"load": lambda: xd.load(path), "load_optimizer": lambda: xd.load_optimizer(path),
            "restore": lambda: _trainer(fit_epochs=1).restore(path)}


def _refused_everywhere(path, match=None):
    for name, read in _readers(path).items():
        with pytest.raises(ModelFileError, match=match) as info:
            read()
        assert type(info.value).__name__ == "ModelFileError", name
        assert str(path) in str(info.value), name


# -- A: save never writes a file load would refuse --------------------------------------------------------
def _poison(t, what):
    nan = float("nan")
    if what == "weight":
        t.net.layers[0].params["W"][0, 0] = nan
    elif what == "buffer":
        t.net.layers[1].buffers["running_var"][0] = nan
    elif what == "optimizer-state":
        next(iter(t.optimizer.state.values()))["exp_avg"][...] = nan
    elif what == "optimizer-lr":
        t.optimizer.lr = nan
    elif what == "optimizer-lr-inf":
        t.optimizer.lr = math.inf
    elif what == "optimizer-steps":
        t.optimizer.steps = -1
    elif what == "preprocessing":
        t.net.preprocessing._stats["mean"][0] = nan
    elif what == "loss":
        t.loss.params["W"][0, 0] = nan
    elif what == "callback-arrays":
        next(iter(t.callbacks[0].best_state.values())).flat[0] = nan
    elif what == "epoch":
        t.epoch = -1
    elif what == "rng":
        t.rng.counter = -5
    elif what == "history":
        t.history = {"loss": "not a list"}
    elif what == "architecture":
        t.net.layers[0].init = "no-such-initializer"      # load could not rebuild the layer
    elif what == "callback-state":
        t.callbacks[1].lr0 = float("nan")


POISONS = ["weight", "buffer", "optimizer-state", "optimizer-lr", "optimizer-lr-inf", "optimizer-steps",
           "preprocessing", "loss", "callback-arrays", "epoch", "rng", "history", "architecture",
           "callback-state"]


@pytest.mark.parametrize("what", POISONS)
def test_save_refuses_what_load_would_refuse_and_keeps_the_old_file(tmp_path, what):
    path = tmp_path / "m.xpd"
    t = _trainer(fit_epochs=1)
    t.save(path)
    before = path.read_bytes()
    _poison(t, what)
    with pytest.raises(ModelFileError, match=re.escape(str(path))):
        t.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xpd"]
    xd.load(path)                                     # the old file is still good


def test_save_of_a_plain_model_with_a_nan_weight_is_refused(tmp_path):
    path = tmp_path / "m.xpd"
    net = xd.Sequential(xd.Linear(3, 2))
    xd.save(net, path)
    before = path.read_bytes()
    net.layers[0].params["W"][1, 1] = np.nan
    with pytest.raises(ModelFileError, match="NaN"):
        xd.save(net, path)
    assert path.read_bytes() == before


# -- A: restore is all or nothing ---------------------------------------------------------------------------
def test_restore_with_other_callbacks_changes_nothing(tmp_path):
    path = tmp_path / "ck.xpd"
    _trainer(fit_epochs=2).save(path)
    t = _trainer(fit_epochs=1, callbacks=[xd.EarlyStopping(patience=10), ExponentialDecay(0.5)])
    before = _snapshot(t)
    with pytest.raises(ModelFileError, match="callback 1 in the checkpoint is a StepDecay"):
        t.restore(path)
    _assert_same(before, _snapshot(t))


def test_restore_of_another_optimizer_type_changes_nothing(tmp_path):
    path = tmp_path / "ck.xpd"
    _trainer(fit_epochs=2).save(path)                     # Adam
    t = _trainer(fit_epochs=1, optimizer=SGD(lr=0.1, momentum=0.9))
    before = _snapshot(t)
    with pytest.raises(ModelFileError, match="Adam"):
        t.restore(path)
    _assert_same(before, _snapshot(t))


def test_restore_into_another_architecture_changes_nothing(tmp_path):
    path = tmp_path / "ck.xpd"
    _trainer(fit_epochs=2).save(path)
    X, y = _blobs()
    net = xd.Sequential(xd.Linear(5, 8, seed=1), xd.BatchNorm1d(8), xd.ReLU(), xd.Linear(8, 8), xd.ReLU())
    net.preprocessing = xd.preprocessing.Standardizer().fit(X)
    t = xd.Trainer(net, loss=xd.HierarchicalSoftmax(8, 3), optimizer=Adam(lr=0.01), epochs=1, progress=False,
                   callbacks=[xd.EarlyStopping(patience=10), StepDecay(1, gamma=0.5)])
    t.fit(X, y, validation=(X[:20], y[:20]))
    before = _snapshot(t)
    with pytest.raises(ModelFileError, match="missing"):
        t.restore(path)
    _assert_same(before, _snapshot(t))


@pytest.mark.parametrize("field,value", [("epoch", -1), ("epoch", "2"), ("global_step", -3), ("seed", 2 ** 64),
                                         ("rng", {"seed": 0}), ("rng", {"seed": 0, "counter": -1}),
                                         ("history", []), ("callbacks", {})])
def test_restore_with_a_bad_trainer_field_changes_nothing(tmp_path, good_file, field, value):
    meta, tensors = _meta_and_tensors(good_file)
    meta["trainer"][field] = value
    path = tmp_path / "bad.xpd"
    _write(path, json.dumps(meta), tensors)
    t = _trainer(fit_epochs=1)
    before = _snapshot(t)
    with pytest.raises(ModelFileError):
        t.restore(path)
    _assert_same(before, _snapshot(t))


@pytest.mark.parametrize("state", [{"best": "low", "best_epoch": 0, "wait": 0},
                                   {"best": 1.0, "best_epoch": -1, "wait": 0},
                                   {"best": 1.0, "best_epoch": 0, "wait": 2.5}, {"best": 1.0}])
def test_restore_with_a_bad_callback_state_changes_nothing(tmp_path, good_file, state):
    meta, tensors = _meta_and_tensors(good_file)
    meta["trainer"]["callbacks"][0]["state"] = state
    path = tmp_path / "bad.xpd"
    _write(path, json.dumps(meta), tensors)
    t = _trainer(fit_epochs=1)
    before = _snapshot(t)
    with pytest.raises(ModelFileError, match="callback 0"):
        t.restore(path)
    _assert_same(before, _snapshot(t))


def test_a_good_checkpoint_still_restores_everything(tmp_path, good_file):
    t = _trainer(fit_epochs=1)
    t.restore(good_file)
    _assert_same(_SAVER["snapshot"], _snapshot(t))


# -- A: optimizer state from a file, and hyperparameters at construction -----------------------------------
def _optimizer_case(meta, tensors, case):
    opt = {k: v for k, v in tensors.items() if k.startswith("optim/")}
    key = sorted(opt)[0]
    if case == "lr-negative":
        meta["optimizer"]["lr"] = -0.1
    elif case == "lr-nan":
        meta["optimizer"]["lr"] = float("nan")
    elif case == "lr-inf":
        meta["optimizer"]["lr"] = float("inf")
    elif case == "lr-missing":
        del meta["optimizer"]["lr"]
    elif case == "steps-negative":
        meta["optimizer"]["steps"] = -1
    elif case == "steps-float":
        meta["optimizer"]["steps"] = 2.5
    elif case == "moment-nan":
        tensors[key] = np.full_like(tensors[key], np.nan)
    elif case == "moment-inf":
        tensors[key] = tensors[key].copy()
        tensors[key].flat[0] = np.inf
    elif case == "wrong-shape":
        tensors[key] = np.zeros(tensors[key].shape + (2,), dtype=tensors[key].dtype)
    elif case == "unknown-slot":
        tensors[key.rsplit("/", 1)[0] + "/velocity"] = tensors[key].copy()
    elif case == "missing-slot":
        del tensors[key]
    elif case == "unknown-parameter":
        tensors["optim/layers.9/W/exp_avg"] = tensors[key].copy()
        tensors["optim/layers.9/W/exp_avg_sq"] = tensors[key].copy()
    elif case == "adam-into-sgd":
        meta["optimizer"]["type"] = "SGD"
        meta["optimizer"]["config"] = {"lr": 0.1, "momentum": 0.9}
    elif case == "config-lr-inf":
        meta["optimizer"]["config"]["lr"] = float("inf")
    elif case == "config-betas":
        meta["optimizer"]["config"]["betas"] = [0.9, float("nan")]
    elif case == "config-unknown-key":
        meta["optimizer"]["config"]["momentum"] = 0.9
    elif case == "integer-dtype":
        tensors[key] = tensors[key].astype(np.int64)


OPTIMIZER_CASES = ["lr-negative", "lr-nan", "lr-inf", "lr-missing", "steps-negative", "steps-float", "moment-nan",
                   "moment-inf", "wrong-shape", "unknown-slot", "missing-slot", "unknown-parameter",
                   "adam-into-sgd", "config-lr-inf", "config-betas", "config-unknown-key", "integer-dtype"]


@pytest.mark.parametrize("case", OPTIMIZER_CASES)
def test_bad_optimizer_state_in_a_file_is_refused(tmp_path, good_file, case):
    meta, tensors = _meta_and_tensors(good_file)
    _optimizer_case(meta, tensors, case)
    path = tmp_path / "bad.xpd"
    _write(path, json.dumps(meta), tensors)
    _refused_everywhere(path)


@pytest.mark.parametrize("case", ["lr-negative", "lr-nan", "steps-negative", "moment-nan", "wrong-shape",
                                  "unknown-slot", "missing-slot", "other-type"])
def test_load_state_dict_checks_before_it_changes_anything(case):
    net = xd.Sequential(xd.Linear(3, 2, seed=1))
    opt = Adam(lr=0.01)
    net.layers[0].grads["W"][...] = 1.0
    net.layers[0].grads["b"][...] = 1.0
    opt.step(net)
    meta, arrays = opt.state_dict()
    arrays = {k: v.copy() for k, v in arrays.items()}
    if case == "lr-negative":
        meta["lr"] = -1.0
    elif case == "lr-nan":
        meta["lr"] = float("nan")
    elif case == "steps-negative":
        meta["steps"] = -2
    elif case == "moment-nan":
        arrays["layers.0/W/exp_avg"][0, 0] = np.nan
    elif case == "wrong-shape":
        arrays["layers.0/W/exp_avg"] = np.zeros((5, 5), dtype=np.float32)
    elif case == "unknown-slot":
        arrays["layers.0/W/momentum_buffer"] = arrays["layers.0/W/exp_avg"].copy()
    elif case == "missing-slot":
        del arrays["layers.0/W/exp_avg_sq"]
    target = SGD(lr=0.1, momentum=0.9) if case == "other-type" else Adam(lr=0.02)
    target.state = {"x/W": {"exp_avg": np.ones(2)}}
    state, steps, lr = copy.deepcopy(target.state), target.steps, target.lr
    with pytest.raises(ValueError) as info:
        target.load_state_dict(meta, arrays)
    assert "\n" not in str(info.value)
    assert target.steps == steps and target.lr == lr and set(target.state) == set(state)
    if case == "wrong-shape":
        with pytest.raises(ValueError, match="shape"):
            Adam(lr=0.01).load_state_dict(*opt.state_dict(), shapes={"layers.0/W": (3, 3), "layers.0/b": (2,)})


BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), "0.1", None, True]
HYPERPARAMETERS = [
    (SGD, "lr", [-0.1, 0.0]), (SGD, "momentum", [-0.1, 1.0]), (SGD, "weight_decay", [-1e-4]),
    (SGD, "dampening", [-0.5, 1.5]),
    (Adagrad, "lr", [-1.0]), (Adagrad, "lr_decay", [-1.0]), (Adagrad, "weight_decay", [-1.0]),
    (Adagrad, "initial_accumulator_value", [-1.0]), (Adagrad, "eps", [-1.0]),
    (RMSProp, "lr", [0.0]), (RMSProp, "alpha", [-0.1, 1.0]), (RMSProp, "eps", [-1e-8]),
    (RMSProp, "weight_decay", [-1.0]), (RMSProp, "momentum", [1.0]),
    (Adam, "lr", [-1.0]), (Adam, "eps", [-1e-8]), (Adam, "weight_decay", [-1.0]),
    (AdamW, "lr", [0.0]), (AdamW, "eps", [-1.0]), (AdamW, "weight_decay", [-0.1]),
]


@pytest.mark.parametrize("cls,name,extra_bad", HYPERPARAMETERS, ids=[f"{c.__name__}-{n}" for c, n, _ in HYPERPARAMETERS])
def test_every_optimizer_hyperparameter_is_checked_at_construction(cls, name, extra_bad):
    for bad in BAD_NUMBERS + extra_bad:
        with pytest.raises(ValueError, match=re.escape(name)) as info:
            cls(**{name: bad})
        assert "\n" not in str(info.value), (name, bad)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_adam_betas_are_checked(cls):
    for bad in [(float("nan"), 0.9), (0.9, float("inf")), (-0.1, 0.9), (0.9, 1.0), (0.9,), "ab", 0.9, None]:
        with pytest.raises(ValueError, match="betas"):
            cls(betas=bad)


@pytest.mark.parametrize("cls,name", [(SGD, "nesterov"), (RMSProp, "centered"), (Adam, "amsgrad")])
def test_flags_are_true_or_false(cls, name):
    for bad in ["yes", 2, None, 0.5]:
        with pytest.raises(ValueError, match=name):
            cls(momentum=0.9, **{name: bad}) if cls is SGD else cls(**{name: bad})


SCHEDULES = [
    (lambda v: StepDecay(v), "step_size", [0, -1, 2.5]), (lambda v: StepDecay(2, gamma=v), "gamma", [0.0, -1.0]),
    (lambda v: StepDecay(2, lr0=v), "lr0", [0.0, -1.0]),
    (lambda v: ExponentialDecay(v), "gamma", [0.0]), (lambda v: InverseTimeDecay(v), "k", [-1.0]),
    (lambda v: CosineWarmup(v), "total", [0, 1.5]), (lambda v: CosineWarmup(10, warmup=v), "warmup", [-1, 10]),
    (lambda v: CosineWarmup(10, min_lr=v), "min_lr", [-1.0]),
    (lambda v: ReduceLROnPlateau(factor=v), "factor", [0.0, 1.0]),
    (lambda v: ReduceLROnPlateau(patience=v), "patience", [-1]),
    (lambda v: ReduceLROnPlateau(cooldown=v), "cooldown", [-1]),
    (lambda v: ReduceLROnPlateau(min_lr=v), "min_lr", [-1.0]),
    (lambda v: ReduceLROnPlateau(threshold=v), "threshold", [-1.0]),
]


@pytest.mark.parametrize("make,name,extra_bad", SCHEDULES, ids=[f"{i}-{s[1]}" for i, s in enumerate(SCHEDULES)])
def test_every_schedule_hyperparameter_is_checked_at_construction(make, name, extra_bad):
    for bad in [v for v in BAD_NUMBERS if not (name == "lr0" and v is None)] + extra_bad:
        with pytest.raises(ValueError, match=re.escape(name)) as info:
            make(bad)
        assert "\n" not in str(info.value), (name, bad)


def test_schedule_state_is_checked_before_it_is_loaded():
    s = ReduceLROnPlateau(lr0=0.1)
    s.values = [1.0, 2.0]
    for bad in [{"lr0": float("nan")}, {"lr0": -1.0}, {"lr0": "x"}, {"lr0": 0.1, "values": "abc"},
                {"lr0": 0.1, "values": [1.0, None]}, "state"]:
        with pytest.raises(ValueError):
            s.load_state_dict(bad, {})
        assert s.lr0 == 0.1 and s.values == [1.0, 2.0]


# -- A: temporary files and modes ----------------------------------------------------------------------------
def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    path = tmp_path / "m.xpd"
    code = ("import os, xpdnn as xd\n"
            "os.fsync = lambda fd: os._exit(3)\n"
            f"xd.save(xd.Sequential(xd.Linear(3, 2)), {str(path)!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    left = _temporaries(tmp_path)
    assert len(left) == 1 and not path.exists()
    # a live writer's temporary of the same target, and a dead writer's temporary of another target
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = f".m.xpd.{sleeper.pid}.0123abcd.tmp"
        (tmp_path / live).write_bytes(b"partial")
        dead_pid = int(re.search(r"\.(\d+)\.[0-9a-f]+\.tmp$", left[0]).group(1))
        other = f".n.xpd.{dead_pid}.0123abcd.tmp"
        (tmp_path / other).write_bytes(b"partial")
        xd.save(xd.Sequential(xd.Linear(3, 2)), path)
        assert _temporaries(tmp_path) == sorted([live, other])
        assert str(sleeper.pid) in live and left[0] not in _temporaries(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    xd.load(path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "m.xpd"
        xd.save(xd.Sequential(xd.Linear(3, 2)), path)
        with open(tmp_path / "reference", "wb"):
            pass
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
    assert (path.stat().st_mode & 0o777) == ((tmp_path / "reference").stat().st_mode & 0o777)


# -- B: untrusted files ------------------------------------------------------------------------------------
def _huge_file(path, tensors=None):
    meta = {"format": "xpdnn/1", "architecture": {"type": "Sequential", "config": {"layers": [
        {"type": "Linear", "config": {"n_in": 12000, "n_out": 12000}}]}}}
    path.write_bytes(st_save(tensors or {}, metadata={"xpdnn": json.dumps(meta)}))


@pytest.mark.parametrize("tensors", [None, {"layers.0.W": np.zeros((2, 2), np.float32),
                                            "layers.0.b": np.zeros(2, np.float32)}], ids=["none", "tiny"])
def test_a_tiny_file_declaring_a_huge_layer_fails_fast_and_small(tmp_path, tensors):
    path = tmp_path / "huge.xpd"
    _huge_file(path, tensors)
    assert path.stat().st_size < 1000
    declared = 12000 * 12000 * 4
    for name, read in _readers(path).items():
        if name == "restore":
            t = _trainer(fit_epochs=1)
            read = lambda: t.restore(path)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with pytest.raises(ModelFileError, match="layers.0.W"):
                read()
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < declared / 100, (name, peak)
        assert seconds < 0.5, (name, seconds)


def test_model_file_error_is_one_documented_value_error():
    assert issubclass(xd.ModelFileError, ValueError)
    assert xd.ModelFileError is xd.io.ModelFileError
    assert "ModelFileError" in xd.io.__doc__


def _custom_layer(n):
    """A layer type registered outside xpdnn (its state is read by building it); taken out of
    the global registry again, so no other test sees it."""
    class AuditCustomStateLayer(xd.Layer):
        def __init__(self, n: int = 3, dtype: str = "float32"):
            super().__init__(dtype)
            self.n = int(n)
            self.params["w"] = np.ones((self.n, 2), dtype=dtype)
            self.buffers["s"] = np.zeros((self.n,), dtype=dtype)

        def get_config(self):
            return {"n": self.n, "dtype": self.dtype}

    return AuditCustomStateLayer(n)


@pytest.fixture
def unregister_custom_layers():
    yield
    LAYERS.pop("AuditCustomStateLayer", None)


@pytest.mark.parametrize("layer", [
    lambda: xd.Linear(3, 4), lambda: xd.Linear(3, 4, use_bias=False), lambda: xd.DropConnect(4, 2, rate=0.3),
    lambda: xd.Maxout(3, 4, pieces=3), lambda: xd.WeightNormLinear(3, 5), lambda: xd.CosineLinear(3, 2),
    lambda: xd.BatchNorm1d(6), lambda: xd.LayerNorm(4), lambda: xd.PReLU(), lambda: xd.PReLU(5),
    lambda: xd.HierarchicalSoftmax(4, 7), lambda: xd.Dropout(0.3), lambda: xd.RReLU(), xd.GaussianNoise,
    lambda: _custom_layer(4),
    lambda: xd.Sequential(xd.Linear(3, 4), xd.Sequential(xd.BatchNorm1d(4), xd.PReLU(4)), xd.Tanh()),
], ids=lambda f: "")
def test_state_shapes_from_a_config_equal_the_built_layer(layer, unregister_custom_layers):
    from xpdnn.layers.base import state_shapes
    layer = layer()
    got = {(f"{p}.{n}" if p else n): shape for p, n, _, shape in state_shapes(layer_to_config(layer))}
    want = {k: tuple(v.shape) for k, v in layer.state_arrays().items()}
    assert got == want
    kinds = {(p, n): kind for p, n, kind, _ in state_shapes(layer_to_config(layer))}
    assert {(p, n) for p, _, n in layer.parameters()} == {k for k, v in kinds.items() if v == "param"}


def test_every_builtin_layer_with_a_rule_or_stateless_is_covered():
    from xpdnn.layers.base import STATE_RULES, STATELESS
    builtin = {n for n, c in LAYERS.items() if c.__module__.startswith("xpdnn.") and not n.startswith("_")}
    assert set(STATE_RULES) | STATELESS <= builtin
    # a built-in layer without a rule would be built (and its weights drawn) to read its state
    assert not builtin - {"Sequential"} - set(STATE_RULES) - STATELESS, "add a rule to layers.base.STATE_RULES"


def test_a_private_base_class_in_a_file_is_refused_without_building_it(tmp_path):
    meta = {"format": "xpdnn/1", "architecture": {"type": "_Affine",
                                                  "config": {"n_features": 10 ** 10, "eps": 1e-5, "dtype": "float32"}}}
    path = tmp_path / "private.xpd"
    path.write_bytes(st_save({}, metadata={"xpdnn": json.dumps(meta)}))
    with pytest.raises(ModelFileError, match="unknown layer type"):
        xd.load(path)


# -- B: fuzzing the metadata ----------------------------------------------------------------------------------
def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _set(meta, path, value):
    meta = copy.deepcopy(meta)
    if not path:
        return value
    node = meta
    for p in path[:-1]:
        node = node[p]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return meta


_DELETE = object()
_RAW = "__raw__"
REPLACEMENTS = {"delete": _DELETE, "null": None, "string": "x", "list": [], "dict": {}, "negative": -1,
                "true": True, "float": 0.5, "nan": float("nan"), "inf": float("inf"), "big": 10 ** 30,
                "deep": "DEEP", "huge-int": "HUGEINT", "too-many-digits": "DIGITS", "unknown-layer": "LAYER"}
RAW = {"DEEP": "[" * 100000 + "]" * 100000, "HUGEINT": "1" + "0" * 400, "DIGITS": "9" * 5000,
       "LAYER": json.dumps({"type": "NoSuchLayer", "config": {}})}


def _cases(meta):
    for path in _paths(meta):
        if not path:
            continue
        for label, value in REPLACEMENTS.items():
            if value is _DELETE and not isinstance(path[-1], str):
                continue
            if isinstance(value, str) and value in RAW:
                text = json.dumps(_set(meta, path, _RAW + value)).replace(json.dumps(_RAW + value), RAW[value])
            else:
                text = json.dumps(_set(meta, path, value))
            yield f"{'.'.join(map(str, path))}={label}", text


# a sample of the mutations every reader must refuse
MUST_FAIL = ["format=delete", "format=string", "format=null", "architecture=delete", "architecture=string",
             "architecture.type=string", "architecture.type=unknown-layer", "architecture.config.layers=dict",
             "architecture.config.layers.0=unknown-layer", "architecture.config.layers.0.config.n_in=huge-int",
             "architecture.config.layers.0.config.n_in=negative", "architecture.config.layers.0.config.n_in=null",
             "architecture.config.layers.0.config.n_in=float", "architecture.config.layers.0.config.n_out=big",
             "architecture.config.layers.0.config.dtype=string", "architecture.config.layers.1.config=list",
             "architecture.config.layers.0.config.n_in=deep", "architecture.config.layers=too-many-digits",
             "preprocessing=delete", "preprocessing=string", "preprocessing.type=string",
             "preprocessing.n_features=string", "preprocessing.config=list",
             "optimizer=delete", "optimizer=list", "optimizer.type=null", "optimizer.type=string",
             "optimizer.config=null", "optimizer.config.lr=inf", "optimizer.config.lr=nan",
             "optimizer.config.betas=string", "optimizer.config.betas.1=true", "optimizer.config.eps=huge-int",
             "optimizer.steps=negative", "optimizer.steps=nan", "optimizer.steps=delete", "optimizer.lr=negative",
             "optimizer.lr=nan", "optimizer.lr=inf", "optimizer.lr=delete", "optimizer.lr=string",
             "optimizer.lr=huge-int", "trainer=string", "trainer=delete", "trainer.epoch=negative",
             "trainer.epoch=string", "trainer.epoch=delete", "trainer.epoch=float", "trainer.seed=big",
             "trainer.rng=delete", "trainer.rng.counter=negative", "trainer.rng.seed=null",
             "trainer.global_step=negative", "trainer.history=list", "trainer.history.loss=dict",
             "trainer.callbacks=dict", "trainer.callbacks.0=string", "trainer.callbacks.0.state=string",
             "trainer.callbacks.0.type=null", "trainer.callbacks.0.state=null", "trainer.rng=deep",
             "optimizer.steps=huge-int", "trainer.epoch=huge-int", "trainer.global_step=huge-int"]


@pytest.mark.slow
def test_fuzzed_metadata_raises_model_file_error_and_nothing_else(tmp_path, good_file):
    meta, tensors = _meta_and_tensors(good_file)
    restorer = _trainer(fit_epochs=1)
    before = _snapshot(restorer)
    outcomes: dict = {}
    for i, (label, text) in enumerate(_cases(meta)):
        path = tmp_path / f"f{i}.xpd"
        _write(path, text, tensors)
        result = {}
        for name, read in (("load", lambda: xd.load(path)), ("load_optimizer", lambda: xd.load_optimizer(path)),
                           ("restore", lambda: restorer.restore(path))):
            try:
                read()
                result[name] = "ok"
            except ModelFileError as exc:
                assert type(exc).__name__ == "ModelFileError" and str(path) in str(exc), (label, name, exc)
                result[name] = "refused"
            except Exception as exc:            # the defect: anything else leaking out of a reader
                raise AssertionError(f"{label}: {name} raised {type(exc).__name__}: {str(exc)[:300]}") from exc
            if name == "restore":
                if result[name] == "refused":
                    _assert_same(before, _snapshot(restorer))
                else:
                    restorer = _trainer(fit_epochs=1)
                    before = _snapshot(restorer)
        outcomes[label] = result
        path.unlink()
    missing = [m for m in MUST_FAIL if m not in outcomes]
    assert not missing, missing
    accepted = {m: r for m, r in outcomes.items() if m in MUST_FAIL and set(r.values()) != {"refused"}}
    assert not accepted, accepted
    refused = sum(r["load"] == "refused" for r in outcomes.values())
    assert refused > len(outcomes) // 2, (refused, len(outcomes))


@pytest.mark.parametrize("prefix", ["layers.0.", "layers.1.running", "optim/", "preprocessing/", "loss/",
                                    "callbacks/0/"])
def test_a_non_finite_tensor_anywhere_is_refused(tmp_path, good_file, prefix):
    meta, tensors = _meta_and_tensors(good_file)
    name = sorted(k for k in tensors if k.startswith(prefix))[0]
    for bad in (np.nan, np.inf):
        tensors[name] = tensors[name].copy()
        tensors[name].flat[-1] = bad
        path = tmp_path / "bad.xpd"
        _write(path, json.dumps(meta), tensors)
        _refused_everywhere(path, match="NaN or Inf")


@pytest.mark.parametrize("damage", ["truncate-data", "truncate-header", "random-bytes", "empty", "header-length",
                                    "no-metadata", "metadata-not-json", "metadata-not-object", "format-2",
                                    "unexpected-tensor", "tensor-shape", "int-weights", "orphan-callback-tensor",
                                    "bad-callback-index"])
def test_damaged_files_raise_model_file_error(tmp_path, good_file, damage):
    blob = good_file.read_bytes()
    meta, tensors = _meta_and_tensors(good_file)
    path = tmp_path / "bad.xpd"
    rng = np.random.default_rng(0)
    if damage == "truncate-data":
        path.write_bytes(blob[:-17])
    elif damage == "truncate-header":
        path.write_bytes(blob[:40])
    elif damage == "random-bytes":
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "header-length":
        path.write_bytes((2 ** 62).to_bytes(8, "little") + blob[8:])
    elif damage == "no-metadata":
        save_file(tensors, str(path))
    elif damage == "metadata-not-json":
        _write(path, json.dumps(meta)[:-5], tensors)
    elif damage == "metadata-not-object":
        _write(path, "[1, 2]", tensors)
    elif damage == "format-2":
        meta["format"] = "xpdnn/2"
        _write(path, json.dumps(meta), tensors)
    elif damage == "unexpected-tensor":
        tensors["layers.7.W"] = np.zeros(3, np.float32)
        _write(path, json.dumps(meta), tensors)
    elif damage == "tensor-shape":
        tensors["layers.0.W"] = np.zeros((8, 6), np.float32)
        _write(path, json.dumps(meta), tensors)
    elif damage == "int-weights":
        tensors["layers.0.W"] = tensors["layers.0.W"].astype(np.int32)
        _write(path, json.dumps(meta), tensors)
    elif damage == "orphan-callback-tensor":
        tensors["callbacks/5/x"] = np.zeros(2, np.float32)
        _write(path, json.dumps(meta), tensors)
    elif damage == "bad-callback-index":
        tensors["callbacks/zero/x"] = np.zeros(2, np.float32)
        _write(path, json.dumps(meta), tensors)
    _refused_everywhere(path, match="format" if damage == "format-2" else None)
