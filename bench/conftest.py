"""Shared setup of the pytest-benchmark suites (not part of the test command).

Run from the repository root::

    python -m pytest bench/ --benchmark-only                 # full size
    XPDNN_BENCH_SCALE=0.1 python -m pytest bench/ --benchmark-only -q   # a quick pass

``XPDNN_BENCH_SCALE`` shrinks every workload as ``xpdnn bench --scale`` does;
``XPDNN_BENCH_THREADS`` sets the BLAS/OpenMP/PyTorch threads (default: every usable core).
The workloads themselves are defined once, in :mod:`xpdnn.bench`.
"""

from __future__ import annotations

import os

import pytest

from xpdnn import bench

SCALE = float(os.environ.get("XPDNN_BENCH_SCALE", "1.0"))
THREADS = int(os.environ.get("XPDNN_BENCH_THREADS", "0")) or bench.usable_cores()
ROUNDS = int(os.environ.get("XPDNN_BENCH_ROUNDS", "5"))


def pytest_configure(config):
    try:
        import torch  # noqa: F401  (imported first so set_threads reaches it)
    except ImportError:
        pass
    bench.set_threads(THREADS)


def pytest_report_header(config):
    return f"xpdnn bench: scale {SCALE}, {THREADS} threads, {ROUNDS} rounds"


def peer_params(names):
    """pytest params for the named peers, skipped (with the reason) where unavailable."""
    out = []
    for name in names:
        ok, why = bench.peer_available(bench.PEERS[name])
        out.append(pytest.param(bench.PEERS[name], id=name, marks=() if ok else pytest.mark.skip(reason=why)))
    return out


def run_pedantic(benchmark, fn, peer, **info):
    """Benchmark ``fn`` (synchronized for GPU peers) for ROUNDS rounds after one warm-up."""
    sync = bench.synchronizer(peer.lib, peer.device)

    def call():
        out = fn()
        sync()
        return out

    benchmark.extra_info.update({"peer": peer.name, "device": peer.device, "scale": SCALE, "threads": THREADS,
                                 **info})
    return benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.fixture(scope="session")
def scale():
    return SCALE


@pytest.fixture(scope="session")
def w1_data():
    """W1's synthetic data: 20,000 x 784 float32 (scaled), 10 classes."""
    n = bench._scaled(bench.W1_SAMPLES, SCALE, 2 * bench.W1_BATCH)
    return bench.mnist_like(n, seed=0)
