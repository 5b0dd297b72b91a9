"""Fast paths, chosen in one place.

Generic code (layers, losses, optimizers) calls one function per operation; the function looks
at the arrays and picks the implementation: a CUDA kernel for CuPy arrays (CuPy RawKernel,
compiled on first use, never at import), the NumPy fast path of :mod:`xpdnn.kernels.cpu`
(in place, no temporaries) for NumPy arrays, or the portable Array-API code, which is the
reference every fast path is tested against.  No other module branches on the array library to
pick a fast path (as thinc's ``Ops`` objects and scikit-learn's ``utils/_array_api.py`` keep
those choices together).

(The names differ from the submodules ``dropout`` and ``softmax_xent``, which hold the CUDA code.)
Functions ending in ``_`` work in place.  Those with a portable alternative return whether they
handled the arrays (False: the caller runs its portable code, which lives next to the math it
documents); ``gemm_tn_acc_`` and ``blas_axpy_`` serve only the fused SGD step, after
:func:`fused_gemm_available` said yes.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from . import check as check_kernels
from . import cpu


def relu_(Y):
    """``relu(Y)``, in place on NumPy (the caller owns ``Y``)."""
    if cpu.handles(Y):
        return cpu.relu_(Y)
    from ..layers.activations import relu
    return relu(Y)


def relu_backward(dY, Y, *, inplace: bool):
    """``relu_backward(dY, Y)``; ``inplace`` lets NumPy write it into ``dY`` (which the caller
    owns: nobody else holds it)."""
    if inplace and cpu.handles(dY, Y):
        return cpu.relu_backward_(dY, Y)
    from ..layers.activations import relu_backward as portable
    return portable(dY, Y)


def matmul_tn(dY, X, out=None):
    """``dY.T @ X``; on NumPy written into ``out`` when given (its shape and dtype)."""
    if out is not None and cpu.handles(dY, X, out) and out.shape == (dY.shape[1], X.shape[1]) \
            and out.dtype == dY.dtype == X.dtype:
        return cpu.matmul_into(dY.T, X, out=out)
    return dY.T @ X


def fused_gemm_available(*arrays) -> bool:
    """Whether the momentum GEMM of the fused SGD step (``C = dY.T @ X + beta C`` in one BLAS
    call) can run on these arrays: NumPy only."""
    return cpu.handles(*arrays)


def gemm_tn_acc_(dY, X, C, beta) -> None:
    """``C = dY.T @ X + beta * C`` in place (NumPy, see :func:`fused_gemm_available`)."""
    cpu.gemm_tn_acc_(dY, X, C, beta)


def axpy_(a, X, Y, scratch) -> bool:
    """``Y += a * X`` in place (NumPy, through the reusable ``scratch``); False when not handled
    (the caller does it portably)."""
    if cpu.handles(X, Y):
        cpu.axpy_(Y.dtype.type(a), X, Y, scratch)
        return True
    return False


def blas_axpy_(a, X, Y, scratch) -> None:
    """``Y += a * X`` in place with one BLAS AXPY (NumPy, the fused SGD step)."""
    cpu.axpy_flat_(a, X, Y, scratch)


def momentum_step_(W, g, v, lr, mu, scratch) -> bool:
    """``v = mu v + g; W -= lr v`` in place on NumPy; False elsewhere."""
    if cpu.handles(W, g, v):
        cpu.momentum_step_(W, g, v, lr, mu, scratch)
        return True
    return False


def adam_step_(W, g, m, v, vmax, **hyper) -> bool:
    """The whole Adam update in place on NumPy (see :func:`xpdnn.kernels.cpu.adam_step_`); False
    elsewhere."""
    if cpu.handles(W, g, m, v, *(() if vmax is None else (vmax,))):
        cpu.adam_step_(W, g, m, v, vmax, **hyper)
        return True
    return False


def _xent_kernel(Z):
    """The fused softmax cross-entropy (module :mod:`xpdnn.kernels.softmax_xent`) when it can
    take the logits Z (a 2-D CuPy array of a supported dtype), else None.  Its first use per
    (device, dtype, variant) is checked against the portable path (:mod:`xpdnn.kernels.check`)."""
    if not B.is_cupy(Z):
        return None
    from . import softmax_xent as kernel
    return kernel if kernel.fused_available(Z) else None


def _dropout_kernel(X):
    """The fused dropout (module :mod:`xpdnn.kernels.dropout`) for a CuPy array X, else None;
    checked on first use like :func:`_xent_kernel`."""
    if not B.is_cupy(X):
        return None
    from . import dropout as kernel
    return kernel


def softmax_xent_loss(Z, y, *, weight, weight_like, ignore_index, label_smoothing, reduction, fused, inplace,
                 check, validate, portable):
    """Softmax cross-entropy of logits Z (N, C) against integer labels y (N,): the fused CUDA
    kernel on CuPy (``fused``), NumPy's threaded one-pass (no weights, no smoothing), else
    ``portable(y)``.  ``weight``: the host (C,) class weights or None, ``weight_like(dtype)``
    the same next to Z.  ``check``: the labels still need their range check, which the CUDA
    kernel makes in its prepass and the other paths by ``validate(y)`` (returning int64 labels)."""
    xp = B.namespace(Z, y)
    if fused and xp.isdtype(y.dtype, "integral"):
        kernel = _xent_kernel(Z)
        if kernel is not None and check_kernels.xent_ok(kernel, Z, inplace):
            acc = xp.float64 if Z.dtype == xp.float64 else xp.float32
            w = wsum = None
            if weight is not None:          # the sum from the host copy: no device read-back
                w = weight_like(acc)
                wsum = float(np.sum(weight.astype(np.float64 if acc == xp.float64 else np.float32),
                                    dtype=np.float64))
            return kernel.softmax_xent(Z, y, weight=w, weight_sum=wsum, ignore_index=ignore_index,
                                       label_smoothing=label_smoothing, reduction=reduction, inplace=inplace,
                                       check=check)
    if check:
        y = validate(y)
    if fused and cpu.handles(Z, y) and weight is None and label_smoothing == 0 and y.dtype.kind in "iu":
        return cpu.softmax_xent(Z, y, ignore_index=ignore_index, reduction=reduction)
    return portable(y)


def apply_dropout(X, rate, seed, counter, *, fused, portable_mask, offset=0):
    """Inverted dropout of X with the Philox keep mask of ``(seed, counter)``, element ``i``
    addressed ``offset + i`` (:func:`xpdnn.random.keep_mask`): ``(Y, backprop)``.
    CuPy (``fused``): one CUDA kernel that regenerates the mask in backward (none stored);
    NumPy: a bool mask applied with in-place ufuncs; elsewhere ``portable_mask()``, the scaled
    mask as an array next to X."""
    shape = tuple(X.shape)

    def check(dY):
        if tuple(dY.shape) != shape:
            raise ValueError(f"Dropout backprop got dY of shape {tuple(dY.shape)}, expected {shape}")

    kernel = _dropout_kernel(X) if fused else None
    if kernel is not None and check_kernels.dropout_ok(kernel, X):

        def backprop(dY):
            check(dY)
            return kernel.dropout(dY, rate, seed, counter, offset)

        return kernel.dropout(X, rate, seed, counter, offset), backprop
    if cpu.handles(X):
        from .. import random as xrandom
        keep = xrandom.keep_mask(seed, counter, shape, rate, offset=offset)
        scale = 1.0 / (1.0 - rate)

        def backprop(dY):
            check(dY)
            return cpu.apply_mask(dY, keep, scale)

        return cpu.apply_mask(X, keep, scale), backprop
    M = portable_mask()

    def backprop(dY):
        check(dY)
        return dY * M

    return X * M, backprop
