"""The fused softmax cross-entropy kernel (xpdnn/kernels/softmax_xent.cu).

Without a GPU: (1) NVRTC compiles every instantiation for compute_80 and compute_90; (2) the
exact kernel source is compiled as C++ for the CPU (one std::thread per CUDA thread, warp
shuffles and __syncthreads emulated with barriers, blocks run one at a time, last first) and run through the same launch
configuration as on the GPU, against the portable loss, with NaN-poisoned padding around the
logits and sentinels around the gradient to catch out-of-row reads and writes.
With a GPU (marked ``gpu``): fused vs portable on the device, and NumPy vs CuPy for every loss.
"""

from __future__ import annotations

import ctypes
import re
import shutil

import numpy as np
import pytest

from xpdnn.devices import cuda_available
from xpdnn.kernels import softmax_xent as K
from xpdnn.kernels._compile import ARCHS, read_source
from xpdnn.losses.binary import BinaryCrossEntropy, MultiLabelLogistic
from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy

IGNORE = -100


def test_plan_and_launch_config():
    assert K.plan(1) == ("warp", 1) and K.plan(32) == ("warp", 1) and K.plan(33) == ("warp", 2)
    assert K.plan(1024) == ("warp", 32) and K.plan(1025) == ("block", K.BLOCK)
    assert K.launch_config(9, 10, "float32", 256, 12, 512, 12, 4) == ("xent_warp1_f32", 3, 128, 1)
    assert K.launch_config(9, 10, "float32", 256, 10, 512, 10, 4)[3] == 0      # 40-byte rows
    assert K.launch_config(1, 10, "float32", 256, 10, 512, 10, 4)[3] == 1      # one row: no stride
    assert K.launch_config(2, 5000, "float16", 258, 5000, 512, 5000, 2) == ("xent_block_f16", 2, K.BLOCK, 0)
    assert set(K.kernel_names()) >= {"xent_prepass_f32", "xent_warp32_bf16", "xent_block_f64"}
    assert not K.fused_available(np.zeros((2, 3)))


# -- (1) every instantiation compiles with NVRTC ------------------------------------------------

@pytest.mark.slow       # ~3 s per architecture
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_kernel(nvrtc_ptx, arch):
    ptx = nvrtc_ptx(K.SOURCE, arch)           # compiled once per session (conftest.py)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == set(K.kernel_names())


# -- (2) the kernel source, run on the CPU -------------------------------------------------------

SHIM = r"""
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __restrict__ __restrict
struct EmuDim3 { unsigned x = 0, y = 0, z = 0; };
thread_local EmuDim3 threadIdx, blockIdx;
EmuDim3 blockDim, gridDim;
struct alignas(16) uint4 { unsigned x, y, z, w; };
template <class To, class From> inline To emu_bits(From f) { To t; std::memcpy(&t, &f, sizeof(To)); return t; }
inline float __int_as_float(int i) { return emu_bits<float>(i); }
inline float __uint_as_float(unsigned i) { return emu_bits<float>(i); }
inline unsigned __float_as_uint(float f) { return emu_bits<unsigned>(f); }
inline double __longlong_as_double(long long i) { return emu_bits<double>(i); }
struct EmuWarp { std::barrier<> bar{32}; alignas(8) unsigned char buf[32][8]; };
static std::unique_ptr<std::barrier<>> emu_block_bar;
static std::unique_ptr<EmuWarp[]> emu_warps;
inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
template <class T> T __shfl_xor_sync(unsigned, T v, int off) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    EmuWarp& w = emu_warps[threadIdx.x / 32];
    const unsigned lane = threadIdx.x % 32;
    std::memcpy(w.buf[lane], &v, sizeof(T));
    w.bar.arrive_and_wait();
    T r;
    std::memcpy(&r, w.buf[lane ^ (unsigned)off], sizeof(T));
    w.bar.arrive_and_wait();
    return r;
}
template <class F> void emu_launch(unsigned grid, unsigned block, F f) {
    blockDim.x = block; gridDim.x = grid;
    for (unsigned b = grid; b-- > 0;) {   // last block first: a stray write into a later row persists
        emu_block_bar = std::make_unique<std::barrier<>>(block);
        emu_warps.reset(new EmuWarp[(block + 31) / 32]);
        std::vector<std::thread> ts;
        ts.reserve(block);
        for (unsigned t = 0; t < block; ++t)
            ts.emplace_back([=] {
                threadIdx.x = t; blockIdx.x = b;
                f();
                emu_warps[t / 32].bar.arrive_and_drop();
                emu_block_bar->arrive_and_drop();
            });
        for (auto& th : ts) th.join();
    }
}
"""

CTYPE = {"f32": "float", "f64": "double", "f16": "xpdnn_f16", "bf16": "xpdnn_bf16"}
STORAGE = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": np.uint16}
# signalling-NaN bit patterns: arithmetic on them gives a different (quiet) NaN, so a read of the
# padding shows up as NaN results and a write into it changes its bits
POISON_BITS = {"float32": (np.uint32, 0x7FA12345), "float64": (np.uint64, 0x7FF4123456789ABC),
               "float16": (np.uint16, 0x7D23), "bfloat16": (np.uint16, 0x7F81)}
SENTINEL = {"float32": -1234.5, "float64": -1234.5, "float16": -1234.5, "bfloat16": 0xC49A}


def poisoned(n, tname):
    bits, value = POISON_BITS[tname]
    return np.full(n, value, dtype=bits).view(STORAGE[tname])


def sentinel(n, tname):
    return np.full(n, SENTINEL[tname], dtype=STORAGE[tname])


@pytest.fixture(scope="session")
def emu(shared_library):
    """The kernel source built as C++ for the CPU, once per session (``shared_library`` in
    conftest.py; tests/test_properties.py uses it too)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no C++ compiler (g++) to run the kernel source on the CPU")
    parts = [SHIM, read_source(K.SOURCE),
             '#define EMU_ROW(T, NAME, BLOCK) extern "C" void emu_##NAME(unsigned grid, XENT_ARGS(T)) '
             "{ emu_launch(grid, BLOCK, [=] { NAME(XENT_PASS); }); }"]
    for name in K.kernel_names():
        suffix = name.rsplit("_", 1)[1]
        if name.startswith("xent_prepass"):
            A = CTYPE[suffix]
            parts.append(f'extern "C" void emu_{name}(const i64* y, const {A}* w, int has_w, i64 N, i64 C, '
                         f"i64 ign, int has_ign, double* den, u64* bad) {{ emu_launch(1, XENT_PREPASS_THREADS, "
                         f"[=] {{ {name}(y, w, has_w, N, C, ign, has_ign, den, bad); }}); }}")
        else:
            block = "XENT_BLOCK" if "block" in name else "XENT_WARP_THREADS"
            parts.append(f"EMU_ROW({CTYPE[suffix]}, {name}, {block})")

    def compile_(name, text):
        return shared_library(gxx, ["-std=c++20", "-O0", "-pthread", "-w"], text, name)

    res, lib = compile_("xent", "\n".join(parts))
    if res.returncode != 0:
        # a compiler that cannot build the shim alone (C++20 <barrier>, _Float16) skips; else the source is at fault
        probe, _ = compile_("shim", SHIM)
        if probe.returncode != 0:
            pytest.skip("this C++ compiler cannot build the CUDA emulation shim: " + probe.stderr[-300:])
        raise AssertionError("the kernel source does not compile as C++:\n" + res.stderr[-4000:])
    return ctypes.CDLL(str(lib))


def bf16_bits(x):
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(b):
    return (np.asarray(b).astype(np.uint32) << 16).view(np.float32)


def as_float64(a, tname):
    return bf16_value(a).astype(np.float64) if tname == "bfloat16" else a.astype(np.float64)


def run_emulated(lib, Zs, y, tname, weight=None, ignore_index=None, eps=0.0, reduction="mean",
                 ld=None, offset=0, inplace=False):
    """Run prepass + row kernel on storage-typed logits Zs (N, C) placed at element ``offset``
    of a buffer with row stride ``ld``; everything around the rows is poisoned.
    Returns (row_loss, dZ, den, first_bad_row)."""
    N, C = Zs.shape
    ld = C if ld is None else ld
    dt = STORAGE[tname]
    item = np.dtype(dt).itemsize
    zbuf = poisoned(offset + N * ld + 16, tname)
    zbuf[offset:offset + N * ld].reshape(N, ld)[:, :C] = Zs
    zcopy = zbuf.copy()
    if inplace:
        gbuf, goff, ldg = zbuf, offset, ld
    else:
        gbuf, goff, ldg = sentinel(N * C + 16, tname), 0, C
    acc = np.float64 if tname == "float64" else np.float32
    y64 = np.ascontiguousarray(y, dtype=np.int64)
    w = np.zeros(1, acc) if weight is None else np.ascontiguousarray(weight, dtype=acc)
    wsum = float(C) if weight is None else float(w.astype(np.float64).sum())
    den, bad = np.zeros(1), np.zeros(1, np.uint64)
    row_loss = np.full(N, np.nan, acc)
    P, I64, I32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
    ign = I64(0 if ignore_index is None else ignore_index)
    has_ign = I32(ignore_index is not None)
    getattr(lib, f"emu_xent_prepass_{'f64' if acc is np.float64 else 'f32'}")(
        P(y64.ctypes.data), P(w.ctypes.data), I32(weight is not None), I64(N), I64(C), ign, has_ign,
        P(den.ctypes.data), P(bad.ctypes.data))
    zp, gp = zbuf.ctypes.data + offset * item, gbuf.ctypes.data + goff * item
    name, grid, _, vec = K.launch_config(N, C, tname, zp, ld, gp, ldg, item)
    getattr(lib, "emu_" + name)(
        ctypes.c_uint(grid), P(zp), I64(ld), P(gp), I64(ldg), P(y64.ctypes.data), P(w.ctypes.data),
        I32(weight is not None), I64(N), I64(C), ign, has_ign, ctypes.c_double(eps), ctypes.c_double(wsum),
        I32({"none": 0, "sum": 1, "mean": 2}[reduction]), P(den.ctypes.data), P(row_loss.ctypes.data), I32(vec))
    G = gbuf[goff:goff + N * ldg].reshape(N, ldg)[:, :C].copy()
    # nothing outside the rows' first C columns was written; without inplace the logits are intact
    outside = np.ones(gbuf.shape, bool)
    outside[goff:goff + N * ldg].reshape(N, ldg)[:, :C] = False
    before = zcopy if inplace else sentinel(gbuf.shape[0], tname)
    np.testing.assert_array_equal(gbuf[outside].view(np.uint8), before[outside].view(np.uint8))
    if not inplace:
        np.testing.assert_array_equal(zbuf.view(np.uint8), zcopy.view(np.uint8))
    return row_loss, G, float(den[0]), int(bad[0]), name, vec


TOL = {"float64": 1e-12, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}

# (C, N, ld, offset, inplace, eps, weighted, reduction)
EMU_CASES = [
    (1, 5, None, 0, False, 0.1, True, "mean"),          # one class
    (10, 9, None, 0, False, 0.0, False, "mean"),        # warp, scalar slots, last block half empty
    (10, 9, 12, 0, True, 0.2, True, "sum"),             # padded rows, in place
    (33, 5, None, 1, False, 0.1, False, "none"),        # misaligned base: scalar fallback
    (100, 6, None, 0, False, 0.3, True, "mean"),        # warp, 16-byte groups, lanes past C
    (101, 6, 104, 0, True, 0.2, True, "sum"),           # warp, a group cut by C, in place
    (1000, 4, 1024, 0, True, 0.1, True, "none"),        # warp32, padded aligned rows, in place
    (1024, 3, None, 0, False, 0.0, True, "sum"),
    (1025, 3, None, 0, False, 0.1, True, "mean"),       # block, scalar loop
    (1029, 3, 1040, 0, True, 0.2, False, "sum"),        # block, 16-byte groups + tail, in place
    (3000, 3, 3008, 0, False, 0.1, True, "none"),       # block, 16-byte groups, padded rows
]


@pytest.mark.slow
@pytest.mark.parametrize("tname", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("case", EMU_CASES, ids=lambda c: f"C{c[0]}-ld{c[2]}-off{c[3]}-inplace{c[4]}")
def test_emulated_kernel_matches_portable(emu, tname, case):
    C, N, ld, offset, inplace, eps, weighted, reduction = case
    rng = np.random.default_rng(C + N)
    Z = rng.standard_normal((N, C)) * 3
    Z[0] *= 3000                                    # logits of order 1e4
    y = rng.integers(0, C, N)
    y[1] = IGNORE
    w = rng.uniform(0.2, 2.0, C) if weighted else None
    Zs = bf16_bits(Z) if tname == "bfloat16" else Z.astype(STORAGE[tname])
    rl, G, den, bad, name, vec = run_emulated(emu, Zs, y, tname, w, IGNORE, eps, reduction, ld, offset, inplace)
    assert bad == (1 << 64) - 1
    ref = SoftmaxCrossEntropy(weight=w, ignore_index=IGNORE, label_smoothing=eps, reduction="none")
    ref_rows, ref_G = ref(as_float64(Zs, tname), y)
    valid = y != IGNORE
    acc = np.float64 if tname == "float64" else np.float32
    ref_den = float(np.sum(w.astype(acc)[y[valid]], dtype=np.float64)) if weighted else float(valid.sum())
    np.testing.assert_allclose(den, ref_den, rtol=1e-12)
    scale = 1.0 / ref_den if reduction == "mean" else 1.0
    tol = TOL[tname]
    np.testing.assert_allclose(rl, ref_rows * scale, rtol=tol, atol=tol * 1e-3)
    Gf = as_float64(G, tname)
    np.testing.assert_allclose(Gf, ref_G * scale, rtol=tol, atol=tol * np.abs(ref_G * scale).max())
    assert np.all(G[1].view(np.uint8) == 0)          # ignored row: exact zeros


def test_emulated_vector_paths_are_taken():
    """The cases above do reach the 16-byte paths (and the scalar fallbacks)."""
    seen = set()
    for C, N, ld, offset, inplace, *_ in EMU_CASES:
        z = np.zeros(offset + N * (ld or C) + 16, np.float32)
        seen.add(K.launch_config(N, C, "float32", z.ctypes.data + 4 * offset, ld or C,
                                 z.ctypes.data, ld or C, 4)[3])
    assert seen == {0, 1}


@pytest.mark.slow
def test_emulated_bad_label_and_all_ignored(emu):
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((5, 6)).astype(np.float32)
    rl, G, den, bad, *_ = run_emulated(emu, Z, np.array([0, 5, IGNORE, 7, -2]), "float32", ignore_index=IGNORE)
    assert bad == 3                                   # first row whose label is not a class
    assert np.all(np.isfinite(rl)) and np.all(np.isfinite(G))
    assert rl[3] == 0 and rl[4] == 0 and np.all(G[3:] == 0)
    rl, G, den, bad, *_ = run_emulated(emu, Z, np.full(5, IGNORE), "float32", ignore_index=IGNORE,
                                       eps=0.1, reduction="mean")
    assert den == 0 and bad == (1 << 64) - 1
    assert np.all(rl == 0) and np.all(G == 0)


# -- (3) on a GPU ---------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not cuda_available()[0], reason="needs a CUDA device: " + cuda_available()[1])


def _portable(Z, y, **kw):
    return SoftmaxCrossEntropy(fused=False, **kw)(Z, y)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("C", [2, 10, 32768, 1_000_003])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_gpu_fused_matches_portable(C, dtype, tol):
    import cupy

    rng = np.random.default_rng(C)
    N = 4 if C > 100_000 else 37
    Z = rng.standard_normal((N, C)) * 4
    Z[0, :] = np.where(rng.random(C) < 0.5, 1e4, -1e4)
    y = rng.integers(0, C, N)
    y[2] = IGNORE
    Zc, yc = cupy.asarray(Z.astype(dtype)), cupy.asarray(y)
    for weighted, eps, reduction in [(False, 0.0, "mean"), (True, 0.1, "mean"), (True, 0.0, "sum"),
                                     (False, 0.2, "none"), (True, 0.3, "none")]:
        kw = dict(weight=rng.uniform(0.2, 2.0, C) if weighted else None, ignore_index=IGNORE,
                  label_smoothing=eps, reduction=reduction)
        loss, dZ = SoftmaxCrossEntropy(**kw)(Zc, yc)
        ref, ref_dZ = _portable(Zc, yc, **kw)
        assert dZ.dtype == Zc.dtype
        np.testing.assert_allclose(cupy.asnumpy(loss), cupy.asnumpy(ref), rtol=tol, atol=tol * 1e-3)
        ref_dZ = cupy.asnumpy(ref_dZ)
        np.testing.assert_allclose(cupy.asnumpy(dZ), ref_dZ, rtol=tol, atol=tol * np.abs(ref_dZ).max())


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("C", [10, 1000, 5000])
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_gpu_half_logits(C, half):
    import cupy

    rng = np.random.default_rng(1)
    Z = (rng.standard_normal((16, C)) * 4).astype(np.float32)
    y = rng.integers(0, C, 16)
    if half == "float16":
        Zs = cupy.asarray(Z.astype(np.float16))
        Zf = Zs.astype(cupy.float32)
        loss, dZ = K.softmax_xent(Zs, cupy.asarray(y), label_smoothing=0.1)
        dZf = dZ.astype(cupy.float32)
    else:
        bits = bf16_bits(Z)
        Zf = cupy.asarray(bf16_value(bits))
        loss, dZ = K.softmax_xent(cupy.asarray(bits), cupy.asarray(y), label_smoothing=0.1, logits_dtype="bfloat16")
        dZf = cupy.asarray(bf16_value(cupy.asnumpy(dZ)))
    ref, ref_dZ = _portable(Zf, cupy.asarray(y), label_smoothing=0.1)
    assert loss.dtype == cupy.float32
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    tol = 2e-3 if half == "float16" else 1.6e-2
    np.testing.assert_allclose(cupy.asnumpy(dZf), cupy.asnumpy(ref_dZ), rtol=tol,
                               atol=tol * float(cupy.abs(ref_dZ).max()))


@pytest.mark.gpu
@gpu
def test_gpu_inplace_bad_labels_all_ignored_dispatch(monkeypatch):
    import cupy

    rng = np.random.default_rng(2)
    Z = cupy.asarray(rng.standard_normal((8, 50)))
    y = cupy.asarray(rng.integers(0, 50, 8))
    ref, ref_dZ = _portable(Z, y)
    Zw = Z.copy()
    loss, dZ = SoftmaxCrossEntropy(inplace=True)(Zw, y)
    assert dZ.data.ptr == Zw.data.ptr
    cupy.testing.assert_allclose(dZ, ref_dZ, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="not a class label"):
        SoftmaxCrossEntropy()(Z, cupy.asarray(np.array([0, 1, 2, 3, 4, 5, 6, 50])))
    loss, dZ = SoftmaxCrossEntropy(ignore_index=IGNORE)(Z, cupy.full(8, IGNORE))
    assert float(loss) == 0.0 and not bool(cupy.any(dZ))
    calls = []
    real = K.softmax_xent
    monkeypatch.setattr(K, "softmax_xent", lambda *a, **k: calls.append(1) or real(*a, **k))
    SoftmaxCrossEntropy()(Z, y)
    SoftmaxCrossEntropy(fused=False)(Z, y)
    assert calls == [1]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("make,targets", [
    (lambda: SoftmaxCrossEntropy(weight=np.linspace(0.5, 2, 7), ignore_index=IGNORE, label_smoothing=0.1), "labels"),
    (lambda: SoftmaxCrossEntropy(fused=False, reduction="none"), "labels"),
    (lambda: SoftmaxCrossEntropy(label_smoothing=0.2), "soft"),
    (lambda: BinaryCrossEntropy(pos_weight=np.linspace(0.5, 2, 7)), "binary"),
    (lambda: MultiLabelLogistic(weight=np.linspace(0.5, 2, 7), reduction="sum"), "binary"),
], ids=["ce-fused", "ce-portable-none", "ce-soft", "bce", "multilabel"])
def test_gpu_numpy_cupy_parity(make, targets):
    import cupy

    rng = np.random.default_rng(4)
    Z = rng.standard_normal((20, 7)) * 3
    if targets == "labels":
        t = rng.integers(0, 7, 20)
        t[3] = IGNORE if make().ignore_index == IGNORE else t[3]
    elif targets == "soft":
        t = rng.dirichlet(np.ones(7), 20)
    else:
        t = (rng.random((20, 7)) > 0.5).astype(np.float64)
    loss_fn = make()
    a, da = loss_fn(Z, t)
    b, db = loss_fn(cupy.asarray(Z), cupy.asarray(t))
    np.testing.assert_allclose(cupy.asnumpy(b), a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cupy.asnumpy(db), da, rtol=1e-12, atol=1e-15)
