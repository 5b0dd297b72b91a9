"""Memory: GPU bandwidth (data-sheet peak and a measured copy) and per-step device allocation
for W2 / W3, and W1's peak resident memory, measured in one fresh subprocess per peer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from .machine import set_threads
from .peers import PEERS, Peer, mlp_runner, synchronizer
from .timing import measure
from .workloads import W1_BATCH, W1_DROPOUT, W1_SAMPLES, W1_SIZES, Config, _scaled, mnist_like

if TYPE_CHECKING:
    from .harness import Run


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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # holds xpdnn/
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
