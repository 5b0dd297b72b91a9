"""Per-module summary of a mutmut 3 run: reads ``mutants/**/*.py.meta`` (the exit code of every
mutant's test run, as mutmut stores it) and prints one row per module and a total.

    python ci/mutation_summary.py [MUTANTS_DIR] [--only GLOB ...]

Exit codes follow mutmut's ``status_by_exit_code`` (mutmut/__main__.py): 1 and 3 mean a test
failed (killed), 0 that every test passed (survived), 33 and 5 that no selected test reaches
the mutated function, 36/24/-24/152/255 a timeout, None not run yet.  The score is
``detected / (detected + survived)`` with detected = killed + timeout: mutants no test reaches
are listed apart (a coverage gap, not a weak assertion), and unrun ones are left out.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from collections import Counter
from pathlib import Path

KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {36, 24, -24, 152, 255}
SKIPPED = {34, 37}
COLUMNS = ("killed", "timeout", "survived", "no tests", "other", "not run")


def status(code) -> str:
    if code is None:
        return "not run"
    if code in KILLED:
        return "killed"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    if code in TIMEOUT:
        return "timeout"
    return "other"          # suspicious, segfault, skipped, interrupted


def score(c: Counter) -> str:
    detected = c["killed"] + c["timeout"]
    judged = detected + c["survived"]
    return f"{100.0 * detected / judged:5.1f}%" if judged else "    -"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mutants", nargs="?", default="mutants", help="mutmut's output folder (default: mutants)")
    p.add_argument("--only", action="append", default=None,
                   help="mutant-name glob, e.g. 'xpdnn.regularizers*' (repeat it for several)")
    p.add_argument("--survivors", action="store_true", help="also list the surviving mutants' names")
    args = p.parse_args(argv)
    root = Path(args.mutants)
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {root}/ (run `mutmut run` first)")
        return 1
    rows, total, survivors = [], Counter(), []
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if args.only:
            codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, g) for g in args.only)}
        c = Counter(status(v) for v in codes.values())
        if not codes or sum(c[k] for k in COLUMNS if k != "not run") == 0:
            continue
        module = str(meta.relative_to(root))[: -len(".meta")]
        rows.append((module, c))
        total.update(c)
        survivors += sorted(k for k, v in codes.items() if status(v) == "survived")
    if not rows:
        print("no mutant has been run yet" + (f" matching {' or '.join(args.only)}" if args.only else ""))
        return 1
    width = max(len("module"), *(len(m) for m, _ in rows))
    head = f"{'module':<{width}}  " + "  ".join(f"{k:>8}" for k in COLUMNS) + "   score"
    print(head)
    print("-" * len(head))
    for module, c in rows + [("TOTAL", total)]:
        if module == "TOTAL":
            print("-" * len(head))
        print(f"{module:<{width}}  " + "  ".join(f"{c[k]:>8}" for k in COLUMNS) + f"  {score(c)}")
    print("score = (killed + timeout) / (killed + timeout + survived); 'no tests': no selected test reaches it")
    if args.survivors and survivors:
        print("\nsurvivors (inspect with `mutmut show NAME`):")
        for name in survivors:
            print("  " + name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
