"""The machine's GEMM roofline: the float32 matmuls of one MLP training step, timed alone
(:func:`gemm_roofline`) or as a pseudo-peer in the interleaved rounds (:class:`GemmEpoch`)."""

from __future__ import annotations

import statistics

import numpy as np

from .peers import Peer, put, synchronizer
from .timing import _loops_for, measure


def gemm_step_shapes(batch: int, sizes) -> list:
    """The (m, k, n) of every float32 matmul one training step performs on an MLP with layer
    ``sizes``: per Linear layer X@W.T, dY.T@X and (past the first layer) dY@W."""
    shapes = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes += [(batch, n_in, n_out), (n_out, batch, n_in)]
        if i:   # no step needs the input gradient of the first layer (xpdnn and torch skip it)
            shapes.append((batch, n_out, n_in))
    return shapes


def gemm_roofline(batch: int, sizes, lib: str = "numpy", device: str = "cpu", *, repeat: int = 5,
                  warmup: int = 1, seed: int = 0) -> dict:
    """Time the exact GEMMs of one training step (see :func:`gemm_step_shapes`) in ``lib`` on
    ``device``.  Returns seconds per step (min and median), GFLOP/s and the roofline
    samples/s = batch / (best time of those GEMMs)."""
    rng = np.random.default_rng(seed)
    peer = Peer("gemm", "gemm", lib, device)
    mats = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        X = put(rng.standard_normal((batch, n_in), dtype=np.float32), peer)
        W = put(rng.standard_normal((n_out, n_in), dtype=np.float32), peer)
        dY = put(rng.standard_normal((batch, n_out), dtype=np.float32), peer)
        mats.append((X, W, dY))

    def step():
        for i, (X, W, dY) in enumerate(mats):
            X @ W.T
            dY.T @ X
            if i:
                dY @ W

    sync = synchronizer(lib, device)
    step()
    loops = _loops_for(step, sync)
    times = measure(step, warmup=warmup, repeat=repeat, sync=sync, loops=loops)
    flops = sum(2 * m * k * n for m, k, n in gemm_step_shapes(batch, sizes))
    best = min(times)
    return {"lib": lib, "device": device, "batch": batch, "sizes": list(sizes), "flop_per_step": flops,
            "min_s": best, "median_s": statistics.median(times), "gflops": flops / best / 1e9,
            "samples_per_s": batch / best}


class GemmEpoch:
    """The roofline as a pseudo-peer: ``epoch(X, y)`` runs, for every batch of an epoch over X,
    exactly the GEMMs of one training step (:func:`gemm_step_shapes`) on fixed operands, so it
    can be timed in the same interleaved rounds as the real peers."""

    def __init__(self, sizes, batch: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.batch = batch
        self.mats = [(rng.standard_normal((batch, n_in), dtype=np.float32),
                      rng.standard_normal((n_out, n_in), dtype=np.float32),
                      rng.standard_normal((batch, n_out), dtype=np.float32))
                     for n_in, n_out in zip(sizes[:-1], sizes[1:])]

    def place(self, X, y):
        return X, y

    def epoch(self, X, y) -> float:
        for _ in range(-(-X.shape[0] // self.batch)):
            for i, (A, W, dY) in enumerate(self.mats):
                A @ W.T
                dY.T @ A
                if i:
                    dY @ W
        return float("nan")


GEMM_PEER = Peer("gemm-roofline", "gemm", "numpy", "cpu")
