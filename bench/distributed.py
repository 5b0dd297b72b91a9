"""Data-parallel benchmarks (issue: distributed training), on this machine's CPU cores.

    python bench/distributed.py [--rounds 5] [--out bench/results/distributed-cpu.json]

1. **All-reduce of W1's packed gradients** (784-512-512-10: 669,706 float32 and the loss):
   the trainer's sink (:class:`xpdnn.step.AllReduceGrads`: pack, all-reduce with a deadline,
   unpack) against mpi4py's own ``Allreduce`` of one buffer of the same size, in the same
   2-rank job, interleaved, the ratio per round.
2. **W1 training throughput**: 2 ranks x 1 BLAS thread (``mpiexec -n 2``) against 1 process x 2
   BLAS threads, the two jobs alternating round by round; plus the all-reduce's share of the
   2-rank step.

The driver starts the jobs itself (``mpiexec`` from the environment's bin folder).  Timings are
wall-clock medians of per-round values; the machine's load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

SIZES = (784, 512, 512, 10)
BATCH, STEPS, WARMUP = 128, 150, 20


def _net():
    import xpdnn as xd
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(xd.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(xd.ReLU())
    net = xd.Sequential(*layers)
    net.initialize(0)
    return net


def worker_allreduce(rounds: int) -> dict | None:
    """Per round: medians of 40 sink finishes and 40 plain mpi4py Allreduces of the same bytes,
    alternating."""
    from mpi4py import MPI

    from xpdnn import distributed
    from xpdnn.step import AllReduceGrads

    comm = distributed.init("mpi")
    net = _net()
    sink = AllReduceGrads((net,), comm)
    for _, layer in net.named_layers():
        for k, v in layer.params.items():
            layer.grads[k] = np.zeros(v.shape, dtype=np.float32)   # zeros stay finite: sums of sums
    n = sum(v.size for _, la in net.named_layers() for v in la.params.values()) + 1
    keys = {(id(layer), name) for layer, name in sink.params}
    plain = np.zeros(n, dtype=np.float32)
    ours, theirs = [], []
    # every gradient arrived this step (as in training): finish() zeroes none of them
    fns = (lambda: (sink.begin(), sink.seen.update(keys), sink.finish()),
           lambda: comm.comm.Allreduce(MPI.IN_PLACE, plain, op=MPI.SUM))
    for _ in range(rounds):
        times = ([], [])
        for rep in range(40):                 # alternating, the order flipped every other pair
            for k in ((0, 1) if rep % 2 else (1, 0)):
                comm.barrier()
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
        ours.append(float(np.median(times[0])))
        theirs.append(float(np.median(times[1])))
    comm.close()
    if comm.rank:
        return None
    ratios = [a / b for a, b in zip(ours, theirs)]
    return {"floats": int(n), "bytes": int(4 * n), "sink_s": ours, "mpi4py_allreduce_s": theirs,
            "ratio_per_round": ratios, "ratio_median": float(np.median(ratios)),
            "bandwidth_GBps": 4 * n / float(np.median(theirs)) / 1e9}


def worker_train() -> dict | None:
    """STEPS steps of W1 (after WARMUP) on synthetic MNIST-shaped data; samples/s and the
    all-reduce's share of the step."""
    import xpdnn as xd
    from xpdnn import distributed
    from xpdnn.step import AllReduceGrads

    comm = distributed.init()
    N = BATCH * (STEPS + WARMUP)
    rng = np.random.default_rng(0)
    X = rng.random((N, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], N)
    spent = [0.0]
    finish = AllReduceGrads.finish

    def timed(self):
        t0 = time.perf_counter()
        finish(self)
        spent[0] += time.perf_counter() - t0

    AllReduceGrads.finish = timed
    times = []

    class Clock(xd.Callback):
        def on_batch_end(self, trainer, step, logs):
            times.append(time.perf_counter())

    tr = xd.Trainer(_net(), loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.01, momentum=0.9),
                    batch_size=BATCH, epochs=1, progress=0, callbacks=[Clock()])
    tr.fit(X, y)
    steady = times[WARMUP:]
    seconds = steady[-1] - steady[0]
    steps = len(steady) - 1
    share = spent[0] / (times[-1] - times[0]) if comm.size > 1 else 0.0
    if comm.rank:
        return None
    return {"ranks": comm.size, "samples_per_s": BATCH * steps / seconds, "step_s": seconds / steps,
            "allreduce_share": share}


def _bin(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def _run(cmd, env):
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def driver(rounds: int, out: str) -> None:
    env = dict(os.environ)
    one = dict(env, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    two = dict(env, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    me = os.path.abspath(__file__)
    allreduce = _run([_bin("mpiexec"), "-n", "2", sys.executable, me, "--worker", "allreduce",
                      "--rounds", str(rounds)], two)
    train = []
    for _ in range(rounds):
        a = _run([sys.executable, me, "--worker", "train"], one)
        b = _run([_bin("mpiexec"), "-n", "2", sys.executable, me, "--worker", "train"], two)
        train.append({"one_process_2_threads": a, "two_ranks_1_thread": b,
                      "ratio": b["samples_per_s"] / a["samples_per_s"], "loadavg": os.getloadavg()[0]})
    ratios = [r["ratio"] for r in train]
    step = float(np.median([r["two_ranks_1_thread"]["step_s"] for r in train]))
    share = float(np.median([r["two_ranks_1_thread"]["allreduce_share"] for r in train]))
    result = {
        "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"), "loadavg_start": os.getloadavg(),
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "allreduce": allreduce, "train_rounds": train,
        "train_ratio_median": float(np.median(ratios)), "train_ratio_min_max": [min(ratios), max(ratios)],
        "two_rank_step_s": step, "two_rank_allreduce_share": share,
    }
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    ar = allreduce
    print(f"all-reduce of W1's packed gradients ({ar['bytes'] / 1e6:.2f} MB): sink / mpi4py Allreduce = "
          f"{ar['ratio_median']:.3f} (per round {min(ar['ratio_per_round']):.3f}-{max(ar['ratio_per_round']):.3f}); "
          f"mpi4py bandwidth {ar['bandwidth_GBps']:.2f} GB/s")
    print(f"W1 samples/s, 2 ranks x 1 thread / 1 process x 2 threads = {result['train_ratio_median']:.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f}); all-reduce share of the 2-rank step {share:.1%} "
          f"(step {step * 1e3:.2f} ms)")
    print(f"written to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "distributed-cpu.json"))
    p.add_argument("--worker", choices=["allreduce", "train"])
    args = p.parse_args()
    if args.worker == "allreduce":
        res = worker_allreduce(args.rounds)
    elif args.worker == "train":
        res = worker_train()
    else:
        return driver(args.rounds, args.out)
    if res is not None:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
