"""One harness run: :func:`run` runs the workloads in a :class:`Config`, each peer's failure
recorded beside the others' numbers, and returns the report (a JSON-able dict)."""

from __future__ import annotations

import datetime as _dt
import os
import statistics
import sys
import time

import numpy as np

from .machine import BLAS_FORCING, library_env, machine_info, set_threads, usable_cores, versions
from .memory import gpu_bandwidth, peak_memory, with_traffic
from .peers import PEERS, Peer, dropout_step, mlp_runner, peer_available, put, softmax_ce_step, synchronizer
from .report import ratios
from .roofline import blas_env_cost, gemm_roofline
from .timing import stats, time_epochs_interleaved, time_ops_interleaved, used_rounds
from .workloads import (LR, MOMENTUM, SCALING_POINTS, SCALING_SAMPLES, W1_BATCH, W1_DROPOUT, W1_SAMPLES,
                        W1_SIZES, W2_CLASSES, W2_ROWS, W3_ELEMENTS, W4_BATCH, W4_SIZES, W4_STEPS, WORKLOADS,
                        Config, _scaled, mnist_like)


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
        self.rounds: dict = {}          # "W1 dropout" -> the load of each interleaved round
        self.warnings: list = []

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

    def gemm_libs(self, peers) -> list:
        """The CPU GEMM libraries whose pseudo-peers run in interleaved rounds beside ``peers``:
        NumPy, and PyTorch when a PyTorch peer runs (its GEMMs are not NumPy's)."""
        cpu = [p for p in peers if p.device == "cpu"]
        if not cpu:
            return []
        libs = ["numpy"]
        if any(p.lib == "torch" or p.kind == "torch" for p in cpu):
            libs.append("torch")
        return libs

    def interleaved(self, key: str, results: dict) -> list:
        """Mark the rounds of one interleaved run: a round is noisy when other processes kept
        the machine busy (its load reading) or when any CPU peer beat the round's GEMM roofline
        (only noise can do that).  Returns the indices of the rounds a summary uses."""
        rounds = results.pop("_rounds")
        gemm = [v for k, v in results.items() if k.startswith("gemm-") and not isinstance(v, Exception)]
        for i, load in enumerate(rounds):
            why = ["load"] if load["noisy"] else []
            if gemm and any(i < len(g["times_s"]) for g in gemm):
                roof = min(g["times_s"][i] for g in gemm if i < len(g["times_s"]))
                beat = [k for k, v in results.items() if not k.startswith("gemm-") and not isinstance(v, Exception)
                        and PEERS[k].device == "cpu" and i < len(v["times_s"]) and v["times_s"][i] < roof]
                if beat:
                    why.append("faster than the GEMM roofline: " + ", ".join(beat))
            load["noisy"], load["why"] = bool(why), why
        used = used_rounds(rounds, min(3, self.cfg.repeat))
        self.rounds[key] = {"rounds": rounds, "used": used}
        n_noisy = sum(r["noisy"] for r in rounds)
        if n_noisy:
            others = [r["others_cores"] for r in rounds if r.get("others_cores") is not None]
            what = (f"{key}: {n_noisy} of {len(rounds)} rounds noisy (other processes kept up to "
                    f"{max(others):.2f} cores busy)" if others else f"{key}: {n_noisy} of {len(rounds)} rounds noisy")
            if len(used) == len(rounds):
                what += "; too few quiet rounds, so every round is used: read these figures as loaded"
            else:
                what += f"; the {len(used)} quiet rounds are used"
            self.warnings.append(what)
        return used

    def record(self, workload, variant, peer, results, used, work, unit, params, **extra) -> dict:
        """The record of ``peer`` from an interleaved run: times of the used rounds, every round
        kept as ``all_times_s``; beside CPU GEMM pseudo-peers, the roofline per round (the
        fastest library's GEMM epoch of that round) and the fractions paired per round."""
        t = results[peer.name]
        if isinstance(t, Exception):
            raise t
        times = [t["times_s"][i] for i in used if i < len(t["times_s"])]
        rec = _record(workload, variant, peer, times, work, unit, params, interleaved=True,
                      all_times_s=t["times_s"], rounds_used=list(used), **extra)
        if "first_epoch_loss" in t:
            rec["first_epoch_loss"] = t["first_epoch_loss"]
        gemm = [v for k, v in results.items() if k.startswith("gemm-") and not isinstance(v, Exception)]
        if peer.device == "cpu" and gemm:
            roof = [min(g["times_s"][i] for g in gemm) for i in used]
            fractions = [g / x for g, x in zip(roof, times) if x > 0]
            rec["gemm_epoch_times_s"] = roof
            rec["roofline_fraction_per_round"] = fractions
            st = stats(fractions)
            if st is not None:
                rec["roofline_fraction_paired"] = st["median"]
                rec["roofline_fraction_paired_range"] = [st["min"], st["max"]]
        return rec

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
        libs = r.gemm_libs(timed)
        results = time_epochs_interleaved(timed, X, y, W1_SIZES, rate, W1_BATCH, cfg, gemm=libs)
        for lib in libs:
            if isinstance(results.get(f"gemm-{lib}"), Exception):
                exc = results[f"gemm-{lib}"]
                r.errors.append({"workload": "W1", "variant": variant, "peer": f"gemm-{lib}",
                                 "error": f"{type(exc).__name__}: {exc}"})
        used = r.interleaved(f"W1 {variant}", results)
        for peer in timed:
            def go(peer=peer, params=params, variant=variant):
                rec = r.record("W1", variant, peer, results, used, n, "samples/s", params)
                return r.with_roofline(rec, roof)
            rec = r.attempt("W1", variant, peer, go)
            if rec is not None and cfg.memory:
                try:
                    rec.update(peak_memory(peer, variant, cfg, r.threads))
                except Exception as exc:
                    r.errors.append({"workload": "W1-memory", "variant": variant, "peer": peer.name,
                                     "error": f"{type(exc).__name__}: {exc}"})


def _ops(r: Run, workload: str, variant: str, peers, make_step, work, unit, params, traffic):
    """One single-operation workload on ``peers`` (one device), interleaved per round:
    ``make_step(peer)`` returns the step; ``traffic`` = (minimal bytes, output bytes)."""
    steps, made = {}, {}
    for peer in peers:
        try:
            made[peer.name] = make_step(peer)
            steps[peer.name] = (made[peer.name], synchronizer(peer.lib, peer.device))
        except Exception as exc:
            r.errors.append({"workload": workload, "variant": variant, "peer": peer.name,
                             "error": f"{type(exc).__name__}: {exc}"})
    _log(f"  {workload} {variant}: {', '.join(steps)}, {r.cfg.repeat} interleaved rounds ...", r.quiet)
    results = time_ops_interleaved(steps, r.cfg)
    used = r.interleaved(f"{workload} {variant}", results)
    for peer in peers:
        if peer.name not in steps:
            continue

        def go(peer=peer):
            rec = r.record(workload, variant, peer, results, used, work, unit, params)
            return with_traffic(r, rec, peer, traffic[0], made[peer.name], traffic[1])
        r.attempt(workload, variant, peer, go)


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
        # minimal traffic: the logits read once, the gradient written once
        _ops(r, "W2", f"N={N},C={W2_CLASSES}", peers,
             lambda peer: softmax_ce_step(peer, put(Z_host, peer), put(y_host, peer)), N * W2_CLASSES, "logits/s",
             {"N": N, "C": W2_CLASSES, "dtype": "float32"}, (2 * 4 * N * W2_CLASSES, 4 * N * W2_CLASSES))


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
        # minimal traffic: forward reads X, writes Y; backward reads dY, writes dX
        _ops(r, "W3", f"{rows}x{cols}", peers,
             lambda peer: dropout_step(peer, put(X_host, peer), put(dY_host, peer), W1_DROPOUT, cfg.seed),
             rows * cols, "elements/s", {"shape": [rows, cols], "rate": W1_DROPOUT, "dtype": "float32"},
             (4 * 4 * rows * cols, 2 * 4 * rows * cols))


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
    params = {"n_samples": n, "batch": W4_BATCH, "sizes": list(W4_SIZES), "dtype": "float32"}
    results = time_epochs_interleaved(peers, X, y, W4_SIZES, 0.0, W4_BATCH, cfg)
    used = r.interleaved("W4", results)
    for peer in peers:
        def go(peer=peer):
            rec = r.record("W4", f"{steps} steps", peer, results, used, n, "samples/s", params)
            return r.with_roofline(rec, roof)
        r.attempt("W4", "cuda", peer, go)


def run_scaling(r: Run):
    cfg = r.cfg
    names = ("xpdnn-numpy", "xpdnn-numpy-nojit", "torch", "xpdnn-cupy", "torch-cuda")
    peers = [p for p in r.peers("S", kinds=("xpdnn", "torch")) if p.name in names]
    libs = r.gemm_libs(peers)
    for batch, hidden in SCALING_POINTS:
        n = _scaled(SCALING_SAMPLES, cfg.scale, 2 * batch)
        sizes = (784, hidden, hidden, 10)
        X, y = mnist_like(n, seed=cfg.seed)
        roof = r.roofline(batch, sizes, {p.device for p in peers})
        variant = f"batch={batch},hidden={hidden}"
        results = time_epochs_interleaved(peers, X, y, sizes, 0.0, batch, cfg, gemm=libs)   # the drift pairs out
        used = r.interleaved(f"S {variant}", results)
        params = {"n_samples": n, "batch": batch, "hidden": hidden, "sizes": list(sizes), "dtype": "float32"}
        for peer in peers:
            def go(peer=peer):
                rec = r.record("S", variant, peer, results, used, n, "samples/s", params)
                rec["us_per_sample"] = 1e6 / rec["rate_median"]
                return r.with_roofline(rec, roof)
            r.attempt("S", variant, peer, go)


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
        prof_stats = pstats.Stats(prof)
        total = prof_stats.total_tt
        rows = []
        for (fname, line, func), (cc, nc, tt, ct, _) in prof_stats.stats.items():
            rows.append({"function": f"{os.path.basename(fname)}:{line}({func})", "ncalls": nc,
                         "tottime_s": tt, "cumtime_s": ct, "share": tt / total if total else 0.0})
        rows.sort(key=lambda r: -r["tottime_s"])
        out[variant] = {"total_s": total, "top": rows[:top]}
    return out


def run(cfg: Config, quiet: bool = False) -> dict:
    """Run the workloads in ``cfg.only`` and return the report (a JSON-able dict)."""
    threads = cfg.threads or usable_cores()
    env = library_env()                 # as the user set it, before set_threads adds its own
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
    machine["env"] = env
    blas_env = None
    if any(k in env for k in BLAS_FORCING):
        _log("OpenBLAS settings forced: timing NumPy's GEMMs with and without them", quiet)
        try:
            blas_env = blas_env_cost(threads, {k: env[k] for k in BLAS_FORCING if k in env})
            r.warnings.insert(0, blas_env["warning"])
        except Exception as exc:
            r.errors.append({"workload": "machine", "variant": "", "peer": "OpenBLAS env",
                             "error": f"{type(exc).__name__}: {exc}"})
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
        "config": {"scale": cfg.scale, "quick": cfg.quick, "repeat": cfg.repeat, "retries": cfg.retries,
                   "warmup": cfg.warmup,
                   "threads": threads, "thread_setup": thread_setup, "only": list(cfg.only),
                   "peers": list(cfg.peers), "gpu": cfg.gpu, "memory": cfg.memory, "seed": cfg.seed},
        "machine": machine,
        "versions": versions(),
        "roofline": [{"batch": b, "sizes": list(s), **v} for (b, s), v in r.rooflines.items()],
        "results": r.results,
        "ratios": ratios(r.results),
        "rounds": r.rounds,
        "blas_env": blas_env,
        "warnings": r.warnings,
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
