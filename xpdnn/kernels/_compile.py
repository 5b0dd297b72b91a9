"""Lazy, cached compilation of the CUDA sources in this folder.

``get_function(source, name)`` compiles on first use (never at import) and caches the CuPy
``RawModule`` per (source, options, device).  ``nvrtc_compile(source, arch)`` compiles with NVRTC
alone and needs no GPU: CI uses it to check every kernel source for compute_80 and compute_90.
"""

from __future__ import annotations

import functools
from pathlib import Path

HERE = Path(__file__).parent
ARCHS = ("compute_80", "compute_90")
BASE_OPTIONS = ("-std=c++17",)
# What CuPy appends to every NVRTC compile (cupy/cuda/compiler.py), after the caller's options:
# the CI compile check uses them too, so it compiles the program a GPU run compiles.
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


@functools.lru_cache(maxsize=None)
def read_source(filename: str) -> str:
    """Source text of ``xpdnn/kernels/<filename>`` with local ``#include "x.cuh"`` inlined
    (NVRTC is given one self-contained string)."""
    lines = []
    for line in (HERE / filename).read_text().splitlines():
        s = line.strip()
        if s.startswith('#include "') and s.endswith('"'):
            lines.append(read_source(s[len('#include "'):-1]))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def _module(source: str, options: tuple, device_id: int):
    import cupy

    return cupy.RawModule(code=source, options=BASE_OPTIONS + options)


def get_function(source: str, name: str, options: tuple = ()):
    """The compiled kernel ``name`` (an ``extern "C"`` symbol) from ``source``, for the current
    device; compiled on first call, then cached."""
    import cupy

    return _module(source, tuple(options), cupy.cuda.Device().id).get_function(name)


def nvrtc_compile(source: str, arch: str = "compute_80", options: tuple = ()) -> bytes:
    """Compile ``source`` to PTX with NVRTC only (no GPU needed), with the options CuPy adds
    (:data:`CUPY_OPTIONS`); raises ``RuntimeError`` with the compiler log on failure."""
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(source, "xpdnn_kernel.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}", *BASE_OPTIONS, *options, *CUPY_OPTIONS])
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC failed for {arch}:\n{nvrtc.getProgramLog(prog)}") from exc
        return nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
