"""Every CUDA source under xpdnn/kernels compiles with NVRTC for compute_80 and compute_90, with
every ``extern "C" __global__`` entry point (one per dtype) in the output.  Needs CuPy and the
NVRTC library, not a GPU; each source is compiled once per session (``nvrtc_ptx`` in conftest.py)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xpdnn.kernels import _compile

SOURCES = sorted(p.name for p in Path(_compile.HERE).glob("*.cu"))
# the everyday run compiles for the first architecture the sources that NVRTC compiles in well
# under a second; the rest is slow (softmax_xent.cu: every dtype x row-length instantiation, ~3 s)
SLOW_SOURCES = {"softmax_xent.cu"}
ARCHS = [_compile.ARCHS[0]] + [pytest.param(a, marks=pytest.mark.slow) for a in _compile.ARCHS[1:]]
# a literal entry point (macro-built names such as ``xent_##SUFFIX`` are checked by their PTX)
ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+[\s\\]*(?:__launch_bounds__\s*\([^)]*\)[\s\\]*)?(?!__launch_bounds__)(\w+)\b(?!\s*##)')


def kernel_modules():
    """The Python modules beside the sources (each may name its ``SOURCE`` and list its entry
    points with ``kernel_names()``, e.g. for names built by macros)."""
    names = sorted(p.stem for p in Path(_compile.HERE).glob("*.py") if not p.stem.startswith("_"))
    return [importlib.import_module(f"xpdnn.kernels.{name}") for name in names]


def ptx_entries(ptx) -> dict[str, str]:
    """{entry name: its PTX body} of a PTX text."""
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    parts = re.split(r"\.(?:visible\s+)?\.?entry\s+", text)
    return {p.split("(", 1)[0].strip(): p for p in parts[1:]}


def test_there_are_kernel_sources():
    assert "dropout.cu" in SOURCES


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_SOURCES else s
                                    for s in SOURCES])
def test_compiles_with_nvrtc(nvrtc_ptx, source, arch):
    text = _compile.read_source(source)
    entries = ptx_entries(nvrtc_ptx(source, arch))
    declared = ENTRY.findall(text)
    assert entries, f"{source} defines no kernel"
    for module in kernel_modules():
        if getattr(module, "SOURCE", None) == source and hasattr(module, "kernel_names"):
            declared += list(module.kernel_names())
    missing = sorted(set(declared) - set(entries))
    assert not missing, f"{source}: entry points missing from the PTX for {arch}: {missing}"


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_kernels_are_fused_vectorized_and_spill_free(nvrtc_ptx, arch):
    from xpdnn.kernels import dropout

    text = _compile.read_source(dropout.SOURCE)
    assert not re.search(r"#include\s*[<\"]curand|\bcurand_\w*\s*\(", text)
    entries = ptx_entries(nvrtc_ptx(dropout.SOURCE, arch))
    names = dropout.kernel_names()
    assert set(names) <= set(entries)
    for name in names:
        body = entries[name]
        assert body.count("mul.hi.u64") == 20, name        # 10 rounds x 2 products, unrolled
        assert ".local" not in body, f"{name} spills to local memory"
        # CuPy compiles with -ftz=true: a plain float multiply would flush subnormals to zero
        assert not re.search(r"mul(\.rn)?\.ftz\.f32", body), f"{name} flushes subnormals (mul.ftz)"
    for name in dropout.KERNELS.values():
        body = entries[name]
        assert re.search(r"ld\.global(\.nc)?\.v[24]\.", body), f"{name} has no 128-bit loads"
        assert re.search(r"st\.global\.v[24]\.", body), f"{name} has no 128-bit stores"


def test_importing_never_compiles_or_touches_cuda():
    code = ("import sys, xpdnn, xpdnn.kernels.dropout, xpdnn.layers.dropout; "
            "assert 'cupy' not in sys.modules, 'cupy imported at import time'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
