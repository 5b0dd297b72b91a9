"""Where W1's time goes between the GEMM roofline and a training epoch (issue: compiled CPU kernels).

    python bench/w1_gap.py [--rounds 9] [--dropout 0.0] [--out bench/results/w1-gap-cpu.json]

W1 (784-512-512-10 ReLU, batch 128, SGD momentum 0.9, 20,000 samples) built up step by step from
the roofline to xpdnn's epoch, each stage adding one kind of work to the one before, all timed in
the same interleaved rounds in one process; the table gives each stage's epoch time as a fraction
of the round's roofline epoch (median and range of the per-round ratios):

1. ``roofline``: the roofline pseudo-peer of ``xpdnn bench`` (:class:`xpdnn.bench.roofline.GemmEpoch`):
   one step's 8 GEMMs per batch, on fixed operands that stay in cache.
2. ``gemm-flow``: the same GEMMs on the epoch's real data flow: each batch gathered from the
   shuffled samples, each layer's output the next one's input, fresh arrays every step.
3. ``gemm-flow+momentum``: the weight-gradient GEMMs accumulate into the momentum buffers
   (``v = dY.T @ X + 0.9 v``, one GEMM with beta) and the weights take the BLAS AXPY
   ``W -= lr v``: the memory traffic of the SGD update, which the roofline leaves out.
4. ``numpy-loop``: the bare NumPy epoch of ``xpdnn bench`` (adds bias, ReLU, softmax
   cross-entropy, the bias updates and, with ``--dropout``, the masks).
5. ``xpdnn-numpy``: :class:`xpdnn.Trainer` (with the compiled kernels when numba is installed).

Neither OpenBLAS variable is changed; the environment is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from xpdnn.bench.peers import NumpyLoopMLP, Peer, XpdnnMLP
from xpdnn.bench.roofline import GemmEpoch
from xpdnn.bench.workloads import LR, MOMENTUM, mnist_like
from xpdnn.kernels import cpu

SIZES, BATCH, N = (784, 512, 512, 10), 128, 20_000


class GemmFlow:
    """Stages 2 and 3: the step's GEMMs on the real data flow, with or without the SGD update's
    memory traffic (momentum accumulated by the GEMM, then the weights' AXPY)."""

    def __init__(self, momentum: bool, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.W = [(rng.standard_normal((o, i)) * 0.01).astype(np.float32) for i, o in zip(SIZES[:-1], SIZES[1:])]
        self.v = [np.zeros_like(w) for w in self.W]
        self.momentum, self.seed = momentum, seed

    def epoch(self, X, y):
        W, v = self.W, self.v
        order = np.random.default_rng([self.seed, 0]).permutation(X.shape[0])
        for start in range(0, X.shape[0], BATCH):
            h, acts = X.take(order[start:start + BATCH], axis=0), []
            for w in W:
                acts.append(h)
                h = h @ w.T
            dY = h * np.float32(1e-3)                   # keeps the weights finite over the rounds
            for i in reversed(range(len(W))):
                dX = dY @ W[i] if i else None
                if self.momentum:
                    cpu.gemm_tn_acc_(dY, acts[i], v[i], MOMENTUM)
                    cpu.axpy_flat_(-LR, v[i], W[i])
                else:
                    dY.T @ acts[i]
                dY = dX


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    X, y = mnist_like(N)
    X = X.astype(np.float32)
    stages = {
        "roofline": GemmEpoch(SIZES, BATCH),
        "gemm-flow": GemmFlow(momentum=False),
        "gemm-flow+momentum": GemmFlow(momentum=True),
        "numpy-loop": NumpyLoopMLP(Peer("numpy-loop", "numpy-loop", "numpy", "cpu"), SIZES, args.dropout, BATCH),
        "xpdnn-numpy": XpdnnMLP(Peer("xpdnn-numpy", "xpdnn", "numpy", "cpu"), SIZES, args.dropout, BATCH),
    }
    data = {}
    for name, st in stages.items():
        data[name] = st.place(X, y) if hasattr(st, "place") else (X, y)
        st.epoch(data[name][0][:2048], data[name][1][:2048])            # warm-up (and JIT compile)
    times = {name: [] for name in stages}
    load = [os.getloadavg()]
    for r in range(args.rounds):
        order = list(stages) if r % 2 == 0 else list(reversed(stages))  # alternate the order
        for name in order:
            t = time.perf_counter()
            stages[name].epoch(*data[name])
            times[name].append(time.perf_counter() - t)
    load.append(os.getloadavg())
    roof = np.array(times["roofline"])
    rows = {}
    print(f"W1 gap, dropout {args.dropout}, {args.rounds} interleaved rounds, load {load[0][0]:.2f} -> {load[1][0]:.2f}")
    print(f"{'stage':20s} {'median ms':>10s} {'roofline fraction (per round)':>32s}")
    for name, ts in times.items():
        frac = roof / np.array(ts)
        rows[name] = {"seconds": ts, "median_s": float(np.median(ts)), "roofline_fraction_median": float(np.median(frac)),
                      "roofline_fraction_min": float(frac.min()), "roofline_fraction_max": float(frac.max())}
        print(f"{name:20s} {np.median(ts) * 1e3:10.1f} {np.median(frac):14.1%} ({frac.min():.1%}-{frac.max():.1%})")
    from xpdnn.kernels import jit_status
    report = {"workload": "W1", "dropout": args.dropout, "rounds": args.rounds, "stages": rows,
              "loadavg_before_after": load, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "jit": jit_status(),
              "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "XPDNN_"))},
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print("wrote", args.out)
    return report


if __name__ == "__main__":
    main()
