"""Interleaved W1 rounds: xpdnn-numpy as in the tree, the same with the proposed linear.py change
(Linear.forward swapped in for that runner's epochs only), without the compiled kernels, PyTorch,
and the GEMM-only epochs (NumPy and PyTorch); per-round load from bench.LoadProbe."""
import json, os, sys, time, statistics
import numpy as np
import torch
from xpdnn import bench, kernels
from xpdnn.layers import linear as L
from xpdnn.layers.base import ACCUMULATE
rate = float(sys.argv[1]); rounds = int(sys.argv[2]); out_path = sys.argv[3]
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 128
hidden = int(sys.argv[5]) if len(sys.argv) > 5 else 512
n = int(sys.argv[6]) if len(sys.argv) > 6 else 20000
sizes = (784, hidden, hidden, 10)
bench.set_threads(bench.usable_cores())
orig = L.Linear.forward

def patched(self, X, *, train=False, rng=None, fuse_relu=False, input_grad=True):
    W = self.params["W"]
    if X.ndim != 2 or X.shape[1] != self._n_in:
        raise ValueError("shape")
    Y = kernels.bias_act_(X @ W.T, self.params["b"] if self.use_bias else None, relu=fuse_relu)
    def backprop(dY, sink=ACCUMULATE, own_dY=False):
        dY, db = kernels.relu_backward_bias(dY, Y if fuse_relu else None, bias=self.use_bias, inplace=own_dY)
        dX = dY @ W if input_grad else None
        sink.matmul_grad(self, "W", dY, X)
        if db is not None:
            sink.add(self, "b", db)
        return dX
    return Y, backprop

X, y = bench.mnist_like(n)
P = bench.PEERS
runners = {
    "jit+linear": bench.mlp_runner(P["xpdnn-numpy"], sizes, rate, batch),
    "jit": bench.mlp_runner(P["xpdnn-numpy"], sizes, rate, batch),
    "nojit": bench.mlp_runner(P["xpdnn-numpy-nojit"], sizes, rate, batch),
    "torch": bench.mlp_runner(P["torch"], sizes, rate, batch),
    "gemm-numpy": bench.GemmEpoch(sizes, batch, lib="numpy"),
    "gemm-torch": bench.GemmEpoch(sizes, batch, lib="torch"),
}
data = {k: r.place(X, y) for k, r in runners.items()}
def epoch(name, Xd, yd):
    L.Linear.forward = patched if name == "jit+linear" else orig
    try:
        return runners[name].epoch(Xd, yd)
    finally:
        L.Linear.forward = orig
for name in runners:
    Xd, yd = data[name]; epoch(name, Xd[:8 * batch], yd[:8 * batch])
times = {k: [] for k in runners}; loads = []; losses = {}
names = list(runners)
for k in range(rounds):
    probe = bench.LoadProbe()
    for name in names[k % len(names):] + names[:k % len(names)]:
        t0 = time.perf_counter(); l = epoch(name, *data[name]); times[name].append(time.perf_counter() - t0)
        losses.setdefault(name, l)
    ld = probe.stop(); ld["noisy"] = bench.noisy(ld); loads.append(ld)
    print(k, {a: round(b[-1] * 1e3) for a, b in times.items()}, "others %.2f" % (ld["others_cores"] or -1), flush=True)
quiet = [i for i, l in enumerate(loads) if not l["noisy"]]
used = quiet if len(quiet) >= 3 else list(range(rounds))
roof = [min(times["gemm-numpy"][i], times["gemm-torch"][i]) for i in used]
def st(v): return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
summary = {}
for name in ("jit+linear", "jit", "nojit", "torch"):
    t = [times[name][i] for i in used]
    summary[name] = {"median_ms": statistics.median(t) * 1e3,
                     "vs_torch": st([times["torch"][i] / times[name][i] for i in used]),
                     "vs_nojit": st([times["nojit"][i] / times[name][i] for i in used]),
                     "roofline": st([r / x for r, x in zip(roof, t)]), "first_loss": losses[name]}
    print(f"{name:11s} {summary[name]['median_ms']:7.1f} ms  vs torch {summary[name]['vs_torch']['median']:.3f} "
          f"({summary[name]['vs_torch']['min']:.3f}-{summary[name]['vs_torch']['max']:.3f})  vs nojit "
          f"{summary[name]['vs_nojit']['median']:.3f} ({summary[name]['vs_nojit']['min']:.3f}-{summary[name]['vs_nojit']['max']:.3f})"
          f"  roofline {summary[name]['roofline']['median']:.3f} ({summary[name]['roofline']['min']:.3f}-{summary[name]['roofline']['max']:.3f})")
print("rounds used", len(used), "of", rounds, "loadavg", os.getloadavg())
json.dump({"args": sys.argv[1:], "sizes": sizes, "batch": batch, "env": bench.library_env(), "jit": kernels.jit_status(),
           "machine": bench.machine_info(), "times_s": times, "loads": loads, "used": used, "summary": summary}, open(out_path, "w"), indent=1)
