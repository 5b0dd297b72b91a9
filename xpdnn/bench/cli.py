"""The harness's command line, ``xpdnn bench`` / ``python -m xpdnn.bench``: flags, their
checks, and :func:`main`, which runs, prints the tables and writes the requested files."""

from __future__ import annotations

import argparse
import json
import sys

from .harness import run
from .machine import usable_cores
from .memory import _child_memory
from .peers import PEERS
from .report import format_markdown, format_report, plot
from .workloads import DEFAULT_PEERS, WORKLOADS, Config


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
    p.add_argument("--retries", type=int, default=2,
                   help="extra interleaved rounds while fewer than --repeat rounds were quiet (default 2)")
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
    if repeat < 1 or args.warmup < 0 or args.threads < 0 or args.retries < 0:
        raise ValueError("--repeat must be >= 1, --warmup, --retries and --threads >= 0")
    return Config(scale=scale, repeat=repeat, warmup=args.warmup, threads=args.threads,
                  only=_parse_only(args.only), peers=_parse_peers(args.peers), gpu=not args.no_gpu,
                  memory=not args.no_memory, profile=args.profile, seed=args.seed, quick=args.quick,
                  retries=args.retries)


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
