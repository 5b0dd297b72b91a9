"""What a report says: the headline ratios, and the report as text tables, Markdown (for
bench/README.md) and a PNG bar chart."""

from __future__ import annotations

import sys

from .timing import paired_ratio
from .workloads import WORKLOADS


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
