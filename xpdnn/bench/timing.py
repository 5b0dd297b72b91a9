"""Clocks: seconds per call, training epochs timed in interleaved rounds (every peer once per
round, the order rotated) and the per-round ratios that pair a drifting machine's speed out."""

from __future__ import annotations

import math
import statistics
import time

from .peers import Peer, mlp_runner, synchronizer
from .workloads import Config


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


def time_epochs_interleaved(peers, X_host, y_host, sizes, dropout, batch, cfg: Config, gemm: bool = False) -> dict:
    """Like :func:`time_epochs` for several peers at once, their timed epochs interleaved: round
    ``k`` runs one epoch of every peer, in an order rotated each round, so a machine whose speed
    drifts (a shared VM) slows every peer alike and the per-round ratios stay comparable.
    With ``gemm`` a :class:`GemmEpoch` (NumPy) runs in every round too, as ``"gemm-roofline"``.
    Returns ``{peer name: result dict or the exception it raised}``."""
    from .roofline import GEMM_PEER, GemmEpoch   # here, not at the top: roofline.py uses this module's clock

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
