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
    exactly the GEMMs of one training step (:func:`gemm_step_shapes`) on fixed operands in
    ``lib`` ("numpy" or "torch", on the CPU), so it can be timed in the same interleaved rounds
    as the real peers.  With one such pseudo-peer per library a round's roofline is the fastest
    of them, the footing of every peer whatever GEMM library it calls."""

    def __init__(self, sizes, batch: int, seed: int = 0, lib: str = "numpy"):
        rng = np.random.default_rng(seed)
        peer = gemm_peer(lib)
        self.batch = batch
        self.mats = [tuple(put(rng.standard_normal(shape, dtype=np.float32), peer)
                           for shape in ((batch, n_in), (n_out, n_in), (batch, n_out)))
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


def gemm_peer(lib: str) -> Peer:
    """The GEMM pseudo-peer of ``lib`` ("numpy" or "torch"), named ``gemm-<lib>``."""
    return Peer(f"gemm-{lib}", "gemm", lib, "cpu")


GEMM_PEER = gemm_peer("numpy")


_CHILD = ("import json, sys; from xpdnn.bench.machine import set_threads; "
          "from xpdnn.bench.roofline import gemm_roofline; set_threads(int(sys.argv[1])); "
          "print(json.dumps(gemm_roofline(128, (784, 512, 512, 10), repeat=5)['min_s']))")


def blas_env_cost(threads: int, forced: dict, pairs: int = 3) -> dict:
    """What forcing OpenBLAS's CPU settings (``forced``: e.g. ``{"OPENBLAS_CORETYPE": "Haswell"}``)
    costs NumPy's GEMMs: the W1 step's GEMMs (:func:`gemm_roofline`) timed in fresh interpreters
    with the variables as set and with them removed, alternating, ``pairs`` times.  Returns the
    seconds per step of each, the per-pair slowdown (as set / unset) and a warning line."""
    import json
    import os
    import subprocess
    import sys

    from .timing import stats

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # holds xpdnn/
    base = dict(os.environ)
    base["PYTHONPATH"] = root + (os.pathsep + base["PYTHONPATH"] if base.get("PYTHONPATH") else "")
    unset = {k: v for k, v in base.items() if k not in forced}
    as_set = {**base, **forced}

    def one(env):
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(threads)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"GEMM subprocess failed: {proc.stderr.strip()[-300:]}")
        return float(proc.stdout.strip().splitlines()[-1])

    t_set, t_unset = [], []
    for k in range(pairs):
        for env, out in ((as_set, t_set), (unset, t_unset)) if k % 2 == 0 else ((unset, t_unset), (as_set, t_set)):
            out.append(one(env))
    slow = stats(a / b for a, b in zip(t_set, t_unset))
    what = ", ".join(f"{k}={v}" for k, v in forced.items())
    if slow["median"] > 1.03:
        verdict = (f"NumPy's GEMMs of a W1 step take {slow['median']:.2f}x as long as with "
                   f"{'it' if len(forced) == 1 else 'them'} unset")
    elif slow["median"] < 0.97:
        verdict = f"NumPy's GEMMs of a W1 step run {1 / slow['median']:.2f}x faster than with it unset"
    else:
        verdict = "NumPy's GEMMs of a W1 step run at the same speed as with it unset (within 3%)"
    warning = (f"{what} is set: {verdict} ({slow['min']:.2f}-{slow['max']:.2f} over {pairs} paired "
               f"subprocess runs); every NumPy peer and the NumPy roofline run under it")
    return {"forced": dict(forced), "as_set_s": t_set, "unset_s": t_unset, "slowdown": slow, "warning": warning}
