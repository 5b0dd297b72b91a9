"""Properties of xpdnn.kernels.cpu (the NumPy fast paths) that a mutation run found unasserted
(tests/MUTATION.md): that NumPy's own OpenBLAS is actually found and called (a broken binding
would silently fall back to plain NumPy, the same numbers at a fraction of the speed), the
fallbacks' results, the buffers' rules, and the thread pool's ownership by one process."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from xpdnn.kernels import cpu

NUMPY_OPENBLAS = np.__config__.CONFIG["Build Dependencies"]["blas"].get("name") == "scipy-openblas"


@pytest.fixture
def fresh_cblas(monkeypatch):
    """``cpu._cblas()`` recomputed for the test (it is cached per process), and again after it."""
    monkeypatch.delenv("XPDNN_NO_BLAS_FASTPATH", raising=False)
    cpu._cblas.cache_clear()
    yield
    cpu._cblas.cache_clear()


@pytest.mark.skipif(not NUMPY_OPENBLAS, reason="NumPy is not linked to its bundled scipy-openblas")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpys_own_openblas_is_bound_and_computes_gemm_and_axpy(fresh_cblas, dtype):
    """On NumPy's wheels (scipy-openblas) the binding exists for both float types and its raw
    cblas calls compute C = alpha A^T B + beta C and y += a x (cblas's definitions)."""
    blas = cpu._cblas()
    assert blas is not None
    assert set(blas.gemm) == set(blas.axpy) == {np.dtype(np.float32), np.dtype(np.float64)}
    rng = np.random.default_rng(0)
    A, B, C = (rng.standard_normal(s).astype(dtype) for s in ((5, 3), (5, 4), (3, 4)))
    expect = 0.5 * A.T @ B + 2.0 * C
    blas.gemm[np.dtype(dtype)](blas.ROW_MAJOR, blas.TRANS, blas.NO_TRANS, 3, 4, 5, 0.5, A.ctypes.data, 3,
                               B.ctypes.data, 4, 2.0, C.ctypes.data, 4)
    np.testing.assert_allclose(C, expect, rtol=1e-5 if dtype == np.float32 else 1e-12)
    x, y = rng.standard_normal(7).astype(dtype), rng.standard_normal(7).astype(dtype)
    expect = y + 3.0 * x
    blas.axpy[np.dtype(dtype)](7, 3.0, x.ctypes.data, 1, y.ctypes.data, 1)
    np.testing.assert_allclose(y, expect, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_the_fast_path_switch_turns_the_binding_off(fresh_cblas, monkeypatch):
    monkeypatch.setenv("XPDNN_NO_BLAS_FASTPATH", "1")
    cpu._cblas.cache_clear()
    assert cpu._cblas() is None


def test_blas_ok_needs_one_float_dtype_c_order_and_elements():
    a = np.ones((3, 4), np.float32)
    assert cpu._blas_ok(a, np.ones((2, 2), np.float32))
    assert cpu._blas_ok(np.ones(3, np.float64))
    assert not cpu._blas_ok(np.ones(3, np.float16))                        # no half-precision BLAS
    assert not cpu._blas_ok(np.ones(3, np.int64))
    assert not cpu._blas_ok(a, np.ones((3, 4), np.float64))                # mixed precision
    assert not cpu._blas_ok(np.ones((3, 4), np.float64), a)
    assert not cpu._blas_ok(a, np.ones((4, 3), np.float32).T)              # not C-contiguous
    assert not cpu._blas_ok(np.ones((4, 3), np.float32).T)
    assert not cpu._blas_ok(a, np.ones((0, 4), np.float32))                # empty: nothing to call


@pytest.mark.parametrize("fast", [True, False], ids=["blas", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 0.9, 1.0])
def test_gemm_tn_acc_is_dY_T_X_plus_beta_C_on_both_paths(fresh_cblas, monkeypatch, fast, dtype, beta):
    """``C = dY.T @ X + beta C`` on the BLAS path and the NumPy fallback alike; beta = 0
    overwrites whatever C held, NaN included (BLAS never reads C then)."""
    if not fast:
        monkeypatch.setenv("XPDNN_NO_BLAS_FASTPATH", "1")
        cpu._cblas.cache_clear()
    rng = np.random.default_rng(1)
    dY, X = rng.standard_normal((6, 3)).astype(dtype), rng.standard_normal((6, 5)).astype(dtype)
    C0 = rng.standard_normal((3, 5)).astype(dtype)
    if beta == 0.0:
        C0[0, 0] = np.nan
    C = C0.copy()
    out = cpu.gemm_tn_acc_(dY, X, C, beta)
    assert out is C
    expect = dY.T.astype(np.float64) @ X + (0.0 if beta == 0.0 else beta * C0.astype(np.float64))
    np.testing.assert_allclose(C, expect, rtol=2e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_gemm_tn_acc_on_strided_operands_takes_the_numpy_path_and_is_right(fresh_cblas):
    rng = np.random.default_rng(2)
    dY = rng.standard_normal((3, 6)).T                  # (6, 3), not C-contiguous
    X = rng.standard_normal((6, 5))
    C = rng.standard_normal((3, 5))
    expect = dY.T @ X + 0.5 * C
    cpu.gemm_tn_acc_(dY, X, C, 0.5)
    np.testing.assert_allclose(C, expect, rtol=1e-12)


def test_gemm_tn_acc_refuses_mismatched_shapes_and_leaves_C_alone():
    C = np.zeros((3, 5))
    with pytest.raises(ValueError, match=r"gemm_tn_acc_: shapes \(6, 3\), \(4, 5\) -> \(3, 5\)"):
        cpu.gemm_tn_acc_(np.ones((6, 3)), np.ones((4, 5)), C, 0.0)
    with pytest.raises(ValueError, match="do not match"):
        cpu.gemm_tn_acc_(np.ones((6, 3)), np.ones((6, 5)), np.zeros((5, 3)), 0.0)
    assert not C.any()


@pytest.mark.parametrize("path", ["blas", "numpy-scratch", "numpy-temporary", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpy_flat_adds_a_times_X_on_every_path(fresh_cblas, monkeypatch, path, dtype):
    if path.startswith("numpy"):
        monkeypatch.setenv("XPDNN_NO_BLAS_FASTPATH", "1")
        cpu._cblas.cache_clear()
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((4, 6)).astype(dtype), rng.standard_normal((4, 6)).astype(dtype)
    if path == "strided":
        X = np.asfortranarray(X)
    expect = Y.astype(np.float64) - 0.25 * X
    scratch = np.empty_like(Y) if path == "numpy-scratch" else None
    out = cpu.axpy_flat_(-0.25, X, Y, scratch)
    assert out is Y and Y.dtype == dtype
    np.testing.assert_allclose(Y, expect, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_axpy_flat_refuses_different_shapes():
    Y = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"axpy_flat_: shapes \(3, 2\) and \(2, 3\) differ"):
        cpu.axpy_flat_(1.0, np.ones((3, 2)), Y)
    assert not Y.any()


def test_axpy_through_scratch_leaves_X_alone():
    X, Y, s = np.arange(4.0), np.ones(4), np.empty(4)
    cpu.axpy_(2.0, X, Y, s)
    np.testing.assert_array_equal(Y, 1 + 2 * np.arange(4.0))
    np.testing.assert_array_equal(X, np.arange(4.0))


def test_filled_buffers_are_read_only_views_of_one_cached_buffer_per_dtype():
    a = np.empty((3, 5), np.float32)
    z, o = cpu._zeros_for(a), cpu._ones_for(a)
    assert z.shape == o.shape == (3, 5) and z.dtype == o.dtype == np.float32
    assert not z.any() and (o == 1).all()
    assert not z.flags.writeable and not o.flags.writeable
    assert np.shares_memory(z, cpu._zeros_for(np.empty(7, np.float32)))      # the same buffer, reused
    assert cpu._zeros_for(np.empty(2, np.float64)).dtype == np.float64
    big = np.empty(cpu._ZEROS_MAX, np.float32)                            # grows when needed
    assert cpu._zeros_for(big).size == big.size and not cpu._zeros_for(big).any()


def test_relu_fast_path_on_large_and_strided_input_keeps_nan():
    X = np.full(cpu._ZEROS_MAX + 1, -1.0, np.float32)                     # above the buffer limit
    X[:3] = [2.0, np.nan, 0.0]
    cpu.relu_(X)
    assert X[0] == 2.0 and np.isnan(X[1]) and X[2] == 0.0 and not X[3:].any()
    S = np.array([[-1.0, 3.0], [np.nan, -2.0]]).T                         # not C-contiguous
    cpu.relu_(S)
    np.testing.assert_array_equal(S, np.array([[0.0, np.nan], [3.0, 0.0]]))
    dY, Y = np.ones((2, 2)).T.copy(order="F"), np.array([[0.0, 2.0], [np.nan, 0.5]]).T
    cpu.relu_backward_(dY, Y)
    np.testing.assert_array_equal(dY, np.array([[0.0, np.nan], [1.0, 1.0]]))


def test_momentum_step_is_torchs_sgd_momentum_update():
    """``v = mu v + g; W -= lr v`` (torch.optim.SGD with momentum, dampening 0)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    W, g, v = (rng.standard_normal((3, 4)) for _ in range(3))
    tW = torch.tensor(W, requires_grad=True)
    opt = torch.optim.SGD([tW], lr=0.1, momentum=0.9)
    opt.state[tW]["momentum_buffer"] = torch.tensor(v)
    tW.grad = torch.tensor(g)
    opt.step()
    cpu.momentum_step_(W, g, v, 0.1, 0.9, np.empty_like(W))
    np.testing.assert_allclose(W, tW.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(v, opt.state[tW]["momentum_buffer"].numpy(), rtol=1e-13)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_step_is_torchs_adam(amsgrad):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    W = rng.standard_normal((3, 4))
    m, v, vmax = np.zeros_like(W), np.zeros_like(W), (np.zeros_like(W) if amsgrad else None)
    tW = torch.tensor(W.copy(), requires_grad=True)
    opt = torch.optim.Adam([tW], lr=0.01, betas=(0.8, 0.95), eps=1e-6, amsgrad=amsgrad)
    for t in range(1, 4):
        g = rng.standard_normal(W.shape)
        tW.grad = torch.tensor(g)
        opt.step()
        gi = g.copy()
        cpu.adam_step_(W, g, m, v, vmax, lr=0.01, b1=0.8, b2=0.95, eps=1e-6, t=t,
                       scratch=np.empty_like(W), scratch2=np.empty_like(W))
        np.testing.assert_array_equal(g, gi)                              # g is only read
    np.testing.assert_allclose(W, tW.detach().numpy(), rtol=1e-12)


def test_thread_pool_belongs_to_one_process_and_is_sized_to_the_usable_cores(monkeypatch):
    monkeypatch.setattr(cpu, "_POOL", None)
    pool = cpu._pool()
    assert cpu._pool() is pool                                            # reused in this process
    assert pool._max_workers == cpu._threads()
    assert cpu._threads() == len(os.sched_getaffinity(0))
    name = pool.submit(lambda: threading.current_thread().name).result()
    assert name.startswith("xpdnn-cpu")
    monkeypatch.setattr(cpu, "_POOL", (os.getpid() + 1, pool))            # what a forked child inherits
    fresh = cpu._pool()
    assert fresh is not pool and cpu._POOL[0] == os.getpid()
    fresh.shutdown()
    pool.shutdown()


def test_threaded_softmax_xent_equals_one_thread(monkeypatch):
    """Large inputs are split into row blocks over the pool: the result equals the one-thread run
    bit for bit (each row is computed the same way wherever it runs)."""
    rng = np.random.default_rng(6)
    N, C = 1 << 11, 1 << 8                                                # N * C = 2**19 >= 2**18: threads
    Z, y = rng.standard_normal((N, C)).astype(np.float32), rng.integers(0, C, N)
    y[::7] = -100
    for reduction in ("mean", "sum", "none"):
        threaded = cpu.softmax_xent(Z, y, ignore_index=-100, reduction=reduction)
        monkeypatch.setattr(cpu, "_threads", lambda: 1)
        single = cpu.softmax_xent(Z, y, ignore_index=-100, reduction=reduction)
        monkeypatch.undo()
        for a, b in zip(threaded, single):
            np.testing.assert_array_equal(a, b)
    loss, G = cpu.softmax_xent(Z, y, ignore_index=-100, reduction="none")
    assert not loss[::7].any() and not G[::7].any()
