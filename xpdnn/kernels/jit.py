"""Compiled NumPy fast paths (numba), the optional ``fast`` extra (``pip install "xpdnn[fast]"``).

:mod:`xpdnn.kernels` imports this module on the first call that can use it, never at
``import xpdnn``, and only when numba is installed and ``XPDNN_NO_JIT`` is not ``1``.  Each
kernel is compiled on its first call for the argument types it gets and cached on disk
(``@njit(cache=True)``; numba's documentation, "Compiling Python code with @jit" and "Notes on
caching"), so a later process loads it instead of compiling again.  Every kernel is serial:
numba's ``parallel=True`` target starts a thread pool of its own, which competes with OpenBLAS's
for the cores (a training step measured 30x slower that way with the default threading layer).
Kernels release the GIL (``nogil=True``).

The kernels take C-contiguous arrays of float32 or float64 (1-D flat views, or 2-D (N, M)); the
wrappers below check that and answer False or None (not handled) otherwise, and the dispatch in
:mod:`xpdnn.kernels` then runs the NumPy path.  What each computes is the portable code's value:

* :func:`bias_act_`: ``Y + b`` then ReLU (``Y`` where ``Y > 0``, ``0`` where ``Y <= 0``, NaN
  kept), in place, one pass;
* :func:`relu_backward_bias`: ``dX = where(Y > 0, dY, Y)`` (relu's backward from its output) and
  the bias gradient ``db = dX.sum(axis=0)`` in one pass;
* :func:`momentum_step_`: ``v = mu v + g; W -= lr v`` in one pass;
* :func:`softmax_xent`: softmax cross-entropy on integer labels, the loss and the gradient
  ``(softmax(Z) - onehot(y)) * scale`` in one pass over each row;
* :func:`dropout_forward` / :func:`apply_keep`: inverted dropout whose keep mask is
  :func:`xpdnn.random.keep_mask`'s bit for bit, drawn inside the loop that applies it.

Dropout's mask comes from Philox4x64-10 (Salmon, Moraes, Dror and Shaw, "Parallel Random
Numbers: As Easy as 1, 2, 3", SC 2011; the constants of the Random123 library and of
``numpy.random.Philox``), written with its ten rounds unrolled and the 64 x 64 -> 128-bit
multiply split into 32-bit halves, so that LLVM vectorizes the loop over blocks (AVX2's
``vpmuludq``); the mapping of (seed, counter, word) to elements is the one in
:mod:`xpdnn.random`: element ``i`` takes word ``w = offset + i``, the 32-bit word ``w % 8`` of the
block with counter ``(w // 8, counter, 0, 0)`` and key ``(seed, 0)``.  The forward pass also
writes the keep mask (one byte per element, as the NumPy path keeps it) from the same loop, and
backward applies it.  Measured for a 128 x 512 float32 array on a 2-core AVX2 machine: forward
(Philox + apply + mask) about 110 us against 210 us for NumPy's generator, compare and multiply;
backward 8 us from the byte mask, against about 100 us to draw the words again (the CUDA kernel
redraws them, where arithmetic is cheap and memory is not) and 32 us from a packed bit mask.
"""

from __future__ import annotations

import math
import sys

import numba
import numpy as np
from numba import njit, uint64

_OPTS = dict(cache=True, nogil=True)

M0 = np.uint64(0xD2E7470EE14C6C93)
M1 = np.uint64(0xCA5A826395121157)
W0 = np.uint64(0x9E3779B97F4A7C15)
W1 = np.uint64(0xBB67AE8584CAA73B)
LO32 = np.uint64(0xFFFFFFFF)
S32 = np.uint64(32)

VERSION = numba.__version__


# -- Philox4x64-10 --------------------------------------------------------------------------------
@njit(inline="always")
def _mulhilo(a, b):
    """``(hi, lo)`` of the 128-bit product ``a * b`` of two uint64, from four 32 x 32 -> 64-bit
    products (what a vector unit without a 64-bit high multiply can do)."""
    al = a & LO32
    ah = a >> S32
    bl = b & LO32
    bh = b >> S32
    t = al * bl
    m1 = ah * bl + (t >> S32)
    m2 = al * bh + (m1 & LO32)
    return ah * bh + (m1 >> S32) + (m2 >> S32), (m2 << S32) | (t & LO32)


@njit(inline="always")
def _round(c0, c1, c2, c3, k0, k1):
    h0, l0 = _mulhilo(M0, c0)
    h1, l1 = _mulhilo(M1, c2)
    return h1 ^ c1 ^ k0, l1, h0 ^ c3 ^ k1, l0


@njit(inline="always")
def _philox(c0, c1, k0):
    """Philox4x64-10 of the counter ``(c0, c1, 0, 0)`` under the key ``(k0, 0)``: four uint64."""
    c2 = uint64(0)
    c3 = uint64(0)
    k1 = uint64(0)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 += W0
    k1 += W1
    return _round(c0, c1, c2, c3, k0, k1)


@njit(**_OPTS)
def _philox_words(seed, counter, first_block, out):
    """``out`` (uint64, 4 per block): the words of blocks ``first_block, first_block + 1, ...``
    of call ``counter`` under ``seed`` (the twin of :func:`xpdnn.random.raw_words`)."""
    k0 = uint64(seed)
    c1 = uint64(counter)
    c0 = uint64(first_block)
    for b in range(out.shape[0] // 4):
        w0, w1, w2, w3 = _philox(c0 + uint64(b), c1, k0)
        out[4 * b] = w0
        out[4 * b + 1] = w1
        out[4 * b + 2] = w2
        out[4 * b + 3] = w3


@njit(cache=True)
def _philox_block(c0, c1, k0):
    """:func:`_philox` as a call (the loops' edges use it: inlining it there too would triple the
    code LLVM compiles)."""
    return _philox(c0, c1, k0)


@njit(inline="always")
def _word(w0, w1, w2, w3, j):
    """32-bit word ``j`` (0..7) of a block, as uint64."""
    w = w0 if j < 2 else (w1 if j < 4 else (w2 if j < 6 else w3))
    return (w >> S32) if j & 1 else (w & LO32)


@njit(inline="always")
def _edge_block(X, Y, K8, k, first, c1, k0, head, t, one, zero, scale):
    """Block ``k`` of a dropout call element by element (the first and last blocks, which the
    elements may cover only in part)."""
    n = X.shape[0]
    w0, w1, w2, w3 = _philox_block(first + uint64(k), c1, k0)
    for j in range(8):
        e = 8 * k + j - head
        if 0 <= e < n:
            q = _word(w0, w1, w2, w3, j) >= t
            Y[e] = X[e] * (one if q else zero) * scale
            K8[8 * k + j] = 1 if q else 0


@njit(**_OPTS)
def _dropout_forward(X, Y, K8, K64, seed, counter, first, head, t, one, zero, scale):
    """``Y = X * keep * scale`` over flat X; element ``e`` takes word ``head + e`` counted from
    block ``first``, kept iff the word is ``>= t`` (a uint64 threshold).  The keep mask goes to
    byte ``head + e`` of ``K8`` (0 or 1), whose uint64 view ``K64`` takes a whole block's eight
    bytes in one store (little-endian)."""
    n = X.shape[0]
    k0 = uint64(seed)
    c1 = uint64(counter)
    nb = (head + n + 7) // 8
    lo = 1 if head else 0                # the first block whose eight elements all exist
    hi = (head + n) // 8                 # one past the last such block
    if hi <= lo:
        for k in range(nb):
            _edge_block(X, Y, K8, k, first, c1, k0, head, t, one, zero, scale)
        return
    if lo:
        _edge_block(X, Y, K8, 0, first, c1, k0, head, t, one, zero, scale)
    base = 8 * lo - head                 # views from the first full block: the index below is
    Xv = X[base:]                        # 8 k exactly, which LLVM vectorizes (an index that may
    Yv = Y[base:]                        # be negative is wrapped, which it does not)
    for k in range(hi - lo):
        w0, w1, w2, w3 = _philox(first + uint64(lo + k), c1, k0)
        e = 8 * k
        q0 = (w0 & LO32) >= t
        q1 = (w0 >> S32) >= t
        q2 = (w1 & LO32) >= t
        q3 = (w1 >> S32) >= t
        q4 = (w2 & LO32) >= t
        q5 = (w2 >> S32) >= t
        q6 = (w3 & LO32) >= t
        q7 = (w3 >> S32) >= t
        Yv[e] = Xv[e] * (one if q0 else zero) * scale
        Yv[e + 1] = Xv[e + 1] * (one if q1 else zero) * scale
        Yv[e + 2] = Xv[e + 2] * (one if q2 else zero) * scale
        Yv[e + 3] = Xv[e + 3] * (one if q3 else zero) * scale
        Yv[e + 4] = Xv[e + 4] * (one if q4 else zero) * scale
        Yv[e + 5] = Xv[e + 5] * (one if q5 else zero) * scale
        Yv[e + 6] = Xv[e + 6] * (one if q6 else zero) * scale
        Yv[e + 7] = Xv[e + 7] * (one if q7 else zero) * scale
        K64[lo + k] = (uint64(q0) | (uint64(q1) << uint64(8)) | (uint64(q2) << uint64(16))
                       | (uint64(q3) << uint64(24)) | (uint64(q4) << uint64(32)) | (uint64(q5) << uint64(40))
                       | (uint64(q6) << uint64(48)) | (uint64(q7) << uint64(56)))
    if hi < nb:
        _edge_block(X, Y, K8, nb - 1, first, c1, k0, head, t, one, zero, scale)


@njit(**_OPTS)
def _apply_keep(dY, dX, keep, one, zero, scale):
    """``dX = dY * keep * scale`` (keep: bool), as :func:`xpdnn.kernels.cpu.apply_mask`."""
    for e in range(dY.shape[0]):
        dX[e] = dY[e] * (one if keep[e] else zero) * scale


# -- elementwise layers, the step's update ---------------------------------------------------------
@njit(**_OPTS)
def _bias_relu(Y, b, zero):
    N, M = Y.shape
    for i in range(N):
        for j in range(M):
            v = Y[i, j] + b[j]
            Y[i, j] = zero if v <= zero else v


@njit(**_OPTS)
def _bias(Y, b):
    N, M = Y.shape
    for i in range(N):
        for j in range(M):
            Y[i, j] += b[j]


@njit(**_OPTS)
def _relu(Y, zero):
    for i in range(Y.shape[0]):
        v = Y[i]
        Y[i] = zero if v <= zero else v


@njit(**_OPTS)
def _relu_backward_bias(dY, Y, dX, db, zero):
    N, M = dY.shape
    for j in range(M):
        db[j] = zero
    for i in range(N):
        for j in range(M):
            y = Y[i, j]
            g = dY[i, j] if y > zero else y
            dX[i, j] = g
            db[j] += g


# in-place twins: the same array passed as dY and dX defeats LLVM's runtime alias check, and the
# loop would run unvectorized
@njit(**_OPTS)
def _relu_backward_bias_inplace(dY, Y, db, zero):
    N, M = dY.shape
    for j in range(M):
        db[j] = zero
    for i in range(N):
        for j in range(M):
            y = Y[i, j]
            g = dY[i, j] if y > zero else y
            dY[i, j] = g
            db[j] += g


@njit(**_OPTS)
def _relu_backward(dY, Y, dX, zero):
    for i in range(dY.shape[0]):
        y = Y[i]
        dX[i] = dY[i] if y > zero else y


@njit(**_OPTS)
def _relu_backward_inplace(dY, Y, zero):
    for i in range(dY.shape[0]):
        y = Y[i]
        dY[i] = dY[i] if y > zero else y


@njit(**_OPTS)
def _column_sums(dY, db, zero):
    N, M = dY.shape
    for j in range(M):
        db[j] = zero
    for i in range(N):
        for j in range(M):
            db[j] += dY[i, j]


@njit(**_OPTS)
def _momentum(W, g, v, lr, mu):
    for i in range(W.shape[0]):
        vi = v[i] * mu + g[i]
        v[i] = vi
        W[i] = W[i] - lr * vi


# -- softmax cross-entropy ------------------------------------------------------------------------
@njit(**_OPTS)
def _xent_rows(Z, y, ignore, has_ignore, scale, G, losses, lo, hi):
    """Rows lo..hi: ``losses[i] = log(sum(exp(Z_i - max))) - (Z_iy - max)`` (0 for an ignored
    row) and ``G_i = (softmax(Z_i) - onehot(y_i)) * scale`` (0 for an ignored row); each row's
    sum of exponentials is accumulated in float64."""
    C = Z.shape[1]
    for i in range(lo, hi):
        label = y[i]
        if has_ignore and label == ignore:
            losses[i] = 0.0
            for c in range(C):
                G[i, c] = 0.0
            continue
        if label < 0 or label >= C:
            raise IndexError("softmax cross-entropy: a label is outside [0, n_classes)")
        m = Z[i, 0]
        for c in range(1, C):
            if Z[i, c] > m:
                m = Z[i, c]
        s = 0.0
        for c in range(C):
            e = math.exp(Z[i, c] - m)
            G[i, c] = e
            s += e
        picked = Z[i, label] - m
        losses[i] = math.log(s) - picked
        f = scale / s
        for c in range(C):
            G[i, c] = G[i, c] * f
        G[i, label] -= scale


@njit(**_OPTS)
def _count_valid(y, ignore):
    n = 0
    for i in range(y.shape[0]):
        if y[i] != ignore:
            n += 1
    return n


# -- wrappers: what xpdnn.kernels calls ------------------------------------------------------------
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def takes(*arrays) -> bool:
    """Whether the kernels take these NumPy arrays: one float32 or float64 dtype, C-contiguous."""
    dt = arrays[0].dtype
    return dt in _FLOATS and all(a.dtype == dt and a.flags.c_contiguous for a in arrays)


def relu_(Y) -> bool:
    """ReLU in place on a C-contiguous float array; False (nothing done) otherwise."""
    if not (takes(Y) and Y.flags.writeable):
        return False
    _relu(Y.reshape(-1), Y.dtype.type(0))
    return True


def bias_act_(Y, b, relu: bool) -> bool:
    """``Y += b`` (b: (M,) or None) then ReLU if ``relu``, in place on Y (N, M); False when the
    arrays do not suit the kernels."""
    if b is None:
        return relu_(Y) if relu else True
    if Y.ndim != 2 or b.shape != (Y.shape[1],) or not (takes(Y, b) and Y.flags.writeable):
        return False
    if relu:
        _bias_relu(Y, b, Y.dtype.type(0))
    else:
        _bias(Y, b)
    return True


def relu_backward_bias(dY, Y, *, bias: bool, inplace: bool):
    """``(dX, db)``: ``dX = where(Y > 0, dY, Y)`` (relu's backward from its output; ``dY``
    itself when Y is None) and, with ``bias``, ``db = dX.sum(axis=0)`` for 2-D (N, M) arrays
    (else None); ``inplace`` writes dX into dY.  None when the arrays do not suit the kernels."""
    if Y is None:
        if not (bias and dY.ndim == 2 and takes(dY)):
            return None
        db = np.empty(dY.shape[1], dtype=dY.dtype)
        _column_sums(dY, db, dY.dtype.type(0))
        return dY, db
    if Y.shape != dY.shape or (bias and dY.ndim != 2) or not takes(dY, Y):
        return None
    zero = dY.dtype.type(0)
    inplace = inplace and dY.flags.writeable
    db = np.empty(dY.shape[1], dtype=dY.dtype) if bias else None
    if inplace:
        if bias:
            _relu_backward_bias_inplace(dY, Y, db, zero)
        else:
            _relu_backward_inplace(dY.reshape(-1), Y.reshape(-1), zero)
        return dY, db
    dX = np.empty_like(dY)
    if bias:
        _relu_backward_bias(dY, Y, dX, db, zero)
    else:
        _relu_backward(dY.reshape(-1), Y.reshape(-1), dX.reshape(-1), zero)
    return dX, db


def momentum_step_(W, g, v, lr, mu) -> bool:
    """``v = mu v + g; W -= lr v`` in place, one pass; False when the arrays do not suit."""
    if not (W.shape == g.shape == v.shape and takes(W, g, v) and W.flags.writeable and v.flags.writeable):
        return False
    t = W.dtype.type
    _momentum(W.reshape(-1), g.reshape(-1), v.reshape(-1), t(lr), t(mu))
    return True


XENT_MAX_ELEMENTS = 1 << 15
"""Up to this many logits the compiled softmax cross-entropy runs; above it NumPy's one-pass path
is faster (its ``exp`` is vectorized, the compiled loop calls libm's per element), below it
NumPy's fixed cost of a dozen ufunc calls dominates (measured: 128 x 10 float32, 13 us against
40 us; 128 x 512, 285 us against 182 us)."""


def softmax_xent(Z, y, *, ignore_index, reduction):
    """Softmax cross-entropy of logits Z (N, C) on integer labels y (N,), each in ``[0, C)`` or
    ``ignore_index`` (IndexError otherwise): ``(loss, dZ)`` as
    :func:`xpdnn.kernels.cpu.softmax_xent` returns them, or None when the arrays do not suit."""
    if Z.ndim != 2 or Z.size > XENT_MAX_ELEMENTS or Z.shape[1] == 0 or not takes(Z):
        return None
    N = Z.shape[0]
    y = np.ascontiguousarray(y, dtype=np.int64)
    has_ignore = ignore_index is not None
    ignore = int(ignore_index) if has_ignore else 0
    den = _count_valid(y, ignore) if has_ignore else N
    scale = (1.0 / den if den else 0.0) if reduction == "mean" else 1.0
    G = np.empty_like(Z)
    losses = np.empty(N, dtype=Z.dtype)
    _xent_rows(Z, y, ignore, has_ignore, scale, G, losses, 0, N)
    if reduction == "none":
        return losses, G
    total = losses.sum(dtype=Z.dtype)
    return np.asarray(total if reduction == "sum" else total * Z.dtype.type(scale)), G


def _split_offset(offset: int, n: int):
    offset = int(offset)
    if not 0 <= offset < 1 << 67:
        raise ValueError(f"offset must be in [0, 2**67), got {offset}")
    first, head = divmod(offset, 8)
    if first + (head + n + 7) // 8 > 1 << 64:
        raise ValueError(f"words offset + n = {offset + n} run past the 2**64 blocks of one counter")
    return first, head


def dropout_forward(X, rate, seed, counter, offset=0):
    """``(Y, keep)``: ``Y = X * keep / (1 - rate)`` where ``keep`` (a bool array of X's shape,
    also returned) is :func:`xpdnn.random.keep_mask`'s mask (``offset`` included) bit for bit,
    drawn in the same pass.  None when X's dtype does not suit (X may be non-contiguous: it is
    read through a contiguous copy)."""
    from .. import random as xrandom

    if X.dtype not in _FLOATS or sys.byteorder != "little":
        return None
    X = np.ascontiguousarray(X)
    n = X.size
    first, head = _split_offset(offset, n)
    Y = np.empty_like(X)
    K64 = np.empty((head + n + 7) // 8, dtype=np.uint64)      # block k's mask bytes in word k
    K8 = K64.view(np.uint8)
    if n:
        t = X.dtype.type
        seed, counter = xrandom._check_seed(seed), xrandom._check_counter(counter)
        _dropout_forward(X.reshape(-1), Y.reshape(-1), K8, K64, np.uint64(seed), np.uint64(counter),
                         np.uint64(first), head, np.uint64(xrandom.threshold(rate)), t(1), t(0),
                         t(1.0 / (1.0 - float(rate))))
    return Y, K8[head:head + n].view(np.bool_).reshape(X.shape)


def apply_keep(dY, keep, rate):
    """``dY * keep / (1 - rate)`` (keep: a bool array of dY's shape), one pass; a new
    C-contiguous array.  None when dY's dtype does not suit."""
    if dY.dtype not in _FLOATS or keep.shape != dY.shape:
        return None
    dY = np.ascontiguousarray(dY)
    keep = np.ascontiguousarray(keep)
    dX = np.empty_like(dY)
    if dY.size:
        t = dY.dtype.type
        _apply_keep(dY.reshape(-1), dX.reshape(-1), keep.reshape(-1), t(1), t(0), t(1.0 / (1.0 - float(rate))))
    return dX


def philox_words(seed: int, counter: int, n_blocks: int, first_block: int = 0) -> np.ndarray:
    """``4 * n_blocks`` uint64 words of blocks ``first_block ...`` of call ``counter`` under
    ``seed``: the compiled twin of :func:`xpdnn.random.raw_words` (the tests hold them equal)."""
    out = np.empty(4 * int(n_blocks), dtype=np.uint64)
    _philox_words(np.uint64(int(seed)), np.uint64(int(counter)), np.uint64(int(first_block)), out)
    return out
