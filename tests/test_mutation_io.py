"""Properties of model and checkpoint files (:mod:`xpdnn.io`) that mutation testing showed no
test asserted (tests/MUTATION.md): every refusal of a malformed file names the file and the
problem (the format version, the architecture against the tensors' header, the trainer's
fields and their integer ranges, callback tensors, non-finite values anywhere in a tensor),
the boundaries of those ranges are accepted, and what each reader gives back.

The files are safetensors files (https://huggingface.co/docs/safetensors): a JSON header of
tensor names, dtypes and shapes with a string metadata map, then the raw data."""

from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn.io import ModelFileError, load_checkpoint, read_checkpoint
from xpdnn.optim.schedules import StepDecay


def _blobs(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, rng.integers(0, 3, n).astype(np.int64)


def _trainer(callbacks=None, fit=True):
    """A checkpoint with one of everything: preprocessing statistics, BatchNorm buffers, a loss
    with parameters, Adam's slots, callbacks with state and arrays."""
    X, y = _blobs()
    net = xd.Sequential(xd.Linear(3, 4, seed=1), xd.BatchNorm1d(4), xd.ReLU())
    net.preprocessing = xd.preprocessing.Standardizer().fit(X)
    callbacks = [xd.EarlyStopping(patience=5), StepDecay(1, gamma=0.5)] if callbacks is None else callbacks
    t = xd.Trainer(net, loss=xd.HierarchicalSoftmax(4, 3, seed=2), optimizer=xd.Adam(lr=0.01), batch_size=16,
                   epochs=1, progress=False, callbacks=callbacks)
    if fit:
        t.fit(X, y, validation=(X[:10], y[:10]))
    return t


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "good.xpd"
    _trainer().save(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["xpdnn"])
    return path, meta, load_file(str(path))


def _write(path, meta, tensors):
    text = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(tensors, str(path), metadata={"xpdnn": text})
    return path


def _refused(path, problem):
    """Every reader refuses the file with ModelFileError '<path>: <problem>'."""
    for read in (xd.load, read_checkpoint, xd.load_optimizer):
        with pytest.raises(ModelFileError) as info:
            read(path)
        assert type(info.value) is ModelFileError and isinstance(info.value, ValueError)
        assert re.match(re.escape(str(path)) + ": " + problem, str(info.value)), str(info.value)


def _edit(meta, where, value):
    meta = copy.deepcopy(meta)
    node = meta
    for key in where[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[where[-1]]
    else:
        node[where[-1]] = value
    return meta


class _Deleted:
    """Marks a field to remove; its fixed repr keeps the test ids the same from run to run
    (mutmut and pytest's --lf select tests by id)."""

    def __repr__(self):
        return "<deleted>"


_DELETE = _Deleted()
_I63, _U64 = 2 ** 63, 2 ** 64

# (where in the metadata, new value, what the message says); messages quoted in full where short
METADATA_CASES = [
    (("format",), "xpdnn/2", r"unsupported xpdnn file format 'xpdnn/2' \(expected xpdnn/1\)$"),
    (("format",), _DELETE, r"unsupported xpdnn file format None \(expected xpdnn/1\)$"),
    (("format",), "x" * 100, r"unsupported xpdnn file format 'x{59}\.\.\. \(expected xpdnn/1\)$"),
    (("format",), "x" * 58, r"unsupported xpdnn file format 'x{58}' \(expected xpdnn/1\)$"),   # 60 characters: whole
    (("preprocessing", "type"), "x" * 500,
     r"the preprocessing is invalid \(ValueError: (?=unknown transformer type 'x).{300}\.\.\.\)$"),
    (("architecture",), _DELETE, r"the metadata has no architecture$"),
    (("architecture", "type"), "NoSuchLayer", r"the architecture is invalid \("),
    (("preprocessing",), "standardize", r"preprocessing must be a JSON object, got str$"),
    (("optimizer",), [], r"optimizer must be a JSON object, got list$"),
    (("trainer",), "t", r"trainer must be a JSON object, got str$"),
    (("trainer", "epoch"), _DELETE, r"the trainer metadata has no 'epoch'$"),
    (("trainer", "seed"), _DELETE, r"the trainer metadata has no 'seed'$"),
    (("trainer", "rng"), _DELETE, r"the trainer metadata has no 'rng'$"),
    (("trainer", "epoch"), -1, r"trainer epoch must be an integer in \[0, 9223372036854775808\), got -1$"),
    (("trainer", "epoch"), _I63, r"trainer epoch must be an integer in \[0, 9223372036854775808\), got "),
    (("trainer", "epoch"), True, r"trainer epoch must be an integer in \[0, 9223372036854775808\), got True$"),
    (("trainer", "epoch"), 1.0, r"trainer epoch must be an integer in \[0, 9223372036854775808\), got 1\.0$"),
    (("trainer", "epoch"), "x" * 100, r"trainer epoch must be an integer .*, got 'x{59}\.\.\.$"),
    (("trainer", "seed"), _U64, r"trainer seed must be an integer in \[0, 18446744073709551616\), got "),
    (("trainer", "seed"), -1, r"trainer seed must be an integer in \[0, 18446744073709551616\), got -1$"),
    (("trainer", "global_step"), _I63, r"trainer global_step must be an integer in \[0, 9223372036854775808\)"),
    (("trainer", "global_step"), -1, r"trainer global_step must be an integer in \[0, "),
    (("trainer", "rng"), [1], r"trainer rng must be a JSON object, got list$"),
    (("trainer", "rng", "seed"), _U64, r"rng seed must be an integer in \[0, 18446744073709551616\), got "),
    (("trainer", "rng", "seed"), None, r"rng seed must be an integer in \[0, 18446744073709551616\), got None$"),
    (("trainer", "rng", "counter"), _U64, r"rng counter must be an integer in \[0, 18446744073709551616\)"),
    (("trainer", "rng", "counter"), -1, r"rng counter must be an integer in \[0, 18446744073709551616\), got -1$"),
    (("trainer", "history"), [], r"trainer history must be a JSON object, got list$"),
    (("trainer", "history", "loss"), {"a": 1}, r"history\['loss'\] must be a list, got dict$"),
    (("trainer", "callbacks"), {}, r"trainer callbacks must be a list, got dict$"),
    (("trainer", "callbacks", 1), "StepDecay", r"callback 1 must be a JSON object, got str$"),
    (("trainer", "callbacks", 1, "type"), None, r"callback 1 has no type name$"),
    (("trainer", "callbacks", 1, "state"), [0.5], r"callback 1 state must be a JSON object, got list$"),
]


@pytest.mark.parametrize("where, value, problem", METADATA_CASES,
                         ids=[f"{'.'.join(map(str, w))}={str(v)[:12]}" for w, v, _ in METADATA_CASES])
def test_bad_metadata_is_refused_naming_the_field(tmp_path, good, where, value, problem):
    _, meta, tensors = good
    _refused(_write(tmp_path / "bad.xpd", _edit(meta, where, value), tensors), problem)


@pytest.mark.parametrize("where, value", [
    (("trainer", "epoch"), _I63 - 1), (("trainer", "seed"), _U64 - 1), (("trainer", "global_step"), _I63 - 1),
    (("trainer", "rng", "seed"), _U64 - 1), (("trainer", "rng", "counter"), _U64 - 1),
    (("trainer", "epoch"), 0), (("trainer", "rng", "counter"), 0), (("trainer", "global_step"), _DELETE),
    (("trainer", "history"), _DELETE), (("trainer", "callbacks"), _DELETE), (("preprocessing",), None),
], ids=lambda v: str(v)[:24])
def test_the_largest_and_smallest_valid_values_are_accepted(tmp_path, good, where, value):
    """The ranges are half-open, [0, 2**63) for counts and [0, 2**64) for seeds and Philox
    counters (NumPy's Philox takes a 64-bit key and counter words); optional fields may be
    absent (a file without preprocessing metadata must then hold no preprocessing tensors)."""
    _, meta, tensors = good
    meta = _edit(meta, where, value)
    if where == ("preprocessing",):
        tensors = {k: v for k, v in tensors.items() if not k.startswith("preprocessing/")}
    if where == ("trainer", "callbacks"):
        tensors = {k: v for k, v in tensors.items() if not k.startswith("callbacks/")}
    path = _write(tmp_path / "ok.xpd", meta, tensors)
    ck = read_checkpoint(path)
    assert ck.trainer == meta["trainer"]
    net = xd.load(path)
    assert (net.preprocessing is None) == (where == ("preprocessing",))


def _tensor_case(name):
    def edit(meta, tensors):
        tensors = dict(tensors)
        if name == "int-weight":
            tensors["layers.0.W"] = tensors["layers.0.W"].astype(np.int32)
        elif name == "missing-weight":
            del tensors["layers.1.running_var"]
        elif name == "extra-weight":
            tensors["layers.2.W"] = np.zeros((2, 2), np.float32)
        elif name == "transposed-weight":
            tensors["layers.0.W"] = np.ascontiguousarray(tensors["layers.0.W"].T)
        elif name == "orphan-preprocessing":
            meta = _edit(meta, ("preprocessing",), _DELETE)
        elif name == "orphan-optimizer":
            meta = _edit(meta, ("optimizer",), _DELETE)
        elif name == "orphan-loss":
            meta = _edit(meta, ("trainer",), _DELETE)
            tensors = {k: v for k, v in tensors.items() if not k.startswith("callbacks/")}
        elif name == "orphan-callback":
            meta = _edit(meta, ("trainer",), _DELETE)
            tensors = {k: v for k, v in tensors.items() if not k.startswith("loss/")}
        elif name.startswith("callback-name:"):
            tensors[name.split(":", 1)[1]] = np.zeros(2, np.float32)
        elif name == "callback-of-stateless":
            meta = _edit(meta, ("trainer", "callbacks", 1, "state"), None)
            tensors["callbacks/1/x"] = np.zeros(2, np.float32)
        return meta, tensors
    return edit


TENSOR_CASES = [
    ("int-weight", r"tensor layers\.0\.W has dtype I32; xpdnn files hold float16/32/64 tensors$"),
    ("missing-weight", r"the tensors do not match the architecture: missing \['layers\.1\.running_var'\], "
                       r"unexpected \[\]$"),
    ("extra-weight", r"the tensors do not match the architecture: missing \[\], unexpected \['layers\.2\.W'\]$"),
    ("transposed-weight", r"tensor layers\.0\.W has shape \(3, 4\), the architecture says \(4, 3\)$"),
    ("orphan-preprocessing", r"preprocessing tensors without preprocessing metadata$"),
    ("orphan-optimizer", r"optimizer tensors without optimizer metadata$"),
    ("orphan-loss", r"loss or callback tensors without trainer metadata$"),
    ("orphan-callback", r"loss or callback tensors without trainer metadata$"),
    ("callback-name:callbacks/2/x", r"tensor callbacks/2/x belongs to no callback with saved state$"),
    ("callback-name:callbacks/01/x", r"tensor callbacks/01/x belongs to no callback with saved state$"),
    ("callback-name:callbacks/a/x", r"tensor callbacks/a/x belongs to no callback with saved state$"),
    ("callback-name:callbacks/0/", r"tensor callbacks/0/ belongs to no callback with saved state$"),
    ("callback-name:callbacks/0", r"tensor callbacks/0 belongs to no callback with saved state$"),
    ("callback-name:callbacks/-1/x", r"tensor callbacks/-1/x belongs to no callback with saved state$"),
    ("callback-of-stateless", r"tensor callbacks/1/x belongs to no callback with saved state$"),
]


@pytest.mark.parametrize("case, problem", TENSOR_CASES, ids=[c for c, _ in TENSOR_CASES])
def test_tensors_that_do_not_fit_the_metadata_are_refused_naming_them(tmp_path, good, case, problem):
    """The header's names, dtypes and shapes are checked against the architecture's expected
    state before any tensor is read; a tensor no part of the metadata accounts for is refused."""
    _, meta, tensors = good
    meta, tensors = _tensor_case(case)(meta, tensors)
    _refused(_write(tmp_path / "bad.xpd", meta, tensors), problem)


def test_a_callback_tensor_may_have_another_dtype_and_a_weight_may_be_float16(tmp_path, good):
    _, meta, tensors = good
    tensors = dict(tensors)
    tensors["callbacks/1/count"] = np.arange(3, dtype=np.int64)    # StepDecay has state: accepted
    tensors["layers.0.W"] = tensors["layers.0.W"].astype(np.float16)
    path = _write(tmp_path / "ok.xpd", meta, tensors)
    ck = read_checkpoint(path)
    np.testing.assert_array_equal(ck.callbacks[1]["count"], np.arange(3))
    assert set(ck.callbacks) == {0, 1} and "layers.0.W" in ck.callbacks[0]
    assert ck.weights["layers.0.W"].dtype == np.float16


@pytest.mark.parametrize("name", ["layers.1.running_var", "optim/layers.0/W/exp_avg", "preprocessing/scale",
                                  "loss/W", "callbacks/0/layers.0.b"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_value_is_refused_naming_its_tensor(tmp_path, good, name, bad):
    _, meta, tensors = good
    tensors = dict(tensors)
    tensors[name] = tensors[name].copy()
    tensors[name].flat[-1] = bad
    _refused(_write(tmp_path / "bad.xpd", meta, tensors), f"tensor {re.escape(name)} contains NaN or Inf$")


def test_a_non_finite_value_past_the_first_million_elements_is_found(tmp_path):
    """Tensors are checked in chunks; the last element of a tensor longer than one chunk counts."""
    net = xd.Sequential(xd.Linear(1025, 1024, seed=0, dtype="float32"))
    path = tmp_path / "big.xpd"
    xd.save(net, path)
    tensors = load_file(str(path))
    assert tensors["layers.0.W"].size > 2 ** 20
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()["xpdnn"]
    W = tensors["layers.0.W"].copy()
    W.flat[-1] = np.nan
    tensors["layers.0.W"] = W
    _refused(_write(tmp_path / "bad.xpd", meta, tensors), r"tensor layers\.0\.W contains NaN or Inf$")
    with pytest.raises(ModelFileError, match=r"^refusing to write .*big2\.xpd, load would reject it: tensor "
                                             r"layers\.0\.W contains NaN or Inf$"):
        net.layers[0].params["W"] = W
        xd.save(net, tmp_path / "big2.xpd")
    assert not os.path.exists(tmp_path / "big2.xpd")


@pytest.mark.parametrize("damage, problem", [
    ("no-xpdnn", r" is a safetensors file but not an xpdnn model \(no xpdnn metadata\)$"),
    ("not-json", r": the xpdnn metadata is not valid JSON \("),
    ("not-object", r": the xpdnn metadata must be a JSON object, got list$"),
    ("truncated", r" is not a readable xpdnn model file \(corrupt or truncated\?\): "),
    ("garbage", r" is not a readable xpdnn model file \(corrupt or truncated\?\): "),
])
def test_files_that_are_not_xpdnn_models_are_refused_saying_why(tmp_path, good, damage, problem):
    src, meta, tensors = good
    path = tmp_path / "bad.xpd"
    if damage == "no-xpdnn":
        save_file(tensors, str(path), metadata={"other": "x"})
    elif damage == "not-json":
        _write(path, json.dumps(meta)[:-3], tensors)
    elif damage == "not-object":
        _write(path, "[1, 2]", tensors)
    elif damage == "truncated":
        path.write_bytes(src.read_bytes()[:-9])
    else:
        path.write_bytes(b"\x00" * 7 + b"garbage" * 50)
    for read in (xd.load, read_checkpoint, xd.load_optimizer):
        with pytest.raises(ModelFileError, match="^" + re.escape(str(path)) + problem):
            read(path)
    with pytest.raises(FileNotFoundError, match="^no such model file: " + re.escape(str(tmp_path / "none.xpd"))):
        xd.load(tmp_path / "none.xpd")


# -- what the readers give back ------------------------------------------------------------------

def _host(arrays):
    return {k: B.to_numpy(v) for k, v in arrays.items()}


def test_a_checkpoint_gives_back_each_part(good):
    path, meta, tensors = good
    ck = read_checkpoint(path)
    assert ck.path == str(path) and ck.meta == meta and ck.trainer == meta["trainer"]
    assert set(ck.weights) == {k for k in tensors if "/" not in k}
    assert set(ck.loss) == {"W", "b"}
    np.testing.assert_array_equal(ck.loss["W"], tensors["loss/W"])
    opt_meta, opt_arrays = ck.optimizer
    assert opt_meta == meta["optimizer"] and set(opt_arrays) == {k[len("optim/"):] for k in tensors
                                                                 if k.startswith("optim/")}
    assert set(ck.callbacks) == {0} and set(ck.callbacks[0]) == {k[len("callbacks/0/"):] for k in tensors
                                                                 if k.startswith("callbacks/0/")}
    np.testing.assert_array_equal(ck.preprocessing.get_state()[1]["mean"], tensors["preprocessing/mean"])
    net, o_meta, o_arrays, trainer = load_checkpoint(path)
    assert o_meta == meta["optimizer"] and set(o_arrays) == set(opt_arrays) and trainer == meta["trainer"]
    assert net.fresh is False and net.preprocessing is not None
    for k, v in _host(net.state_arrays()).items():
        np.testing.assert_array_equal(v, tensors[k], err_msg=k)
    *_, (loss, callbacks) = load_checkpoint(path, extras=True)
    assert set(loss) == {"W", "b"} and set(callbacks) == {0}
    opt = xd.load_optimizer(path)
    assert type(opt).__name__ == "Adam" and opt.steps == meta["optimizer"]["steps"] and opt.lr == meta["optimizer"]["lr"]
    assert set(opt.state) == {k.rsplit("/", 1)[0] for k in opt_arrays}


def test_a_plain_model_has_no_optimizer_and_a_transformer_comes_back_alone(tmp_path):
    X, _ = _blobs()
    net = xd.Sequential(xd.Linear(3, 2, seed=0))
    xd.save(net, tmp_path / "m.xpd")
    assert xd.load_optimizer(tmp_path / "m.xpd") is None
    ck = read_checkpoint(tmp_path / "m.xpd")
    assert ck.optimizer is None and ck.trainer is None and ck.loss == {} and ck.callbacks == {}
    assert ck.preprocessing is None
    assert isinstance(xd.load(tmp_path / "m.xpd"), xd.Sequential)
    pre = xd.preprocessing.Standardizer().fit(X)
    xd.save(pre, tmp_path / "p.xpd")
    back = xd.load(tmp_path / "p.xpd")
    assert type(back) is xd.preprocessing.Standardizer
    np.testing.assert_array_equal(B.to_numpy(back.transform(X)), B.to_numpy(pre.transform(X)))
    with_pre = xd.Sequential(preprocessing=pre)                   # no layers, with preprocessing
    xd.save(with_pre, tmp_path / "q.xpd")
    assert type(xd.load(tmp_path / "q.xpd")) is xd.preprocessing.Standardizer
    empty = xd.Sequential()
    xd.save(empty, tmp_path / "e.xpd")
    assert isinstance(xd.load(tmp_path / "e.xpd"), xd.Sequential)    # no preprocessing: the network


def test_save_with_an_optimizer_alone_keeps_its_state(tmp_path):
    X, y = _blobs()
    t = _trainer(callbacks=[])
    xd.save(t.net, tmp_path / "m.xpd", optimizer=t.optimizer)
    opt = xd.load_optimizer(tmp_path / "m.xpd")
    assert opt.steps == t.optimizer.steps and read_checkpoint(tmp_path / "m.xpd").trainer is None
    for k, slots in t.optimizer.state.items():
        for s, a in slots.items():
            np.testing.assert_array_equal(B.to_numpy(opt.state[k][s]), B.to_numpy(a))


def test_restore_refuses_a_checkpoint_of_another_shape_naming_the_tensor(tmp_path, good):
    path = good[0]
    X, y = _blobs()
    net = xd.Sequential(xd.Linear(3, 5, seed=1), xd.BatchNorm1d(5), xd.ReLU())
    net.preprocessing = xd.preprocessing.Standardizer().fit(X)
    t = xd.Trainer(net, loss=xd.HierarchicalSoftmax(5, 3, seed=2), optimizer=xd.Adam(lr=0.01), progress=False,
                   callbacks=[xd.EarlyStopping(patience=5), StepDecay(1, gamma=0.5)])
    with pytest.raises(ModelFileError, match="^" + re.escape(str(path)) + r": the checkpoint does not fit this "
                       r"trainer's network: layers\.0\.W has shape \(4, 3\) in the file, \(5, 3\) in this "
                       r"trainer's network$"):
        t.restore(path)
    net = xd.Sequential(xd.Linear(3, 4, seed=1), xd.ReLU())
    t = xd.Trainer(net, loss=xd.HierarchicalSoftmax(4, 3, seed=2), optimizer=xd.Adam(lr=0.01), progress=False)
    with pytest.raises(ModelFileError, match=r": the checkpoint does not fit this trainer's network: missing \[\], "
                                             r"unexpected \['layers\.1\.beta', 'layers\.1\.gamma', "):
        t.restore(path)


def test_a_long_error_from_building_the_architecture_is_clipped(tmp_path, good):
    """The architecture's own error is quoted, clipped to 300 characters."""
    _, meta, tensors = good
    path = _write(tmp_path / "bad.xpd", _edit(meta, ("architecture", "config", "layers", 0, "config", "init"), "x" * 500),
                  tensors)
    for read in (xd.load, xd.load_optimizer):
        with pytest.raises(ModelFileError, match="^" + re.escape(str(path)) + r": the architecture is invalid "
                           r"\(ValueError: (?=unknown initializer 'x).{300}\.\.\.\)$"):
            read(path)
