"""NumPy fast paths: the same math as the portable code, written with ``out=`` and in-place
ufuncs to avoid temporaries.  Each function takes the portable result as its reference and is
chosen only when every argument is a NumPy array."""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def handles(*arrays) -> bool:
    return all(type(a) is np.ndarray for a in arrays)


def apply_mask(X, keep, scale):
    """``X * keep * scale`` (inverted dropout with a bool mask) with one output allocation and no
    temporaries."""
    Y = np.multiply(X, keep)
    np.multiply(Y, Y.dtype.type(scale), out=Y)
    return Y


def matmul_into(A, B, out):
    """``out[...] = A @ B`` without a temporary."""
    return np.matmul(A, B, out=out)


_ZEROS_MAX = 1 << 20          # elements: above this the scalar form is used (no big constant buffer kept)
_zeros: dict = {}
_ones: dict = {}


def _filled_for(cache, value, X):
    buf = cache.get(X.dtype)
    if buf is None or buf.size < X.size:
        buf = np.full(max(X.size, 1 << 16), value, dtype=X.dtype)
        buf.flags.writeable = False
        cache[X.dtype] = buf
    return buf[:X.size].reshape(X.shape)


def _zeros_for(X):
    """A read-only zero array of X's shape and dtype (a view of one cached buffer per dtype)."""
    return _filled_for(_zeros, 0, X)


def _ones_for(X):
    """A read-only array of ones of X's shape and dtype (a view of one cached buffer per dtype)."""
    return _filled_for(_ones, 1, X)


def relu_(X):
    """ReLU in place (NaN stays NaN).  Against a zero array rather than the scalar 0: NumPy 2.4's
    ``maximum`` has no vectorized loop for a scalar operand (measured for 128 x 512 float32:
    25 us with ``0``, 6 us with a zero array)."""
    if X.flags.c_contiguous and X.size <= _ZEROS_MAX:
        return np.maximum(X, _zeros_for(X), out=X)
    return np.maximum(X, 0, out=X)


def relu_backward_(dY, Y):
    """relu's backward written into ``dY``: ``dY`` where ``Y > 0``, 0 where ``Y == 0``, NaN where
    Y is NaN (``Y = relu_(X)``), the portable ``relu_backward``'s values.  The factor
    ``ceil(min(Y, 1))`` is exactly 1, 0 or NaN there, from two vectorized passes: ``np.where``
    and a masked ``copyto`` are ten times slower, ``np.sign`` and ``np.heaviside`` have no
    vectorized loop, and a NaN check (``Y.max()``) costs as much (measured for 128 x 512 float32
    on a 2-core AVX2 machine: 26 us, against 21 us for the ``dY * (Y > 0)`` that lost the NaN;
    ``np.sign`` 41 us, ``np.where`` 250 us)."""
    if Y.flags.c_contiguous and Y.size <= _ZEROS_MAX:
        F = np.minimum(Y, _ones_for(Y))
    else:
        F = np.minimum(Y, 1)
    np.ceil(F, out=F)
    return np.multiply(dY, F, out=dY)


def axpy_(a, X, Y, scratch):
    """``Y += a * X`` in place, through a reusable ``scratch`` buffer."""
    np.multiply(X, a, out=scratch)
    Y += scratch
    return Y


_POOL = None


def _pool():
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="xpdnn-cpu"))
    return _POOL[1]


@functools.lru_cache(maxsize=None)
def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _xent_rows(Z, y, G, losses, lo, hi, chunk):
    """Rows lo..hi of the fused softmax cross-entropy, ``chunk`` rows at a time so each chunk's
    passes (max, subtract, exp, sum) run on cached data."""
    for a in range(lo, hi, chunk):
        b = min(a + chunk, hi)
        g = G[a:b]
        np.subtract(Z[a:b], Z[a:b].max(axis=1, keepdims=True), out=g)
        picked = g[np.arange(b - a), y[a:b]]
        np.exp(g, out=g)
        s = g.sum(axis=1, keepdims=True)
        losses[a:b] = np.log(s[:, 0]) - picked
        np.divide(g, s, out=g)


def softmax_xent(Z, y, *, ignore_index=None, reduction="mean"):
    """Softmax cross-entropy on integer labels, loss and gradient in one pass over row chunks
    (threads over row blocks).  Same semantics as the portable ``SoftmaxCrossEntropy`` without
    class weights or smoothing: returns (loss, dZ), loss 0-d (or (N,) for ``reduction="none"``),
    dZ = (softmax(Z) - onehot(y)) * scale, with ignored rows contributing nothing."""
    N, C = Z.shape
    y = y.astype(np.int64, copy=False)
    valid = None if ignore_index is None else y != ignore_index
    y_safe = y if valid is None else np.where(valid, y, 0)
    G = np.empty_like(Z)
    losses = np.empty(N, dtype=Z.dtype)
    chunk = max(1, (1 << 16) // max(C, 1))               # about 256 KiB of float32 per chunk
    workers = _threads() if N * C >= (1 << 18) else 1
    if workers == 1:
        _xent_rows(Z, y_safe, G, losses, 0, N, chunk)
    else:
        step = -(-N // workers)
        jobs = [_pool().submit(_xent_rows, Z, y_safe, G, losses, lo, min(lo + step, N), chunk)
                for lo in range(0, N, step)]
        for job in jobs:
            job.result()
    G[np.arange(N), y_safe] -= 1
    if valid is not None:
        losses *= valid
        G *= valid[:, None]
    if reduction == "none":
        return losses, G
    total = losses.sum(dtype=Z.dtype)
    if reduction == "sum":
        return np.asarray(total), G
    den = N if valid is None else int(valid.sum())
    scale = Z.dtype.type(1.0 / den) if den else Z.dtype.type(0.0)
    G *= scale
    return np.asarray(total * scale), G


class _CBLAS:
    """GEMM with ``beta`` and an in-place AXPY from the OpenBLAS that NumPy itself links (the
    ``scipy-openblas`` build bundled in NumPy's wheels), called through ctypes.  Using NumPy's own
    library matters: a second BLAS (SciPy's) has its own thread pool, whose spinning threads
    fight NumPy's for the cores and made a training step several times slower."""

    ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

    def __init__(self, lib, prefix: str, suffix: str, int64: bool):
        import ctypes as C

        i, p = (C.c_int64 if int64 else C.c_int), C.c_void_p
        self.gemm, self.axpy = {}, {}
        for dt, code, real in ((np.float32, "s", C.c_float), (np.float64, "d", C.c_double)):
            gemm = getattr(lib, f"{prefix}cblas_{code}gemm{suffix}")
            gemm.argtypes = [C.c_int, C.c_int, C.c_int, i, i, i, real, p, i, p, i, real, p, i]
            gemm.restype = None
            axpy = getattr(lib, f"{prefix}cblas_{code}axpy{suffix}")
            axpy.argtypes = [i, real, p, i, p, i]
            axpy.restype = None
            self.gemm[np.dtype(dt)], self.axpy[np.dtype(dt)] = gemm, axpy


@functools.lru_cache(maxsize=None)
def _cblas():
    """The :class:`_CBLAS` of NumPy's bundled OpenBLAS, or None where NumPy was built against
    another BLAS (conda's MKL, a distribution's OpenBLAS, Accelerate) or
    ``XPDNN_NO_BLAS_FASTPATH`` is set: callers then use plain NumPy."""
    if os.environ.get("XPDNN_NO_BLAS_FASTPATH"):
        return None
    try:
        import ctypes
        import glob

        cfg = np.__config__.CONFIG["Build Dependencies"]["blas"]
        if cfg.get("name") != "scipy-openblas":
            return None
        int64 = "USE64BITINT" in cfg.get("openblas configuration", "")
        here = os.path.dirname(np.__file__)
        found = [f for d in (os.path.join(here, os.pardir, "numpy.libs"), os.path.join(here, ".dylibs"))
                 for f in sorted(glob.glob(os.path.join(d, "*scipy_openblas*")))]
        if len(found) != 1:
            return None
        return _CBLAS(ctypes.CDLL(found[0]), "scipy_", "64_" if int64 else "", int64)
    except Exception:            # any surprise in an unfamiliar build: use plain NumPy
        return None


def _blas_ok(*arrays) -> bool:
    first = arrays[0]
    return (first.dtype in (np.float32, np.float64)
            and all(a.dtype == first.dtype and a.flags.c_contiguous and a.size for a in arrays))


def gemm_tn_acc_(dY, X, C, beta):
    """``C = dY.T @ X + beta * C`` in place (``beta = 0`` overwrites C, whatever it holds).

    dY: (N, m), X: (N, n), C: (m, n).  With NumPy's bundled OpenBLAS this is one GEMM call that
    reads and writes C once; otherwise NumPy's matmul plus an in-place scale and add."""
    blas = _cblas()
    N, m = dY.shape
    n = X.shape[1]
    if X.shape[0] != N or C.shape != (m, n):
        raise ValueError(f"gemm_tn_acc_: shapes {dY.shape}, {X.shape} -> {C.shape} do not match")
    if blas is not None and _blas_ok(C, dY, X):
        blas.gemm[C.dtype](_CBLAS.ROW_MAJOR, _CBLAS.TRANS, _CBLAS.NO_TRANS, m, n, N,
                           1.0, dY.ctypes.data, m, X.ctypes.data, n, float(beta), C.ctypes.data, n)
        return C
    if beta == 0:
        return np.matmul(dY.T, X, out=C)
    C *= C.dtype.type(beta)
    C += dY.T @ X
    return C


def axpy_flat_(a, X, Y, scratch=None):
    """``Y += a * X`` in place, X and Y of one shape: one BLAS AXPY pass with NumPy's bundled
    OpenBLAS, else NumPy through ``scratch`` (or a temporary)."""
    blas = _cblas()
    if X.shape != Y.shape:
        raise ValueError(f"axpy_flat_: shapes {X.shape} and {Y.shape} differ")
    if blas is not None and _blas_ok(Y, X):
        blas.axpy[Y.dtype](Y.size, float(a), X.ctypes.data, 1, Y.ctypes.data, 1)
        return Y
    if scratch is None:
        Y += Y.dtype.type(a) * X
        return Y
    return axpy_(Y.dtype.type(a), X, Y, scratch)


def momentum_step_(W, g, v, lr, mu, scratch):
    """``v = mu * v + g; W -= lr * v`` in place with no allocation: the portable update's
    operations, the last one a BLAS AXPY (which may fuse the multiply-add, so W can differ from
    the portable result in the last bit).  (Measured: splitting the passes into cache-sized
    blocks or across threads is slower here; the latter fights the BLAS threads.)"""
    v *= W.dtype.type(mu)
    v += g
    return axpy_flat_(-lr, v, W, scratch)


def adam_step_(W, g, m, v, vmax, *, lr, b1, b2, eps, t, scratch, scratch2):
    """One Adam update in place, PyTorch's formula, with no allocation: ``m = b1 m + (1 - b1) g``,
    ``v = b2 v + (1 - b2) g**2`` (``vmax = max(vmax, v)`` with AMSGrad, else ``vmax`` is None),
    ``W -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)``.  ``g`` is only read;
    ``scratch`` and ``scratch2`` are work buffers shaped like W.  Nine memory passes instead of
    the portable code's thirteen, and none of its twelve temporaries."""
    m *= W.dtype.type(b1)
    axpy_flat_(1.0 - b1, g, m, scratch)
    np.multiply(g, g, out=scratch2)
    v *= W.dtype.type(b2)
    axpy_flat_(1.0 - b2, scratch2, v, scratch)
    if vmax is not None:
        np.maximum(vmax, v, out=vmax)
        v = vmax
    denom = np.sqrt(v, out=scratch2)
    denom /= W.dtype.type(math.sqrt(1.0 - b2 ** t))
    denom += W.dtype.type(eps)
    np.divide(m, denom, out=denom)
    return axpy_flat_(-lr / (1.0 - b1 ** t), denom, W, scratch)
