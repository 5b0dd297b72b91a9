import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn.diagnostics import (DeadReLUMonitor, DiagnosticsWarning, GradientFlowMonitor, SaturationMonitor,
                               dead_fractions, diagnostics_callbacks, format_diagnostics, gradient_norms,
                               saturation_fractions)


def set_params(layer, **params):
    for k, v in params.items():
        layer.params[k] = np.asarray(v, dtype=layer.dtype)


def test_dead_fraction_counts_units_never_active(backend):
    X = backend.asarray(np.random.default_rng(0).uniform(-1, 1, (50, 2)))
    lin = xd.Linear(2, 4, dtype="float64")
    # unit 0 never active (bias -10), unit 1 active only for x0 > 0.9, units 2 and 3 often active
    set_params(lin, W=[[1, 1], [1, 0], [0, 1], [-1, 0]], b=[-10, -0.9, 0, 0])
    net = xd.Sequential(lin, xd.ReLU(), xd.Linear(4, 3, dtype="float64"), xd.ReLU())
    out = dead_fractions(net, X, batch_size=7)
    assert set(out) == {"layers.1", "layers.3"}
    Xh = backend.numpy(X)
    expected = 0.25 if (Xh[:, 0] > 0.9).any() else 0.5
    assert out["layers.1"] == pytest.approx(expected)
    H = np.maximum(Xh @ B.to_numpy(lin.params["W"]).T + B.to_numpy(lin.params["b"]), 0)
    W2, b2 = (B.to_numpy(net[2].params[k]) for k in ("W", "b"))
    assert out["layers.3"] == pytest.approx(1 - np.mean((H @ W2.T + b2 > 0).any(axis=0)))


def test_saturation_fraction(backend):
    Xh = np.array([[-10.0], [-1.0], [0.0], [1.0], [10.0], [20.0]])
    X = backend.asarray(Xh)
    lin = xd.Linear(1, 2, dtype="float64")
    set_params(lin, W=[[1.0], [0.1]], b=[0.0, 0.0])
    net = xd.Sequential(lin, xd.Sigmoid(), xd.Linear(2, 2, dtype="float64"), xd.Tanh(), xd.ReLU())
    out = saturation_fractions(net, X, tol=0.01)
    assert set(out) == {"layers.1", "layers.3"}
    S = 1 / (1 + np.exp(-(Xh @ np.array([[1.0, 0.1]]))))
    assert out["layers.1"] == pytest.approx(np.mean((S < 0.01) | (S > 0.99)))
    assert out["layers.1"] == pytest.approx(3 / 12)     # x = -10, 10, 20 in the steep unit


def test_gradient_norms_match_the_formula(backend):
    rng = np.random.default_rng(1)
    Xh, yh = rng.standard_normal((20, 3)), rng.integers(0, 4, 20)
    net = xd.Sequential(xd.Linear(3, 4, dtype="float64")).initialize(0)
    norms = gradient_norms(net, backend.asarray(Xh), backend.asarray(yh), xd.SoftmaxCrossEntropy())
    W, b = (B.to_numpy(net[0].params[k]) for k in ("W", "b"))
    Z = Xh @ W.T + b
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    dZ = (P - np.eye(4)[yh]) / 20
    assert norms == {"layers.0": pytest.approx(math.sqrt(np.sum((dZ.T @ Xh) ** 2) + np.sum(dZ.sum(0) ** 2)))}


def small_problem(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return X, y


def test_gradient_flow_monitor_records_norms_and_update_ratios(backend):
    Xh, yh = small_problem()
    X, y = backend.asarray(Xh), backend.asarray(yh)
    net = xd.Sequential(xd.Linear(5, 8, dtype="float64"), xd.Tanh(), xd.Linear(8, 2, dtype="float64")).initialize(3)
    probe = xd.Sequential(*[xd.Linear(5, 8, dtype="float64"), xd.Tanh(), xd.Linear(8, 2, dtype="float64")])
    probe.load_state_arrays(net.state_arrays())
    first = gradient_norms(probe, X, y, xd.SoftmaxCrossEntropy())
    w0 = {p: math.sqrt(sum(np.sum(B.to_numpy(l.params[k]) ** 2) for k in l.params))
          for p, l in probe.named_layers() if l.params}
    lr = 0.1
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=lr), batch_size=60, epochs=3,
                         seed=0, progress=False, callbacks=[GradientFlowMonitor()])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiagnosticsWarning)
        h = trainer.fit(X, y)
    for p in ("layers.0", "layers.2"):
        assert len(h[f"grad_norm/{p}"]) == 3 and len(h[f"update_ratio/{p}"]) == 3
        # one full-batch step per epoch: epoch 1 sees the initial gradient, and plain SGD moves
        # the parameters by lr * gradient
        assert h[f"grad_norm/{p}"][0] == pytest.approx(first[p], rel=1e-9)
        assert h[f"update_ratio/{p}"][0] == pytest.approx(lr * first[p] / w0[p], rel=1e-9)
    assert "grad_norm/layers.1" not in h


def test_gradient_flow_every_and_averaging(backend):
    Xh, yh = small_problem(64)
    net = xd.Sequential(xd.Linear(5, 2, dtype="float64"))
    mon = GradientFlowMonitor(every=2)
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.05), batch_size=16, epochs=1,
                         seed=0, progress=False, callbacks=[mon])
    norms = []
    orig = mon.on_batch_end

    def spy(tr, step, logs):
        if step % 2 == 0:
            g = net[0].grads
            norms.append(math.sqrt(sum(float(np.sum(B.to_numpy(g[k]) ** 2)) for k in g)))
        orig(tr, step, logs)

    mon.on_batch_end = spy
    h = trainer.fit(backend.asarray(Xh), backend.asarray(yh))
    assert len(norms) == 2
    assert h["grad_norm/layers.0"] == [pytest.approx(np.mean(norms), rel=1e-9)]


def test_vanishing_warning_and_saturation_monitor(backend):
    Xh, yh = small_problem()
    X, y = backend.asarray(Xh), backend.asarray(yh)
    layers = []
    for i in range(6):
        layers += [xd.Linear(5, 5, init="lecun", dtype="float64"), xd.Sigmoid()]
    net = xd.Sequential(*layers, xd.Linear(5, 2, dtype="float64"))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.01), batch_size=60, epochs=2,
                         seed=0, progress=False,
                         callbacks=[GradientFlowMonitor(vanish_ratio=1e-2), SaturationMonitor(X, threshold=0.0)])
    with pytest.warns(DiagnosticsWarning) as rec:
        h = trainer.fit(X, y)
    msgs = [str(w.message) for w in rec]
    vanish = [m for m in msgs if "vanish" in m]
    assert any("layers.0" in m for m in vanish) and not any("layers.12" in m for m in vanish)
    assert len(vanish) == len(set(vanish))           # once per layer, not every epoch
    assert h["grad_norm/layers.0"][-1] < 1e-2 * h["grad_norm/layers.12"][-1]
    assert len(h["saturation/layers.1"]) == 2 and 0.0 <= h["saturation/layers.1"][0] <= 1.0


def test_saturation_monitor_sees_large_initial_weights(backend):
    Xh, yh = small_problem()
    X, y = backend.asarray(Xh), backend.asarray(yh)

    def huge(rng, n_in, n_out):
        return rng.standard_normal((n_out, n_in)) * 20.0

    def run(init):
        net = xd.Sequential(xd.Linear(5, 16, init=init, dtype="float64"), xd.Tanh(), xd.Linear(16, 2, dtype="float64"))
        trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=1e-3), batch_size=60, epochs=1,
                             seed=0, progress=False, callbacks=[SaturationMonitor(Xh, threshold=0.5)])
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always", DiagnosticsWarning)
            h = trainer.fit(X, y)
        return h["saturation/layers.1"][0], [w for w in rec if issubclass(w.category, DiagnosticsWarning)]

    high, warned = run(huge)
    low, quiet = run("lecun")
    assert high > 0.8 and warned and "saturated" in str(warned[0].message)
    assert low < 0.2 and not quiet


def test_history_gets_values_whichever_order_the_trainer_records(backend):
    class Stub:
        def __init__(self):
            self.history = {}
            self.net = xd.Sequential(xd.Linear(2, 3), xd.ReLU())

    X = np.ones((4, 2), dtype=np.float32)
    mon = DeadReLUMonitor(X, warn=False)
    # a trainer that copies logs into the history after the callbacks: only logs change
    t = Stub()
    logs = {"loss": 1.0}
    mon.on_epoch_end(t, 0, logs)
    assert "dead_fraction/layers.1" in logs and t.history == {}
    # a trainer that has already copied this epoch's logs: the history gets the values directly
    t = Stub()
    t.history = {"loss": [0.5, 0.7]}
    logs = {"loss": t.history["loss"][-1]}
    mon.on_epoch_end(t, 1, logs)
    assert t.history["dead_fraction/layers.1"] == [None, logs["dead_fraction/layers.1"]]


def test_callbacks_and_format(backend):
    Xh, yh = small_problem(300)
    cbs = diagnostics_callbacks(backend.asarray(Xh), max_samples=100)
    assert [type(c).__name__ for c in cbs] == ["GradientFlowMonitor", "DeadReLUMonitor", "SaturationMonitor"]
    assert cbs[1].X_sample.shape == (100, 5) and cbs[1].X_sample is cbs[2].X_sample
    net = xd.Sequential(xd.Linear(5, 8), xd.ReLU(), xd.Linear(8, 8), xd.Tanh(), xd.Linear(8, 2))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), batch_size=50, epochs=2,
                         seed=0, progress=False, callbacks=cbs)
    h = trainer.fit(backend.asarray(Xh.astype(np.float32)), backend.asarray(yh))
    keys = sorted(k for k in h if "/" in k)
    assert keys == ["dead_fraction/layers.1", "grad_norm/layers.0", "grad_norm/layers.2", "grad_norm/layers.4",
                    "saturation/layers.3", "update_ratio/layers.0", "update_ratio/layers.2", "update_ratio/layers.4"]
    assert all(len(h[k]) == 2 and all(isinstance(v, float) for v in h[k]) for k in keys)
    text = format_diagnostics(h)
    lines = text.splitlines()
    assert "2 epoch(s)" in lines[0]
    assert lines[1].split() == ["layer", "grad_norm", "update_ratio", "dead_fraction", "saturation"]
    assert [ln.split()[0] for ln in lines[3:]] == ["layers.0", "layers.1", "layers.2", "layers.3", "layers.4"]
    assert f"{h['grad_norm/layers.0'][0]:.2e} -> {h['grad_norm/layers.0'][1]:.2e}" in text
    assert "no diagnostics" in format_diagnostics({"loss": [1.0]})


def test_bad_arguments():
    with pytest.raises(ValueError, match="vanish_ratio"):
        GradientFlowMonitor(vanish_ratio=2.0)
    with pytest.raises(ValueError, match="threshold"):
        DeadReLUMonitor(np.ones((2, 2)), threshold=1.5)
    with pytest.raises(ValueError, match="2-D"):
        DeadReLUMonitor(np.ones(3))
    with pytest.raises(ValueError, match="tol"):
        SaturationMonitor(np.ones((2, 2)), tol=0.7)


def load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "vanishing_gradients.py"
    spec = importlib.util.spec_from_file_location("vanishing_gradients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_claim_sigmoid_gradients_vanish_relu_he_do_not(backend):
    """examples/vanishing_gradients.py at a small size: 10 layers of 32 units on 200 digits."""
    pytest.importorskip("sklearn")
    ex = load_example()
    Xh, yh = ex.digits(200)
    X, y = backend.asarray(Xh), backend.asarray(yh)
    for seed in (0, 1):
        sig, sig_ratio = ex.gradient_flow(X, y, xd.Sigmoid, "lecun", width=32, seed=seed)
        relu, relu_ratio = ex.gradient_flow(X, y, xd.ReLU, "he", width=32, seed=seed)
        assert len(sig) == len(relu) == 10
        assert sig_ratio < 1e-3                       # orders of magnitude
        norms = list(sig.values())
        assert all(a < b for a, b in zip(norms, norms[1:]))   # shrinking at every layer going back
        assert 0.1 < relu_ratio < 10                  # within an order of magnitude


def test_claim_too_high_learning_rate_kills_relus(backend):
    pytest.importorskip("sklearn")
    ex = load_example()
    Xh, yh = ex.digits(400, dtype="float32")
    X, y = backend.asarray(Xh), backend.asarray(yh)
    hist_hi, warned_hi = ex.dead_after_training(X, y, 0.5, width=32)
    hist_lo, warned_lo = ex.dead_after_training(X, y, 0.05, width=32)
    dead_hi = max(hist_hi[k][-1] for k in hist_hi if k.startswith("dead_fraction/"))
    dead_lo = max(hist_lo[k][-1] for k in hist_lo if k.startswith("dead_fraction/"))
    assert dead_hi > 0.4 and dead_lo < 0.1
    assert any("dead" in str(w.message) and "learning rate" in str(w.message) for w in warned_hi)
    assert not any("dead" in str(w.message) for w in warned_lo)
    assert hist_lo["accuracy"][-1] > hist_hi["accuracy"][-1]


def test_exploding_gradient_warnings():
    mon = GradientFlowMonitor(explode_ratio=1e3)
    with pytest.warns(DiagnosticsWarning, match=r"layers.0 \(1e\+05\) is 1.0e\+05 times the last layer's.*explode"):
        mon._check({"layers.0": 1e5, "layers.2": 10.0, "layers.4": 1.0})
    with pytest.warns(DiagnosticsWarning, match="layers.2 is nan: gradients explode"):
        mon._check({"layers.0": 1.0, "layers.2": float("nan"), "layers.4": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiagnosticsWarning)
        GradientFlowMonitor()._check({"layers.0": 0.5, "layers.2": 2.0, "layers.4": 1.0})
