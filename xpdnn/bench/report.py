"""What a report says: the headline ratios, and the report as text tables, Markdown (for
bench/README.md) and a PNG bar chart."""

from __future__ import annotations

import sys

from .timing import paired_ratio_stats
from .workloads import WORKLOADS


def _speed(rec, ref):
    """Speed of ``rec`` relative to ``ref``: the per-round ratios' median, min and max when both
    ran in the same interleaved rounds, else None (a ratio of medians can point the other way
    from the paired figures, so none is given)."""
    return paired_ratio_stats(rec, ref)


def ratios(results) -> dict:
    """Headline ratios: each xpdnn peer's speed and W1 peak RSS relative to PyTorch on the same
    device, xpdnn-numpy's relative to the bare ``numpy-loop`` and to itself without compiled
    kernels, and the fractions of the GEMM roofline.  Speeds are medians of per-round ratios
    (rounds interleaved), given as ``{"median", "min", "max", "n"}``."""
    out = {}
    by = {(r["workload"], r["variant"], r["peer"]): r for r in results}
    for (w, v, p), rec in sorted(by.items()):
        if not p.startswith("xpdnn"):
            continue
        ref = by.get((w, v, "torch-cuda" if rec["device"] == "cuda" else "torch"))
        if ref is not None:
            paired = _speed(rec, ref)
            if paired is not None:
                out[f"{w} {v}: {p} / {ref['peer']} speed"] = paired
            if "peak_rss_mb" in rec and "peak_rss_mb" in ref:
                out[f"{w} {v}: {p} / {ref['peer']} peak RSS"] = rec["peak_rss_mb"] / ref["peak_rss_mb"]
        for other in (("numpy-loop", "xpdnn-numpy-nojit") if p == "xpdnn-numpy" else ()):
            base = by.get((w, v, other))     # the framework's cost over the bare loop; the compiled kernels' gain
            paired = _speed(rec, base) if base is not None else None
            if paired is not None:
                out[f"{w} {v}: {p} / {other} speed"] = paired
            if base is not None and "peak_rss_mb" in rec and "peak_rss_mb" in base:
                out[f"{w} {v}: {p} / {other} peak RSS"] = rec["peak_rss_mb"] / base["peak_rss_mb"]
        if w in ("W1", "W4") and "roofline_fraction" in rec and rec.get("roofline_fraction_paired") is None:
            out[f"{w} {v}: {p} fraction of GEMM roofline (measured apart)"] = rec["roofline_fraction"]
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
            lo, hi = rec["roofline_fraction_paired_range"]
            out[f"{w} {v}: {p} fraction of GEMM roofline"] = {
                "median": rec["roofline_fraction_paired"], "min": lo, "max": hi,
                "n": len(rec["roofline_fraction_per_round"])}
    return out


def _value(v) -> str:
    if isinstance(v, dict):
        return f"{v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f}, {v['n']} rounds)"
    return f"{v:.3f}"


def _vs(r, ref) -> str:
    """The "vs torch" cell: the median of per-round speed ratios and their range."""
    if ref is None:
        return ""
    st = _speed(r, ref)
    return "" if st is None else f"{st['median']:.2f} ({st['min']:.2f}-{st['max']:.2f})"


def _rounds_cell(r) -> str:
    if "all_times_s" not in r:
        return ""
    return f"{len(r['times_s'])}/{len(r['all_times_s'])}"


def skipped_lines(skipped) -> list:
    """One line per reason: every peer and workload it kept out ("skipped: cupy" once, not once
    per workload)."""
    groups: dict = {}
    for s in skipped:
        g = groups.setdefault(s["reason"], ([], []))
        for item, seen in ((s["peer"], g[0]), (s["workload"], g[1])):
            if item not in seen:
                seen.append(item)
    return [f"skipped {', '.join(peers)} ({', '.join(works)}): {reason}" for reason, (peers, works) in groups.items()]


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
    env = ", ".join(f"{k}={v}" for k, v in (m.get("env") or {}).items()) or "none set"
    lines = [f"xpdnn bench  {report['date']}  scale {c['scale']}  repeat {c['repeat']}  warmup {c['warmup']}  "
             f"threads {c['threads']}",
             f"machine: {m['cpu']} ({m['usable_cores']}/{m['cores']} cores, {m.get('memory_gb')} GB), GPU: {gpus}, "
             f"load {m.get('loadavg')} -> {m.get('loadavg_end')}",
             f"BLAS/OpenMP: {blas}", f"environment: {env}", f"compiled kernels: {m.get('jit', '?')}",
             f"versions: {vers}", ""]
    lines += [f"WARNING: {w}" for w in report.get("warnings", [])] + ([""] if report.get("warnings") else [])
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
        roof = _roof_cell(r)
        rss = f"{r['peak_rss_mb']:.0f} (+{r['train_rss_mb']:.0f})" if "peak_rss_mb" in r else ""
        per = f"{r['us_per_sample']:.1f}" if "us_per_sample" in r else ""
        rows.append((f"{r['workload']} {r['variant']}", r["peer"], f"{r['median_s'] * 1e3:.1f}",
                     f"{r['min_s'] * 1e3:.1f}", f"{_si(r['rate_median'])} {r['unit']}", f"{_si(r['rate_best'])}",
                     _vs(r, ref), roof, _rounds_cell(r), per, rss))
    if rows:
        lines += _table(("workload", "peer", "median ms", "min ms", "rate (median)", "best", "vs torch",
                         "roofline", "rounds", "us/sample", "peak RSS MiB (+train)"), rows)
        lines += ["(vs torch and roofline: medians of per-round values with their range; roofline = the "
                  "round's fastest GEMM-only epoch / the peer's epoch; rounds: quiet rounds used / rounds run)", ""]
    if report["ratios"]:
        lines += ["ratios (speed: >1 means xpdnn is faster; RSS: <1 means xpdnn uses less)"]
        lines += [f"  {k}: {_value(v)}" for k, v in report["ratios"].items()] + [""]
    lines += skipped_lines(report["skipped"])
    for e in report["errors"]:
        lines.append(f"ERROR {e['workload']} {e['variant']} {e['peer']}: {e['error']}")
    for variant, prof in report.get("profile", {}).items():
        lines += ["", f"profile xpdnn-numpy W1 {variant}: {prof['total_s']:.2f} s, top functions by own time"]
        lines += _table(("function", "ncalls", "tottime s", "share"),
                        [(p["function"], str(p["ncalls"]), f"{p['tottime_s']:.3f}", f"{100 * p['share']:.1f}%")
                         for p in prof["top"]])
    return "\n".join(lines)


def _roof_cell(r) -> str:
    """The roofline column: the fraction paired per round where the run timed GEMM-only epochs
    in its rounds (median and range), else the fraction against the separately measured
    roofline, marked "apart" (GPU runs)."""
    if r.get("roofline_fraction_paired") is not None:
        lo, hi = r["roofline_fraction_paired_range"]
        return f"{100 * r['roofline_fraction_paired']:.0f}% ({100 * lo:.0f}-{100 * hi:.0f})"
    return f"{100 * r['roofline_fraction']:.0f}% apart" if "roofline_fraction" in r else ""


def format_markdown(report: dict) -> str:
    """The report's machine line, results table and ratios as Markdown (for bench/README.md)."""
    m, c = report["machine"], report["config"]
    blas = m.get("threadpools")
    if isinstance(blas, list):
        blas = ", ".join(f"{d['internal_api']} {d.get('version') or ''} {d.get('architecture') or ''} "
                         f"x{d['num_threads']}".replace("  ", " ") for d in blas)
    env = ", ".join(f"{k}={v}" for k, v in (m.get("env") or {}).items()) or "none set"
    lines = [f"{report['date']}, scale {c['scale']}, {c['repeat']} repeats, {c['threads']} threads; "
             f"{m['cpu']}, {m['usable_cores']} cores, {m.get('memory_gb')} GB, GPU: "
             f"{', '.join(m.get('gpus') or []) or 'none'}; BLAS/OpenMP: {blas}; environment: {env}; "
             f"compiled kernels: {m.get('jit', '?')}; load average "
             f"{m.get('loadavg')} at the start, {m.get('loadavg_end')} at the end; "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    lines += [f"**Warning:** {w}" for w in report.get("warnings", [])] + ([""] if report.get("warnings") else [])
    by = {(r["workload"], r["variant"], r["peer"]): r for r in report["results"]}
    lines += ["| workload | peer | median ms | min ms | rate (median) | vs torch (per round) | GEMM roofline "
              "(per round) | rounds | peak RSS MiB (+train) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        ref = by.get((r["workload"], r["variant"], "torch-cuda" if r["device"] == "cuda" else "torch"))
        rss = f"{r['peak_rss_mb']:.0f} (+{r['train_rss_mb']:.0f})" if "peak_rss_mb" in r else ""
        lines.append(f"| {r['workload']} {r['variant']} | {r['peer']} | {r['median_s'] * 1e3:.1f} | "
                     f"{r['min_s'] * 1e3:.1f} | {_si(r['rate_median'])} {r['unit']} | {_vs(r, ref)} | "
                     f"{_roof_cell(r)} | {_rounds_cell(r)} | {rss} |")
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
