"""Fast paths, chosen in one place.

Generic code (layers, losses, optimizers) calls one function per operation; the function looks
at the arrays and picks the implementation: a CUDA kernel for CuPy arrays (CuPy RawKernel,
compiled on first use, never at import), the NumPy fast path of :mod:`xpdnn.kernels.cpu`
(in place, no temporaries) for NumPy arrays, or the portable Array-API code, which is the
reference every fast path is tested against.  With numba installed (the ``fast`` extra) the
NumPy branch runs the compiled kernels of :mod:`xpdnn.kernels.jit` first, where they take the
arrays; ``XPDNN_NO_JIT=1`` turns them off and :func:`jit_status` says which is in use.  No other
module branches on the array library to pick a fast path (as thinc's ``Ops`` objects and
scikit-learn's ``utils/_array_api.py`` keep those choices together).

(The names differ from the submodules ``dropout`` and ``softmax_xent``, which hold the CUDA code.)
Functions ending in ``_`` work in place.  Those with a portable alternative return whether they
handled the arrays (False: the caller runs its portable code, which lives next to the math it
documents); ``gemm_tn_acc_`` and ``blas_axpy_`` serve only the fused SGD step, after
:func:`fused_gemm_available` said yes.
"""

from __future__ import annotations

import os

import numpy as np

from .. import _backend as B
from . import check as check_kernels
from . import cpu

_jit_module = None          # the imported xpdnn.kernels.jit, or the reason it could not be


def _jit():
    """:mod:`xpdnn.kernels.jit` (imported on the first call, which imports numba) when numba is
    installed and ``XPDNN_NO_JIT`` is not set to 1; else None."""
    global _jit_module
    if os.environ.get("XPDNN_NO_JIT", "").strip() == "1":
        return None
    if _jit_module is None:
        try:
            from . import jit as module
        except ImportError as exc:           # numba missing, or too old/new for this NumPy
            module = f"{type(exc).__name__}: {exc}"
        _jit_module = module
    return None if isinstance(_jit_module, str) else _jit_module


def jit_status() -> str:
    """One line for ``xpdnn info``: whether the compiled NumPy kernels are on, and why not."""
    if os.environ.get("XPDNN_NO_JIT", "").strip() == "1":
        return "off (XPDNN_NO_JIT=1)"
    module = _jit()
    if module is None:
        if "No module named 'numba'" in str(_jit_module):
            return 'off (numba is not installed: pip install "xpdnn[fast]")'
        return f"off (numba did not import: {_jit_module})"
    return f"on (numba {module.VERSION}; serial kernels compiled on first use, cached on disk)"


def relu_(Y):
    """``relu(Y)``, in place on NumPy (the caller owns ``Y``)."""
    if cpu.handles(Y):
        jit = _jit()
        if jit is not None and jit.relu_(Y):
            return Y
        return cpu.relu_(Y)
    from ..layers.activations import relu
    return relu(Y)


def relu_backward(dY, Y, *, inplace: bool):
    """``relu_backward(dY, Y)``; ``inplace`` lets NumPy write it into ``dY`` (which the caller
    owns: nobody else holds it)."""
    if cpu.handles(dY, Y):
        jit = _jit()
        out = jit.relu_backward_bias(dY, Y, bias=False, inplace=inplace) if jit is not None else None
        if out is not None:
            return out[0]
        if inplace:
            return cpu.relu_backward_(dY, Y)
    from ..layers.activations import relu_backward as portable
    return portable(dY, Y)


def bias_act_(Y, b, *, relu: bool):
    """A Linear layer's output pass: ``Y + b`` (``b`` (M,) or None: no bias), then ReLU when
    ``relu``, for the layer's new product ``Y = X @ W.T`` (N, M).  In place where the library
    allows (one compiled pass with numba); the result is returned (JAX: a new array)."""
    if cpu.handles(Y, *(() if b is None else (b,))):
        jit = _jit()
        if jit is not None and jit.bias_act_(Y, b, relu):
            return Y
    if b is not None:
        Y += b                   # in place on NumPy, rebound on JAX
    return relu_(Y) if relu else Y


def relu_backward_bias(dY, Y, *, bias: bool, inplace: bool):
    """A Linear(+ReLU) unit's backward before its GEMMs: ``(dX, db)`` with ``dX =
    relu_backward(dY, Y)`` (``dY`` itself when ``Y`` is None: no ReLU) and ``db =
    sum(dX, axis=0)`` when ``bias`` (else None).  ``inplace`` lets NumPy write dX into dY (the
    caller owns it); with numba both come from one compiled pass."""
    if cpu.handles(dY, *(() if Y is None else (Y,))):
        jit = _jit()
        out = jit.relu_backward_bias(dY, Y, bias=bias, inplace=inplace) if jit is not None else None
        if out is not None:
            return out
    dX = dY if Y is None else relu_backward(dY, Y, inplace=inplace)
    return dX, (B.namespace(dX).sum(dX, axis=0) if bias else None)


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
        jit = _jit()
        if jit is None or not jit.momentum_step_(W, g, v, lr, mu):
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
        jit = _jit()        # compiled, for small logits; dZ is a new array (only CUDA honours inplace)
        out = jit.softmax_xent(Z, y, ignore_index=ignore_index, reduction=reduction) if jit else None
        if out is not None:
            return out
        return cpu.softmax_xent(Z, y, ignore_index=ignore_index, reduction=reduction)
    return portable(y)


def apply_dropout(X, rate, seed, counter, *, fused, portable_mask, offset=0):
    """Inverted dropout of X with the Philox keep mask of ``(seed, counter)``, element ``i``
    addressed ``offset + i`` (:func:`xpdnn.random.keep_mask`): ``(Y, backprop)``.
    CuPy (``fused``): one CUDA kernel that regenerates the mask in backward (none stored);
    NumPy with numba: one compiled pass draws the mask, applies it and keeps it (bool) for
    backward; NumPy without: a bool mask applied with in-place ufuncs; elsewhere
    ``portable_mask()``, the scaled mask as an array next to X."""
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
    jit = _jit() if cpu.handles(X) else None
    fwd = jit.dropout_forward(X, rate, seed, counter, offset) if jit is not None else None
    if fwd is not None:              # numba: the mask drawn and applied in one compiled pass
        Y, keep = fwd

        def backprop(dY):
            check(dY)
            out = jit.apply_keep(dY, keep, rate) if cpu.handles(dY) else None
            return out if out is not None else cpu.apply_mask(dY, keep, 1.0 / (1.0 - rate))

        return Y, backprop
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
