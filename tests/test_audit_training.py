"""Regression tests for an outside audit's training-side findings: output heads (binary,
multilabel, regression), writes into arrays a layer does not own, what the NaN guard restores,
early stopping across a resume, labels given as floats, and concurrent fits."""

import threading

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn.layers.base import LAYERS, Layer


def _data(rng, n=96, d=5):
    X = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal(d)
    return X, X @ w


def _fit(net, loss, X, y, backend=None, epochs=3, **kw):
    put = backend.asarray if backend is not None else (lambda a: a)
    trainer = xd.Trainer(net, loss=loss, optimizer=xd.SGD(lr=0.1, momentum=0.9), batch_size=16, epochs=epochs,
                         seed=3, progress=False, **kw)
    return trainer, trainer.fit(put(X), put(y))


# -- output heads ---------------------------------------------------------------------------
def test_binary_net_reads_its_output_with_a_sigmoid(backend, rng, tmp_path):
    X, score = _data(rng)
    y = (score > 0).astype(np.float32)
    net = xd.Sequential(xd.Linear(5, 8), xd.Tanh(), xd.Linear(8, 1))
    _, hist = _fit(net, xd.BinaryCrossEntropy(), X, y, backend, epochs=20)
    assert net.head == "sigmoid"
    assert "accuracy" in hist and hist["accuracy"][-1] > 0.8
    Xb = backend.asarray(X)
    P, labels = backend.numpy(net.predict_proba(Xb)), backend.numpy(net.predict(Xb))
    Z = backend.numpy(net(Xb))[:, 0].astype(np.float64)
    assert P.shape == (96, 2) and labels.shape == (96,)
    np.testing.assert_allclose(P[:, 1], 1 / (1 + np.exp(-Z)), rtol=1e-5)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, (Z > 0).astype(np.int64))
    assert 0 < labels.sum() < 96                       # not "all 0"
    assert hist["accuracy"][-1] == pytest.approx(np.mean((Z > 0) == (y > 0.5)), abs=0.15)
    # the head is part of the saved model
    xd.save(net, tmp_path / "m.xpd")
    again = xd.load(tmp_path / "m.xpd")
    assert again.head == "sigmoid"
    np.testing.assert_allclose(B.to_numpy(again.predict_proba(X)), backend.numpy(net.predict_proba(backend.asarray(X))),
                               rtol=1e-5)


def test_binary_accuracy_is_the_thresholded_match(rng):
    X, score = _data(rng)
    y = (score > 0).astype(np.float32)
    net = xd.Sequential(xd.Linear(5, 1))
    trainer, _ = _fit(net, xd.BinaryCrossEntropy(), X, y, epochs=2)
    out = trainer.evaluate(X, y[:, None])
    Z = B.to_numpy(net(X))[:, 0]
    assert out["accuracy"] == pytest.approx(np.mean((Z > 0) == (y > 0.5)))


def test_multilabel_net_gives_per_label_probabilities(backend, rng):
    X, score = _data(rng)
    Y = np.stack([score > 0, X[:, 0] > 0, X[:, 1] < 0.3], axis=1).astype(np.float32)
    net = xd.Sequential(xd.Linear(5, 3))
    trainer, hist = _fit(net, xd.MultiLabelLogistic(), X, Y, backend)
    assert net.head == "sigmoid" and "accuracy" in hist
    Xb = backend.asarray(X)
    P, L = backend.numpy(net.predict_proba(Xb)), backend.numpy(net.predict(Xb))
    Z = backend.numpy(net(Xb)).astype(np.float64)
    assert P.shape == (96, 3) and L.shape == (96, 3)
    np.testing.assert_allclose(P, 1 / (1 + np.exp(-Z)), rtol=1e-5)
    np.testing.assert_array_equal(L, (Z > 0).astype(np.int64))
    ev = trainer.evaluate(Xb, backend.asarray(Y))
    assert ev["accuracy"] == pytest.approx(np.mean((Z > 0) == (Y > 0.5)), rel=1e-6)


@pytest.mark.parametrize("loss", [xd.MSE(), xd.MAE(), xd.Huber()], ids=repr)
def test_regression_net_refuses_probabilities(backend, rng, loss):
    X, score = _data(rng)
    net = xd.Sequential(xd.Linear(5, 4), xd.Tanh(), xd.Linear(4, 1))
    _, hist = _fit(net, loss, X, score.astype(np.float32), backend)
    assert net.head == "identity" and "accuracy" not in hist
    Xb = backend.asarray(X)
    with pytest.raises(ValueError, match="regression.*predict"):
        net.predict_proba(Xb)
    np.testing.assert_array_equal(backend.numpy(net.predict(Xb)), backend.numpy(net(Xb)))


def test_hinge_heads(rng):
    X, score = _data(rng)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    net = xd.Sequential(xd.Linear(5, 3))
    _fit(net, xd.MulticlassHinge(), X, y)
    assert net.head == "margin"
    with pytest.raises(ValueError, match="no class probabilities"):
        net.predict_proba(X)
    np.testing.assert_array_equal(B.to_numpy(net.predict(X)), np.argmax(B.to_numpy(net(X)), axis=1))
    S = np.where(np.stack([score > 0, X[:, 0] > 0], axis=1), 1.0, -1.0).astype(np.float32)
    net2 = xd.Sequential(xd.Linear(5, 2))
    _, hist = _fit(net2, xd.MultilabelHinge(), X, S)
    assert net2.head == "signed" and "accuracy" in hist
    np.testing.assert_array_equal(B.to_numpy(net2.predict(X)), np.where(B.to_numpy(net2(X)) > 0, 1, -1))


def test_hierarchical_softmax_net_refuses_to_predict_alone(rng):
    X, score = _data(rng)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    net = xd.Sequential(xd.Linear(5, 6), xd.Tanh())
    _fit(net, xd.HierarchicalSoftmax(6, 3), X, y)
    assert net.head == "features"
    for read in (net.predict_proba, net.predict):
        with pytest.raises(ValueError, match="HierarchicalSoftmax"):
            read(X)


def test_a_one_output_net_without_head_refuses_softmax(rng):
    X, _ = _data(rng)
    net = xd.Sequential(xd.Linear(5, 1)).initialize(0)
    with pytest.raises(ValueError, match="does not know how its outputs are read"):
        net.predict_proba(X)
    assert B.to_numpy(xd.Sequential(xd.Linear(5, 1), head="sigmoid").predict_proba(X)).shape == (96, 2)


def test_conflicting_head_is_refused_before_any_change(rng):
    X, score = _data(rng)
    net = xd.Sequential(xd.Linear(5, 2), head="softmax").initialize(0)
    before = {k: B.to_numpy(v).copy() for k, v in net.state_arrays().items()}
    with pytest.raises(ValueError, match="'softmax'.*'sigmoid'"):
        _fit(net, xd.MultiLabelLogistic(), X, np.ones((96, 2), np.float32))
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(v), before[k])
    with pytest.raises(ValueError, match="head must be one of"):
        xd.Sequential(xd.Linear(5, 2), head="logits")


def test_mc_predict_and_bagging_still_read_softmax(rng):
    X, score = _data(rng)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    net = xd.Sequential(xd.Linear(5, 3))
    _fit(net, xd.SoftmaxCrossEntropy(), X, y)
    P = B.to_numpy(net.predict_proba(X))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(B.to_numpy(net.predict(X)), P.argmax(axis=1))


# -- no layer writes into an array it does not own ------------------------------------------------
def _every_layer(n):
    """One instance of every registered layer type that maps (N, n) -> (N, n)."""
    make = {
        "BatchNorm1d": lambda: xd.BatchNorm1d(n), "SyncBatchNorm": lambda: xd.SyncBatchNorm(n),
        "LayerNorm": lambda: xd.LayerNorm(n),
        "CosineLinear": lambda: xd.CosineLinear(n, n), "DropConnect": lambda: xd.DropConnect(n, n, 0.3),
        "Linear": lambda: xd.Linear(n, n), "Maxout": lambda: xd.Maxout(n, n),
        "WeightNormLinear": lambda: xd.WeightNormLinear(n, n), "PReLU": lambda: xd.PReLU(n),
        "Dropout": lambda: xd.Dropout(0.3), "GaussianNoise": lambda: xd.GaussianNoise(0.1),
        "Sequential": lambda: xd.Sequential(xd.Linear(n, n), xd.ReLU()),
    }
    out = []
    for name, cls in sorted(LAYERS.items()):
        if name.startswith("_") or name == "HierarchicalSoftmax":
            continue
        out.append(make[name]() if name in make else cls())
    return out


def _pass_through(n):
    return [xd.Identity(), xd.Dropout(0.0), xd.Sequential(xd.Identity(), xd.Dropout(0.0))]


@pytest.mark.parametrize("index", range(len(_every_layer(6))), ids=[type(la).__name__ for la in _every_layer(6)])
def test_backprop_never_writes_into_the_callers_arrays(backend, rng, index):
    """Every layer, alone, after a Linear, and followed by every pass-through layer (which hands
    the caller's dY on unchanged): neither X nor the caller's dY changes."""
    first = _every_layer(6)[index]             # built per case: no layer object shared across backends
    for tail in [[]] + [[p] for p in _pass_through(6)]:
        for head in ([], [xd.Linear(6, 6)]):
            if isinstance(first, xd.ReLU) or type(first) is xd.Sequential:
                chains = [[xd.Linear(6, 6), first, *tail]]
            else:
                chains = [[*head, first, *tail]]
            for layers in chains:
                net = xd.Sequential(*layers).initialize(0)
                Xh = rng.standard_normal((7, 6)).astype(np.float32)
                dYh = rng.standard_normal((7, 6)).astype(np.float32)
                X, dY = backend.asarray(Xh), backend.asarray(dYh)
                net.ensure_like(X)
                _, backprop = net.forward(X, train=True, rng=xd.random.Stream(0))
                backprop(dY)
                np.testing.assert_array_equal(backend.numpy(X), Xh, err_msg=f"{layers} wrote into X")
                np.testing.assert_array_equal(backend.numpy(dY), dYh, err_msg=f"{layers} wrote into dY")


def test_linear_relu_before_a_pass_through_keeps_dY_and_gradient(rng):
    """The audit's case: Linear + ReLU followed by Identity / Dropout(0) as the last layers."""
    for tail in _pass_through(4):
        net = xd.Sequential(xd.Linear(3, 4), xd.ReLU(), tail).initialize(0)
        ref = xd.Sequential(xd.Linear(3, 4), xd.ReLU()).initialize(0)
        X = rng.standard_normal((5, 3)).astype(np.float32)
        dY = rng.standard_normal((5, 4)).astype(np.float32)
        keep = dY.copy()
        dX = net.forward(X, train=True)[1](dY)
        dX_ref = ref.forward(X, train=True)[1](keep.copy())
        np.testing.assert_array_equal(dY, keep)
        np.testing.assert_array_equal(dX, dX_ref)
        np.testing.assert_array_equal(net.layers[0].grads["W"], ref.layers[0].grads["W"])


# -- the NaN guard restores a good state ---------------------------------------------------------
def _diverging(name):
    return {"SGD": lambda: xd.SGD(lr=1e6), "Adam": lambda: xd.Adam(lr=1e36),
            "RMSProp": lambda: xd.RMSProp(lr=1e36)}[name]()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("opt", ["SGD", "Adam", "RMSProp"])
@pytest.mark.parametrize("snapshot_every", [None, 1, 5])
def test_nan_guard_leaves_a_usable_model(backend, rng, opt, snapshot_every):
    X, score = _data(rng, n=64)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    X = X * 50
    net = xd.Sequential(xd.Linear(5, 16), xd.ReLU(), xd.Dropout(0.2), xd.Linear(16, 3))
    states = {}

    class Record(xd.Callback):
        def on_batch_begin(self, trainer, step):
            states[trainer.global_step] = (
                {k: backend.numpy(v).copy() for k, v in trainer.net.state_arrays().items()},
                {k: {s: backend.numpy(a).copy() for s, a in slots.items()} for k, slots in trainer.optimizer.state.items()},
                trainer.rng.counter, trainer.optimizer.steps)

        def on_batch_end(self, trainer, step, logs):
            states[trainer.global_step - 1] += (float(logs["loss"]),)

    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=_diverging(opt), batch_size=8, epochs=200,
                         seed=1, progress=False, callbacks=[Record()], snapshot_every=snapshot_every)
    Xb, yb = backend.asarray(X), backend.asarray(y)
    with pytest.raises(xd.TrainingError, match="rolled back"):
        trainer.fit(Xb, yb)
    P = backend.numpy(net.predict_proba(Xb))
    assert np.all(np.isfinite(P))
    weights, opt_state, counter, steps, loss = states[trainer.global_step]
    assert np.isfinite(loss)                          # the restored state gave a finite loss
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(backend.numpy(v), weights[k])
    for k, slots in trainer.optimizer.state.items():
        for s, a in slots.items():
            np.testing.assert_array_equal(backend.numpy(a), opt_state[k][s])
            assert np.all(np.isfinite(backend.numpy(a)))
    assert trainer.rng.counter == counter and trainer.optimizer.steps == steps
    if snapshot_every == 1:                           # exactly the state before the bad update
        bad = max(states)                             # its loss was not finite: the step raised
        assert len(states[bad]) == 4 and trainer.global_step == bad - 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_in_the_last_short_window_of_an_epoch(rng):
    """10 steps per epoch, checked every 4: the NaN in step 9 or 10 (the short last window) is
    caught in that epoch and the model is restored to a state whose loss was finite."""
    X, score = _data(rng, n=80)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)

    class Poison(xd.Callback):
        def on_batch_begin(self, trainer, step):
            if trainer.epoch == 1 and step == 9:
                trainer.net.layers[0].params["W"][0, 0] = np.nan

    net = xd.Sequential(xd.Linear(5, 3))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.01), batch_size=8, epochs=3,
                         progress=False, nan_check_every=4, callbacks=[Poison()])
    with pytest.raises(xd.TrainingError, match="at epoch 2, between steps 9 and 10"):
        trainer.fit(X, y)
    assert trainer.epoch == 1
    assert np.all(np.isfinite(B.to_numpy(net.layers[0].params["W"])))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_weights_after_the_last_step_are_caught(rng):
    X, score = _data(rng, n=16)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)

    class PoisonAfterStep(xd.Callback):
        def on_batch_end(self, trainer, step, logs):
            trainer.net.layers[0].params["b"][0] = np.inf

    net = xd.Sequential(xd.Linear(5, 3))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.01), batch_size=16, epochs=1,
                         progress=False, callbacks=[PoisonAfterStep()])
    with pytest.raises(xd.TrainingError, match="layers.0.b became NaN or Inf"):
        trainer.fit(X, y)
    assert np.all(np.isfinite(B.to_numpy(net.layers[0].params["b"])))


# -- early stopping across a resume ----------------------------------------------------------------
def test_resume_after_early_stop_equals_the_uninterrupted_run(rng, tmp_path):
    X, score = _data(rng, n=64)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    Xv, yv = X[:16] + 3.0, y[::-1][:16].copy()          # a validation set it cannot learn: stops early

    def make():
        net = xd.Sequential(xd.Linear(5, 8), xd.ReLU(), xd.Dropout(0.2), xd.Linear(8, 3))
        cbs = [xd.EarlyStopping(patience=2, restore_best=True), xd.ReduceLROnPlateau(factor=0.5, patience=1)]
        return xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.2, momentum=0.9), batch_size=16,
                          epochs=30, seed=5, progress=False, callbacks=cbs, fused_step=False)

    saved = []
    full = make()
    full.fit(X, y, validation=(Xv, yv))
    stopped_at = full.epoch
    assert stopped_at < 30
    # the same run, checkpointed at every epoch end, then resumed from each checkpoint
    run = make()

    class Ckpt(xd.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            path = tmp_path / f"e{epoch}.xpd"
            trainer.save(path)
            saved.append(path)

    run.callbacks.append(Ckpt())
    run.fit(X, y, validation=(Xv, yv))
    for path in saved:
        resumed = make()
        resumed.restore(path)
        resumed.fit(X, y, validation=(Xv, yv))
        assert resumed.epoch == stopped_at, path.name
        assert resumed.history["loss"] == full.history["loss"]
        for k, v in full.net.state_arrays().items():
            np.testing.assert_array_equal(B.to_numpy(resumed.net.state_arrays()[k]), B.to_numpy(v))


def test_early_stopping_tie_is_no_improvement():
    class Fake:
        stop_training = False
        epoch = 0
        net = xd.Sequential(xd.Linear(1, 1))

    es, t = xd.EarlyStopping(patience=2, restore_best=False), Fake()
    es.on_train_begin(t)
    for epoch, value in enumerate([1.0, 1.0, 1.0]):
        es.on_epoch_end(t, epoch, {"val_loss": value})
        if t.stop_training:
            break
    assert epoch == 2 and es.best_epoch == 0


# -- labels given as floats ------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [xd.SoftmaxCrossEntropy, xd.MulticlassHinge], ids=lambda c: c.__name__)
def test_integral_float_labels_train_like_integers_and_others_are_refused(backend, rng, loss):
    X, score = _data(rng, n=48)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    h_int = _fit(xd.Sequential(xd.Linear(5, 3)), loss(), X, y, backend)[1]
    h_float = _fit(xd.Sequential(xd.Linear(5, 3)), loss(), X, y.astype(np.float64), backend)[1]
    assert h_int["loss"] == h_float["loss"]
    for bad, what in ((np.where(y == 1, np.nan, y), "NaN"), (y + 0.5, "non-integer")):
        net = xd.Sequential(xd.Linear(5, 3))
        with pytest.raises(ValueError, match=what):
            _fit(net, loss(), X, bad, backend)
        assert net.fresh                                  # refused before anything changed


# -- one fit at a time -------------------------------------------------------------------------------
def test_a_second_concurrent_fit_raises_instead_of_interleaving(rng):
    X, score = _data(rng, n=32)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    errors = []

    class FitFromAnotherThread(xd.Callback):
        def on_batch_begin(self, trainer, step):
            if trainer.epoch == 0 and step == 0:
                def other():
                    try:
                        trainer.fit(X, y)
                    except RuntimeError as exc:
                        errors.append(exc)
                t = threading.Thread(target=other)
                t.start()
                t.join()

    net = xd.Sequential(xd.Linear(5, 3))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), batch_size=8, epochs=2,
                         progress=False, callbacks=[FitFromAnotherThread()])
    trainer.fit(X, y)
    assert len(errors) == 1 and "already training" in str(errors[0])
    assert trainer.epoch == 2 and trainer.global_step == 8      # the first fit ran undisturbed
    other = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), progress=False, epochs=1)
    other.fit(X, y)                                              # free again afterwards


def test_mc_predict_follows_the_head(rng):
    X, score = _data(rng)
    y = (score > 0).astype(np.float32)
    net = xd.Sequential(xd.Linear(5, 8), xd.ReLU(), xd.Dropout(0.3), xd.Linear(8, 1))
    _fit(net, xd.BinaryCrossEntropy(), X, y)
    mean, std = xd.mc_predict(net, X, n_samples=5)
    assert tuple(mean.shape) == (96, 2)
    np.testing.assert_allclose(B.to_numpy(mean).sum(axis=1), 1.0, rtol=1e-5)
    reg = xd.Sequential(xd.Linear(5, 1))
    _fit(reg, xd.MSE(), X, score.astype(np.float32))
    with pytest.raises(ValueError, match="regression"):
        xd.mc_predict(reg, X)


def test_bagging_follows_the_members_head(rng):
    X, score = _data(rng, n=80)
    y = (score > 0).astype(np.float32)
    bag = xd.Bagging(lambda: xd.Sequential(xd.Linear(5, 1)), n_members=3, loss=xd.BinaryCrossEntropy(),
                     epochs=5, batch_size=16, progress=False)
    bag.fit(X, y)
    P = B.to_numpy(bag.predict_proba(X))
    assert P.shape == (80, 2)
    np.testing.assert_array_equal(B.to_numpy(bag.predict(X)), P.argmax(axis=1))
    Y = np.stack([score > 0, X[:, 0] > 0], axis=1).astype(np.float32)
    multi = xd.Bagging(lambda: xd.Sequential(xd.Linear(5, 2)), n_members=3, loss=xd.MultiLabelLogistic(),
                       epochs=5, batch_size=16, progress=False)
    multi.fit(X, Y)
    mean = B.to_numpy(multi.predict_proba(X))
    labels = B.to_numpy(multi.predict(X))
    assert labels.shape == (80, 2)
    np.testing.assert_array_equal(labels, (mean > 0.5).astype(np.int64))


@pytest.mark.parametrize("progress", [True, 1, 2])
def test_logs_are_one_line_per_epoch_without_carriage_returns(rng, capsys, progress):
    """Keras's verbose=1/2: outside a terminal (a CI log, a pipe), exactly one line per epoch."""
    X, score = _data(rng, n=64)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    xd.Trainer(xd.Sequential(xd.Linear(5, 3)), loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1),
               batch_size=16, epochs=3, progress=progress).fit(X, y)
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith(f"epoch {i + 1}:") for i, line in enumerate(lines))


def test_progress_zero_is_silent_and_bad_values_are_refused(rng, capsys):
    X, score = _data(rng, n=32)
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    xd.Trainer(xd.Sequential(xd.Linear(5, 3)), loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1),
               epochs=2, progress=0).fit(X, y)
    assert capsys.readouterr() == ("", "")
    with pytest.raises(ValueError, match="verbosity"):
        xd.Trainer(xd.Sequential(xd.Linear(5, 3)), loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1),
                   progress=3)


def test_preprocessing_is_part_of_the_model(rng, tmp_path):
    """Sequential(..., preprocessing=Standardizer()): fitted by the trainer on the training rows
    only, applied by fit and predict, saved in the model file; a fit that fails its checks leaves
    it unfitted."""
    from xpdnn.preprocessing import Standardizer
    X, score = _data(rng, n=96)
    X = X * 7 + 3
    y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    Xv, yv = X[:16] * 100, y[:16]
    bad = xd.Sequential(xd.Linear(5, 3), preprocessing=Standardizer())
    with pytest.raises(ValueError, match="label"):
        _fit(bad, xd.SoftmaxCrossEntropy(), X, np.where(y == 1, 9, y))
    assert not bad.preprocessing.fitted
    net = xd.Sequential(xd.Linear(5, 8), xd.ReLU(), xd.Linear(8, 3), preprocessing=Standardizer())
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), batch_size=16, epochs=2,
                         progress=False)
    trainer.fit(X, y, validation=(Xv, yv))
    ref = Standardizer().fit(X)
    np.testing.assert_array_equal(B.to_numpy(net.preprocessing.transform(X)), B.to_numpy(ref.transform(X)))
    Z = B.to_numpy(net.forward(ref.transform(X).astype(np.float32))[0])
    np.testing.assert_array_equal(B.to_numpy(net.predict(X)), Z.argmax(axis=1))
    xd.save(net, tmp_path / "m.xpd")
    np.testing.assert_array_equal(B.to_numpy(xd.load(tmp_path / "m.xpd").predict(X)), B.to_numpy(net.predict(X)))


def test_a_transformer_saves_and_loads_alone(rng, tmp_path):
    from xpdnn.preprocessing import PCA, MinMaxScaler, Standardizer
    X = rng.standard_normal((40, 6)) * 3 + 1
    for t in (Standardizer().fit(X), PCA(3, whiten=True).fit(X), MinMaxScaler().fit(X)):
        xd.save(t, tmp_path / "t.xpd")
        back = xd.load(tmp_path / "t.xpd")
        assert type(back) is type(t)
        np.testing.assert_array_equal(B.to_numpy(back.transform(X)), B.to_numpy(t.transform(X)))
    with pytest.raises(ValueError, match="not fitted"):
        xd.save(Standardizer(), tmp_path / "u.xpd")
    assert not (tmp_path / "u.xpd").exists()
