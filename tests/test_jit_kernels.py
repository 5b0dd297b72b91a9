"""The compiled NumPy kernels (numba, the ``fast`` extra) against the paths they shortcut: the
portable code for the layers and the loss, the NumPy path (``XPDNN_NO_JIT=1``) and
``numpy.random.Philox`` for dropout, bit for bit where the operations are the same.  Skipped
when numba is not installed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")
# the inputs hold NaN and infinities on purpose: inf * 0, inf - inf in the reference code
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")

import xpdnn as xd                                   # noqa: E402
from xpdnn import kernels                            # noqa: E402
from xpdnn import random as xr                       # noqa: E402
from xpdnn.kernels import cpu, jit                   # noqa: E402
from xpdnn.layers.activations import relu, relu_backward  # noqa: E402

ONES = (1 << 64) - 1
DTYPES = ["float32", "float64"]
SHAPES = [(1, 1), (3, 5), (7, 13), (129, 515), (64, 1)]


@pytest.fixture(autouse=True)
def jit_on(monkeypatch):
    monkeypatch.delenv("XPDNN_NO_JIT", raising=False)
    assert kernels._jit() is jit


def special(A, rng):
    """A with NaN, +inf and -inf at a few places (the same places for a given rng state)."""
    A = A.copy()
    flat = A.reshape(-1)
    if flat.size >= 4:
        idx = rng.choice(flat.size, size=min(6, flat.size), replace=False)
        flat[idx[0::3]] = np.nan
        flat[idx[1::3]] = np.inf
        flat[idx[2::3]] = -np.inf
    return A


def bits(A):
    return A.view(np.uint32 if A.dtype == np.float32 else np.uint64)


# -- Philox4x64-10 ---------------------------------------------------------------------------------
def numpy_philox_words(seed, counter, first_block, n_blocks):
    """The words of blocks (first_block + b, counter, 0, 0) under key (seed, 0), straight from
    numpy.random.Philox (which increments its 256-bit counter before each block)."""
    c = ((first_block | (counter << 64)) - 1) % (1 << 256)
    gen = np.random.Philox(counter=np.array([(c >> (64 * k)) & ONES for k in range(4)], dtype=np.uint64),
                           key=np.array([seed, 0], dtype=np.uint64))
    return gen.random_raw(4 * n_blocks)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 + 7, ONES])
@pytest.mark.parametrize("counter", [0, 1, 2**32, 2**63, ONES])
def test_philox_words_match_numpy_philox(seed, counter):
    for first in (0, 5, 2**40 + 3, ONES - 4):
        got = jit.philox_words(seed, counter, 5, first_block=first)     # the last crosses 2**64 - 1
        if first + 5 <= 1 << 64:
            np.testing.assert_array_equal(got, numpy_philox_words(seed, counter, first, 5))
        for b in range(5):
            want = xr.philox4x64_10(((first + b) & ONES, counter, 0, 0), (seed, 0))
            assert [int(w) for w in got[4 * b:4 * b + 4]] == list(want)


def test_philox_known_answer():
    """Random123's kat_vectors, philox4x64-10, counter and key all zero."""
    want = [0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B]
    assert [int(w) for w in jit.philox_words(0, 0, 1)] == want


def test_philox_many_blocks_vectorized_loop():
    """Long enough for the vectorized body and its remainder loop."""
    for n in (1, 3, 4, 5, 8, 17, 1000, 4099):
        np.testing.assert_array_equal(jit.philox_words(99, 3, n), xr.raw_words(99, 3, n))


# -- dropout ---------------------------------------------------------------------------------------
def reference_dropout(X, rate, seed, counter, offset):
    keep = xr.keep_mask(seed, counter, X.shape, rate, offset=offset)
    with np.errstate(invalid="ignore"):                # inf * 0 = NaN, as in the kernels
        Y = np.multiply(X, keep)
        Y *= X.dtype.type(1.0 / (1.0 - rate))
    return Y, keep


RATES = [0.0, 1e-12, 2.0**-32, 0.2, 0.5, 0.9, 1 - 2.0**-20, 1 - 2.0**-34]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_and_output_bitwise(rate, dtype):
    rng = np.random.default_rng(7)
    for seed, counter in [(0, 0), (1, 2), (2**64 - 1, 2**64 - 1), (123456789, 2**63)]:
        for shape in [(1,), (7,), (8,), (9,), (3, 5), (33, 17), (2, 3, 4), (128, 64)]:
            for offset in (0, 1, 7, 8, 13, 2**40 + 5):
                X = special(rng.standard_normal(shape).astype(dtype), rng)
                Y, keep = jit.dropout_forward(X, rate, seed, counter, offset)
                Yr, keep_r = reference_dropout(X, rate, seed, counter, offset)
                np.testing.assert_array_equal(keep, keep_r)
                np.testing.assert_array_equal(bits(Y), bits(Yr))
                assert Y.dtype == X.dtype and Y.shape == X.shape


def test_dropout_words_are_bits32_from_the_offset():
    """Element i takes word offset + i (bits32 straight from numpy's generator)."""
    X = np.ones(50, np.float32)
    for offset in range(0, 20):
        _, keep = jit.dropout_forward(X, 0.5, 11, 4, offset)
        words = xr.bits32(11, 4, 50, offset=offset)
        np.testing.assert_array_equal(keep, words >= np.uint32(xr.threshold(0.5)))


def test_dropout_keeps_a_word_equal_to_the_threshold():
    """keep iff word >= threshold: a rate whose threshold is exactly one element's word keeps
    that element, in the edge blocks and in the vectorized body alike."""
    n, offset = 203, 5
    words = xr.bits32(8, 1, n, offset=offset)
    X = np.ones(n, np.float64)
    for k in (0, 2, *range(3, 11), 201, 202):            # first (partial) block, each word of a body block, last block
        rate = int(words[k]) / 2.0**32
        assert xr.threshold(rate) == int(words[k])
        _, keep = jit.dropout_forward(X, rate, 8, 1, offset)
        assert keep[k]
        np.testing.assert_array_equal(keep, words >= words[k])


def test_dropout_keep_rate_is_one_minus_rate():
    X = np.ones((512, 512), np.float32)
    for rate in (0.1, 0.5, 0.8):
        _, keep = jit.dropout_forward(X, rate, 3, 9)
        assert abs(keep.mean() - (1 - rate)) < 5e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_dropout_dispatch_equals_numpy_path(dtype, monkeypatch):
    """kernels.apply_dropout with numba against the NumPy path: forward and backward bitwise,
    non-contiguous inputs included."""
    rng = np.random.default_rng(3)
    base = special(rng.standard_normal((40, 30)).astype(dtype), rng)
    cases = [base, base.T, base[::3, 1::2], np.asfortranarray(base)]
    for X in cases:
        dY = special(rng.standard_normal(X.shape).astype(dtype), rng)[::-1]
        outs = []
        for off in ("0", "1"):
            monkeypatch.setenv("XPDNN_NO_JIT", off)
            Y, bp = kernels.apply_dropout(X, 0.3, 17, 5, fused=True, portable_mask=None, offset=21)
            outs.append((Y, bp(dY)))
        (Y1, dX1), (Y0, dX0) = outs
        np.testing.assert_array_equal(bits(np.ascontiguousarray(Y1)), bits(np.ascontiguousarray(Y0)))
        np.testing.assert_array_equal(bits(np.ascontiguousarray(dX1)), bits(np.ascontiguousarray(dX0)))


def test_apply_dropout_other_dtypes_fall_back(monkeypatch):
    X = np.arange(1, 25, dtype=np.float16).reshape(4, 6)
    Y, bp = kernels.apply_dropout(X, 0.5, 1, 2, fused=True, portable_mask=None)
    Yr, _ = reference_dropout(X, 0.5, 1, 2, 0)
    np.testing.assert_array_equal(Y, Yr)
    assert Y.dtype == np.float16
    X32 = X.astype(np.float32)
    Y, bp = kernels.apply_dropout(X32, 0.5, 1, 2, fused=True, portable_mask=None)
    dX = bp(np.ones((4, 6), np.float16))                  # a dY of another dtype: NumPy applies the mask
    np.testing.assert_array_equal(dX != 0, Y != 0)
    with pytest.raises(ValueError, match="dY of shape"):
        bp(np.ones((6, 4), np.float32))


def test_dropout_rejects_bad_addresses():
    X = np.ones(16, np.float32)
    for kw in ({"seed": -1}, {"seed": 2**64}, {"counter": -1}, {"counter": 2**64}, {"offset": -1},
               {"offset": 2**67}):
        args = {"seed": 0, "counter": 0, "offset": 0, **kw}
        with pytest.raises(ValueError):
            jit.dropout_forward(X, 0.5, args["seed"], args["counter"], args["offset"])
    with pytest.raises(ValueError, match="past"):
        jit.dropout_forward(X, 0.5, 0, 0, 2**67 - 8)


# -- bias + ReLU forward, ReLU backward + bias gradient --------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_act_matches_portable(shape, dtype, act, with_bias):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    Y0 = special(rng.standard_normal(shape).astype(dtype), rng)
    b = special(rng.standard_normal(shape[1]).astype(dtype), rng) if with_bias else None
    want = Y0 + b if with_bias else Y0.copy()
    if act:
        want = relu(want)
    Y = Y0.copy()
    got = kernels.bias_act_(Y, b, relu=act)
    assert got is Y
    np.testing.assert_array_equal(got, want)
    if act:
        assert not np.signbit(got[got == 0]).any()       # relu gives +0, never -0
    strided = np.repeat(Y0, 2, axis=1)[:, ::2]            # not contiguous: the NumPy path
    if (with_bias or act) and not strided.flags.c_contiguous:
        untouched = strided.copy()
        assert not jit.bias_act_(strided, b, act)
        np.testing.assert_array_equal(strided, untouched)
    np.testing.assert_array_equal(kernels.bias_act_(strided, b, relu=act), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("with_relu", [True, False])
def test_relu_backward_bias_matches_portable(shape, dtype, inplace, with_relu):
    rng = np.random.default_rng(shape[0] + 7 * shape[1])
    Yin = special(rng.standard_normal(shape).astype(dtype), rng)
    Yin.reshape(-1)[::5] = 0.0                             # the kink: relu'(0) = 0
    Y = relu(Yin)
    dY = special(rng.standard_normal(shape).astype(dtype), rng)
    want = relu_backward(dY, Y) if with_relu else dY
    want_db = np.sum(want, axis=0)
    given = dY.copy()
    dX, db = kernels.relu_backward_bias(given, Y if with_relu else None, bias=True, inplace=inplace)
    np.testing.assert_array_equal(dX, want)
    np.testing.assert_allclose(db, want_db, rtol=2e-6 if dtype == "float32" else 1e-14, atol=1e-6)
    assert db.dtype == dY.dtype and db.shape == (shape[1],)
    if with_relu and not inplace:
        np.testing.assert_array_equal(given, dY)           # the caller's dY untouched
    if with_relu and inplace:
        assert dX is given
    dX2, none = kernels.relu_backward_bias(dY.copy(), Y if with_relu else None, bias=False, inplace=inplace)
    assert none is None
    np.testing.assert_array_equal(dX2, want)
    # non-contiguous arrays take the NumPy path and give the same values
    dYs, Ys = np.repeat(dY, 2, axis=0)[::2], np.repeat(Y, 2, axis=0)[::2]
    dX3, db3 = kernels.relu_backward_bias(dYs, Ys if with_relu else None, bias=True, inplace=False)
    np.testing.assert_array_equal(dX3, want)
    np.testing.assert_allclose(db3, want_db, rtol=2e-6 if dtype == "float32" else 1e-14, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_dispatch_points_match_portable(dtype):
    rng = np.random.default_rng(5)
    X = special(rng.standard_normal((9, 11)).astype(dtype), rng)
    np.testing.assert_array_equal(kernels.relu_(X.copy()), relu(X))
    Y = relu(X)
    dY = rng.standard_normal(X.shape).astype(dtype)
    for inplace in (True, False):
        np.testing.assert_array_equal(kernels.relu_backward(dY.copy(), Y, inplace=inplace), relu_backward(dY, Y))
    np.testing.assert_array_equal(kernels.relu_(X.T.copy().T), relu(X))       # Fortran order: NumPy path


def test_linear_relu_unit_matches_portable_chain(rng):
    """A Linear + ReLU net on NumPy (compiled kernels) against array-api-strict (portable)."""
    aas = pytest.importorskip("array_api_strict")
    net = xd.Sequential(xd.Linear(6, 9, dtype="float64"), xd.ReLU(), xd.Linear(9, 4, dtype="float64"))
    X = rng.standard_normal((5, 6))
    G = rng.standard_normal((5, 4))
    outs = []
    for lib in (np, aas):
        net.to(like=lib.asarray(X))
        net.zero_grad()
        Y, bp = net.forward(lib.asarray(X), train=True)
        dX = bp(lib.asarray(G.copy()))
        outs.append((np.asarray(Y), np.asarray(dX), [np.asarray(la.grads[n]) for _, la, n in net.parameters()]))
    (Y0, dX0, g0), (Y1, dX1, g1) = outs
    np.testing.assert_allclose(Y0, Y1, rtol=1e-13)
    np.testing.assert_allclose(dX0, dX1, rtol=1e-13)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


# -- SGD momentum ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (513,), (7, 13), (64, 130)])
def test_momentum_step_matches_numpy(dtype, shape):
    rng = np.random.default_rng(len(shape) + shape[0])
    W, g, v = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    W1, v1 = W.copy(), v.copy()
    assert kernels.momentum_step_(W1, g, v1, 0.01, 0.9, np.empty_like(W))
    W2, v2 = W.copy(), v.copy()
    cpu.momentum_step_(W2, g, v2, 0.01, 0.9, np.empty_like(W))
    np.testing.assert_array_equal(v1, v2)                  # v = mu v + g: the same two roundings
    np.testing.assert_allclose(W1, W2, rtol=2e-7 if dtype == "float32" else 1e-15, atol=1e-7)   # BLAS may fuse
    want_v = v * np.asarray(0.9, dtype) + g
    np.testing.assert_array_equal(v1, want_v)
    if W.ndim == 2:                                        # not C-contiguous: left to NumPy
        assert not jit.momentum_step_(W.T.copy().T, g, v.copy(), 0.01, 0.9)


# -- softmax cross-entropy -------------------------------------------------------------------------
@pytest.mark.parametrize("N, C", [(1, 2), (7, 10), (128, 10), (33, 257), (5, 1)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", [None, 3, -100])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_matches_portable(N, C, reduction, ignore, dtype):
    rng = np.random.default_rng(N * 100 + C)
    Z = (rng.standard_normal((N, C)) * 20).astype(dtype)
    Z[0, 0] = 1e4 if dtype == "float64" else 1e30
    y = rng.integers(0, C, N)
    if ignore is not None:
        y[1::2] = ignore
    assert jit.softmax_xent(Z, y, ignore_index=ignore, reduction=reduction) is not None
    fast = xd.SoftmaxCrossEntropy(reduction=reduction, ignore_index=ignore)
    slow = xd.SoftmaxCrossEntropy(reduction=reduction, ignore_index=ignore, fused=False)
    lf, gf = fast(Z, y)
    ls, gs = slow(Z, y)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lf, ls, **tol)
    np.testing.assert_allclose(gf, gs, **tol)
    assert gf.dtype == Z.dtype and np.asarray(lf).dtype == Z.dtype and np.shape(lf) == np.shape(ls)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_nan_and_inf_rows_as_portable(dtype):
    Z = np.random.default_rng(1).standard_normal((6, 5)).astype(dtype)
    Z[0, 2] = np.nan
    Z[1, 0] = np.inf
    Z[2, :] = -np.inf
    Z[3, 4] = -np.inf                                       # the label's own logit: an infinite loss
    y = np.array([0, 1, 2, 4, 3, 1])
    fast = xd.SoftmaxCrossEntropy(reduction="none")(Z, y)
    slow = xd.SoftmaxCrossEntropy(reduction="none", fused=False)(Z, y)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-6)         # NaN where the portable code has NaN
    assert np.isposinf(fast[0][3]) and np.isnan(fast[1][:3]).all() and np.isfinite(fast[1][3:]).all()


def test_softmax_xent_non_contiguous_and_large_take_numpy():
    rng = np.random.default_rng(2)
    Z = rng.standard_normal((20, 12)).astype(np.float32)
    y = rng.integers(0, 6, 20)
    assert jit.softmax_xent(Z[:, ::2], y, ignore_index=None, reduction="mean") is None
    big = np.zeros((8, jit.XENT_MAX_ELEMENTS // 8 + 1), np.float32)
    assert jit.softmax_xent(big, np.zeros(8, np.int64), ignore_index=None, reduction="mean") is None
    lf, gf = xd.SoftmaxCrossEntropy()(Z[:, ::2], y)
    ls, gs = xd.SoftmaxCrossEntropy(fused=False)(Z[:, ::2], y)
    np.testing.assert_allclose(gf, gs, rtol=2e-5, atol=1e-7)


def test_softmax_xent_label_out_of_range_raises():
    Z = np.zeros((3, 4), np.float32)
    for bad in (-1, 4):
        with pytest.raises(IndexError):
            jit.softmax_xent(Z, np.array([0, bad, 1]), ignore_index=None, reduction="mean")


# -- the switch, laziness, whole runs --------------------------------------------------------------
def test_status_and_switch(monkeypatch):
    assert kernels.jit_status().startswith("on (numba ")
    monkeypatch.setenv("XPDNN_NO_JIT", "1")
    assert kernels._jit() is None
    assert kernels.jit_status() == "off (XPDNN_NO_JIT=1)"


def test_importing_xpdnn_neither_imports_numba_nor_compiles():
    code = ("import sys, numpy as np, xpdnn as xd; from xpdnn import kernels; "
            "assert 'numba' not in sys.modules, 'numba imported at import'; "
            "kernels.relu_(np.ones(3, np.float32)); print('numba' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "XPDNN_NO_JIT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"                     # imported on first use


def _history(monkeypatch, no_jit: str, dtype: str, dropout: float, fused_step):
    monkeypatch.setenv("XPDNN_NO_JIT", no_jit)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20)).astype(dtype)
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + 2 * (X[:, 3] > 0.5)
    net = xd.Sequential(xd.Linear(20, 33, dtype=dtype), xd.ReLU(), xd.Dropout(dropout),
                        xd.Linear(33, 17, dtype=dtype), xd.ReLU(), xd.Dropout(dropout),
                        xd.Linear(17, 4, dtype=dtype)).initialize(5)
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.05, momentum=0.9),
                         batch_size=32, epochs=4, seed=3, progress=False, fused_step=fused_step)
    hist = trainer.fit(X, y)
    return hist["loss"], [p.copy() for _, la, n in net.parameters() for p in [la.params[n]]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("fused_step", [None, False])
def test_whole_run_with_and_without_jit(monkeypatch, dtype, dropout, fused_step):
    """A trainer's loss history and final weights with the compiled kernels agree with the NumPy
    run to rounding (the masks are the same bit for bit, so dropout changes nothing here)."""
    loss_j, w_j = _history(monkeypatch, "0", dtype, dropout, fused_step)
    loss_n, w_n = _history(monkeypatch, "1", dtype, dropout, fused_step)
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(loss_j, loss_n, rtol=tol)
    for a, b in zip(w_j, w_n):
        np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol)
    assert loss_j[-1] < loss_j[0]
