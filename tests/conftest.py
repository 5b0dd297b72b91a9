"""One test suite, parametrised over backends: NumPy, array-api-strict, PyTorch-CPU (when
installed), JAX on the CPU (when installed) and CuPy (when a CUDA device is present).

array-api-strict proves that nothing NumPy-only crept in, but it allows writing into arrays, so
an update done in place on a temporary (``m *= b1`` where ``m`` is not stored back) passes there;
JAX's arrays are immutable (``a += b`` rebinds ``a`` to a new array), so such a lost update shows
up as a different result on the JAX backend."""

from __future__ import annotations

import functools
import importlib
import subprocess

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn.devices import cuda_available


class Backend:
    """Test helper: ``asarray`` puts a host NumPy array into this backend; ``numpy`` reads back."""

    def __init__(self, name):
        self.name = name
        if name == "numpy":
            self.lib = np
        elif name == "array_api_strict":
            import array_api_strict

            array_api_strict.set_array_api_strict_flags(api_version="2024.12")
            self.lib = array_api_strict
        elif name == "torch":
            import torch

            self.lib = torch
        elif name == "cupy":
            import cupy

            self.lib = cupy
        elif name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)      # float64 gradient checks
            self.lib = jax.numpy
        self.xp = B.namespace(self.asarray(np.zeros(1)))

    def asarray(self, a, dtype=None):
        a = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
        if self.name == "numpy":
            return a.copy()
        if self.name == "torch":
            return self.lib.from_numpy(np.ascontiguousarray(a).copy())
        return self.lib.asarray(a)

    def numpy(self, a):
        return B.to_numpy(a)

    def libm_rtol(self, rtol):
        """Tolerance for a float64 result that goes through exp/log/tanh/erf: ``rtol`` on the
        CPU backends (the host's libm), at least 1e-13 on CuPy, whose libdevice functions are
        within a few ulp of the host's, not equal (the GPU issue's float64 parity bound is 1e-12)."""
        return max(rtol, 1e-13) if self.name == "cupy" else rtol

    def parity_rtol(self, rtol, dtype="float64"):
        """Tolerance for a result that is compared with another library's run and goes through
        GEMMs and reductions (a loss history, say): ``rtol`` on the CPU backends, at least the
        GPU issue's parity bound on CuPy (1e-5 in float32, 1e-12 in float64). cuBLAS, CuPy's
        reductions and the fused softmax-xent kernel add up in a different order and contract
        into FMA, so a float32 result differs from NumPy's by a few ulp, not by none."""
        if self.name != "cupy":
            return rtol
        return max(rtol, 1e-5 if B.dtype_name(dtype) == "float32" else 1e-12)

    def __repr__(self):
        return self.name


def _available():
    names = ["numpy", "array_api_strict"]
    try:
        importlib.import_module("torch")
        names.append("torch")
    except ImportError:
        pass
    try:
        importlib.import_module("jax")
        names.append("jax")
    except ImportError:
        pass
    if cuda_available()[0]:
        names.append("cupy")
    return names


BACKENDS = _available()


# JAX compiles every eager operation for each new shape: its cases take minutes, so they carry the
# slow marker (the everyday run skips them; .ci/run runs them)
@pytest.fixture(params=[pytest.param(b, marks=pytest.mark.slow) if b == "jax" else b for b in BACKENDS])
def backend(request):
    return Backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def nvrtc_ptx():
    """``nvrtc_ptx(source, arch)``: the PTX NVRTC makes of a CUDA source under ``xpdnn/kernels``
    for ``arch``, compiled once per test session (a compile takes seconds and several test files
    read the same PTX).  Skips where CuPy or the NVRTC library is missing; needs no GPU."""
    pytest.importorskip("cupy")
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # the NVRTC shared library is missing or broken
        pytest.skip(f"NVRTC is not usable: {type(exc).__name__}: {exc}")
    from xpdnn.kernels import _compile

    @functools.lru_cache(maxsize=None)
    def compile_(source, arch):
        return _compile.nvrtc_compile(_compile.read_source(source), arch)

    return compile_


@pytest.fixture(scope="session")
def shared_library(tmp_path_factory):
    """``shared_library(compiler, flags, text, name) -> (subprocess.CompletedProcess, path)``: the
    C++ ``text`` built with ``compiler -shared -fPIC flags`` into ``path``, once per test session
    for the same compiler, flags and text (the kernels' CPU builds take seconds each and more than
    one test file loads them).  The caller checks ``returncode`` and loads ``path``."""
    root = tmp_path_factory.mktemp("cxx")
    built = {}

    def build(compiler, flags, text, name):
        key = (compiler, tuple(flags), text)
        if key not in built:
            d = root / str(len(built))
            d.mkdir()
            src, lib = d / f"{name}.cpp", d / f"{name}.so"
            src.write_text(text)
            res = subprocess.run([compiler, *flags, "-shared", "-fPIC", "-o", str(lib), str(src)],
                                 capture_output=True, text=True)
            built[key] = (res, lib)
        return built[key]

    return build


def pytest_report_header(config):
    return f"xpdnn backends under test: {', '.join(BACKENDS)}"
