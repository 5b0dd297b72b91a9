"""The NumPy fast paths agree with the portable code they shortcut."""

import numpy as np
import pytest

import array_api_strict as aas

import xpdnn as xd
from xpdnn.kernels import cpu


@pytest.mark.parametrize("N, C", [(1, 2), (7, 10), (300, 1000), (64, 5000)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", [None, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_xent_fast_path_matches_portable(N, C, reduction, ignore, dtype):
    rng = np.random.default_rng(N + C)
    Z = (rng.standard_normal((N, C)) * 20).astype(dtype)
    Z[0, 0] = 1e4                                   # extreme logits stay finite
    y = rng.integers(0, C, N)
    if ignore is not None:
        y[::2] = ignore
    fast = xd.SoftmaxCrossEntropy(reduction=reduction, ignore_index=ignore)
    slow = xd.SoftmaxCrossEntropy(reduction=reduction, ignore_index=ignore, fused=False)
    lf, gf = fast(Z, y)
    ls, gs = slow(Z, y)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lf, ls, **tol)
    np.testing.assert_allclose(gf, gs, **tol)
    assert gf.dtype == Z.dtype and np.asarray(lf).dtype == Z.dtype
    assert np.all(np.isfinite(gf))


def test_softmax_xent_fast_path_all_ignored():
    Z = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    loss, G = xd.SoftmaxCrossEntropy(ignore_index=-1)(Z, np.full(4, -1))
    assert float(loss) == 0.0 and not G.any()


def test_softmax_xent_threads_split_rows_exactly():
    """Large enough to run on several threads: identical to one thread."""
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((513, 1031)).astype(np.float32)
    y = rng.integers(0, 1031, 513)
    l1, g1 = cpu.softmax_xent(Z, y)
    G = np.empty_like(Z)
    losses = np.empty(513, np.float32)
    cpu._xent_rows(Z, y, G, losses, 0, 513, 7)
    G[np.arange(513), y] -= 1
    np.testing.assert_array_equal(g1, G * np.float32(1.0 / 513))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(128, 512), (3, 5, 7), (1,), (0, 4), (1025, 1025)])
def test_relu_in_place_matches_maximum_with_zero(dtype, shape, rng):
    """relu_ compares against a cached zero buffer (and the scalar above 2**20 elements): the
    same values as ``np.maximum(X, 0)``, NaN kept, in place, the buffer never written."""
    X = rng.standard_normal(shape).astype(dtype)
    if X.size:
        X.flat[::7] = np.nan
        X.flat[1::11] = -np.inf
    want = np.maximum(X, 0)
    got = cpu.relu_(X)
    assert got is X
    np.testing.assert_array_equal(got, want)
    strided = rng.standard_normal((64, 40)).astype(dtype)[:, ::2]      # not contiguous
    np.testing.assert_array_equal(cpu.relu_(strided.copy(order="K")), np.maximum(strided, 0))
    view = strided.copy()[:, ::3]
    want = np.maximum(view, 0)
    np.testing.assert_array_equal(cpu.relu_(view), want)
    for buf in cpu._zeros.values():
        assert not buf.flags.writeable and not buf.any()


def test_fused_linear_relu_matches_the_unfused_chain(rng):
    """Sequential fuses Linear+ReLU in place on NumPy; array-api-strict runs the portable
    layers one by one: same outputs and gradients."""
    net = xd.Sequential(xd.Linear(6, 8, dtype="float64"), xd.ReLU(), xd.Linear(8, 8, dtype="float64"), xd.ReLU(),
                        xd.Linear(8, 3, dtype="float64"), xd.ReLU())
    X = rng.standard_normal((5, 6))
    G = rng.standard_normal((5, 3))
    outs = []
    for lib in (np, aas):
        net.to(like=lib.asarray(X))
        net.zero_grad()
        Y, bp = net.forward(lib.asarray(X), train=True)
        dX = bp(lib.asarray(G.copy()))
        outs.append((np.asarray(Y), np.asarray(dX), {k: np.asarray(v.grads[n]) for k, v, n in
                                                       [(f"{p}.{n}", l, n) for p, l, n in net.parameters()]}))
    (Y0, dX0, g0), (Y1, dX1, g1) = outs
    np.testing.assert_allclose(Y0, Y1, rtol=1e-13)
    np.testing.assert_allclose(dX0, dX1, rtol=1e-13)
    for k in g0:
        np.testing.assert_allclose(g0[k], g1[k], rtol=1e-13, err_msg=k)


def test_caller_dY_is_never_overwritten(rng):
    net = xd.Sequential(xd.Linear(4, 5, dtype="float64"), xd.ReLU())
    _, bp = net.forward(rng.standard_normal((3, 4)), train=True)
    dY = rng.standard_normal((3, 5))
    keep = dY.copy()
    bp(dY)
    np.testing.assert_array_equal(dY, keep)


def test_first_layer_input_gradient_skipped_only_on_request(rng):
    net = xd.Sequential(xd.Linear(4, 5, dtype="float64"), xd.ReLU(), xd.Linear(5, 2, dtype="float64"))
    X = rng.standard_normal((3, 4))
    G = rng.standard_normal((3, 2))
    _, bp = net.forward(X, train=True)
    assert bp(G).shape == (3, 4)
    net.zero_grad()
    _, bp = net.forward(X, train=True, input_grad=False)
    assert bp(G) is None
    W_grad = net.layers[0].grads["W"].copy()
    net.zero_grad()
    _, bp = net.forward(X, train=True)
    bp(G)
    np.testing.assert_allclose(net.layers[0].grads["W"], W_grad, rtol=1e-14)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bad", [-1, 3])
def test_direct_loss_call_rejects_out_of_range_labels(backend, fused, bad):
    """Outside the trainer (which validates once) every call checks: -1 must not wrap around
    to the last class."""
    Z = backend.asarray(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="label"):
        xd.SoftmaxCrossEntropy(fused=fused)(Z, backend.asarray(np.array([0, bad])))


@pytest.mark.parametrize("make", [xd.MulticlassHinge, xd.SquaredMulticlassHinge])
@pytest.mark.parametrize("bad", [-1, 3])
def test_hinge_rejects_out_of_range_labels(backend, make, bad):
    Z = backend.asarray(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="label"):
        make()(Z, backend.asarray(np.array([0, bad])))


@pytest.mark.parametrize("bad", [-1, 5])
def test_hierarchical_softmax_rejects_out_of_range_labels(backend, bad):
    hs = xd.HierarchicalSoftmax(3, 5, dtype="float64")
    with pytest.raises(ValueError, match="label"):
        hs(backend.asarray(np.zeros((2, 3))), backend.asarray(np.array([0, bad])))


def test_without_numba_the_numpy_paths_run(monkeypatch):
    """Where numba is missing (or fails to import) the kernels say so and the NumPy paths run:
    dropout through the bool mask, the loss through the one-pass NumPy code, ReLU in place."""
    from xpdnn import kernels
    from xpdnn import random as xr

    monkeypatch.delenv("XPDNN_NO_JIT", raising=False)
    monkeypatch.setattr(kernels, "_jit_module", "ModuleNotFoundError: No module named 'numba'")
    assert kernels._jit() is None
    assert kernels.jit_status().startswith("off (numba is not installed")
    monkeypatch.setattr(kernels, "_jit_module", "ImportError: numba needs NumPy <= 2.3")
    assert kernels.jit_status() == "off (numba did not import: ImportError: numba needs NumPy <= 2.3)"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9, 7)).astype(np.float32)
    Y, bp = kernels.apply_dropout(X, 0.3, 4, 2, fused=True, portable_mask=None, offset=5)
    keep = xr.keep_mask(4, 2, X.shape, 0.3, offset=5)
    np.testing.assert_array_equal(Y, cpu.apply_mask(X, keep, 1 / 0.7))
    np.testing.assert_array_equal(bp(X), Y)
    Z, y = rng.standard_normal((16, 5)).astype(np.float32), rng.integers(0, 5, 16)
    lf, gf = xd.SoftmaxCrossEntropy()(Z, y)
    lc, gc = cpu.softmax_xent(Z, y)
    np.testing.assert_array_equal(gf, gc)
    assert float(lf) == float(lc)
    R = X.copy()
    assert kernels.relu_(R) is R
    np.testing.assert_array_equal(R, np.maximum(X, 0))


def test_no_jit_switch_reaches_every_dispatch_point(monkeypatch):
    """``XPDNN_NO_JIT=1`` keeps the compiled kernels out without importing them."""
    from xpdnn import kernels

    monkeypatch.setenv("XPDNN_NO_JIT", "1")
    monkeypatch.setattr(kernels, "_jit_module", None)
    assert kernels._jit() is None and kernels._jit_module is None      # not even imported
    assert kernels.jit_status() == "off (XPDNN_NO_JIT=1)"
    X = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    b = np.ones(4, np.float32)
    np.testing.assert_array_equal(kernels.bias_act_(X.copy(), b, relu=True), np.maximum(X + b, 0))
    dX, db = kernels.relu_backward_bias(np.ones_like(X), np.maximum(X, 0), bias=True, inplace=False)
    np.testing.assert_array_equal(dX, (X > 0).astype(np.float32))
    np.testing.assert_array_equal(db, (X > 0).sum(axis=0).astype(np.float32))
