"""Benchmark harness: ``python -m xpdnn.bench`` (the CLI's ``xpdnn bench``).

Times xpdnn against peers that run in the same process with the same architecture, optimizer,
batch size, dtype (float32) and thread count, on fixed, seeded synthetic workloads:

* ``W1`` mnist-mlp     one epoch of 784-512-512-10 ReLU + softmax cross-entropy, SGD lr 0.01
  momentum 0.9, batch 128, on 20,000 x 784 samples of 10 classes; once without dropout and once
  with dropout 0.2 after each hidden layer.  Rate: samples/s.
* ``W2`` wide-softmax  softmax cross-entropy forward + backward on logits (N, 32768), N = 4096
  on the CPU, 16384 on a GPU.  Rate: logits/s.
* ``W3`` dropout       dropout (rate 0.2) forward + backward on 2**24 (CPU) / 2**28 (GPU) float32
  elements.  Rate: elements/s.
* ``W4`` large-batch   4096-4096-4096-1000 MLP, batch 4096 (GPU only).  Rate: samples/s.
* ``S``  scaling       W1's network at batch 32/128/512/2048 (hidden 512) and hidden
  128/512/2048 (batch 128).  Reported as microseconds per sample.

Peers: ``xpdnn-numpy``, ``xpdnn-torch`` (xpdnn code on PyTorch CPU tensors), ``torch`` (PyTorch
on the CPU), ``sklearn`` (MLPClassifier, W1 without dropout only), and on a CUDA machine
``xpdnn-cupy``, ``xpdnn-torch-cuda`` and ``torch-cuda``; ``xpdnn-array_api_strict`` on request.

Every run records the machine and library versions and measures the machine's GEMM roofline at
W1's shapes: the float32 matmuls of one training step (per Linear layer ``X @ W.T``,
``dY.T @ X`` and, past the first layer, ``dY @ W``), so each W1/S result is also a fraction of
``roofline samples/s = batch / (time of those GEMMs)``.  Peak resident memory for W1 comes from
one subprocess per peer (its peak RSS after one epoch, see :func:`peak_rss_mb`).

``--quick`` (``--scale 0.1``, 3 repeats) shrinks every workload so a run takes a few minutes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

WORKLOADS = {
    "W1": "mnist-mlp",
    "W2": "wide-softmax",
    "W3": "dropout",
    "W4": "large-batch",
    "S": "scaling",
}
W1_SIZES = (784, 512, 512, 10)
W1_SAMPLES = 20_000
W1_BATCH = 128
W1_DROPOUT = 0.2
LR, MOMENTUM = 0.01, 0.9
W2_CLASSES = 32_768
W2_ROWS = {"cpu": 4096, "cuda": 16_384}
W3_ELEMENTS = {"cpu": 2**24, "cuda": 2**28}
W4_SIZES = (4096, 4096, 4096, 1000)
W4_BATCH = 4096
W4_STEPS = 16
SCALING_SAMPLES = 8192
SCALING_POINTS = ((32, 512), (128, 512), (512, 512), (2048, 512), (128, 128), (128, 2048))


@dataclass(frozen=True)
class Peer:
    """One contender: ``kind`` is 'xpdnn', 'torch' or 'sklearn'; ``lib`` the array library its
    data lives in; ``device`` 'cpu' or 'cuda'."""

    name: str
    kind: str
    lib: str
    device: str


PEERS = {p.name: p for p in (
    Peer("xpdnn-numpy", "xpdnn", "numpy", "cpu"),
    Peer("xpdnn-torch", "xpdnn", "torch", "cpu"),
    Peer("torch", "torch", "torch", "cpu"),
    Peer("sklearn", "sklearn", "numpy", "cpu"),
    Peer("numpy-loop", "numpy-loop", "numpy", "cpu"),
    Peer("xpdnn-array_api_strict", "xpdnn", "array_api_strict", "cpu"),
    Peer("xpdnn-cupy", "xpdnn", "cupy", "cuda"),
    Peer("xpdnn-torch-cuda", "xpdnn", "torch", "cuda"),
    Peer("torch-cuda", "torch", "torch", "cuda"),
)}
DEFAULT_PEERS = ("xpdnn-numpy", "xpdnn-torch", "torch", "sklearn", "numpy-loop", "xpdnn-cupy", "xpdnn-torch-cuda", "torch-cuda")


@dataclass
class Config:
    """What to run.  ``scale`` multiplies every workload's sample / element count."""

    scale: float = 1.0
    repeat: int = 5
    warmup: int = 1
    threads: int = 0                      # 0: every core this process may use
    only: tuple = ("W1", "W2", "W3", "W4", "S")
    peers: tuple = DEFAULT_PEERS
    gpu: bool = True
    memory: bool = True
    profile: bool = False
    seed: int = 0
    quick: bool = False
    notes: list = field(default_factory=list)


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(int(minimum), int(round(n * scale)))


# -- machine, versions, threads ---------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info().get("brand_raw") or platform.processor()
    except Exception:
        return platform.processor() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_names() -> list:
    names = []
    try:
        from .devices import cuda_available

        if cuda_available()[0]:
            import cupy

            for i in range(cupy.cuda.runtime.getDeviceCount()):
                name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
                names.append(name.decode() if isinstance(name, bytes) else str(name))
    except Exception:
        pass
    if not names and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return names


def _mem_total_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None


def machine_info() -> dict:
    """CPU model, cores, memory, BLAS libraries and their threads (threadpoolctl), GPUs, load."""
    info = {
        "cpu": _cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(),
        "usable_cores": usable_cores(), "memory_gb": _mem_total_gb(),
        "os": platform.platform(), "hostname": platform.node(), "gpus": _gpu_names(),
    }
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: d.get(k) for k in ("internal_api", "prefix", "version", "num_threads",
                                                     "architecture", "threading_layer")}
                               for d in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


def versions() -> dict:
    import importlib

    out = {"python": platform.python_version()}
    for name in ("xpdnn", "numpy", "array_api_compat", "array_api_strict", "torch", "sklearn", "cupy",
                 "threadpoolctl"):
        if name in ("torch", "cupy", "sklearn", "array_api_strict") and name not in sys.modules:
            # only report what this run actually imported (importing CuPy can be slow)
            continue
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:
            pass
    return out


_LIMITS = []


def set_threads(n: int) -> dict:
    """Use ``n`` threads everywhere: BLAS/OpenMP pools (threadpoolctl), PyTorch intra-op threads
    and, for subprocesses, the usual environment variables.  Returns what was set."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    done = {"threads": n}
    try:
        from threadpoolctl import threadpool_limits

        _LIMITS.append(threadpool_limits(limits=n))
        done["threadpoolctl"] = True
    except ImportError:
        done["threadpoolctl"] = False
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
        done["torch"] = n
    return done


# -- data and placement ---------------------------------------------------------------------------

def mnist_like(n: int, n_features: int = 784, n_classes: int = 10, seed: int = 0):
    """Seeded synthetic classification data: X (n, n_features) float32 in [0, 1), y (n,) int64.

    Each class has a random prototype; a sample is its prototype plus uniform noise, clipped,
    so the task is learnable and nothing is downloaded."""
    rng = np.random.default_rng([seed, 784])
    protos = rng.random((n_classes, n_features), dtype=np.float32)
    y = rng.integers(0, n_classes, size=n, dtype=np.int64)
    X = np.empty((n, n_features), dtype=np.float32)
    for start in range(0, n, 4096):   # chunks keep the setup's peak memory near the data's size
        stop = min(n, start + 4096)
        noise = rng.random((stop - start, n_features), dtype=np.float32)
        np.clip(0.5 * protos[y[start:stop]] + 0.5 * noise, 0.0, 1.0, out=X[start:stop])
    return X, y


def put(host: np.ndarray, peer: Peer):
    """``host`` copied into the peer's library and device."""
    if peer.lib == "numpy":
        return host
    if peer.lib == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(host).copy()).to(peer.device)
    if peer.lib == "cupy":
        import cupy

        return cupy.asarray(host)
    if peer.lib == "array_api_strict":
        import array_api_strict

        return array_api_strict.asarray(host)
    raise ValueError(f"unknown library {peer.lib!r}")


def synchronizer(lib: str, device: str):
    """A function that waits for queued device work of ``lib`` (a no-op on the CPU)."""
    if device != "cuda":
        return lambda: None
    if lib == "torch":
        import torch

        return torch.cuda.synchronize
    import cupy

    return lambda: cupy.cuda.get_current_stream().synchronize()


def peer_available(peer: Peer) -> tuple[bool, str]:
    import importlib

    needs = {"numpy": [], "torch": ["torch"], "cupy": ["cupy"], "array_api_strict": ["array_api_strict"]}[peer.lib]
    if peer.kind == "sklearn":
        needs = ["sklearn"]
    for mod in needs:
        try:
            importlib.import_module(mod)
        except ImportError:
            return False, f"{mod} is not installed"
    if peer.device == "cuda":
        if peer.lib == "cupy":
            from .devices import cuda_available

            ok, why = cuda_available()
            if not ok:
                return False, why
        else:
            import torch

            if not torch.cuda.is_available():
                return False, "PyTorch sees no CUDA device"
    return True, ""


# -- timing ----------------------------------------------------------------------------------------

def measure(fn, *, warmup: int, repeat: int, sync=lambda: None, loops: int = 1) -> list:
    """Seconds per call of ``fn`` for ``repeat`` samples (each the mean of ``loops`` calls),
    after ``warmup`` untimed calls; ``sync`` waits for device work before each clock read."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / loops)
    return times


def _loops_for(fn, sync, target_s: float = 0.05) -> int:
    t0 = time.perf_counter()
    fn()
    sync()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(1000, int(math.ceil(target_s / dt))))


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


# -- W1 / W4 / S: one training epoch ---------------------------------------------------------------

def build_xpdnn_mlp(sizes, dropout: float = 0.0, seed: int = 0):
    """Linear -> ReLU (-> Dropout) per hidden layer, then a Linear output layer, initialized
    from ``seed``."""
    import xpdnn as xd

    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(xd.Linear(n_in, n_out, seed=seed + i))
        if i < len(sizes) - 2:
            layers.append(xd.ReLU())
            if dropout:
                layers.append(xd.Dropout(dropout, seed=seed))
    return xd.Sequential(*layers).initialize(seed)


class XpdnnMLP:
    """xpdnn.Trainer (progress off) training for one epoch per :meth:`epoch` call."""

    def __init__(self, peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
        import xpdnn as xd

        self.peer, self.batch, self.seed = peer, batch, seed
        self.net = build_xpdnn_mlp(sizes, dropout, seed)
        self.opt = xd.SGD(lr=LR, momentum=MOMENTUM)
        self.loss = xd.SoftmaxCrossEntropy()

    def place(self, X, y):
        X, y = put(X, self.peer), put(y, self.peer)
        self.net.ensure_like(X)
        return X, y

    def epoch(self, X, y) -> float:
        import xpdnn as xd

        trainer = xd.Trainer(self.net, loss=self.loss, optimizer=self.opt, batch_size=self.batch, epochs=1,
                             seed=self.seed, progress=False)
        return trainer.fit(X, y)["loss"][0]


class TorchMLP:
    """The same network, loss and optimizer in PyTorch, trained by a hand loop that does what
    xpdnn's Trainer does per step (same shuffling, finite-loss check, loss/accuracy sums).
    Starts from the weights of the xpdnn network built with the same seed."""

    def __init__(self, peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
        import torch

        self.peer, self.batch, self.seed = peer, batch, seed
        ref = build_xpdnn_mlp(sizes, dropout, seed)   # the same layer indices, so the same init
        mods = []
        for i, lin in enumerate(l for l in ref.layers if hasattr(l, "n_out")):
            m = torch.nn.Linear(lin.n_in, lin.n_out)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.asarray(lin.params["W"], dtype=np.float32)))
                m.bias.copy_(torch.from_numpy(np.asarray(lin.params["b"], dtype=np.float32)))
            mods.append(m)
            if i < len(sizes) - 2:
                mods.append(torch.nn.ReLU())
                if dropout:
                    mods.append(torch.nn.Dropout(dropout))
        self.model = torch.nn.Sequential(*mods).to(peer.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def place(self, X, y):
        return put(X, self.peer), put(y, self.peer)

    def epoch(self, X, y) -> float:
        import torch
        import torch.nn.functional as F

        N = X.shape[0]
        order = torch.from_numpy(np.random.default_rng([self.seed, 0]).permutation(N).astype(np.int64))
        order = order.to(X.device)
        total = torch.zeros((), device=X.device)
        correct = torch.zeros((), dtype=torch.int64, device=X.device)
        self.model.train()
        for start in range(0, N, self.batch):
            idx = order[start:start + self.batch]
            Xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            self.opt.zero_grad(set_to_none=True)
            Z = self.model(Xb)
            loss = F.cross_entropy(Z, yb)
            if not bool(torch.isfinite(loss)):
                raise RuntimeError("torch peer: loss is not finite")
            loss.backward()
            self.opt.step()
            total += loss.detach() * Xb.shape[0]
            correct += (Z.detach().argmax(dim=1) == yb).sum()
        return float(total) / N


class SklearnMLP:
    """scikit-learn's MLPClassifier for one epoch: sgd, momentum 0.9 (not Nesterov), lr 0.01,
    alpha 0, max_iter 1 (its ConvergenceWarning silenced).  Each call is a fresh ``fit``, which
    includes sklearn's own weight initialization.  No dropout."""

    def __init__(self, peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
        if dropout:
            raise ValueError("scikit-learn's MLPClassifier has no dropout")
        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="sgd",
                                 momentum=MOMENTUM, nesterovs_momentum=False, learning_rate_init=LR,
                                 batch_size=batch, alpha=0.0, max_iter=1, shuffle=True, random_state=seed)

    def place(self, X, y):
        return X, y

    def epoch(self, X, y) -> float:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(X, y)
        return float(self.clf.loss_)


class NumpyLoopMLP:
    """The xpdnn-numpy epoch with the framework taken away: the same network, initial weights,
    shuffling, Philox dropout masks, loss and SGD update written as one bare NumPy loop over
    the layers, calling the same BLAS paths (:mod:`xpdnn.kernels.cpu`) and keeping only the work
    a step cannot skip.  Not a library a user would pick: the reference for how much of the GEMM
    roofline plain NumPy reaches at all, and so how much of xpdnn's gap to the roofline is its
    own overhead.  It reaches xpdnn's first-epoch loss (checked in ``tests/test_bench_smoke.py``)."""

    def __init__(self, peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
        ref = build_xpdnn_mlp(sizes, dropout, seed)   # the same layer indices, so the same init
        lins = [lay for lay in ref.layers if hasattr(lay, "n_out")]
        self.W = [np.array(lay.params["W"], dtype=np.float32) for lay in lins]
        self.b = [np.array(lay.params["b"], dtype=np.float32) for lay in lins]
        self.vW = [np.zeros_like(w) for w in self.W]
        self.vb = [np.zeros_like(b) for b in self.b]
        self.rate, self.batch, self.seed = float(dropout), batch, seed

    def place(self, X, y):
        return X, y

    def epoch(self, X, y) -> float:
        from .kernels import cpu
        from .random import keep_mask

        W, b, vW, vb, L = self.W, self.b, self.vW, self.vb, len(self.W)
        scale = np.float32(1.0 / (1.0 - self.rate))
        N, counter, total, correct = X.shape[0], 0, 0.0, 0
        order = np.random.default_rng([self.seed, 0]).permutation(N)
        for start in range(0, N, self.batch):
            idx = order[start:start + self.batch]
            h, yb = X.take(idx, axis=0), y.take(idx)
            n, acts, masks = h.shape[0], [], []
            for i in range(L):                       # forward: Linear (+ ReLU (+ dropout))
                acts.append(h)
                h = h @ W[i].T
                h += b[i]
                if i < L - 1:
                    cpu.relu_(h)
                    if self.rate:
                        keep = keep_mask(self.seed, counter, h.shape, self.rate)
                        counter += 1
                        h *= keep
                        h *= scale
                        masks.append(keep)
            rows = np.arange(n)                      # softmax cross-entropy, mean over the batch
            h -= h.max(axis=1, keepdims=True)
            picked = h[rows, yb]
            np.exp(h, out=h)
            sums = h.sum(axis=1)
            loss = float(np.mean(np.log(sums) - picked))
            if not math.isfinite(loss):
                raise RuntimeError("numpy-loop peer: loss is not finite")
            correct += int(np.count_nonzero(h.argmax(axis=1) == yb))   # the accuracy sum every peer keeps
            h /= sums[:, None]
            h[rows, yb] -= 1.0
            h *= np.float32(1.0 / n)
            dY = h
            for i in reversed(range(L)):             # backward + SGD momentum, layer by layer
                dX = dY @ W[i] if i else None
                cpu.gemm_tn_acc_(dY, acts[i], vW[i], MOMENTUM)
                vb[i] *= np.float32(MOMENTUM)
                vb[i] += dY.sum(axis=0)
                cpu.axpy_flat_(-LR, vW[i], W[i])
                cpu.axpy_flat_(-LR, vb[i], b[i])
                if i:
                    if self.rate:
                        dX *= masks[i - 1]
                        dX *= scale
                    dX *= acts[i] > 0
                    dY = dX
            total += loss * n
        return total / N


def mlp_runner(peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
    """An object with ``place(X_host, y_host) -> (X, y)`` and ``epoch(X, y) -> mean loss``."""
    cls = {"xpdnn": XpdnnMLP, "torch": TorchMLP, "sklearn": SklearnMLP, "numpy-loop": NumpyLoopMLP}[peer.kind]
    return cls(peer, sizes, dropout, batch, seed)


def time_epochs(peer: Peer, X_host, y_host, sizes, dropout, batch, cfg: Config) -> dict:
    """Median and min seconds of one training epoch; warm-up epochs use the first
    ``min(N, 8 * batch)`` samples."""
    runner = mlp_runner(peer, sizes, dropout, batch, cfg.seed)
    X, y = runner.place(X_host, y_host)
    n_warm = min(X_host.shape[0], 8 * batch)
    Xw, yw = X[:n_warm, ...], y[:n_warm, ...]
    sync = synchronizer(peer.lib, peer.device)
    for _ in range(cfg.warmup):
        runner.epoch(Xw, yw)
    sync()
    times, losses = [], []
    for _ in range(cfg.repeat):
        t0 = time.perf_counter()
        losses.append(runner.epoch(X, y))
        sync()
        times.append(time.perf_counter() - t0)
    return {"times_s": times, "first_epoch_loss": losses[0]}


GEMM_PEER = Peer("gemm-roofline", "gemm", "numpy", "cpu")


def time_epochs_interleaved(peers, X_host, y_host, sizes, dropout, batch, cfg: Config, gemm: bool = False) -> dict:
    """Like :func:`time_epochs` for several peers at once, their timed epochs interleaved: round
    ``k`` runs one epoch of every peer, in an order rotated each round, so a machine whose speed
    drifts (a shared VM) slows every peer alike and the per-round ratios stay comparable.
    With ``gemm`` a :class:`GemmEpoch` (NumPy) runs in every round too, as ``"gemm-roofline"``.
    Returns ``{peer name: result dict or the exception it raised}``."""
    runners, out = {}, {}
    for peer in list(peers) + ([GEMM_PEER] if gemm else []):
        try:
            runner = (GemmEpoch(sizes, batch, cfg.seed) if peer is GEMM_PEER
                      else mlp_runner(peer, sizes, dropout, batch, cfg.seed))
            X, y = runner.place(X_host, y_host)
            n_warm = min(X_host.shape[0], 8 * batch)
            sync = synchronizer(peer.lib, peer.device)
            for _ in range(cfg.warmup):
                runner.epoch(X[:n_warm, ...], y[:n_warm, ...])
            sync()
            runners[peer.name] = (runner, X, y, sync)
            out[peer.name] = {"times_s": [], "first_epoch_loss": None}
        except Exception as exc:     # a broken peer must not hide the others' numbers
            out[peer.name] = exc
    names = list(runners)
    for k in range(cfg.repeat):
        for name in names[k % len(names):] + names[:k % len(names)] if names else []:
            if isinstance(out[name], Exception):
                continue
            runner, X, y, sync = runners[name]
            try:
                t0 = time.perf_counter()
                loss = runner.epoch(X, y)
                sync()
                out[name]["times_s"].append(time.perf_counter() - t0)
                if out[name]["first_epoch_loss"] is None:
                    out[name]["first_epoch_loss"] = loss
            except Exception as exc:
                out[name] = exc
    return out


def paired_roofline(times, gemm_times):
    """Median over rounds of ``GEMM-only epoch time / peer epoch time``: the roofline fraction
    with both measured in the same round."""
    pairs = [g / t for t, g in zip(times, gemm_times) if t > 0]
    return statistics.median(pairs) if pairs else None


def paired_ratio(rec: dict, ref: dict):
    """Median over rounds of ``ref time / rec time`` for two interleaved records (speed of
    ``rec`` relative to ``ref`` with the machine's drift paired out), or None."""
    if not (rec.get("interleaved") and ref.get("interleaved")):
        return None
    pairs = [b / a for a, b in zip(rec["times_s"], ref["times_s"]) if a > 0]
    return statistics.median(pairs) if pairs else None


# -- W2 / W3: single operations --------------------------------------------------------------------

def softmax_ce_step(peer: Peer, Z, y):
    """A function computing softmax cross-entropy and its gradient w.r.t. the logits Z (N, C)."""
    if peer.kind == "xpdnn":
        import xpdnn as xd

        loss_fn = xd.SoftmaxCrossEntropy()

        def step():
            return loss_fn(Z, y)
        return step
    import torch
    import torch.nn.functional as F

    Zr = Z.detach().requires_grad_(True)

    def step():
        loss = F.cross_entropy(Zr, y)
        return loss, torch.autograd.grad(loss, Zr)[0]
    return step


def dropout_step(peer: Peer, X, dY, rate: float = 0.2, seed: int = 0):
    """A function running dropout forward and backward on X (any shape) with upstream dY."""
    if peer.kind == "xpdnn":
        from .layers.dropout import Dropout
        from .random import Stream

        layer, stream = Dropout(rate), Stream(seed)

        def step():
            Y, backprop = layer.forward(X, train=True, rng=stream)
            return Y, backprop(dY)
        return step
    import torch
    import torch.nn.functional as F

    Xr = X.detach().requires_grad_(True)

    def step():
        Y = F.dropout(Xr, rate, training=True)
        return Y, torch.autograd.grad(Y, Xr, dY)[0]
    return step


# -- GPU memory bandwidth and allocation peaks (W2 / W3 targets) -----------------------------------

def peak_bandwidth(memory_clock_khz: float, bus_width_bits: float) -> float:
    """Theoretical DRAM bandwidth in bytes/s: two transfers per memory clock (DDR / HBM) over
    the whole bus, as NVIDIA's data sheets count it (H100 SXM: 2619 MHz x 5120 bit = 3.35 TB/s)."""
    return 2.0 * memory_clock_khz * 1e3 * bus_width_bits / 8.0


def gpu_bandwidth(lib: str) -> dict:
    """The current CUDA device's memory bandwidth: the data-sheet peak from its attributes and
    a measured device-to-device copy of 1 GiB (bytes read + bytes written per second, best of 5)."""
    out = {}
    nbytes = 1 << 30
    if lib == "cupy":
        import cupy

        rt = cupy.cuda.runtime
        dev = cupy.cuda.Device().id
        clock = rt.deviceGetAttribute(rt.cudaDevAttrMemoryClockRate, dev)
        bus = rt.deviceGetAttribute(rt.cudaDevAttrGlobalMemoryBusWidth, dev)
        out.update(memory_clock_khz=clock, bus_width_bits=bus, peak_bytes_per_s=peak_bandwidth(clock, bus))
        a = cupy.ones(nbytes // 4, dtype=cupy.float32)
        b = cupy.empty_like(a)

        def copy():
            b[...] = a
    else:
        import torch

        a = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
        b = torch.empty_like(a)

        def copy():
            b.copy_(a)
    times = measure(copy, warmup=2, repeat=5, sync=synchronizer(lib, "cuda"))
    out["copy_bytes_per_s"] = 2 * nbytes / min(times)
    return out


def gpu_step_memory(peer: Peer, step) -> int:
    """Peak bytes the device allocator hands out during one call of ``step`` beyond what was
    allocated before it; the step's outputs (the gradient) count, as they stay allocated."""
    if peer.lib == "cupy":
        import cupy

        class PeakHook(cupy.cuda.MemoryHook):
            name = "xpdnn-bench-peak"

            def __init__(self):
                self.now = self.peak = 0

            def malloc_postprocess(self, **kw):
                self.now += kw["mem_size"]
                self.peak = max(self.peak, self.now)

            def free_postprocess(self, **kw):
                self.now -= kw["mem_size"]

        hook = PeakHook()
        with hook:
            out = step()
            cupy.cuda.Device().synchronize()
        del out
        return int(hook.peak)
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def with_traffic(r: "Run", rec: dict, peer: Peer, min_bytes: int, step, output_bytes: int) -> dict:
    """Add the minimal-traffic bandwidth to a W2/W3 record and, on a GPU, the fractions of the
    device's bandwidth and the step's peak extra allocation (measurement failures are noted in
    the record, never lose the timing)."""
    rec["min_bytes"] = int(min_bytes)
    rec["bytes_per_s"] = min_bytes / rec["median_s"]
    if peer.device != "cuda":
        return rec
    try:
        bw = r.gpu_bandwidth(peer.lib)
        rec["device_bandwidth"] = bw
        if "peak_bytes_per_s" in bw:
            rec["bandwidth_fraction_peak"] = rec["bytes_per_s"] / bw["peak_bytes_per_s"]
        rec["bandwidth_fraction_copy"] = rec["bytes_per_s"] / bw["copy_bytes_per_s"]
    except Exception as exc:
        rec["device_bandwidth_error"] = f"{type(exc).__name__}: {exc}"
    try:
        rec["extra_memory_bytes"] = gpu_step_memory(peer, step)
        rec["extra_memory_vs_output"] = rec["extra_memory_bytes"] / output_bytes
    except Exception as exc:
        rec["extra_memory_error"] = f"{type(exc).__name__}: {exc}"
    return rec


# -- peak memory (subprocess) ------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``getrusage(...).ru_maxrss`` would
    also count the parent's resident memory, because Linux carries the high-water mark across
    fork + exec, so a child started from a big benchmark process would report the parent's size.
    Elsewhere it is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024   # bytes on macOS, KiB on Linux


def _rss_now_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child_memory(spec: str, scale: float, threads: int, seed: int) -> dict:
    """Body of ``--child-memory W1:<variant>:<peer>``: one W1 epoch, then the peak RSS."""
    _, variant, name = spec.split(":", 2)
    peer = PEERS[name]
    if peer.lib == "torch" or peer.kind == "torch":
        import torch  # noqa: F401  (so set_threads reaches it)
    set_threads(threads)
    X, y = mnist_like(_scaled(W1_SAMPLES, scale, 2 * W1_BATCH), seed=seed)
    dropout = W1_DROPOUT if variant == "dropout" else 0.0
    runner = mlp_runner(peer, W1_SIZES, dropout, W1_BATCH, seed)
    X, y = runner.place(X, y)
    setup = peak_rss_mb()
    before = _rss_now_mb()
    reset = _reset_peak_rss()
    runner.epoch(X, y)
    synchronizer(peer.lib, peer.device)()
    epoch_peak = peak_rss_mb()
    out = {"setup_rss_mb": setup, "peak_rss_mb": max(setup, epoch_peak), "rss_before_epoch_mb": before}
    if reset:   # the high-water mark was reset before the epoch: the epoch's own peak is known
        out["epoch_peak_rss_mb"] = epoch_peak
        out["train_rss_mb"] = epoch_peak - before
    if peer.device == "cuda" and peer.lib == "torch":
        import torch

        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    elif peer.device == "cuda":
        import cupy

        out["gpu_peak_mb"] = cupy.get_default_memory_pool().total_bytes() / 2**20
    return out


def peak_memory(peer: Peer, variant: str, cfg: Config, threads: int) -> dict:
    """Run one W1 epoch of ``peer`` in a fresh interpreter and return its peak RSS (MiB):
    ``peak_rss_mb`` over the whole process, ``setup_rss_mb`` the peak before the epoch (imports,
    data, model) and ``train_rss_mb`` how far the epoch rose above the resident size it started
    from (on Linux the high-water mark is reset before the epoch; elsewhere it is
    ``peak - setup``, which is 0 when setup's transient peak was higher)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, "-m", "xpdnn.bench", "--child-memory", f"W1:{variant}:{peer.name}",
           "--scale", repr(cfg.scale), "--threads", str(threads), "--seed", str(cfg.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed: {proc.stderr.strip()[-500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.setdefault("train_rss_mb", out["peak_rss_mb"] - out["setup_rss_mb"])
    return out


# -- the run -----------------------------------------------------------------------------------------

def _record(workload, variant, peer: Peer, times, work, unit, params, **extra) -> dict:
    med, best = statistics.median(times), min(times)
    rec = {"workload": workload, "name": WORKLOADS[workload], "variant": variant, "peer": peer.name,
           "device": peer.device, "params": params, "times_s": times, "median_s": med, "min_s": best,
           "work": work, "unit": unit, "rate_median": work / med, "rate_best": work / best}
    rec.update(extra)
    return rec


def _log(msg, quiet=False):
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


class Run:
    """Collects the records of one harness run (see :func:`run`)."""

    def __init__(self, cfg: Config, quiet: bool):
        self.cfg, self.quiet = cfg, quiet
        self.results, self.skipped, self.errors = [], [], []
        self.rooflines: dict = {}

    def peers(self, workload: str, *, device: str | None = None, kinds=("xpdnn", "torch", "sklearn")):
        out = []
        for name in self.cfg.peers:
            peer = PEERS[name]
            if peer.kind not in kinds or (device and peer.device != device):
                continue
            if peer.device == "cuda" and not self.cfg.gpu:
                self.skip(workload, peer.name, "GPU peers disabled (--no-gpu)")
                continue
            ok, why = peer_available(peer)
            if not ok:
                self.skip(workload, peer.name, why)
                continue
            out.append(peer)
        return out

    def gpu_bandwidth(self, lib: str) -> dict:
        cache = self.__dict__.setdefault("_bandwidth", {})
        if lib not in cache:
            cache[lib] = gpu_bandwidth(lib)
        return cache[lib]

    def skip(self, workload, peer, reason):
        if not any(s["workload"] == workload and s["peer"] == peer for s in self.skipped):
            self.skipped.append({"workload": workload, "peer": peer, "reason": reason})

    def attempt(self, workload, variant, peer, fn):
        _log(f"  {workload} {variant} {peer.name} ...", self.quiet)
        try:
            rec = fn()
        except Exception as exc:   # a broken peer must not hide the others' numbers
            self.errors.append({"workload": workload, "variant": variant, "peer": peer.name,
                                "error": f"{type(exc).__name__}: {exc}"})
            _log(f"    failed: {type(exc).__name__}: {exc}", self.quiet)
            return None
        self.results.append(rec)
        return rec

    def roofline(self, batch, sizes, devices) -> dict:
        """Per library GEMM timings and the best per device, cached by shape."""
        key = (batch, tuple(sizes))
        if key in self.rooflines:
            return self.rooflines[key]
        libs = [("numpy", "cpu")] if "cpu" in devices else []     # no CPU GEMMs for a GPU-only workload
        if "cpu" in devices and ("torch" in sys.modules or any(PEERS[p].lib == "torch" for p in self.cfg.peers)):
            if peer_available(PEERS["torch"])[0]:
                libs.append(("torch", "cpu"))
        if "cuda" in devices:
            for name, lib in (("xpdnn-cupy", "cupy"), ("torch-cuda", "torch")):
                if self.cfg.gpu and peer_available(PEERS[name])[0]:
                    libs.append((lib, "cuda"))
        per_lib = [gemm_roofline(batch, sizes, lib, dev, repeat=max(3, self.cfg.repeat), warmup=1,
                                 seed=self.cfg.seed) for lib, dev in libs]
        best = {}
        for r in per_lib:
            if r["device"] not in best or r["samples_per_s"] > best[r["device"]]["samples_per_s"]:
                best[r["device"]] = r
        self.rooflines[key] = {"per_lib": per_lib, "best": best}
        return self.rooflines[key]

    def refresh_rooflines(self):
        """Measure every roofline once more and keep each library's faster run, then recompute
        the fractions: on a busy machine one measurement can land in a slow moment."""
        for key, roof in self.rooflines.items():
            for i, old in enumerate(roof["per_lib"]):
                new = gemm_roofline(key[0], key[1], old["lib"], old["device"], repeat=max(3, self.cfg.repeat),
                                    warmup=1, seed=self.cfg.seed)
                if new["min_s"] < old["min_s"]:
                    roof["per_lib"][i] = new
            roof["best"] = {}
            for x in roof["per_lib"]:
                if x["device"] not in roof["best"] or x["samples_per_s"] > roof["best"][x["device"]]["samples_per_s"]:
                    roof["best"][x["device"]] = x
        for rec in self.results:
            if "roofline_samples_per_s" in rec:
                self.with_roofline(rec, self.rooflines[(rec["params"]["batch"], tuple(rec["params"]["sizes"]))])

    def with_roofline(self, rec, roof):
        top = roof["best"].get(rec["device"])
        if top is not None:
            rec["roofline_samples_per_s"] = top["samples_per_s"]
            rec["roofline_lib"] = top["lib"]
            rec["roofline_fraction"] = rec["rate_median"] / top["samples_per_s"]
            rec["roofline_us_per_sample"] = 1e6 / top["samples_per_s"]
        return rec


def run_w1(r: Run):
    cfg = r.cfg
    n = _scaled(W1_SAMPLES, cfg.scale, 2 * W1_BATCH)
    X, y = mnist_like(n, seed=cfg.seed)
    peers = r.peers("W1", kinds=("xpdnn", "torch", "sklearn", "numpy-loop"))
    roof = r.roofline(W1_BATCH, W1_SIZES, {p.device for p in peers})
    for variant, rate in (("no-dropout", 0.0), ("dropout", W1_DROPOUT)):
        timed = [p for p in peers if not (p.kind == "sklearn" and rate)]
        for peer in peers:
            if peer not in timed:
                r.skip("W1 dropout", peer.name, "scikit-learn's MLPClassifier has no dropout")
        params = {"n_samples": n, "batch": W1_BATCH, "sizes": list(W1_SIZES), "dropout": rate,
                  "lr": LR, "momentum": MOMENTUM, "dtype": "float32"}
        _log(f"  W1 {variant}: {', '.join(p.name for p in timed)}, {cfg.repeat} interleaved rounds ...", r.quiet)
        gemm = any(p.device == "cpu" for p in timed)
        results = time_epochs_interleaved(timed, X, y, W1_SIZES, rate, W1_BATCH, cfg, gemm=gemm)
        gemm_times = results.get(GEMM_PEER.name)
        if isinstance(gemm_times, Exception):
            r.errors.append({"workload": "W1", "variant": variant, "peer": GEMM_PEER.name,
                             "error": f"{type(gemm_times).__name__}: {gemm_times}"})
            gemm_times = None
        for peer in timed:
            def go(peer=peer, params=params, variant=variant):
                t = results[peer.name]
                if isinstance(t, Exception):
                    raise t
                rec = _record("W1", variant, peer, t["times_s"], n, "samples/s", params,
                              first_epoch_loss=t["first_epoch_loss"], interleaved=True)
                if peer.device == "cpu" and gemm_times is not None:
                    rec["gemm_epoch_times_s"] = gemm_times["times_s"]
                    rec["roofline_fraction_paired"] = paired_roofline(t["times_s"], gemm_times["times_s"])
                return r.with_roofline(rec, roof)
            rec = r.attempt("W1", variant, peer, go)
            if rec is not None and cfg.memory:
                try:
                    rec.update(peak_memory(peer, variant, cfg, r.threads))
                except Exception as exc:
                    r.errors.append({"workload": "W1-memory", "variant": variant, "peer": peer.name,
                                     "error": f"{type(exc).__name__}: {exc}"})


def run_w2(r: Run):
    cfg = r.cfg
    for device in ("cpu", "cuda"):
        peers = r.peers("W2", device=device, kinds=("xpdnn", "torch"))
        if not peers:
            continue
        N = _scaled(W2_ROWS[device], cfg.scale, 8)
        rng = np.random.default_rng([cfg.seed, 2])
        Z_host = rng.standard_normal((N, W2_CLASSES), dtype=np.float32)
        y_host = rng.integers(0, W2_CLASSES, size=N, dtype=np.int64)
        for peer in peers:
            def go(peer=peer):
                Z, y = put(Z_host, peer), put(y_host, peer)
                step = softmax_ce_step(peer, Z, y)
                times = measure(step, warmup=cfg.warmup, repeat=cfg.repeat,
                                sync=synchronizer(peer.lib, peer.device))
                rec = _record("W2", f"N={N},C={W2_CLASSES}", peer, times, N * W2_CLASSES, "logits/s",
                              {"N": N, "C": W2_CLASSES, "dtype": "float32"})
                # minimal traffic: the logits read once, the gradient written once
                return with_traffic(r, rec, peer, 2 * 4 * N * W2_CLASSES, step, 4 * N * W2_CLASSES)
            r.attempt("W2", device, peer, go)


def run_w3(r: Run):
    cfg = r.cfg
    for device in ("cpu", "cuda"):
        peers = r.peers("W3", device=device, kinds=("xpdnn", "torch"))
        if not peers:
            continue
        n = _scaled(W3_ELEMENTS[device], cfg.scale, 1024)
        cols = 4096 if n >= 4096 * 4 else 64
        rows = -(-n // cols)
        rng = np.random.default_rng([cfg.seed, 3])
        X_host = rng.standard_normal((rows, cols), dtype=np.float32)
        dY_host = rng.standard_normal((rows, cols), dtype=np.float32)
        for peer in peers:
            def go(peer=peer):
                X, dY = put(X_host, peer), put(dY_host, peer)
                step = dropout_step(peer, X, dY, W1_DROPOUT, cfg.seed)
                times = measure(step, warmup=cfg.warmup, repeat=cfg.repeat,
                                sync=synchronizer(peer.lib, peer.device))
                rec = _record("W3", f"{rows}x{cols}", peer, times, rows * cols, "elements/s",
                              {"shape": [rows, cols], "rate": W1_DROPOUT, "dtype": "float32"})
                # minimal traffic: forward reads X, writes Y; backward reads dY, writes dX
                return with_traffic(r, rec, peer, 4 * 4 * rows * cols, step, 2 * 4 * rows * cols)
            r.attempt("W3", device, peer, go)


def run_w4(r: Run):
    cfg = r.cfg
    peers = r.peers("W4", device="cuda", kinds=("xpdnn", "torch"))
    if not peers:
        r.skip("W4", "*", "W4 large-batch runs on a GPU only (no usable CUDA device or GPU peers)")
        return
    steps = _scaled(W4_STEPS, cfg.scale, 2)
    n = steps * W4_BATCH
    rng = np.random.default_rng([cfg.seed, 4])
    X = rng.standard_normal((n, W4_SIZES[0]), dtype=np.float32)
    y = rng.integers(0, W4_SIZES[-1], size=n, dtype=np.int64)
    roof = r.roofline(W4_BATCH, W4_SIZES, {"cuda"})
    for peer in peers:
        params = {"n_samples": n, "batch": W4_BATCH, "sizes": list(W4_SIZES), "dtype": "float32"}

        def go(peer=peer, params=params):
            t = time_epochs(peer, X, y, W4_SIZES, 0.0, W4_BATCH, cfg)
            rec = _record("W4", f"{steps} steps", peer, t["times_s"], n, "samples/s", params,
                          first_epoch_loss=t["first_epoch_loss"])
            return r.with_roofline(rec, roof)
        r.attempt("W4", "cuda", peer, go)


def run_scaling(r: Run):
    cfg = r.cfg
    peers = [p for p in r.peers("S", kinds=("xpdnn", "torch")) if p.name in ("xpdnn-numpy", "torch", "xpdnn-cupy",
                                                                           "torch-cuda")]
    for batch, hidden in SCALING_POINTS:
        n = _scaled(SCALING_SAMPLES, cfg.scale, 2 * batch)
        sizes = (784, hidden, hidden, 10)
        X, y = mnist_like(n, seed=cfg.seed)
        roof = r.roofline(batch, sizes, {p.device for p in peers})
        results = time_epochs_interleaved(peers, X, y, sizes, 0.0, batch, cfg)   # the drift pairs out
        for peer in peers:
            params = {"n_samples": n, "batch": batch, "hidden": hidden, "sizes": list(sizes), "dtype": "float32"}

            def go(peer=peer, params=params):
                t = results[peer.name]
                if isinstance(t, Exception):
                    raise t
                rec = _record("S", f"batch={batch},hidden={hidden}", peer, t["times_s"], n, "samples/s", params,
                              interleaved=True)
                rec["us_per_sample"] = 1e6 / rec["rate_median"]
                return r.with_roofline(rec, roof)
            r.attempt("S", f"batch={batch},hidden={hidden}", peer, go)


def profile_w1(cfg: Config, top: int = 15) -> dict:
    """cProfile one W1 epoch of xpdnn-numpy per variant; the ``top`` functions by own time."""
    import cProfile
    import pstats

    n = _scaled(W1_SAMPLES, cfg.scale, 2 * W1_BATCH)
    X, y = mnist_like(n, seed=cfg.seed)
    out = {}
    for variant, rate in (("no-dropout", 0.0), ("dropout", W1_DROPOUT)):
        runner = mlp_runner(PEERS["xpdnn-numpy"], W1_SIZES, rate, W1_BATCH, cfg.seed)
        runner.epoch(X[:8 * W1_BATCH], y[:8 * W1_BATCH])
        prof = cProfile.Profile()
        prof.enable()
        runner.epoch(X, y)
        prof.disable()
        stats = pstats.Stats(prof)
        total = stats.total_tt
        rows = []
        for (fname, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
            rows.append({"function": f"{os.path.basename(fname)}:{line}({func})", "ncalls": nc,
                         "tottime_s": tt, "cumtime_s": ct, "share": tt / total if total else 0.0})
        rows.sort(key=lambda r: -r["tottime_s"])
        out[variant] = {"total_s": total, "top": rows[:top]}
    return out


def ratios(results) -> dict:
    """Headline ratios: each xpdnn peer's speed (median rate) and W1 peak RSS relative to PyTorch
    on the same device, W1's fraction of the GEMM roofline, and xpdnn-numpy's speed relative to
    the bare ``numpy-loop`` doing the same work."""
    out = {}
    by = {(r["workload"], r["variant"], r["peer"]): r for r in results}
    for (w, v, p), rec in sorted(by.items()):
        if not p.startswith("xpdnn"):
            continue
        ref = by.get((w, v, "torch-cuda" if rec["device"] == "cuda" else "torch"))
        if ref is not None:
            out[f"{w} {v}: {p} / {ref['peer']} speed"] = rec["rate_median"] / ref["rate_median"]
            paired = paired_ratio(rec, ref)
            if paired is not None:
                out[f"{w} {v}: {p} / {ref['peer']} speed, median of per-round ratios"] = paired
            if "peak_rss_mb" in rec and "peak_rss_mb" in ref:
                out[f"{w} {v}: {p} / {ref['peer']} peak RSS"] = rec["peak_rss_mb"] / ref["peak_rss_mb"]
        loop = by.get((w, v, "numpy-loop")) if p == "xpdnn-numpy" else None
        if loop is not None:     # what the framework costs over the bare loop doing the same work
            out[f"{w} {v}: {p} / numpy-loop speed"] = rec["rate_median"] / loop["rate_median"]
            paired = paired_ratio(rec, loop)
            if paired is not None:
                out[f"{w} {v}: {p} / numpy-loop speed, median of per-round ratios"] = paired
        if w in ("W1", "W4") and "roofline_fraction" in rec:
            out[f"{w} {v}: {p} fraction of GEMM roofline"] = rec["roofline_fraction"]
        for key, what in (("bandwidth_fraction_peak", "fraction of the data-sheet memory bandwidth"),
                          ("bandwidth_fraction_copy", "fraction of the measured copy bandwidth")):
            if key in rec:
                out[f"{w} {v}: {p} {what}"] = rec[key]
        if "extra_memory_bytes" in rec:
            out[f"{w} {v}: {p} peak extra device memory, MiB"] = rec["extra_memory_bytes"] / 2**20
            if ref is not None and ref.get("extra_memory_bytes"):
                out[f"{w} {v}: {p} / {ref['peer']} peak extra device memory"] = \
                    rec["extra_memory_bytes"] / ref["extra_memory_bytes"]
        if rec.get("roofline_fraction_paired") is not None:
            out[f"{w} {v}: {p} fraction of GEMM roofline, median of per-round fractions"] = \
                rec["roofline_fraction_paired"]
    return out


def run(cfg: Config, quiet: bool = False) -> dict:
    """Run the workloads in ``cfg.only`` and return the report (a JSON-able dict)."""
    threads = cfg.threads or usable_cores()
    if any(PEERS[p].lib == "torch" or PEERS[p].kind == "torch" for p in cfg.peers):
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
    thread_setup = set_threads(threads)
    r = Run(cfg, quiet)
    r.threads = threads
    started = _dt.datetime.now(_dt.timezone.utc)
    machine = machine_info()
    steps = {"W1": run_w1, "W2": run_w2, "W3": run_w3, "W4": run_w4, "S": run_scaling}
    elapsed = {}
    for w in cfg.only:
        _log(f"{w} {WORKLOADS[w]}", quiet)
        t0 = time.perf_counter()
        steps[w](r)
        elapsed[w] = round(time.perf_counter() - t0, 2)
        _log(f"{w} done in {elapsed[w]:.1f} s", quiet)
    if r.rooflines:
        _log("rooflines, second measurement", quiet)
        r.refresh_rooflines()
    report = {
        "schema": 1,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(),
        "workload_seconds": elapsed,
        "config": {"scale": cfg.scale, "quick": cfg.quick, "repeat": cfg.repeat, "warmup": cfg.warmup,
                   "threads": threads, "thread_setup": thread_setup, "only": list(cfg.only),
                   "peers": list(cfg.peers), "gpu": cfg.gpu, "memory": cfg.memory, "seed": cfg.seed},
        "machine": machine,
        "versions": versions(),
        "roofline": [{"batch": b, "sizes": list(s), **v} for (b, s), v in r.rooflines.items()],
        "results": r.results,
        "ratios": ratios(r.results),
        "skipped": r.skipped,
        "errors": r.errors,
        "notes": list(cfg.notes),
    }
    try:
        report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if cfg.profile:
        _log("profile: xpdnn-numpy W1", quiet)
        report["profile"] = profile_w1(cfg)
    return report


# -- output --------------------------------------------------------------------------------------------

def _si(x: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.3g}{unit}"
    return f"{x:.3g}"


def _table(head, rows) -> list:
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(head), "-" * (sum(widths) + 2 * (len(head) - 1))] + [fmt(r) for r in rows]


def format_report(report: dict) -> str:
    """The report as text tables: machine, rooflines, one row per (workload, variant, peer),
    ratios, skipped peers and errors."""
    m, c = report["machine"], report["config"]
    gpus = ", ".join(m.get("gpus") or []) or "none"
    blas = m.get("threadpools")
    if isinstance(blas, list):
        blas = ", ".join(f"{d['internal_api']} {d.get('version') or ''} ({d.get('architecture') or ''}, "
                         f"{d['num_threads']} threads)".replace(" ,", ",").replace("(, ", "(")
                         for d in blas)
    vers = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines = [f"xpdnn bench  {report['date']}  scale {c['scale']}  repeat {c['repeat']}  warmup {c['warmup']}  "
             f"threads {c['threads']}",
             f"machine: {m['cpu']} ({m['usable_cores']}/{m['cores']} cores, {m.get('memory_gb')} GB), GPU: {gpus}, "
             f"load {m.get('loadavg')} -> {m.get('loadavg_end')}",
             f"BLAS/OpenMP: {blas}", f"versions: {vers}", ""]
    if report["roofline"]:
        rows = [(f"batch {r['batch']}", "-".join(map(str, r["sizes"])), f"{x['lib']}/{x['device']}",
                 f"{x['gflops']:.1f}", f"{x['min_s'] * 1e3:.3f}", _si(x["samples_per_s"]))
                for r in report["roofline"] for x in r["per_lib"]]
        lines += ["GEMM roofline (the float32 matmuls of one training step)"]
        lines += _table(("shape", "sizes", "lib", "GFLOP/s", "ms/step", "samples/s"), rows) + [""]
    res = report["results"]
    by = {(r["workload"], r["variant"], r["peer"]): r for r in res}
    rows = []
    for r in res:
        ref = by.get((r["workload"], r["variant"], "torch-cuda" if r["device"] == "cuda" else "torch"))
        vs = f"{r['rate_median'] / ref['rate_median']:.2f}" if ref else ""
        roof = _roof_cell(r)
        rss = f"{r['peak_rss_mb']:.0f} (+{r['train_rss_mb']:.0f})" if "peak_rss_mb" in r else ""
        per = f"{r['us_per_sample']:.1f}" if "us_per_sample" in r else ""
        rows.append((f"{r['workload']} {r['variant']}", r["peer"], f"{r['median_s'] * 1e3:.1f}",
                     f"{r['min_s'] * 1e3:.1f}", f"{_si(r['rate_median'])} {r['unit']}", f"{_si(r['rate_best'])}",
                     vs, roof, per, rss))
    if rows:
        lines += _table(("workload", "peer", "median ms", "min ms", "rate (median)", "best", "vs torch",
                         "roofline", "us/sample", "peak RSS MiB (+train)"), rows) + [""]
    if report["ratios"]:
        lines += ["ratios (speed: >1 means xpdnn is faster; RSS: <1 means xpdnn uses less)"]
        lines += [f"  {k}: {v:.3f}" for k, v in report["ratios"].items()] + [""]
    for s in report["skipped"]:
        lines.append(f"skipped {s['workload']} {s['peer']}: {s['reason']}")
    for e in report["errors"]:
        lines.append(f"ERROR {e['workload']} {e['variant']} {e['peer']}: {e['error']}")
    for variant, prof in report.get("profile", {}).items():
        lines += ["", f"profile xpdnn-numpy W1 {variant}: {prof['total_s']:.2f} s, top functions by own time"]
        lines += _table(("function", "ncalls", "tottime s", "share"),
                        [(p["function"], str(p["ncalls"]), f"{p['tottime_s']:.3f}", f"{100 * p['share']:.1f}%")
                         for p in prof["top"]])
    return "\n".join(lines)


def _roof_cell(r) -> str:
    """The roofline column: the per-round (paired) fraction where the run measured one, marked
    "p", else the fraction against the best separately measured roofline."""
    if r.get("roofline_fraction_paired") is not None:
        return f"{100 * r['roofline_fraction_paired']:.0f}% p"
    return f"{100 * r['roofline_fraction']:.0f}%" if "roofline_fraction" in r else ""


def format_markdown(report: dict) -> str:
    """The report's machine line, results table and ratios as Markdown (for bench/README.md)."""
    m, c = report["machine"], report["config"]
    blas = m.get("threadpools")
    if isinstance(blas, list):
        blas = ", ".join(f"{d['internal_api']} {d.get('version') or ''} {d.get('architecture') or ''} "
                         f"x{d['num_threads']}".replace("  ", " ") for d in blas)
    lines = [f"{report['date']}, scale {c['scale']}, {c['repeat']} repeats, {c['threads']} threads; "
             f"{m['cpu']}, {m['usable_cores']} cores, {m.get('memory_gb')} GB, GPU: "
             f"{', '.join(m.get('gpus') or []) or 'none'}; BLAS/OpenMP: {blas}; load average "
             f"{m.get('loadavg')} at the start, {m.get('loadavg_end')} at the end; "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    by = {(r["workload"], r["variant"], r["peer"]): r for r in report["results"]}
    lines += ["| workload | peer | median ms | min ms | rate (median) | vs torch | GEMM roofline | peak RSS MiB (+train) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        ref = by.get((r["workload"], r["variant"], "torch-cuda" if r["device"] == "cuda" else "torch"))
        vs = f"{r['rate_median'] / ref['rate_median']:.2f}" if ref else ""
        roof = _roof_cell(r)
        rss = f"{r['peak_rss_mb']:.0f} (+{r['train_rss_mb']:.0f})" if "peak_rss_mb" in r else ""
        lines.append(f"| {r['workload']} {r['variant']} | {r['peer']} | {r['median_s'] * 1e3:.1f} | "
                     f"{r['min_s'] * 1e3:.1f} | {_si(r['rate_median'])} {r['unit']} | {vs} | {roof} | {rss} |")
    if report["roofline"]:
        lines += ["", "| GEMM roofline | lib | GFLOP/s | ms/step | samples/s |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| batch {r['batch']}, {'-'.join(map(str, r['sizes']))} | {x['lib']}/{x['device']} | "
                  f"{x['gflops']:.1f} | {x['min_s'] * 1e3:.2f} | {_si(x['samples_per_s'])} |"
                  for r in report["roofline"] for x in r["per_lib"]]
    return "\n".join(lines)


def plot(report: dict, path: str) -> bool:
    """A PNG bar chart of the median rates, one panel per workload/variant (needs matplotlib,
    the ``plot`` extra).  Returns False, after saying so, when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'xpdnn[plot]'); chart skipped", file=sys.stderr)
        return False
    groups: dict = {}
    for r in report["results"]:
        groups.setdefault(f"{r['workload']} {WORKLOADS[r['workload']]}\n{r['variant']}", []).append(r)
    if not groups:
        print("no results to plot; chart skipped", file=sys.stderr)
        return False
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, recs) in zip(axes.flat, groups.items()):
        names = [r["peer"] for r in recs]
        colors = ["tab:blue" if n.startswith("xpdnn") else "tab:orange" for n in names]
        ax.barh(names, [r["rate_median"] for r in recs], color=colors)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(recs[0]["unit"] + " (median)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    m = report["machine"]
    fig.suptitle(f"xpdnn bench {report['date'][:10]}: {m['cpu']}, {report['config']['threads']} threads, "
                 f"GPU {', '.join(m.get('gpus') or []) or 'none'}, scale {report['config']['scale']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- command line ----------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpdnn bench", description="Benchmark xpdnn against PyTorch and "
                                "scikit-learn on fixed synthetic workloads (see bench/README.md).")
    p.add_argument("--quick", action="store_true", help="shrink every workload (--scale 0.1, --repeat 3)")
    p.add_argument("--scale", type=float, default=None, help="multiply every workload's size (default 1)")
    p.add_argument("--only", default=None,
                   help="comma-separated workloads: W1 mnist-mlp, W2 wide-softmax, W3 dropout, "
                        "W4 large-batch (GPU), S scaling (default: all)")
    p.add_argument("--peers", default=None, help=f"comma-separated peers (default: {','.join(DEFAULT_PEERS)}; "
                                                  f"also xpdnn-array_api_strict)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 5, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default 1)")
    p.add_argument("--threads", type=int, default=0, help="threads for BLAS/OpenMP/torch (default: all usable cores)")
    p.add_argument("--no-gpu", action="store_true", help="skip CUDA peers even when a GPU is present")
    p.add_argument("--no-memory", action="store_true", help="skip the W1 peak-RSS subprocesses")
    p.add_argument("--profile", action="store_true", help="also cProfile one xpdnn-numpy W1 epoch per variant")
    p.add_argument("--seed", type=int, default=0, help="seed for data, weights and shuffling (default 0)")
    p.add_argument("--json", default=None, help="write the full report as JSON here")
    p.add_argument("--plot", default=None, help="write a PNG bar chart here (needs matplotlib)")
    p.add_argument("--markdown", default=None, help="write the results as a Markdown table here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    return p


def _parse_only(text):
    if not text:
        return ("W1", "W2", "W3", "W4", "S")
    names = {v: k for k, v in WORKLOADS.items()}
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        key = item.upper() if item.upper() in WORKLOADS else names.get(item.lower())
        if key is None:
            raise ValueError(f"unknown workload {item!r}; choose from "
                             + ", ".join(f"{k} ({v})" for k, v in WORKLOADS.items()))
        out.append(key)
    return tuple(dict.fromkeys(out))


def _parse_peers(text):
    if not text:
        return DEFAULT_PEERS
    out = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for name in out:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    return out


def config_from_args(args) -> Config:
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 5)
    if not scale > 0:
        raise ValueError(f"--scale must be positive, got {scale}")
    if repeat < 1 or args.warmup < 0 or args.threads < 0:
        raise ValueError("--repeat must be >= 1, --warmup and --threads >= 0")
    return Config(scale=scale, repeat=repeat, warmup=args.warmup, threads=args.threads,
                  only=_parse_only(args.only), peers=_parse_peers(args.peers), gpu=not args.no_gpu,
                  memory=not args.no_memory, profile=args.profile, seed=args.seed, quick=args.quick)


def main(argv=None) -> int:
    """``xpdnn bench [options]``: run, print the tables, optionally write JSON and a PNG."""
    args = parser().parse_args(argv)
    if args.child_memory:
        print(json.dumps(_child_memory(args.child_memory, args.scale or 1.0, args.threads or usable_cores(),
                                       args.seed)))
        return 0
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"xpdnn bench: error: {exc}", file=sys.stderr)
        return 2
    report = run(cfg, quiet=args.quiet)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_markdown(report) + "\n")
        print(f"wrote {args.markdown}")
    if args.plot and plot(report, args.plot):
        print(f"wrote {args.plot}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
