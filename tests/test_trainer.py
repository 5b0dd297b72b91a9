"""Trainer, checkpoints, bad input and the main job."""

import os

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B


def _blobs(rng, n=120, d=5, c=3):
    centers = rng.standard_normal((c, d)) * 3
    y = rng.integers(0, c, n)
    return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y.astype(np.int64)


def _net(d=5, c=3, dropout=0.2):
    return xd.Sequential(xd.Linear(d, 16), xd.ReLU(), xd.Dropout(dropout), xd.Linear(16, c))


def _trainer(net, epochs=3, **kw):
    return xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
                      batch_size=16, epochs=epochs, seed=7, progress=False, **kw)


def test_outputs_come_back_in_the_input_library(backend, rng):
    X, y = _blobs(rng)
    net = _net()
    _trainer(net, epochs=1).fit(backend.asarray(X), backend.asarray(y))
    Xb = backend.asarray(X)
    P, labels = net.predict_proba(Xb), net.predict(Xb)
    assert B.namespace(P) is backend.xp and B.namespace(labels) is backend.xp
    assert tuple(P.shape) == (120, 3) and tuple(labels.shape) == (120,)
    np.testing.assert_allclose(backend.numpy(P).sum(axis=1), 1.0, rtol=1e-5)


def test_history_identical_across_backends(backend, rng):
    """Same seed, same data: the loss history on any backend equals NumPy's (the strict run proves
    the code is standard-only)."""
    X, y = _blobs(rng)
    ref = _trainer(_net(), epochs=4).fit(X, y, validation=(X[:30], y[:30]))
    got = _trainer(_net(), epochs=4).fit(backend.asarray(X), backend.asarray(y),
                                         validation=(backend.asarray(X[:30]), backend.asarray(y[:30])))
    # float32 training: on CuPy, cuBLAS and the fused loss kernel round differently from NumPy
    # (the accuracies stay exact: 1e-5 relative is far below one flipped prediction, 1/120)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(got[key], ref[key], rtol=backend.parity_rtol(1e-6, "float32"), err_msg=key)
    assert len(got["loss"]) == 4


def test_iterations_per_epoch_and_batch_extremes(rng):
    X, y = _blobs(rng, n=50)
    steps = []

    class Count(xd.Callback):
        def on_batch_end(self, trainer, step, logs):
            steps.append(int(logs["size"]))

    for bs, expected in [(16, [16, 16, 16, 2]), (50, [50]), (1, [1] * 50)]:
        steps.clear()
        xd.Trainer(_net(), loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.01), batch_size=bs, epochs=1,
                   progress=False, callbacks=[Count()]).fit(X, y)
        assert steps == expected


def test_resume_from_checkpoint_is_bitwise_identical(tmp_path, rng):
    X, y = _blobs(rng)
    full = _trainer(_net(), epochs=4)
    full.fit(X, y)
    first = _trainer(_net(), epochs=2)
    first.fit(X, y)
    first.save(tmp_path / "ckpt.xpd")
    resumed = _trainer(_net(), epochs=4)
    resumed.restore(tmp_path / "ckpt.xpd")
    assert resumed.epoch == 2
    resumed.fit(X, y)
    for k, v in full.net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(resumed.net.state_arrays()[k]), B.to_numpy(v), err_msg=k)
    assert resumed.history["loss"] == full.history["loss"]


def test_save_load_roundtrip_and_predictions(tmp_path, backend, rng):
    X, y = _blobs(rng)
    net = _net()
    _trainer(net, epochs=2).fit(X, y)
    xd.save(net, tmp_path / "m.xpd")
    net2 = xd.load(tmp_path / "m.xpd")
    assert [type(l).__name__ for l in net2.layers] == ["Linear", "ReLU", "Dropout", "Linear"]
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(net2.state_arrays()[k]), B.to_numpy(v), err_msg=k)
    # same weights; BLAS may round differently with other memory alignment, hence rtol
    np.testing.assert_allclose(backend.numpy(net2.predict_proba(backend.asarray(X))), net.predict_proba(X),
                               rtol=1e-5, atol=1e-7)
    opt = xd.load_optimizer(tmp_path / "m.xpd")
    assert opt is None
    t = _trainer(net, epochs=1)
    t.fit(X, y)
    t.save(tmp_path / "c.xpd")
    opt = xd.load_optimizer(tmp_path / "c.xpd")
    assert isinstance(opt, xd.SGD) and opt.momentum == 0.9 and len(opt.state) == 4


def test_files_contain_no_pickle(tmp_path, rng):
    X, y = _blobs(rng)
    net = _net()
    _trainer(net, epochs=1).save(tmp_path / "m.xpd")
    blob = (tmp_path / "m.xpd").read_bytes()
    assert b"\x80\x04" not in blob[:16] and blob[8:9] == b"{"   # safetensors: u64 header length, JSON


def test_save_is_atomic(tmp_path, rng, monkeypatch):
    X, y = _blobs(rng)
    net = _net()
    path = tmp_path / "m.xpd"
    xd.save(net, path)
    before = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    _trainer(net, epochs=1).fit(X, y)
    with pytest.raises(OSError):
        xd.save(net, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.xpd"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "empty"])
def test_load_rejects_bad_files(tmp_path, damage, rng):
    path = tmp_path / "m.xpd"
    xd.save(_net(), path)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) - 40])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        from safetensors.numpy import save_file
        save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(ValueError, match="xpdnn|corrupt|truncated"):
        xd.load(path)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflow is the point
def test_nan_loss_stops_with_last_good_weights(rng):
    """With a snapshot before every step, a non-finite loss rolls the model back to exactly the
    state before the step whose update produced the bad weights: the last state with a finite loss."""
    X, y = _blobs(rng)
    net = _net(dropout=0.0)
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=1e6), batch_size=16, epochs=50,
                         progress=False, snapshot_every=1)
    snapshots = []

    class Snap(xd.Callback):
        def on_batch_begin(self, trainer, step):
            snapshots.append({k: B.to_numpy(v).copy() for k, v in trainer.net.state_arrays().items()})

    trainer.callbacks.append(Snap())
    with pytest.raises(xd.TrainingError, match=r"epoch \d+, step \d+"):
        trainer.fit(X, y)
    last_good = snapshots[-2]      # snapshots[-1] holds the weights that gave the non-finite loss
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(v), last_good[k])
        assert np.all(np.isfinite(B.to_numpy(v)))


def test_early_stopping_restores_best(rng):
    X, y = _blobs(rng)
    Xv, yv = X[:40], (y[:40] + 1) % 3     # misleading validation labels: val loss rises
    es = xd.EarlyStopping(patience=2)
    trainer = _trainer(_net(), epochs=30, callbacks=[es])
    hist = trainer.fit(X, y, validation=(Xv, yv))
    assert len(hist["loss"]) < 30
    assert es.best == min(hist["val_loss"])
    assert abs(trainer.evaluate(Xv, yv)["loss"] - es.best) < 1e-5


BAD = {
    "features": (lambda X, y: (X[:, :4], y), "features"),
    "label_high": (lambda X, y: (X, y + 3), "label 5"),
    "label_negative": (lambda X, y: (X, y - 1), "negative"),
    "label_float": (lambda X, y: (X, y + 0.5), "integer"),
    "nan": (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X).astype(np.float32), y), "NaN"),
    "inf": (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.inf, X).astype(np.float32), y), "Inf"),
    "length": (lambda X, y: (X, y[:-1]), "samples"),
    "empty": (lambda X, y: (X[:0], y[:0]), "empty"),
    "int_X": (lambda X, y: (X.astype(np.int64), y), "floating"),
    "X_1d": (lambda X, y: (X[:, 0], y), "2-D"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_rejected_before_any_weight_changes(backend, rng, case):
    X, y = _blobs(rng)
    make, message = BAD[case]
    Xb, yb = make(X, y)
    net = _net()
    before = {k: B.to_numpy(v).copy() for k, v in net.state_arrays().items()}
    trainer = _trainer(net)
    with pytest.raises((ValueError, TypeError), match=message):
        trainer.fit(backend.asarray(Xb), backend.asarray(yb))
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(v), before[k])


def test_mixed_libraries_are_rejected(rng):
    torch = pytest.importorskip("torch")
    X, y = _blobs(rng)
    with pytest.raises(TypeError, match="different array libraries"):
        _trainer(_net()).fit(X, torch.from_numpy(y))
    import array_api_strict as aas
    with pytest.raises(TypeError, match="different array libraries"):
        _trainer(_net()).fit(aas.asarray(X), y)


def test_predict_rejects_bad_input(backend, rng):
    net = _net()
    with pytest.raises(ValueError, match="features"):
        net.predict(backend.asarray(np.zeros((3, 4), np.float32)))
    with pytest.raises(TypeError, match="floating"):
        net.predict(backend.asarray(np.zeros((3, 5), np.int64)))
    with pytest.raises(ValueError, match="NaN"):
        net.predict(backend.asarray(np.full((3, 5), np.nan, np.float32)))


def test_mse_regression_gradients(backend, rng):
    from xpdnn.testing import check_loss_gradient
    Y = backend.asarray(rng.standard_normal((4, 3)))
    T = backend.asarray(rng.standard_normal((4, 3)))
    check_loss_gradient(xd.MSE(), Y, T)


def test_cuda_request_without_gpu_is_a_clear_error(rng):
    from xpdnn.devices import cuda_available, resolve
    if cuda_available()[0]:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA is not usable"):
        resolve("cupy")
    X, y = _blobs(rng)
    with pytest.raises(RuntimeError, match="CUDA is not usable"):
        _trainer(_net(), device="cuda").fit(X, y)
    assert resolve("auto")[0] == "numpy"


@pytest.mark.slow
def test_main_job_reaches_097_on_digits(capsys, tmp_path):
    """The README's first command: default `xpdnn train` on digits."""
    from xpdnn.cli import main
    from xpdnn.devices import resolve
    assert main(["train", "--quiet", "--save", str(tmp_path / "digits.xpd")]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy:")[1].split()[0])
    assert acc >= 0.97, out
    # the default --backend auto picks CuPy where it sees a GPU, else NumPy
    assert f"backend: {resolve('auto')[0]}" in out
    net = xd.load(tmp_path / "digits.xpd")
    assert net.n_in == 64


def test_info_lists_backends(capsys):
    from xpdnn.cli import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "cupy", "torch", "array_api_strict", "BLAS"):
        assert name in out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflow is the point
def test_deferred_nan_check_rolls_back(rng):
    """The GPU mode (check every k steps, no per-step sync) also ends with finite weights: those
    of the last snapshot whose losses were all checked finite, which the message names."""
    X, y = _blobs(rng)
    net = _net(dropout=0.0)
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=1e6), batch_size=16, epochs=50,
                         progress=False, nan_check_every=4)
    snapshots, losses = {}, {}

    class Snap(xd.Callback):
        def on_batch_begin(self, trainer, step):
            snapshots[(trainer.epoch, step)] = {k: B.to_numpy(v).copy() for k, v in trainer.net.state_arrays().items()}

        def on_batch_end(self, trainer, step, logs):
            losses[(trainer.epoch, step)] = float(logs["loss"])

    trainer.callbacks.append(Snap())
    with pytest.raises(xd.TrainingError, match=r"between steps (\d+) and") as info:
        trainer.fit(X, y)
    msg = info.value.args[0]
    step = int(msg.split("back to its state before step ")[1].split()[0]) - 1
    epoch = int(msg.split("back to its state before step ")[1].split("of epoch ")[1].split(",")[0]) - 1
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(v), snapshots[(epoch, step)][k])
        assert np.all(np.isfinite(B.to_numpy(v)))
    assert np.isfinite(losses[(epoch, step)])       # the restored state's own loss was finite


def test_trainer_updates_a_loss_with_parameters(backend, rng):
    """Hierarchical softmax owns its node weights; the trainer steps them with the net's."""
    X, y = _blobs(rng, n=200, c=5)
    hs = xd.HierarchicalSoftmax(8, 5, seed=0)
    net = xd.Sequential(xd.Linear(5, 8), xd.Tanh())
    W0 = B.to_numpy(hs.params["W"]).copy()
    trainer = xd.Trainer(net, loss=hs, optimizer=xd.SGD(lr=0.1, momentum=0.9), batch_size=20, epochs=15,
                         progress=False)
    hist = trainer.fit(backend.asarray(X), backend.asarray(y))
    assert not np.array_equal(B.to_numpy(hs.params["W"]), W0)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert any(k.startswith("loss1.") for k in trainer.optimizer.state)


def test_drop_last_skips_the_short_batch(rng):
    X, y = _blobs(rng, n=50)
    sizes = []

    class Count(xd.Callback):
        def on_batch_end(self, trainer, step, logs):
            sizes.append(int(logs["size"]))

    xd.Trainer(_net(), loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.01), batch_size=16, epochs=1,
               progress=False, callbacks=[Count()], drop_last=True).fit(X, y)
    assert sizes == [16, 16, 16]


def test_preprocessing_travels_with_the_model(tmp_path, backend, rng):
    from xpdnn.preprocessing import PCA
    X, y = _blobs(rng, d=6)
    pre = PCA(4).fit(X[:80])
    net = xd.Sequential(xd.Linear(4, 16), xd.ReLU(), xd.Linear(16, 3))
    net.preprocessing = pre
    _trainer(net, epochs=2).fit(backend.asarray(X), backend.asarray(y))
    with pytest.raises(ValueError, match="6"):
        net.predict(backend.asarray(X[:, :4]))      # raw inputs have 6 features
    xd.save(net, tmp_path / "m.xpd")
    net2 = xd.load(tmp_path / "m.xpd")
    assert isinstance(net2.preprocessing, PCA) and net2.preprocessing.n_features == 6
    np.testing.assert_allclose(backend.numpy(net2.predict_proba(backend.asarray(X))),
                               backend.numpy(net.predict_proba(backend.asarray(X))), rtol=1e-5, atol=1e-7)
    # the transform really is applied: the bare layers on raw-projected inputs agree
    Z = pre.transform(X).astype(np.float32)
    np.testing.assert_allclose(net2.layers[2](net2.layers[1](net2.layers[0](Z))),
                               net2.forward(Z)[0], rtol=1e-6)


def test_probability_targets_train_and_report_accuracy(backend, rng):
    X, y = _blobs(rng)
    T = np.eye(3)[y] * 0.9 + 0.1 / 3
    hist = _trainer(_net(), epochs=3).fit(backend.asarray(X), backend.asarray(T),
                                          validation=(backend.asarray(X), backend.asarray(T)))
    ref = _trainer(_net(), epochs=3).fit(X, y)
    assert 0.0 <= hist["accuracy"][-1] <= 1.0 and hist["val_accuracy"][-1] > 0.8
    assert abs(hist["accuracy"][-1] - ref["accuracy"][-1]) < 0.1


def test_fit_on_a_stream_from_a_memmap_matches_fit_on_arrays(tmp_path, backend, rng):
    from xpdnn.datasets.streaming import BatchStream, mover
    X, y = _blobs(rng)
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    ref = _trainer(_net(), epochs=3).fit(X, y)
    stream = BatchStream(Xm, y, batch_size=16, shuffle=True, seed=7, to=mover(backend.asarray(np.zeros(1))))
    got = _trainer(_net(), epochs=3).fit(stream, validation=(backend.asarray(X), backend.asarray(y)))
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], ref["accuracy"], rtol=1e-12)
    assert len(got["val_loss"]) == 3


def test_stream_batches_are_validated(rng):
    from xpdnn.datasets.streaming import BatchStream
    X, y = _blobs(rng)
    y[70] = 9
    with pytest.raises(ValueError, match="label 9"):
        _trainer(_net()).fit(BatchStream(X, y, batch_size=16))


def test_trainer_skips_the_per_call_label_check_only_while_training(rng):
    """Labels are validated once per fit; the step then calls the loss with check=False, and
    the loss itself (a direct call) still checks by default.  No flag is set on the loss."""
    X, y = _blobs(rng)
    calls = []

    class Spy(xd.SoftmaxCrossEntropy):
        def __call__(self, Z, targets, *, check=True):
            calls.append(check)
            return super().__call__(Z, targets, check=check)

    loss = Spy()
    before = dict(vars(loss))
    xd.Trainer(_net(), loss=loss, optimizer=xd.SGD(lr=0.1), batch_size=16, epochs=1, progress=False).fit(X, y)
    assert calls and not any(calls)
    assert vars(loss).keys() == before.keys()
    with pytest.raises(ValueError, match="class label 7"):
        loss(np.zeros((2, 3), np.float32), np.array([0, 7]))


def test_a_bare_layer_trains_too(rng):
    """The trainer accepts any Layer, not only a Sequential."""
    X, y = _blobs(rng)
    layer = xd.Linear(5, 3)
    W0 = layer.params["W"].copy()
    hist = _trainer(layer, epochs=3).fit(X, y)
    assert hist["loss"][-1] < hist["loss"][0] and not np.array_equal(layer.params["W"], W0)


def _resume_equals_full(tmp_path, rng, make, *, val=False):
    """Train 4 epochs in one go, and 2 + checkpoint + 2 with fresh objects from ``make``: the
    weights, losses and learning rates must be identical."""
    X, y = _blobs(rng)
    validation = (X[:40], y[:40]) if val else None
    full = make(4)
    full.fit(X, y, validation=validation)
    first = make(2)
    first.fit(X, y, validation=validation)
    first.save(tmp_path / "ckpt.xpd")
    resumed = make(4)
    resumed.restore(tmp_path / "ckpt.xpd")
    resumed.fit(X, y, validation=validation)
    for k, v in full.net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(resumed.net.state_arrays()[k]), B.to_numpy(v), err_msg=k)
    assert resumed.history["loss"] == full.history["loss"]
    assert resumed.history["lr"] == full.history["lr"]
    return full, resumed


@pytest.mark.parametrize("schedule", [
    lambda: xd.optim.schedules.StepDecay(1, gamma=0.5),
    lambda: xd.optim.schedules.StepDecay(3, gamma=0.5, per="step"),
    lambda: xd.optim.schedules.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, threshold=0.5),
], ids=["epoch", "step", "plateau"])
def test_resume_with_a_schedule_keeps_its_base_rate(tmp_path, rng, schedule):
    """A fresh schedule after restore must not take the checkpoint's decayed rate as its base."""
    full, _ = _resume_equals_full(tmp_path, rng, lambda e: _trainer(_net(), epochs=e, callbacks=[schedule()]))
    assert len(set(full.history["lr"])) > 1                      # the schedule really changed the rate


def test_resume_keeps_early_stopping_and_annealed_dropout_state(tmp_path, rng):
    from xpdnn.ensemble import AnnealedDropout
    make = lambda e: _trainer(_net(dropout=0.4), epochs=e,
                              callbacks=[AnnealedDropout(end=0.0, epochs=4), xd.EarlyStopping(patience=10)])
    full, resumed = _resume_equals_full(tmp_path, rng, make, val=True)
    assert resumed.callbacks[1].best == full.callbacks[1].best
    assert resumed.callbacks[1].best_epoch == full.callbacks[1].best_epoch
    again = make(4)                               # the checkpoint (after epoch 2) holds the record
    again.restore(tmp_path / "ckpt.xpd")
    stop = again.callbacks[1]
    assert stop.best_epoch in (0, 1) and np.isfinite(stop.best) and stop.best_state is not None
    assert again.callbacks[0]._initial == [0.4]


def test_resume_with_other_callbacks_is_an_error(tmp_path, rng):
    X, y = _blobs(rng)
    first = _trainer(_net(), epochs=1, callbacks=[xd.optim.schedules.StepDecay(1)])
    first.fit(X, y)
    first.save(tmp_path / "ckpt.xpd")
    with pytest.raises(ValueError, match="callback 0 in the checkpoint is a StepDecay"):
        _trainer(_net(), epochs=2, callbacks=[xd.EarlyStopping()]).restore(tmp_path / "ckpt.xpd")
    with pytest.raises(ValueError, match="missing"):
        _trainer(_net(), epochs=2).restore(tmp_path / "ckpt.xpd")


def test_resume_with_a_parameterized_loss(tmp_path, rng):
    """Hierarchical softmax owns weights: the checkpoint keeps them and a resume continues exactly."""
    def make(e):
        net = xd.Sequential(xd.Linear(5, 16), xd.ReLU())
        return xd.Trainer(net, loss=xd.HierarchicalSoftmax(16, 3, seed=2), optimizer=xd.SGD(lr=0.05, momentum=0.9),
                          batch_size=16, epochs=e, seed=7, progress=False)
    full, resumed = _resume_equals_full(tmp_path, rng, make)
    for k, v in full.loss.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(resumed.loss.state_arrays()[k]), B.to_numpy(v), err_msg=k)
    plain = _trainer(xd.Sequential(xd.Linear(5, 16), xd.ReLU()), epochs=2)
    with pytest.raises(ValueError, match="loss parameters"):
        plain.restore(tmp_path / "ckpt.xpd")


def test_check_finite_catches_bad_values_and_allows_sums_that_overflow(backend):
    big = np.full((4, 3), 3e38, dtype=np.float32)          # finite, but the sum overflows
    B.check_finite(backend.asarray(big))
    for bad in (np.nan, np.inf, -np.inf):
        X = np.zeros((4, 3), dtype=np.float32)
        X[2, 1] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            B.check_finite(backend.asarray(X), "X")
    X = big.copy()
    X[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        B.check_finite(backend.asarray(X))
    B.check_finite(backend.asarray(np.arange(5)))             # integers are always finite


@pytest.mark.parametrize("device", ["torch", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_streaming_batches_to_the_device_trains_identically(device, rng, monkeypatch):
    """Host data that does not fit goes to the device batch by batch; the run is the same."""
    if device == "torch":
        pytest.importorskip("torch")
    elif not __import__("xpdnn.devices", fromlist=["x"]).cuda_available()[0]:
        pytest.skip("needs a CUDA device (CuPy)")
    X, y = _blobs(rng)
    runs = {}
    for mode in (False, True, "auto-small"):
        if mode == "auto-small":                     # the device reports too little free memory
            import xpdnn.devices as devices
            monkeypatch.setattr(devices, "free_bytes", lambda d: X.nbytes)
        placed = []
        tr = _trainer(_net(), epochs=2, device=device, stream_to_device=None if mode == "auto-small" else mode,
                      callbacks=[type("Spy", (xd.Callback,), {"reads_gradients": False})()])
        real = tr._place
        tr._place = lambda *a: placed.append(a[0].shape[0]) or real(*a)
        runs[mode] = tr.fit(X, y, validation=(X[:30], y[:30]))
        streamed = tr._streaming
        assert streamed == (mode is not False)
        # whole arrays moved once, or one move per batch (and per validation batch)
        assert (placed[:2] == [120, 30]) if not streamed else (placed.count(16) >= 14)
        assert B.namespace(tr.net.layers[0].params["W"]) is B.namespace(real(X[:1], y[:1])[0])
    for mode in (True, "auto-small"):
        assert runs[mode]["loss"] == runs[False]["loss"]
        assert runs[mode]["val_loss"] == runs[False]["val_loss"]


def test_evaluate_moves_host_data_to_the_device(rng):
    pytest.importorskip("torch")
    X, y = _blobs(rng)
    tr = _trainer(_net(), epochs=1, device="torch")
    tr.fit(X, y)
    on_host = tr.evaluate(X, y)                       # NumPy data, net on torch tensors
    on_device = tr.evaluate(*tr._place(X, y))
    assert on_host == pytest.approx(on_device, rel=1e-12)


@pytest.mark.slow
def test_digits_on_jax_gives_numpys_history():
    """JAX's immutable arrays: every parameter and optimizer-state update is stored back, so a
    digits run with dropout and Adam/SGD matches NumPy's loss history to float32 rounding."""
    jnp = pytest.importorskip("jax.numpy")
    X, y = xd.datasets.load_digits()
    Xtr, Xte, ytr, yte = xd.datasets.train_test_split(X, y, seed=0)

    def run(put, opt):
        net = xd.Sequential(xd.Linear(64, 32), xd.ReLU(), xd.Dropout(0.2), xd.Linear(32, 10))
        t = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=opt(), batch_size=64, epochs=3, seed=0,
                       progress=False)
        return t.fit(put(Xtr), put(ytr), validation=(put(Xte), put(yte)))

    for opt in (lambda: xd.SGD(lr=0.1, momentum=0.9), lambda: xd.Adam(lr=1e-3)):
        ref, got = run(lambda a: a, opt), run(jnp.asarray, opt)
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["val_loss"], ref["val_loss"], rtol=1e-5)
        assert ref["loss"][-1] < ref["loss"][0]
