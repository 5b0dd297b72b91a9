"""NumPy fast paths: the same math as the portable code, written with ``out=`` and in-place
ufuncs to avoid temporaries.  Each function takes the portable result as its reference and is
chosen only when every argument is a NumPy array."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def handles(*arrays) -> bool:
    return all(type(a) is np.ndarray for a in arrays)


def matmul_into(A, B, out):
    """``out[...] = A @ B`` without a temporary."""
    return np.matmul(A, B, out=out)


def relu_(X):
    """ReLU in place."""
    return np.maximum(X, 0, out=X)


def relu_backward_(dY, Y):
    """``dY * (Y > 0)`` written into ``dY``."""
    np.multiply(dY, Y > 0, out=dY)
    return dY


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


def momentum_step_(W, g, v, lr, mu, scratch):
    """``v = mu * v + g; W -= lr * v`` in place with no allocation: the same operations, in the
    same order per element, as the portable update.  (Measured: splitting the passes into
    cache-sized blocks or across threads is slower here; the latter fights the BLAS threads.)"""
    v *= W.dtype.type(mu)
    v += g
    np.multiply(v, W.dtype.type(lr), out=scratch)
    W -= scratch
    return W
