"""Fused dropout for CuPy arrays (``dropout.cu``), compiled on first use and cached.

``dropout(X, rate, seed, counter, offset=0)`` computes ``X * keep / (1 - rate)`` in one pass with
the keep mask of :func:`xpdnn.random.keep_mask` regenerated inside the kernel from ``(seed, counter)``, so
the backward pass is the same call on ``dY`` and no mask is ever stored.  Nothing is allocated
but the output, there is no host synchronisation and no cuRAND host call, so a training step
that uses it can be captured in a CUDA graph.
"""

from __future__ import annotations

import numpy as np

from .. import random as xrandom
from ._compile import get_function, read_source

SOURCE = "dropout.cu"
KERNELS = {
    "float32": "xpdnn_dropout_f32",
    "float64": "xpdnn_dropout_f64",
    "float16": "xpdnn_dropout_f16",
    "bfloat16": "xpdnn_dropout_bf16",
}
BITS_KERNEL = "xpdnn_philox_bits32"
THREADS = 256


def kernel_names() -> list[str]:
    """Every entry point of ``dropout.cu`` (the compile test checks each is in the PTX)."""
    return list(KERNELS.values()) + [BITS_KERNEL]


def _grid(n: int, offset: int = 0) -> tuple[int]:
    n_blocks = -(-(offset % 8 + n) // 8)        # one thread per Philox block of 8 words
    return (max(1, min(-(-n_blocks // THREADS), 2**31 - 1)),)


def _bf16(x: float) -> float:
    """``x`` rounded to bfloat16 (to nearest even), as a float."""
    u = int(np.array(x, dtype=np.float32).view(np.uint32))
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return float(np.array(u, dtype=np.uint32).view(np.float32))


def kernel_scale(dtype: str, rate: float):
    """``1 / (1 - rate)`` rounded to ``dtype``, as the scalar type the kernel takes."""
    s = 1.0 / (1.0 - float(rate))
    if dtype == "float64":
        return np.float64(s)
    if dtype == "float16":
        return np.float32(np.float16(s))
    if dtype == "bfloat16":
        return np.float32(_bf16(s))
    return np.float32(s)


def _check(rate, seed, counter):
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    seed, counter = int(seed), int(counter)
    if not (0 <= seed < 2**64 and 0 <= counter < 2**64):
        raise ValueError(f"seed and counter must be integers in [0, 2**64), got {seed} and {counter}")
    return rate, seed, counter


def dropout(X, rate: float, seed: int, counter: int, offset: int = 0):
    """``Y = X * keep / (1 - rate)`` for a CuPy array ``X`` of any shape and a floating dtype
    (float16, bfloat16, float32, float64); ``keep`` is ``xpdnn.random.keep_mask(seed, counter,
    X.shape, rate, offset=offset)`` bit for bit.  Returns a new C-contiguous array of X's shape and dtype on
    X's device (non-contiguous ``X`` is copied to a contiguous one first)."""
    import cupy

    from .._backend import dtype_name

    if not isinstance(X, cupy.ndarray):
        raise TypeError(f"the fused dropout kernel needs a CuPy array, got {type(X).__name__}")
    name = dtype_name(X.dtype)
    if name not in KERNELS:
        raise TypeError(f"the fused dropout kernel supports {sorted(KERNELS)}, got dtype {name}")
    rate, seed, counter = _check(rate, seed, counter)
    offset = int(offset)
    if not 0 <= offset < 2**64 - 2**32:
        raise ValueError(f"offset must be in [0, 2**64 - 2**32), got {offset}")
    with cupy.cuda.Device(X.device.id):
        X = cupy.ascontiguousarray(X)
        Y = cupy.empty_like(X, order="C")
        n = int(X.size)
        if n:
            fn = get_function(read_source(SOURCE), KERNELS[name])
            fn(_grid(n, offset), (THREADS,), (X, Y, np.uint64(n), np.uint64(seed), np.uint64(counter),
                                              np.uint64(xrandom.threshold(rate)), kernel_scale(name, rate),
                                              np.uint64(offset)))
    return Y


def bits32(seed: int, counter: int, n: int, device=None):
    """The ``n`` uint32 words of call ``counter`` (as :func:`xpdnn.random.bits32`), computed on
    the GPU: a CuPy array of shape (n,) on ``device`` (an id; the current device by default)."""
    import cupy

    _, seed, counter = _check(0.0, seed, counter)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    with cupy.cuda.Device(device):
        out = cupy.empty((n,), dtype=cupy.uint32)
        if n:
            fn = get_function(read_source(SOURCE), BITS_KERNEL)
            fn(_grid(n), (THREADS,), (out, np.uint64(n), np.uint64(seed), np.uint64(counter)))
    return out
