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


def _rounds(names, run_one, cfg: Config, out: dict) -> list:
    """Interleaved rounds: round ``k`` calls ``run_one(name)`` (seconds) for every name in an order
    rotated each round, under a :class:`~xpdnn.bench.machine.LoadProbe`; a peer that raises is
    recorded as its exception and left out after that.  After ``cfg.repeat`` rounds, up to
    ``cfg.retries`` more run while fewer than ``cfg.repeat`` rounds were quiet.  Returns the
    rounds' load readings, each with ``noisy`` (other processes kept at least
    :data:`~xpdnn.bench.machine.NOISY_OTHERS` cores busy beyond those the run leaves idle)."""
    from .machine import LoadProbe, noisy, usable_cores

    spare = max(0, usable_cores() - (cfg.threads or usable_cores()))
    rounds = []
    names = list(names)
    k = 0
    while names and (k < cfg.repeat or (k < cfg.repeat + cfg.retries
                                        and sum(not r["noisy"] for r in rounds) < cfg.repeat)):
        probe = LoadProbe()
        for name in names[k % len(names):] + names[:k % len(names)]:
            if isinstance(out[name], Exception):
                continue
            try:
                out[name]["times_s"].append(run_one(name))
            except Exception as exc:
                out[name] = exc
        load = probe.stop()
        load["noisy"] = noisy(load, spare)
        rounds.append(load)
        k += 1
    return rounds


def used_rounds(rounds: list, minimum: int = 3) -> list:
    """Indices of the rounds a summary uses: the quiet ones when there are at least ``minimum``
    (or all rounds were quiet), else every round (the report then says the machine was loaded)."""
    quiet = [i for i, r in enumerate(rounds) if not r["noisy"]]
    return quiet if len(quiet) >= min(minimum, len(rounds)) else list(range(len(rounds)))


def time_epochs_interleaved(peers, X_host, y_host, sizes, dropout, batch, cfg: Config, gemm=()) -> dict:
    """Like :func:`time_epochs` for several peers at once, their timed epochs interleaved: round
    ``k`` runs one epoch of every peer, in an order rotated each round, so a machine whose speed
    drifts (a shared VM) slows every peer alike and the per-round ratios stay comparable.
    ``gemm`` names GEMM libraries ("numpy", "torch") whose :class:`GemmEpoch` runs in every
    round too, as ``"gemm-<lib>"``: the roofline measured on the workload's footing.
    Returns ``{peer name: result dict or the exception it raised, "_rounds": load per round}``."""
    from .roofline import GemmEpoch, gemm_peer   # here, not at the top: roofline.py uses this module's clock

    runners, out = {}, {}
    for peer in list(peers) + [gemm_peer(lib) for lib in gemm]:
        try:
            runner = (GemmEpoch(sizes, batch, cfg.seed, lib=peer.lib) if peer.kind == "gemm"
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

    def run_one(name):
        runner, X, y, sync = runners[name]
        t0 = time.perf_counter()
        loss = runner.epoch(X, y)
        sync()
        dt = time.perf_counter() - t0
        if out[name]["first_epoch_loss"] is None:
            out[name]["first_epoch_loss"] = loss
        return dt

    out["_rounds"] = _rounds(runners, run_one, cfg, out)
    return out


def time_ops_interleaved(steps: dict, cfg: Config, target_s: float = 0.05) -> dict:
    """Interleaved rounds of single operations: ``steps`` maps a peer name to ``(fn, sync)``;
    each sample is the mean of as many calls as fill about ``target_s`` (counted once, after
    ``cfg.warmup`` calls).  Returns ``{name: {"times_s": [...]} or the exception, "_rounds": ...}``."""
    out, loops = {}, {}
    for name, (fn, sync) in steps.items():
        try:
            for _ in range(cfg.warmup):
                fn()
            sync()
            loops[name] = _loops_for(fn, sync, target_s)
            out[name] = {"times_s": []}
        except Exception as exc:
            out[name] = exc

    def run_one(name):
        fn, sync = steps[name]
        t0 = time.perf_counter()
        for _ in range(loops[name]):
            fn()
        sync()
        return (time.perf_counter() - t0) / loops[name]

    out["_rounds"] = _rounds(loops, run_one, cfg, out)
    return out


def stats(values) -> dict | None:
    """``{"median", "min", "max", "n"}`` of a list of numbers, or None when it is empty."""
    values = list(values)
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def paired_roofline(times, gemm_times):
    """Median over rounds of ``GEMM-only epoch time / peer epoch time``: the roofline fraction
    with both measured in the same round."""
    pairs = [g / t for t, g in zip(times, gemm_times) if t > 0]
    return statistics.median(pairs) if pairs else None


def paired_ratio(rec: dict, ref: dict):
    """Median over rounds of ``ref time / rec time`` for two interleaved records (speed of
    ``rec`` relative to ``ref`` with the machine's drift paired out), or None."""
    got = paired_ratio_stats(rec, ref)
    return None if got is None else got["median"]


def paired_ratio_stats(rec: dict, ref: dict):
    """:func:`stats` of the per-round ``ref time / rec time`` of two records timed in the same
    interleaved rounds, or None."""
    if not (rec.get("interleaved") and ref.get("interleaved")):
        return None
    return stats(b / a for a, b in zip(rec["times_s"], ref["times_s"]) if a > 0)
