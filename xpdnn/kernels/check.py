"""First-use check of the fused CUDA kernels against the portable path.

The fused kernels (:mod:`xpdnn.kernels.softmax_xent`, :mod:`xpdnn.kernels.dropout`) are compiled
and emulated on the CPU in CI, but a defect on real hardware would give silently wrong training.
So the first time a kernel variant runs in a process for a given (device, dtype), the dispatch in
:mod:`xpdnn.kernels` calls :func:`kernel_ok`, which runs that variant on a small probe built to hit
its edge cases and compares it with the portable Array-API code run on the host:

* softmax cross-entropy, per launch variant (``xent_warp{VPT}_{T}`` or ``xent_block_{T}``, with
  16-byte vector loads or scalar loads): odd N (a partial block of rows), C inside the variant's
  range (odd for the scalar variant, so rows start misaligned), a row of logits of order 1e4, a
  ramp whose maximum is the last column (the online max / sum rescales at every step), a
  constant row, an ignored label, the last class as a label, class weights, label smoothing,
  each reduction and an in-place run.  Losses and gradients must agree with the portable
  float64 result to :data:`TOL` (``|got - ref| <= tol |ref| + tol * 1e-3`` for losses,
  ``+ tol * max|ref|`` for gradients, the bounds of the CPU emulation tests).
* dropout, per path (``vec16``: a 16-byte aligned start, 8-element blocks with 128-bit loads
  and an odd tail; ``element``: a start one element off alignment, element by element): signed
  zeros, the dtype's subnormals (which ``-ftz`` would flush), large values, random normals,
  seed and counter above 2**63.  Masks and outputs must agree bit for bit.

On a mismatch or an exception (a launch or compile error) a :class:`KernelCheckWarning` names
the kernel, the device and the difference, and that variant takes the portable path for the
rest of the process.  ``XPDNN_KERNEL_CHECK=0`` skips the check, ``=strict`` raises
:class:`KernelCheckError` instead of falling back.  The check reads its probe back to the host
once; later calls only look the variant up in a dict (no device read-back per step).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .. import _backend as B

ENV = "XPDNN_KERNEL_CHECK"
TOL = {"float64": 1e-12, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
IGNORE = -100
XENT_N = 7                       # rows of the softmax probe: two blocks of 4 rows, the last partial
DROPOUT_N = 8 * 33 + 5           # dropout probe: whole 8-element blocks and a tail of 5
DROPOUT_RATE = 0.3
DROPOUT_SEED, DROPOUT_COUNTER = 2**64 - 12345, 2**63 + 7


class KernelCheckError(RuntimeError):
    """A fused kernel disagreed with the portable path (or failed) under ``XPDNN_KERNEL_CHECK=strict``."""


class KernelCheckWarning(RuntimeWarning):
    """A fused kernel disagreed with the portable path (or failed); the portable path is used."""


@dataclass
class Result:
    kernel: str
    device: str
    dtype: str
    variant: str
    ok: bool
    detail: str          # "" when ok, else what differed
    seconds: float


_results: dict[tuple, Result] = {}
_lock = threading.Lock()


def mode() -> str:
    """``"off"`` (``XPDNN_KERNEL_CHECK=0``), ``"strict"``, or ``"warn"`` (the default)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value == "strict":
        return "strict"
    return "warn"


def results() -> list[Result]:
    """The checks run so far in this process."""
    return list(_results.values())


def reset() -> None:
    """Forget every result (tests; a new device)."""
    with _lock:
        _results.clear()


def _message(r: Result) -> str:
    return (f"fused CUDA kernel {r.kernel} [{r.variant}, {r.dtype}] on {r.device} failed its first-use check "
            f"against the portable Array-API path: {r.detail}")


def kernel_ok(kernel: str, device: str, dtype: str, variant: str, probe) -> bool:
    """Whether the fused ``kernel`` may run ``variant`` on ``device`` for ``dtype``.  The first
    call for a key runs ``probe()`` (returns "" when the kernel agrees, else what differed; an
    exception counts as a failure) and remembers the answer; later calls only look it up."""
    m = mode()
    if m == "off":
        return True
    key = (kernel, device, dtype, variant)
    r = _results.get(key)
    if r is None:
        with _lock:
            r = _results.get(key)
            if r is None:
                t0 = time.perf_counter()
                try:
                    detail = probe()
                except Exception as exc:        # a launch, compile or out-of-memory error
                    detail = f"it raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                r = Result(kernel, device, dtype, variant, not detail, detail, time.perf_counter() - t0)
                _results[key] = r
                if not r.ok and m == "warn":
                    warnings.warn(_message(r) + "; the portable path is used for the rest of this process "
                                  f"(same results, slower; {ENV}=strict raises instead)", KernelCheckWarning,
                                  stacklevel=4)
    if not r.ok and m == "strict":
        raise KernelCheckError(_message(r) + f" ({ENV}=strict; {ENV}=0 skips the check)")
    return r.ok


# -- where an array lives ------------------------------------------------------------------------

def device_label(a) -> str:
    """``cuda:0 (NVIDIA H100 ...)`` for a CuPy array, else the array's device as text."""
    if B.is_cupy(a):
        return _cuda_label(int(a.device.id))
    return f"{type(a).__module__.split('.')[0]}:{B.device(a)}"


@functools.lru_cache(maxsize=None)
def _cuda_label(device_id: int) -> str:
    import cupy
    try:
        name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        name = "unknown"
    return f"cuda:{device_id} ({name})"


def _address(a) -> int:
    """Address of a's first element (0 where the library does not say)."""
    if B.is_cupy(a):
        return int(a.data.ptr)
    if isinstance(a, np.ndarray):
        return int(a.__array_interface__["data"][0])
    if B.is_torch(a):
        return int(a.data_ptr())
    return 0


def _itemsize(a) -> int:
    return {"float64": 8, "float32": 4}.get(B.dtype_name(a.dtype), 2)


def _row_stride(a) -> int | None:
    """Elements between rows of a 2-D array with unit column stride, or None."""
    item = _itemsize(a)
    if B.is_cupy(a) or isinstance(a, np.ndarray):
        s0, s1 = a.strides
        return s0 // item if s1 == item and s0 % item == 0 else None
    if B.is_torch(a):
        s0, s1 = a.stride()
        return s0 if s1 == 1 else None
    return a.shape[1]


# -- softmax cross-entropy -------------------------------------------------------------------------

def xent_variant(kernel, Z, inplace: bool) -> str:
    """The launch variant the fused softmax cross-entropy picks for Z: ``"<kernel name>/vec16"``
    or ``"<kernel name>/scalar"`` (as ``kernel.launch_config`` decides, after the copy the kernel
    makes of logits whose rows it cannot address)."""
    N, C = (int(n) for n in Z.shape)
    item = _itemsize(Z)
    ld = _row_stride(Z)
    ptr = _address(Z)
    if ld is None or (N > 1 and ld < C):
        ld, ptr = C, 0                               # copied to a fresh (aligned) array
    ld = ld if N > 1 else C
    gptr, ldg = (ptr, ld) if inplace else (0, C)     # a fresh gradient array is aligned
    name, _, _, vec = kernel.launch_config(N, C, B.dtype_name(Z.dtype), ptr, ld, gptr, ldg, item)
    return f"{name}/{'vec16' if vec else 'scalar'}"


def xent_probe_shape(kernel, tname: str, variant: str) -> tuple[int, int]:
    """(N, C) of the probe for ``variant`` (see :func:`xent_variant`): C inside the kernel's
    range of classes, odd for the scalar variant (rows start misaligned), a multiple of the
    16-byte group for the vector one."""
    name, _, vec = variant.partition("/")
    item = {"float64": 8, "float32": 4}.get(tname, 2)
    V = 16 // item
    family = name.split("_")[1]                      # warp{VPT} or block
    if family == "block":
        C = kernel.MAX_WARP_C * 4 + (3 * V if vec == "vec16" else 3)
    else:
        vpt = int(family[len("warp"):])
        C = 32 * vpt - (V if vec == "vec16" else 1)
        if vpt == 1 and vec == "vec16" and C < 1:
            C = V
    return XENT_N, C


def _xent_logits(N: int, C: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((N, C)) * 3
    Z[0] = np.where(rng.random(C) < 0.5, 1e4, -1e4)          # logits of order 1e4
    Z[1] = np.linspace(-30.0, 30.0, C)                         # max in the last column: online rescaling
    Z[2] = 0.0                                                 # a constant row
    Z[3] = np.linspace(5.0, -5.0, C)
    Z[3, -1] = 50.0                                            # a lone spike at the end of the row
    y = rng.integers(0, C, N)
    y[1], y[2], y[3] = 0, IGNORE, C - 1
    w = rng.integers(2, 17, C) / 8.0                           # exact in every dtype
    return Z, y, w


def _excess(got: np.ndarray, ref: np.ndarray, tol: float, floor: float) -> float:
    """Largest ``|got - ref| / (tol |ref| + floor)`` (> 1: outside the bound; inf: not finite)."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        return np.inf
    if not np.all(np.isfinite(got)):
        return np.inf
    return float(np.max(np.abs(got - ref) / (tol * np.abs(ref) + floor), initial=0.0))


def _as_f64(a) -> np.ndarray:
    h = B.to_numpy(a)
    return h.astype(np.float64)


def xent_probe(kernel, like, tname: str, variant: str) -> str:
    """Run the fused softmax cross-entropy ``variant`` on its probe, on ``like``'s device, against
    the portable path in float64 on the host; "" when it agrees, else what differed."""
    from ..losses.cross_entropy import SoftmaxCrossEntropy

    N, C = xent_probe_shape(kernel, tname, variant)
    Zh, y, w = _xent_logits(N, C, seed=C)
    xp = B.namespace(like)
    dt = like.dtype
    acc = "float64" if tname == "float64" else "float32"
    Zd = xp.astype(B.from_numpy(Zh, like=like), dt)
    Z64 = _as_f64(Zd)                                          # the logits as the kernel sees them
    yd = B.from_numpy(y.astype(np.int64), like=like)
    wd = xp.astype(B.from_numpy(w, like=like), getattr(xp, acc))
    tol = TOL[tname]
    problems = []
    for weighted, eps, reduction, inplace, check in [(True, 0.1, "mean", False, True),
                                                     (False, 0.0, "sum", False, False),
                                                     (True, 0.0, "none", True, True),
                                                     (False, 0.2, "mean", True, False)]:
        Zin = xp.astype(Zd, dt, copy=True)
        got = xent_variant(kernel, Zin, inplace)
        if got != variant:
            raise RuntimeError(f"the probe built for {variant} launches {got}")
        loss, G = kernel.softmax_xent(Zin, yd, weight=wd if weighted else None,
                                      weight_sum=float(np.sum(w)) if weighted else None, ignore_index=IGNORE,
                                      label_smoothing=eps, reduction=reduction, inplace=inplace, check=check)
        ref_loss, ref_G = SoftmaxCrossEntropy(weight=w if weighted else None, ignore_index=IGNORE,
                                              label_smoothing=eps, reduction=reduction, fused=False)(Z64, y)
        ref_loss, ref_G = np.asarray(ref_loss, dtype=np.float64), np.asarray(ref_G)
        where = f"(weights={weighted}, label_smoothing={eps}, reduction={reduction}, inplace={inplace})"
        e = _excess(_as_f64(loss), ref_loss, tol, tol * 1e-3)
        if e > 1:
            problems.append(f"loss {where}: {_say(e, tol, _as_f64(loss), ref_loss)}")
        e = _excess(_as_f64(G), ref_G, tol, tol * float(np.max(np.abs(ref_G), initial=0.0)))
        if e > 1:
            problems.append(f"gradient {where}: {_say(e, tol, _as_f64(G), ref_G)}")
    return "; ".join(problems)


def _say(excess: float, tol: float, got, ref) -> str:
    if not np.isfinite(excess):
        return "not finite or of the wrong shape"
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref).reshape(-1)
    i = int(np.argmax(np.abs(got - ref)))
    return (f"max |difference| {abs(got[i] - ref[i]):.3g} at element {i} ({got[i]:.9g} vs {ref[i]:.9g}), "
            f"{excess:.3g} times the tolerance (rtol {tol:g})")


def xent_ok(kernel, Z, inplace: bool) -> bool:
    """:func:`kernel_ok` for the fused softmax cross-entropy on logits Z."""
    tname = B.dtype_name(Z.dtype)
    if mode() == "off":
        return True
    variant = xent_variant(kernel, Z, inplace)
    return kernel_ok("softmax_xent", device_label(Z), tname, variant,
                     lambda: xent_probe(kernel, Z, tname, variant))


# -- dropout ------------------------------------------------------------------------------------------

def dropout_variant(X) -> str:
    """``"vec16"`` when X starts on a 16-byte boundary (whole 8-element blocks use 128-bit loads;
    a non-contiguous X is copied to an aligned array first), else ``"element"``."""
    contiguous = not (B.is_cupy(X) or isinstance(X, np.ndarray)) or X.flags.c_contiguous
    if B.is_torch(X):
        contiguous = X.is_contiguous()
    return "vec16" if not contiguous or _address(X) % 16 == 0 else "element"


def _subnormals(dtype) -> np.ndarray:
    tiny = np.finfo(dtype).smallest_subnormal
    return np.array([tiny, -tiny, 3 * tiny, np.finfo(dtype).tiny / 2, -np.finfo(dtype).tiny / 3], dtype=dtype)


def dropout_probe_host(dtype) -> np.ndarray:
    """The dropout probe: DROPOUT_N values with signed zeros, subnormals, large values, normals."""
    rng = np.random.default_rng(DROPOUT_N)
    x = rng.standard_normal(DROPOUT_N).astype(dtype)
    sub = _subnormals(dtype)
    for start in (0, 13, 8 * 20, DROPOUT_N - len(sub)):        # in vector blocks and in the tail
        x[start:start + len(sub)] = sub
    x[40], x[41] = 0.0, -0.0
    x[42] = np.finfo(dtype).max / 4
    return x


def dropout_probe(kernel, like, variant: str) -> str:
    """Run the fused dropout on its probe for ``variant`` on ``like``'s device, against the
    portable mask on the host; "" when masks and outputs agree bit for bit."""
    from .. import random as xrandom
    from ..layers.dropout import dropout_mask

    dt = B.dtype_name(like.dtype)
    xh = dropout_probe_host(np.dtype(dt))
    if variant == "vec16":
        X = B.from_numpy(xh, like=like)
    else:                                                      # a start one element off alignment
        X = B.from_numpy(np.concatenate([np.zeros(1, dtype=xh.dtype), xh]), like=like)[1:]
    if dropout_variant(X) != variant:
        raise RuntimeError(f"the dropout probe built for {variant} starts at a {dropout_variant(X)} address")
    Y = B.to_numpy(kernel.dropout(X, DROPOUT_RATE, DROPOUT_SEED, DROPOUT_COUNTER))
    keep = xrandom.keep_mask(DROPOUT_SEED, DROPOUT_COUNTER, xh.shape, DROPOUT_RATE)
    ref = xh * dropout_mask(xh, DROPOUT_RATE, DROPOUT_SEED, DROPOUT_COUNTER)
    if Y.shape != ref.shape or Y.dtype != ref.dtype:
        return f"output of shape {Y.shape} and dtype {Y.dtype}, expected {ref.shape} {ref.dtype}"
    bits = f"u{ref.dtype.itemsize}"
    nonzero = xh != 0
    bad_mask = np.flatnonzero(nonzero & ((Y != 0) != keep) & np.isfinite(Y))
    bad = np.flatnonzero(Y.view(bits) != ref.view(bits))
    if not len(bad):
        return ""
    i = int(bad[0])
    what = f"{len(bad_mask)} mask bits differ, " if len(bad_mask) else ""
    return (f"{what}{len(bad)} of {len(ref)} outputs differ bitwise, first at element {i}: "
            f"{Y[i]!r} vs {ref[i]!r} (input {xh[i]!r})")


def dropout_ok(kernel, X) -> bool:
    """:func:`kernel_ok` for the fused dropout on X."""
    if mode() == "off":
        return True
    variant = dropout_variant(X)
    return kernel_ok("dropout", device_label(X), B.dtype_name(X.dtype), variant,
                     lambda: dropout_probe(kernel, X, variant))


def all_variants(kernel_xent, dtypes=("float32", "float64", "float16")) -> list[tuple[str, str, str]]:
    """Every (kernel, dtype, variant) the first-use check distinguishes."""
    out = []
    for tname in dtypes:
        suffix = kernel_xent.SUFFIX[tname]
        for name in [f"xent_warp{v}_{suffix}" for v in kernel_xent.WARP_VPT] + [f"xent_block_{suffix}"]:
            out += [("softmax_xent", tname, f"{name}/{vec}") for vec in ("vec16", "scalar")]
        out += [("dropout", tname, v) for v in ("vec16", "element")]
    return out
