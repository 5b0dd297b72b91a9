"""Choosing a backend and putting data on it."""

from __future__ import annotations

import importlib

import numpy as np

from . import _backend as B

BACKENDS = ("numpy", "cupy", "torch", "array_api_strict")


def cuda_available() -> tuple[bool, str]:
    """(usable, reason): whether CuPy is installed and sees a CUDA device."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"CuPy is not installed ({type(exc).__name__})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"CuPy sees no CUDA device ({exc.__class__.__name__}: {exc})"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    return True, f"{n} CUDA device(s)"


def resolve(backend: str) -> tuple[str, str]:
    """Map ``numpy|cupy|torch|array_api_strict|auto`` to a usable backend and a one-line note."""
    backend = backend.replace("-", "_")
    if backend == "auto":
        ok, why = cuda_available()
        if ok:
            return "cupy", f"backend: cupy ({why})"
        return "numpy", f"backend: numpy (no GPU: {why})"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS + ('auto',)}")
    if backend == "cupy":
        ok, why = cuda_available()
        if not ok:
            raise RuntimeError(f"backend 'cupy' asked for, but CUDA is not usable: {why}")
    elif backend != "numpy":
        try:
            importlib.import_module(backend)
        except ImportError:
            raise RuntimeError(f"backend {backend!r} asked for, but {backend} is not installed") from None
    return backend, f"backend: {backend}"


def free_bytes(device: str):
    """Free memory in bytes on ``device`` ('cuda'/'cupy': the CUDA device's free memory plus what
    CuPy's pool holds unused), or None where xpdnn sets no limit (host backends)."""
    if device in ("cupy", "cuda"):
        ok, _ = cuda_available()
        if not ok:
            return None
        import cupy
        return int(cupy.cuda.runtime.memGetInfo()[0]) + int(cupy.get_default_memory_pool().free_bytes())
    return None


def put(a, backend: str):
    """Copy array ``a`` into ``backend`` ('numpy', 'cupy'/'cuda', 'torch', 'array_api_strict')."""
    host = B.to_numpy(a)
    if backend in ("numpy", "cpu"):
        return host
    if backend in ("cupy", "cuda"):
        ok, why = cuda_available()
        if not ok:
            raise RuntimeError(f"device 'cuda' asked for, but CUDA is not usable: {why}")
        import cupy
        return cupy.asarray(host)
    if backend == "torch":
        import torch
        return torch.from_numpy(np.ascontiguousarray(host).copy())
    if backend == "array_api_strict":
        import array_api_strict
        return array_api_strict.asarray(host)
    raise ValueError(f"unknown device/backend {backend!r}")
