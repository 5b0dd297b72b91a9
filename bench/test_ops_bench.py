"""W2 wide-softmax, W3 dropout, the GEMM roofline of one W1 training step, per peer, and the
NumPy backend's elementwise operations at W1's shapes with and without the compiled kernels
(the ``fast`` extra)."""

from __future__ import annotations

import numpy as np
import pytest

from xpdnn import bench, kernels

from conftest import ROUNDS, SCALE, peer_params, run_pedantic

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

    def step():     # the GEMMs gemm_step_shapes counts: no input gradient for the first layer
        for i, (X, W, dY) in enumerate(mats):
            X @ W.T
            dY.T @ X
            if i:
                dY @ W

    benchmark.group = "GEMM roofline (one W1 step)"
    flops = sum(2 * m * k * n for m, k, n in bench.gemm_step_shapes(bench.W1_BATCH, bench.W1_SIZES))
    run_pedantic(benchmark, step, peer, lib=lib, flop_per_step=flops)
    benchmark.extra_info["gflops_median"] = flops / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["roofline_samples_per_s"] = bench.W1_BATCH / benchmark.stats.stats.min


def _cpu_op(op: str, rng):
    """A NumPy step of one accelerated operation at W1's sizes (batch 128, hidden 512, 10 classes)."""
    f32 = np.float32
    if op == "dropout fwd+bwd":
        X, dY = rng.standard_normal((2, 128, 512), dtype=f32)
        counter = iter(range(1 << 62))

        def step():
            Y, bp = kernels.apply_dropout(X, 0.2, 0, next(counter), fused=True, portable_mask=None)
            return bp(dY)
        return step
    if op == "bias+relu":
        Y0, b = rng.standard_normal((128, 512), dtype=f32), rng.standard_normal(512, dtype=f32)
        Y = Y0.copy()
        return lambda: kernels.bias_act_(np.copyto(Y, Y0) or Y, b, relu=True)
    if op == "relu backward+bias grad":
        dY, Y = rng.standard_normal((128, 512), dtype=f32), np.maximum(rng.standard_normal((128, 512), dtype=f32), 0)
        return lambda: kernels.relu_backward_bias(dY, Y, bias=True, inplace=False)
    if op == "softmax-CE 128x10":
        import xpdnn as xd

        Z, y, loss = rng.standard_normal((128, 10), dtype=f32), rng.integers(0, 10, 128), xd.SoftmaxCrossEntropy()
        return lambda: loss(Z, y, check=False)
    if op == "SGD momentum 784x512":
        W, g, v = rng.standard_normal((3, 512, 784), dtype=f32)
        scratch = np.empty_like(W)
        return lambda: kernels.momentum_step_(W, g, v, 1e-6, 0.9, scratch)
    raise ValueError(op)


CPU_OPS = ("dropout fwd+bwd", "bias+relu", "relu backward+bias grad", "softmax-CE 128x10", "SGD momentum 784x512")


@pytest.mark.parametrize("jit", ["compiled", "numpy"])
@pytest.mark.parametrize("op", CPU_OPS)
def test_cpu_elementwise(benchmark, op, jit, monkeypatch):
    if jit == "compiled" and kernels._jit() is None:
        pytest.skip(f"compiled kernels {kernels.jit_status()}")
    monkeypatch.setenv("XPDNN_NO_JIT", "1" if jit == "numpy" else "0")
    step = _cpu_op(op, np.random.default_rng(0))
    step()
    benchmark.group = f"CPU op: {op}"
    benchmark.extra_info.update({"op": op, "kernels": kernels.jit_status()})
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=2, iterations=200)
