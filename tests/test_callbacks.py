"""ModelCheckpoint, EarlyStopping's report and Trainer.fit(validation_split=...)."""

import os

import numpy as np
import pytest

import xpdnn as xd


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.8, size=n) > 0).astype(np.int64)
    return X, y


def _trainer(callbacks=(), epochs=8, progress=False, lr=0.05):
    net = xd.Sequential(xd.Linear(4, 16), xd.ReLU(), xd.Linear(16, 2))
    return xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=lr, momentum=0.9),
                      batch_size=32, epochs=epochs, seed=0, callbacks=callbacks, progress=progress)


def _outputs(net, X):
    return np.asarray(net.forward(X, train=False)[0])


def test_validation_split_holds_out_the_last_rows_before_shuffling():
    X, y = _data()
    split = int(200 * (1 - 0.25))
    a = _trainer().fit(X, y, validation_split=0.25)
    b = _trainer().fit(X[:split], y[:split], validation=(X[split:], y[split:]))
    assert a["val_loss"] == b["val_loss"] and a["loss"] == b["loss"]
    t = _trainer()
    t.fit(X, y, validation_split=0.25)
    assert t.evaluate(X[split:], y[split:])["loss"] == pytest.approx(t.history["val_loss"][-1], rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"validation_split": 0.0}, "fraction in"),
    ({"validation_split": 1.0}, "fraction in"),
    ({"validation_split": 0.999}, "no training or no validation"),
    ({"validation_split": 0.2, "validation": "both"}, "not both"),
])
def test_validation_split_errors(kwargs, match):
    X, y = _data()
    if kwargs.get("validation") == "both":
        kwargs["validation"] = (X, y)
    t = _trainer()
    with pytest.raises(ValueError, match=match):
        t.fit(X, y, **kwargs)
    assert t.epoch == 0 and t.history == {}


def test_early_stopping_reports_when_it_stopped_and_what_it_restored(capsys):
    X, y = _data()
    stop = xd.EarlyStopping(patience=2, min_delta=10.0)     # nothing beats the first epoch
    t = _trainer([stop], epochs=20, progress=True)
    t.fit(X, y, validation_split=0.2)
    assert stop.best_epoch == 0 and stop.stopped_epoch == 2 and t.epoch == 3
    out = capsys.readouterr().out
    assert "early stopping: val_loss did not improve for 2 epochs; stopped after epoch 3" in out
    assert "restored the weights of epoch 1" in out
    # no stop, no report
    quiet = xd.EarlyStopping(patience=50)
    t = _trainer([quiet], epochs=3, progress=True)
    t.fit(X, y, validation_split=0.2)
    assert quiet.stopped_epoch is None and "early stopping" not in capsys.readouterr().out


def test_checkpoint_best_only_saves_the_weights_early_stopping_restores(tmp_path):
    X, y = _data()
    path = tmp_path / "best.xpd"
    ck = xd.ModelCheckpoint(path, save_best_only=True)
    stop = xd.EarlyStopping(patience=100)                  # restores the best epoch at the end
    t = _trainer([ck, stop], epochs=12, lr=0.3)
    history = t.fit(X, y, validation_split=0.2)
    best = int(np.argmin(history["val_loss"]))
    assert ck.best_epoch == best == stop.best_epoch and ck.best == min(history["val_loss"])
    improvements = [e for e in range(12) if history["val_loss"][e] < min(history["val_loss"][:e], default=np.inf)]
    assert len(ck.saved) == len(improvements) and set(ck.saved) == {str(path)}
    loaded = xd.load(path)
    np.testing.assert_array_equal(_outputs(loaded, X), _outputs(t.net, X))
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_checkpoint_every_n_epochs_with_formatted_names(tmp_path):
    X, y = _data()
    ck = xd.ModelCheckpoint(tmp_path / "ck-{epoch:02d}-{val_loss:.3f}.xpd", every=3)
    t = _trainer([ck], epochs=7)
    history = t.fit(X, y, validation_split=0.2)
    names = [os.path.basename(p) for p in ck.saved]
    assert names == [f"ck-{e:02d}-{history['val_loss'][e - 1]:.3f}.xpd" for e in (3, 6)]
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    resumed = _trainer([xd.ModelCheckpoint(tmp_path / "again-{epoch}.xpd", every=3)], epochs=7)
    resumed.restore(ck.saved[0])
    assert resumed.epoch == 3 and resumed.history["loss"] == history["loss"][:3]
    resumed.fit(X, y, validation_split=0.2)
    assert resumed.history["loss"] == pytest.approx(history["loss"])    # the run continues exactly
    assert os.path.exists(tmp_path / "again-6.xpd") and not os.path.exists(tmp_path / "again-3.xpd")


def test_checkpoint_keeps_its_best_value_across_a_resume(tmp_path):
    X, y = _data()
    ck = xd.ModelCheckpoint(tmp_path / "best.xpd", save_best_only=True, mode="max", monitor="val_accuracy")
    t = _trainer([ck], epochs=4)
    t.fit(X, y, validation_split=0.2)
    t.save(tmp_path / "state.xpd")
    again = xd.ModelCheckpoint(tmp_path / "other.xpd", save_best_only=True, mode="max", monitor="val_accuracy")
    resumed = _trainer([again], epochs=4)
    resumed.restore(tmp_path / "state.xpd")
    assert again.best == ck.best and again.best_epoch == ck.best_epoch


def test_checkpoint_errors(tmp_path):
    X, y = _data()
    with pytest.raises(ValueError, match="mode"):
        xd.ModelCheckpoint(tmp_path / "a.xpd", mode="up")
    with pytest.raises(ValueError, match="every"):
        xd.ModelCheckpoint(tmp_path / "a.xpd", every=0)
    t = _trainer([xd.ModelCheckpoint(tmp_path / "a.xpd", save_best_only=True)], epochs=2)
    with pytest.raises(ValueError, match="monitors 'val_loss', which is not logged"):
        t.fit(X, y)
    t = _trainer([xd.ModelCheckpoint(tmp_path / "{nope}.xpd")], epochs=2)
    with pytest.raises(ValueError, match="cannot be filled"):
        t.fit(X, y)
    assert os.listdir(tmp_path) == []
