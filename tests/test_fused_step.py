"""The optimizer step fused into backprop (``Trainer(fused_step=...)``) and the BLAS helpers it
uses: the fused run must equal the plain one up to rounding, and must switch itself off wherever
something reads the gradients."""

import numpy as np
import pytest

import xpdnn as xd
from xpdnn.diagnostics import GradientFlowMonitor
from xpdnn.kernels import cpu
from xpdnn.optim.schedules import StepDecay
from xpdnn.regularizers import L2, ClipGradNorm
from xpdnn.step import can_fuse


def _blobs(n=200, d=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 2
    y = rng.integers(0, c, n)
    return centers[y] + rng.standard_normal((n, d)), y


def _fit(fused, *, dtype="float64", opt=None, epochs=3, dropout=0.0, callbacks=(), **kw):
    X, y = _blobs()
    layers = [xd.Linear(12, 32, seed=1, dtype=dtype), xd.ReLU(), xd.Linear(32, 16, seed=2, dtype=dtype), xd.Tanh()]
    if dropout:
        layers.append(xd.Dropout(dropout))
    net = xd.Sequential(*layers, xd.Linear(16, 4, seed=3, dtype=dtype))
    opt = opt or xd.SGD(lr=0.05, momentum=0.9)
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=opt, batch_size=32, epochs=epochs,
                         seed=5, progress=False, fused_step=fused, callbacks=callbacks, **kw)
    hist = trainer.fit(X.astype(dtype), y)
    return net, opt, hist


def _calls(monkeypatch):
    seen = []
    real = xd.SGD.fused_update

    def spy(self, key, *a, **k):
        seen.append(key)
        return real(self, key, *a, **k)

    monkeypatch.setattr(xd.SGD, "fused_update", spy)
    return seen


@pytest.mark.parametrize("opt", [
    lambda: xd.SGD(lr=0.05, momentum=0.9),
    lambda: xd.SGD(lr=0.05, momentum=0.9, weight_decay=1e-2),
    lambda: xd.SGD(lr=0.05),
    lambda: xd.SGD(lr=0.05, weight_decay=1e-2),
], ids=["momentum", "momentum+decay", "plain", "plain+decay"])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-11), ("float32", 2e-5)])
def test_fused_equals_plain(opt, dtype, rtol, monkeypatch):
    net_a, opt_a, hist_a = _fit(False, dtype=dtype, opt=opt())
    seen = _calls(monkeypatch)
    net_b, opt_b, hist_b = _fit(True, dtype=dtype, opt=opt())
    assert {k for k in seen} == {"layers.0/W", "layers.2/W", "layers.4/W"}
    np.testing.assert_allclose(hist_b["loss"], hist_a["loss"], rtol=rtol)
    for k, v in net_a.state_arrays().items():
        np.testing.assert_allclose(net_b.state_arrays()[k], v, rtol=rtol * 10, atol=rtol, err_msg=k)
    assert opt_a.state.keys() == opt_b.state.keys()
    for key, slots in opt_a.state.items():                # the velocity is PyTorch's, not lr * v
        np.testing.assert_allclose(opt_b.state[key]["velocity"], slots["velocity"], rtol=rtol * 10, atol=rtol)
    # the fusion lives in the fit's gradient sink: nothing is left on the layers or the optimizer
    fresh = xd.Sequential(xd.Linear(12, 32), xd.ReLU(), xd.Linear(32, 16), xd.Tanh(), xd.Linear(16, 4))
    assert [sorted(vars(la)) for _, la in net_b.named_layers()] == [sorted(vars(la)) for _, la in fresh.named_layers()]
    assert set(vars(opt_b)) - set(vars(opt())) <= {"_scratch_buffers"}


def test_fused_with_dropout_and_schedule_equals_plain():
    sched = lambda: [StepDecay(2, gamma=0.5, per="step")]
    _, _, a = _fit(False, dropout=0.3, callbacks=sched())
    _, _, b = _fit(True, dropout=0.3, callbacks=sched())
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-11)
    assert b["lr"] == a["lr"]


def test_automatic_fusion_is_on_by_default_and_off_where_gradients_are_read(monkeypatch):
    seen = _calls(monkeypatch)
    _fit(None, epochs=1)
    assert seen
    for kw in ({"regularizers": [L2(1e-3)]}, {"clip": ClipGradNorm(1.0)},
               {"callbacks": [GradientFlowMonitor()]}, {"opt": xd.SGD(lr=0.05, momentum=0.9, nesterov=True)},
               {"opt": xd.Adam(lr=1e-3)}):
        seen.clear()
        _fit(None, epochs=1, **kw)
        assert not seen, kw


def test_fused_true_with_a_gradient_reader_is_an_error():
    with pytest.raises(ValueError, match="fused_step=True"):
        _fit(True, epochs=1, regularizers=[L2(1e-3)])


def test_a_layer_used_twice_is_never_fused(monkeypatch):
    seen = _calls(monkeypatch)
    shared = xd.Linear(8, 8, seed=0, dtype="float64")
    net = xd.Sequential(xd.Linear(12, 8, dtype="float64"), xd.ReLU(), shared, xd.Tanh(), shared,
                        xd.Linear(8, 4, dtype="float64"))
    X, y = _blobs()
    xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.05, momentum=0.9), batch_size=32,
               epochs=1, progress=False).fit(X, y)
    assert not seen
    assert not can_fuse((net,), xd.SGD(lr=0.1))


def test_fused_resume_matches_one_run(tmp_path):
    """A checkpoint taken mid-run by a fused trainer resumes to the same weights."""
    net_a, _, _ = _fit(True, epochs=4)
    X, y = _blobs()
    net = xd.Sequential(xd.Linear(12, 32, seed=1, dtype="float64"), xd.ReLU(),
                        xd.Linear(32, 16, seed=2, dtype="float64"), xd.Tanh(), xd.Linear(16, 4, seed=3, dtype="float64"))
    tr = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.05, momentum=0.9), batch_size=32,
                    epochs=2, seed=5, progress=False, fused_step=True)
    tr.fit(X, y)
    tr.save(tmp_path / "ck")
    net2 = xd.Sequential(xd.Linear(12, 32, dtype="float64"), xd.ReLU(), xd.Linear(32, 16, dtype="float64"),
                         xd.Tanh(), xd.Linear(16, 4, dtype="float64"))
    tr2 = xd.Trainer(net2, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.05, momentum=0.9), batch_size=32,
                     epochs=4, seed=5, progress=False, fused_step=True)
    tr2.restore(tmp_path / "ck")
    tr2.fit(X, y)
    for k, v in net_a.state_arrays().items():
        np.testing.assert_allclose(net2.state_arrays()[k], v, rtol=1e-12, atol=1e-14, err_msg=k)


# -- the BLAS helpers, with NumPy's OpenBLAS and without -------------------------------------

@pytest.fixture(params=["blas", "numpy"])
def blas_mode(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(cpu, "_cblas", lambda: None)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(128, 512, 784), (3, 5, 7), (1, 1, 1), (17, 1, 33)])
@pytest.mark.parametrize("beta", [0.0, 0.9, 1.0])
def test_gemm_tn_acc(blas_mode, dtype, shape, beta):
    rng = np.random.default_rng(1)
    N, m, n = shape
    dY, X = rng.standard_normal((N, m)).astype(dtype), rng.standard_normal((N, n)).astype(dtype)
    C = rng.standard_normal((m, n)).astype(dtype)
    if beta == 0:
        C[0, 0] = np.nan                                # beta = 0 must overwrite, never read
    ref = dY.astype(np.float64).T @ X.astype(np.float64) + (beta * C.astype(np.float64) if beta else 0)
    out = cpu.gemm_tn_acc_(dY, X, C, beta)
    assert out is C
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(C, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_gemm_tn_acc_non_contiguous_input_falls_back_correctly(blas_mode):
    rng = np.random.default_rng(2)
    dY = rng.standard_normal((20, 12))[:, ::2]           # strided view
    X = np.asfortranarray(rng.standard_normal((20, 5)))
    C = rng.standard_normal((6, 5))
    ref = dY.T @ X + 0.5 * C
    cpu.gemm_tn_acc_(dY, X, C, 0.5)
    np.testing.assert_allclose(C, ref, rtol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        cpu.gemm_tn_acc_(dY, X, np.zeros((5, 6)), 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpy_flat(blas_mode, dtype):
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((33, 17)).astype(dtype), rng.standard_normal((33, 17)).astype(dtype)
    ref = Y.astype(np.float64) - 0.37 * X.astype(np.float64)
    out = cpu.axpy_flat_(-0.37, X, Y)
    assert out is Y
    np.testing.assert_allclose(Y, ref, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        cpu.axpy_flat_(1.0, X, Y.T.copy())


def test_numpy_bundled_blas_is_found_when_numpy_ships_it():
    cfg = np.__config__.CONFIG["Build Dependencies"]["blas"]
    if cfg.get("name") != "scipy-openblas":
        pytest.skip(f"NumPy here links {cfg.get('name')}: the fast path is off by design")
    assert cpu._cblas() is not None
