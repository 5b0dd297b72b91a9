"""Dropout: statistics, scaling, gradients, identical masks on every backend, the CUDA kernel's
index math (emulated in Python and compiled as C++ on the host) and, on a GPU, the fused kernel
against the portable path."""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from xpdnn import random as xr
from xpdnn.devices import cuda_available
from xpdnn.kernels import dropout as kernel
from xpdnn.kernels._compile import read_source
from xpdnn.layers.base import layer_from_config, layer_to_config
from xpdnn.layers.dropout import Dropout, dropout_mask
from xpdnn.random import Stream
from xpdnn.testing import check_layer_gradients

SIZES = [1, 7, 8, 9, 1000003]
# the host build on a million elements (every alignment, three dtypes) is slow
HOST_SIZES = SIZES[:-1] + [pytest.param(SIZES[-1], marks=pytest.mark.slow)]


def reference(X, rate, seed, counter):
    """``X * keep * scale`` on the host, the mapping of xpdnn.random written out."""
    keep = xr.bits32(seed, counter, X.size).reshape(X.shape) >= np.uint32(xr.threshold(rate))
    return X * keep.astype(X.dtype) * X.dtype.type(1.0 / (1.0 - rate))


def test_keep_fraction(backend):
    n = 200_000
    X = backend.asarray(np.ones((400, n // 400), dtype=np.float32))
    for rate in (0.1, 0.5, 0.9):
        Y = backend.numpy(Dropout(rate).forward(X, train=True, rng=Stream(1))[0])
        kept = (Y != 0).mean()
        sigma = np.sqrt(rate * (1 - rate) / n)
        assert abs(kept - (1 - rate)) < 5 * sigma, (rate, kept)


def test_inverted_scaling_keeps_the_expectation(backend):
    rate = 0.3
    X_host = np.random.default_rng(0).uniform(0.5, 2.0, size=(300, 500))
    Y = backend.numpy(Dropout(rate, dtype="float64").forward(backend.asarray(X_host), train=True, rng=Stream(4))[0])
    kept = Y != 0
    np.testing.assert_allclose(Y[kept], X_host[kept] / (1 - rate), rtol=1e-15)
    assert abs(Y.mean() / X_host.mean() - 1) < 0.01


def test_eval_and_rate_zero_are_the_identity(backend):
    X = backend.asarray(np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32))
    stream = Stream(0)
    for layer, train in ((Dropout(0.5), False), (Dropout(0.0), True)):
        Y, backprop = layer.forward(X, train=train, rng=stream)
        assert Y is X
        dY = backend.asarray(np.full((6, 5), 3.0, dtype=np.float32))
        assert backprop(dY) is dY
    assert stream.counter == 0            # no randomness was used
    np.testing.assert_array_equal(backend.numpy(Dropout(0.5)(X)), backend.numpy(X))


def test_gradient_check(backend):
    X = backend.asarray(np.random.default_rng(2).standard_normal((4, 6)))
    layer = Dropout(0.4, dtype="float64")
    dX = check_layer_gradients(layer, X, train=True, seed=7)["input"]
    assert (dX == 0).any() and (dX != 0).any()   # the mask really dropped and kept something


def test_same_mask_on_every_backend(backend):
    X_host = np.random.default_rng(3).standard_normal((33, 17)).astype(np.float32)
    G_host = np.random.default_rng(4).standard_normal((33, 17)).astype(np.float32)
    Y, backprop = Dropout(0.35).forward(backend.asarray(X_host), train=True, rng=Stream(5, counter=9))
    dX = backprop(backend.asarray(G_host))
    np.testing.assert_array_equal(backend.numpy(Y), reference(X_host, 0.35, 5, 9))
    np.testing.assert_array_equal(backend.numpy(dX), reference(G_host, 0.35, 5, 9))
    np.testing.assert_array_equal(backend.numpy(dropout_mask(backend.asarray(X_host), 0.35, 5, 9)),
                                  reference(np.ones_like(X_host), 0.35, 5, 9))


def test_layer_seed_and_stream(backend):
    X = backend.asarray(np.ones((50, 40)))
    layer = Dropout(0.5, seed=3)
    first = backend.numpy(layer.forward(X, train=True)[0])
    second = backend.numpy(layer.forward(X, train=True)[0])
    assert (first != second).any()                        # the own stream advances
    np.testing.assert_array_equal(first, backend.numpy(Dropout(0.5).forward(X, train=True, rng=Stream(3))[0]))


def test_two_forwards_keep_their_own_masks(backend):
    X_host = np.ones((20, 30))
    layer, stream = Dropout(0.5), Stream(8)
    Y1, bp1 = layer.forward(backend.asarray(X_host), train=True, rng=stream)
    Y2, bp2 = layer.forward(backend.asarray(X_host), train=True, rng=stream)
    G = backend.asarray(X_host)
    np.testing.assert_array_equal(backend.numpy(bp1(G)), backend.numpy(Y1))
    np.testing.assert_array_equal(backend.numpy(bp2(G)), backend.numpy(Y2))
    assert (backend.numpy(Y1) != backend.numpy(Y2)).any()


def test_against_torch_autograd():
    torch = pytest.importorskip("torch")
    rate, seed, counter = 0.25, 12, 3
    X = np.random.default_rng(5).standard_normal((16, 9))
    G = np.random.default_rng(6).standard_normal((16, 9))
    Y, backprop = Dropout(rate, dtype="float64").forward(X, train=True, rng=Stream(seed, counter))
    dX = backprop(G)
    keep = torch.from_numpy(xr.keep_mask(seed, counter, X.shape, rate))
    x = torch.from_numpy(X.copy()).requires_grad_(True)
    y = x * keep / (1 - rate)                 # torch's own dropout formula, with our mask
    y.backward(torch.from_numpy(G))
    np.testing.assert_allclose(Y, y.detach().numpy(), rtol=1e-15, atol=0)
    np.testing.assert_allclose(dX, x.grad.numpy(), rtol=1e-15, atol=0)


def test_float16_numpy_path():
    X = np.random.default_rng(7).standard_normal((64, 33)).astype(np.float16)
    Y = Dropout(0.2).forward(X, train=True, rng=Stream(1))[0]
    assert Y.dtype == np.float16
    np.testing.assert_array_equal(Y, reference(X, 0.2, 1, 0))


def test_numpy_path_on_non_contiguous_input():
    base = np.random.default_rng(8).standard_normal((30, 40)).astype(np.float32)
    X = base[::2, 1::3]
    Y, backprop = Dropout(0.5).forward(X, train=True, rng=Stream(2))
    np.testing.assert_array_equal(Y, reference(np.ascontiguousarray(X), 0.5, 2, 0))
    np.testing.assert_array_equal(backprop(X), Y)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="rate"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="rate"):
        Dropout(-0.1)
    with pytest.raises(TypeError, match="floating"):
        Dropout(0.5).forward(np.ones((3, 3), dtype=np.int64), train=True)
    _, backprop = Dropout(0.5).forward(np.ones((3, 3)), train=True)
    with pytest.raises(ValueError, match="shape"):
        backprop(np.ones((3, 4)))


def test_config_round_trip():
    layer = Dropout(0.3, seed=4, fused=False, dtype="float64")
    again = layer_from_config(layer_to_config(layer))
    assert isinstance(again, Dropout) and again.get_config() == layer.get_config()
    assert again.get_config() == {"rate": 0.3, "seed": 4, "fused": False, "dtype": "float64"}
    old = layer_from_config({"type": "Dropout", "config": {"rate": 0.2, "seed": 1, "dtype": "float32"}})
    assert old.fused is True
    assert Dropout(0.5).output_size(12) == 12


def test_kernel_scale_rounds_to_the_element_type():
    assert kernel.kernel_scale("float64", 0.3) == np.float64(1 / 0.7)
    assert kernel.kernel_scale("float32", 0.3) == np.float32(1 / 0.7)
    assert kernel.kernel_scale("float16", 0.3) == np.float32(np.float16(1 / 0.7))
    # 1/0.7 = 1.428571..., bfloat16 keeps 8 significant bits: 1.4296875 is the nearest
    assert kernel.kernel_scale("bfloat16", 0.3) == np.float32(1.4296875)
    assert kernel.kernel_scale("bfloat16", 0.5) == np.float32(2.0)


# -- the kernel's index math, emulated in Python -------------------------------------------

def emulate_kernel_bits(n, seed, counter, block_words):
    """Per-thread loop of dropout.cu: thread b draws Philox block (b, counter, 0, 0) and gives
    element 8b + j the low (j even) or high (j odd) half of word j // 2.  Returns the bits per
    element and how often each element was written."""
    bits = np.zeros(n, dtype=np.uint64)
    writes = np.zeros(n, dtype=np.int64)
    for b in range((n + 7) // 8):
        w = block_words(b)
        for j in range(8):
            i = 8 * b + j
            if i < n:
                word = w[j // 2]
                bits[i] = (word >> 32) if j % 2 else (word & 0xFFFFFFFF)
                writes[i] += 1
    return bits, writes


@pytest.mark.parametrize("n", [1, 7, 8, 9, 17, 63, 64, 65])
@pytest.mark.parametrize("seed, counter", [(0, 0), (2**63 + 7, 5), (123456789, 2**33)])
def test_kernel_index_emulation_matches_bits32(n, seed, counter):
    bits, writes = emulate_kernel_bits(
        n, seed, counter, lambda b: xr.philox4x64_10((b, counter, 0, 0), (seed, 0)))
    assert (writes == 1).all()
    np.testing.assert_array_equal(bits, xr.bits32(seed, counter, n))


def test_kernel_index_emulation_large_odd_size():
    n, seed, counter = 1000003, 99, 4
    words = xr.raw_words(seed, counter, (n + 7) // 8).reshape(-1, 4)
    b = np.arange(n) // 8                       # thread (Philox block) of element i
    j = np.arange(n) % 8                        # 32-bit word within the block
    w = words[b, j // 2]
    bits = np.where(j % 2 == 1, w >> np.uint64(32), w & np.uint64(0xFFFFFFFF))
    np.testing.assert_array_equal(bits, xr.bits32(seed, counter, n))


# -- the kernel source compiled as C++ on the host ---------------------------------------

@pytest.fixture(scope="session")
def host_kernel(shared_library):
    """The kernel source built as host C++, once per session (``shared_library`` in conftest.py;
    tests/test_properties.py uses it too)."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the kernel source on the host")
    res, lib = shared_library(cxx, ["-std=c++17", "-O1"], read_source("dropout.cu"), "dropout_host")
    if res.returncode != 0:
        if "_Float16" in res.stderr:
            pytest.skip("this C++ compiler has no _Float16")
        pytest.fail(f"the kernel source does not build as host C++:\n{res.stderr}")
    so = ctypes.CDLL(str(lib))
    u64, ptr = ctypes.c_uint64, ctypes.c_void_p
    for name in kernel.KERNELS.values():
        fn = getattr(so, name)
        scale = ctypes.c_double if name.endswith("f64") else ctypes.c_float
        fn.argtypes = [ptr, ptr, u64, u64, u64, u64, scale, u64]
        fn.restype = None
    so.xpdnn_philox_bits32.argtypes = [ptr, u64, u64, u64]
    so.xpdnn_philox_bits32.restype = None
    return so


def run_host(so, dtype, x, y, rate, seed, counter, offset=0):
    """Run the host build of the kernel for ``dtype`` on NumPy buffers ``x`` -> ``y``."""
    scale = kernel.kernel_scale(dtype, rate)
    getattr(so, kernel.KERNELS[dtype])(x.ctypes.data, y.ctypes.data, x.size, seed, counter,
                                       xr.threshold(rate), float(scale), offset)


@pytest.mark.parametrize("n", HOST_SIZES)
def test_host_kernel_bits(host_kernel, n):
    for seed, counter in ((0, 0), (2**64 - 1, 3)):
        out = np.zeros(n, dtype=np.uint32)
        host_kernel.xpdnn_philox_bits32(out.ctypes.data, n, seed, counter)
        np.testing.assert_array_equal(out, xr.bits32(seed, counter, n))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("n", HOST_SIZES)
def test_host_kernel_matches_numpy_path_at_every_alignment(host_kernel, dtype, n):
    rng = np.random.default_rng(n)
    base_x = rng.standard_normal(n + 16).astype(dtype)
    base_y = np.empty(n + 16, dtype=dtype)
    seen = set()
    for ox, oy in ((0, 0), (1, 1), (3, 0), (0, 2), (16 // base_x.itemsize, 0), (5, 5)):
        base_y[:] = 7
        x, y = base_x[ox:ox + n], base_y[oy:oy + n]
        seen.add((x.ctypes.data | y.ctypes.data) % 16 == 0)
        run_host(host_kernel, dtype, x, y, 0.4, 21, 2)
        np.testing.assert_array_equal(y, reference(x, 0.4, 21, 2), err_msg=f"offsets {ox}, {oy}")
        np.testing.assert_array_equal(y, Dropout(0.4).forward(x, train=True, rng=Stream(21, 2))[0])
        assert (base_y[:oy] == 7).all() and (base_y[oy + n:] == 7).all()   # nothing written outside
    assert seen == {True, False}               # both the vector and the element-wise path ran


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("offset", [1, 3, 8, 13, 64 * 5 + 7, 2**40 + 5])
def test_host_kernel_offset_draws_the_words_of_the_larger_array(host_kernel, dtype, offset):
    """Element i takes word offset + i: the host build of the kernel equals keep_mask(offset=)
    and, for small offsets, the matching slice of the whole array's mask."""
    for n in (1, 7, 8, 9, 64 + 3, 1001):
        x = np.random.default_rng(n).standard_normal(n + 1).astype(dtype)[1:]     # odd address too
        base_y = np.full(n + 2, 7, dtype=dtype)
        y = base_y[1:n + 1]
        run_host(host_kernel, dtype, x, y, 0.35, 5, 9, offset)
        keep = xr.keep_mask(5, 9, (n,), 0.35, offset=offset)
        np.testing.assert_array_equal(y, np.where(keep, x * kernel.kernel_scale(dtype, 0.35), 0).astype(dtype))
        assert base_y[0] == 7 and base_y[-1] == 7                    # nothing written outside
        if offset < 10**6:
            whole = xr.keep_mask(5, 9, (offset + n,), 0.35)
            np.testing.assert_array_equal(keep, whole[offset:])


def test_host_kernel_in_place_and_rate_zero(host_kernel):
    x = np.random.default_rng(9).standard_normal(1001).astype(np.float32)
    expected = reference(x, 0.5, 1, 1)
    y = x.copy()
    run_host(host_kernel, "float32", y, y, 0.5, 1, 1)
    np.testing.assert_array_equal(y, expected)
    y = np.empty_like(x)
    run_host(host_kernel, "float32", x, y, 0.0, 1, 1)
    np.testing.assert_array_equal(y, x)


def test_host_kernel_bfloat16_matches_torch(host_kernel):
    torch = pytest.importorskip("torch")
    n, rate = 1003, 0.3
    x = torch.randn(n + 1, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)[1:]
    x_bits = x.view(torch.int16).numpy().view(np.uint16)        # an odd offset view
    y_bits = np.zeros(n, dtype=np.uint16)
    run_host(host_kernel, "bfloat16", x_bits, y_bits, rate, 6, 0)
    keep = torch.from_numpy(xr.keep_mask(6, 0, (n,), rate))
    scale = torch.tensor(float(kernel.kernel_scale("bfloat16", rate)), dtype=torch.bfloat16)
    expected = (x * keep.to(torch.bfloat16) * scale).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(y_bits, expected)


# -- on a GPU: the fused kernel against the portable path --------------------------------

gpu = pytest.mark.skipif(not cuda_available()[0], reason="needs a CUDA device (CuPy)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("n", SIZES)
def test_gpu_bits_identical(n):
    for seed, counter in ((0, 0), (12345, 1), (2**63 + 5, 2**40 + 3)):
        np.testing.assert_array_equal(kernel.bits32(seed, counter, n).get(), xr.bits32(seed, counter, n))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("n", SIZES)
def test_gpu_masks_identical_at_every_offset(dtype, n):
    import cupy

    base = cupy.ones(n + 16, dtype=dtype)
    for seed, counter in ((0, 0), (77, 5)):
        expected = xr.keep_mask(seed, counter, (n,), 0.3)
        for off in (0, 1, 2, 3, 5, 16 // base.itemsize):
            Y = kernel.dropout(base[off:off + n], 0.3, seed, counter).get()
            np.testing.assert_array_equal(Y != 0, expected, err_msg=f"offset {off}")
            np.testing.assert_array_equal(Y[expected], np.full(int(expected.sum()), kernel.kernel_scale(dtype, 0.3),
                                                               dtype=dtype))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_gpu_fused_equals_portable_and_numpy(dtype):
    import cupy

    X_host = np.random.default_rng(0).standard_normal((1001, 37)).astype(dtype)
    G_host = np.random.default_rng(1).standard_normal((1001, 37)).astype(dtype)
    X, G = cupy.asarray(X_host), cupy.asarray(G_host)
    outs = []
    for layer in (Dropout(0.45, fused=True), Dropout(0.45, fused=False)):
        Y, backprop = layer.forward(X, train=True, rng=Stream(3, 2))
        outs.append((Y.get(), backprop(G).get()))
    Y_np, bp_np = Dropout(0.45).forward(X_host, train=True, rng=Stream(3, 2))
    for Y, dX in outs:
        np.testing.assert_array_equal(Y, Y_np)
        np.testing.assert_array_equal(dX, bp_np(G_host))


@pytest.mark.gpu
@gpu
def test_gpu_fused_dropout_keeps_subnormals():
    """CuPy compiles kernels with -ftz=true; the fused kernel's multiply must still keep
    subnormal inputs and products bit for bit as NumPy computes them."""
    import cupy

    tiny = np.float32(np.finfo(np.float32).tiny)
    host = (np.random.default_rng(5).uniform(-1, 1, 4099) * tiny).astype(np.float32)   # all subnormal
    Y_np = Dropout(0.3).forward(host, train=True, rng=Stream(9))[0]
    assert np.count_nonzero(Y_np) > 2000
    got = kernel.dropout(cupy.asarray(host), 0.3, 9, 0).get()
    np.testing.assert_array_equal(got.view(np.uint32), Y_np.view(np.uint32))


@pytest.mark.gpu
@gpu
def test_gpu_non_contiguous_and_offset_views():
    import cupy

    base_host = np.random.default_rng(2).standard_normal((64, 50)).astype(np.float32)
    base = cupy.asarray(base_host)
    for sl in (np.s_[:, 1:], np.s_[3:, :], np.s_[::2, 3:40]):
        Y, backprop = Dropout(0.5).forward(base[sl], train=True, rng=Stream(4))
        expected = Dropout(0.5).forward(base_host[sl], train=True, rng=Stream(4))[0]
        np.testing.assert_array_equal(Y.get(), expected)
        np.testing.assert_array_equal(backprop(base[sl]).get(), expected)


@pytest.mark.gpu
@gpu
def test_gpu_backprop_stores_no_mask_and_rate_zero_is_identity():
    import cupy

    X = cupy.ones((256, 1024), dtype=cupy.float32)
    pool = cupy.get_default_memory_pool()
    before = pool.used_bytes()
    Y, backprop = Dropout(0.5).forward(X, train=True, rng=Stream(0))
    assert pool.used_bytes() - before <= Y.nbytes + 512          # only the output was allocated
    held = [c.cell_contents for c in backprop.__closure__ or ()]
    assert not any(isinstance(v, cupy.ndarray) for v in held)
    assert Dropout(0.0).forward(X, train=True)[0] is X
    np.testing.assert_array_equal(kernel.dropout(X, 0.0, 1, 2).get(), X.get())
