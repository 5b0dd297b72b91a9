"""W1 mnist-mlp (one training epoch per round) and the W1 scaling table, per peer."""

from __future__ import annotations

import pytest

from xpdnn import bench

from conftest import SCALE, peer_params, run_pedantic

CPU_PEERS = ("xpdnn-numpy", "xpdnn-numpy-nojit", "xpdnn-torch", "torch", "sklearn")
GPU_PEERS = ("xpdnn-cupy", "xpdnn-torch-cuda", "torch-cuda")


def _epoch_benchmark(benchmark, peer, X_host, y_host, sizes, dropout, batch, group):
    runner = bench.mlp_runner(peer, sizes, dropout, batch, seed=0)
    X, y = runner.place(X_host, y_host)
    benchmark.group = group
    run_pedantic(benchmark, lambda: runner.epoch(X, y), peer, n_samples=X_host.shape[0], batch=batch,
                 sizes=list(sizes), dropout=dropout)
    benchmark.extra_info["samples_per_s_median"] = X_host.shape[0] / benchmark.stats.stats.median


@pytest.mark.parametrize("dropout", [0.0, bench.W1_DROPOUT], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("peer", peer_params(CPU_PEERS + GPU_PEERS))
def test_w1_epoch(benchmark, peer, dropout, w1_data):
    if peer.kind == "sklearn" and dropout:
        pytest.skip("scikit-learn's MLPClassifier has no dropout")
    X, y = w1_data
    group = f"W1 mnist-mlp {'dropout' if dropout else 'no-dropout'}"
    _epoch_benchmark(benchmark, peer, X, y, bench.W1_SIZES, dropout, bench.W1_BATCH, group)


@pytest.mark.parametrize("batch,hidden", bench.SCALING_POINTS, ids=[f"b{b}-h{h}" for b, h in bench.SCALING_POINTS])
@pytest.mark.parametrize("peer", peer_params(("xpdnn-numpy", "xpdnn-numpy-nojit", "torch", "xpdnn-cupy", "torch-cuda")))
def test_w1_scaling(benchmark, peer, batch, hidden):
    n = bench._scaled(bench.SCALING_SAMPLES, SCALE, 2 * batch)
    X, y = bench.mnist_like(n, seed=0)
    _epoch_benchmark(benchmark, peer, X, y, (784, hidden, hidden, 10), 0.0, batch,
                     f"S scaling batch={batch} hidden={hidden}")


@pytest.mark.gpu
@pytest.mark.parametrize("peer", peer_params(GPU_PEERS))
def test_w4_large_batch(benchmark, peer):
    import numpy as np

    steps = bench._scaled(bench.W4_STEPS, SCALE, 2)
    n = steps * bench.W4_BATCH
    rng = np.random.default_rng([0, 4])
    X = rng.standard_normal((n, bench.W4_SIZES[0]), dtype=np.float32)
    y = rng.integers(0, bench.W4_SIZES[-1], size=n, dtype=np.int64)
    _epoch_benchmark(benchmark, peer, X, y, bench.W4_SIZES, 0.0, bench.W4_BATCH, "W4 large-batch")
