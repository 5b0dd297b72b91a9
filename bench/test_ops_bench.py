"""W2 wide-softmax, W3 dropout and the GEMM roofline of one W1 training step, per peer."""

from __future__ import annotations

import numpy as np
import pytest

from xpdnn import bench

from conftest import SCALE, peer_params, run_pedantic

OP_PEERS = ("xpdnn-numpy", "xpdnn-torch", "torch", "xpdnn-cupy", "xpdnn-torch-cuda", "torch-cuda")


@pytest.mark.parametrize("peer", peer_params(OP_PEERS))
def test_w2_softmax_cross_entropy(benchmark, peer):
    N, C = bench._scaled(bench.W2_ROWS[peer.device], SCALE, 8), bench.W2_CLASSES
    rng = np.random.default_rng([0, 2])
    Z = bench.put(rng.standard_normal((N, C), dtype=np.float32), peer)
    y = bench.put(rng.integers(0, C, size=N, dtype=np.int64), peer)
    benchmark.group = f"W2 wide-softmax {peer.device}"
    run_pedantic(benchmark, bench.softmax_ce_step(peer, Z, y), peer, N=N, C=C)
    benchmark.extra_info["logits_per_s_median"] = N * C / benchmark.stats.stats.median


@pytest.mark.parametrize("peer", peer_params(OP_PEERS))
def test_w3_dropout(benchmark, peer):
    n = bench._scaled(bench.W3_ELEMENTS[peer.device], SCALE, 4096)
    rows, cols = -(-n // 4096), 4096
    rng = np.random.default_rng([0, 3])
    X = bench.put(rng.standard_normal((rows, cols), dtype=np.float32), peer)
    dY = bench.put(rng.standard_normal((rows, cols), dtype=np.float32), peer)
    benchmark.group = f"W3 dropout {peer.device}"
    run_pedantic(benchmark, bench.dropout_step(peer, X, dY, bench.W1_DROPOUT), peer, shape=[rows, cols])
    benchmark.extra_info["elements_per_s_median"] = rows * cols / benchmark.stats.stats.median


@pytest.mark.parametrize("lib,device", [("numpy", "cpu"), ("torch", "cpu"), ("cupy", "cuda"), ("torch", "cuda")])
def test_gemm_roofline_step(benchmark, lib, device):
    name = {"numpy": "xpdnn-numpy", "torch": "torch", "cupy": "xpdnn-cupy"}[lib]
    peer = bench.PEERS["torch-cuda" if (lib, device) == ("torch", "cuda") else name]
    ok, why = bench.peer_available(peer)
    if not ok:
        pytest.skip(why)
    rng = np.random.default_rng(0)
    mats = []
    for n_in, n_out in zip(bench.W1_SIZES[:-1], bench.W1_SIZES[1:]):
        mats.append(tuple(bench.put(rng.standard_normal(s, dtype=np.float32), peer)
                          for s in ((bench.W1_BATCH, n_in), (n_out, n_in), (bench.W1_BATCH, n_out))))

    def step():
        for X, W, dY in mats:
            X @ W.T
            dY.T @ X
            dY @ W

    benchmark.group = "GEMM roofline (one W1 step)"
    flops = sum(2 * m * k * n for m, k, n in bench.gemm_step_shapes(bench.W1_BATCH, bench.W1_SIZES))
    run_pedantic(benchmark, step, peer, lib=lib, flop_per_step=flops)
    benchmark.extra_info["gflops_median"] = flops / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["roofline_samples_per_s"] = bench.W1_BATCH / benchmark.stats.stats.min
