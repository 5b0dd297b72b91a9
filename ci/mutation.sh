#!/usr/bin/env bash
# Mutation testing of xpdnn with mutmut (configuration: [tool.mutmut] in pyproject.toml).
#
#   ci/mutation.sh [MUTANT_GLOB ...]
#
# Installs the `test` and `mutation` extras, copies xpdnn/, tests/, examples/ and pyproject.toml to a work
# folder, runs `mutmut run` there (results in WORK/mutants/, resumed on the next run) and prints
# a per-module score table with ci/mutation_summary.py.  With no argument the core modules are
# mutated (CORE below: layers, losses, optim, the training step and trainer, io, random,
# preprocessing, kernels/cpu.py); `all` mutates every module of xpdnn/ but the benchmark harness;
# globs such as 'xpdnn.regularizers*' run only those mutants (all modules are still
# instrumented, and the test subset runs once unmutated to map tests to functions).
#
# The copy gets one mechanical edit that does not change what the code does: the code that
# runs at import time (a module's functions called by its own module-level code, every
# `__init_subclass__`, and what tests/conftest.py calls when pytest loads it) is wrapped in `# pragma: no mutate start/end` comments, because mutmut's
# forced-fail check (every mutated function raises) would otherwise make the package
# unimportable; see exclude_import_time_calls below.
#   PYTHON=...            interpreter of the environment to use (default: python3)
#   MUTMUT_JOBS=N         parallel mutants (default: all cores)
#   MUTMUT_WORK=DIR       work folder (default: ${TMPDIR:-/tmp}/xpdnn-mutation)
#   MUTMUT_NO_INSTALL=1   skip the pip install (an environment that already has the extras)
#   MUTMUT_FRESH=1        start from scratch (delete the work folder's mutants/)
#   MUTMUT_REV=REV        copy xpdnn/, tests/, examples/ and pyproject.toml as committed at REV
#                         (e.g. HEAD), plus the working tree's tests/test_mutation_*.py and
#                         its pyproject.toml [tool.mutmut] section: a stable snapshot while
#                         others edit the working tree
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
CORE=('xpdnn.layers.*' 'xpdnn.losses.*' 'xpdnn.optim.*' 'xpdnn.trainer.*' 'xpdnn.step.*' 'xpdnn.nan_guard.*'
      'xpdnn.callbacks.*' 'xpdnn.io.*' 'xpdnn.random.*' 'xpdnn.preprocessing.*' 'xpdnn.kernels.cpu.*')
if [[ $# -eq 0 ]]; then
    set -- "${CORE[@]}"
elif [[ "$*" == all ]]; then
    set --
fi
PY=${PYTHON:-python3}
WORK=${MUTMUT_WORK:-${TMPDIR:-/tmp}/xpdnn-mutation}
if [[ "${MUTMUT_NO_INSTALL:-0}" != 1 ]]; then
    "$PY" -m pip install -q -e "$repo[test,mutation]"
fi
mkdir -p "$WORK"
if [[ "${MUTMUT_FRESH:-0}" == 1 ]]; then
    rm -rf "$WORK/mutants"
fi
# Sync the sources into WORK, writing only files whose content changed (a fresh modification
# time), so that mutmut regenerates exactly those files' mutants and keeps the other results.
"$PY" - "$repo" "$WORK" <<'PYEOF'
import pathlib, shutil, sys
repo, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])


# functions that tests/conftest.py calls while pytest loads it (BACKENDS = _available())
CONFTEST_CALLS = {"xpdnn/devices.py": {"cuda_available"}}


def exclude_import_time_calls(text, rel=""):
    """Wrap in `# pragma: no mutate start/end` the code that runs while the module is imported:
    its own functions called from module-level code (e.g. a registry built at import) and every
    `__init_subclass__` (run when a subclass is defined).  mutmut's forced-fail check makes each
    mutated function raise, so with these mutated the package could not be imported at all, and
    their mutants could only break the import (an undecorated `__init_subclass__` is also wrapped
    wrongly by mutmut, its issue #366)."""
    import ast
    tree = ast.parse(text)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    called = set(CONFTEST_CALLS.get(rel, ())) & set(defs)
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nodes = [d for a in (stmt.args.defaults, stmt.args.kw_defaults, stmt.decorator_list) for d in a if d]
        elif isinstance(stmt, ast.ClassDef):
            nodes = [n for n in stmt.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        else:
            nodes = [stmt]
        for node in nodes:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in defs:
                    called.add(sub.func.id)
    spans = [defs[name] for name in called]
    spans += [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__init_subclass__"]
    if not spans:
        return text
    lines = text.splitlines(keepends=True)
    for d in sorted(spans, key=lambda n: -n.lineno):
        first = min([d.lineno] + [x.lineno for x in d.decorator_list]) - 1
        pad = " " * d.col_offset
        lines.insert(d.end_lineno, pad + "# pragma: no mutate end\n")
        lines.insert(first, pad + "# pragma: no mutate start\n")
    return "".join(lines)


# Tests that cannot pass under mutmut whatever the mutant, deselected in the mutation subset only:
# one that checks which source line a warning is attributed to (mutmut's trampolines add stack
# frames, so the warning's stacklevel lands in xpdnn/); tests that pass in pytest's order but
# fail in the order mutmut runs them (fastest first) would go here too
ORDER_DEPENDENT: list = ["tests/test_cli_data.py::test_library_diagnostics_name_the_callers_line"]


def deselect_order_dependent(text):
    anchor = '"--ignore=tests/test_gpu_parity.py"'
    assert anchor in text, "pyproject.toml's [tool.mutmut] test selection changed: update ci/mutation.sh"
    extra = "".join(f', "--deselect", "{t}"' for t in ORDER_DEPENDENT)
    return text.replace(anchor, anchor + extra, 1)


import os, subprocess
rev = os.environ.get("MUTMUT_REV")


def with_mutmut_section_of(text, tree_text):
    """``text`` (a pyproject.toml) with its [tool.mutmut] section replaced by ``tree_text``'s, so
    that the mutation settings of the working tree apply to a committed revision's sources."""
    import re
    section = re.compile(r"^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", re.M | re.S)
    mine = section.search(tree_text)
    return section.sub(lambda _: mine.group(0), text, count=1) if mine and section.search(text) else text


def sources():
    """(relative path, bytes) of every file to copy: the working tree, or with MUTMUT_REV the
    committed revision (`git show`, read-only) plus the working tree's tests/test_mutation_*.py."""
    tops = ("xpdnn", "tests", "examples", "docs", "README.md", "pyproject.toml")
    if rev:
        names = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", rev, "--", *tops],
                               check=True, capture_output=True, text=True).stdout.split("\n")
        for name in filter(None, names):
            yield pathlib.PurePosixPath(name), subprocess.run(
                ["git", "-C", str(repo), "show", f"{rev}:{name}"], check=True, capture_output=True).stdout
        for f in sorted((repo / "tests").glob("test_mutation_*.py")):
            yield f.relative_to(repo), f.read_bytes()
        return
    for top in tops:
        src = repo / top
        for f in ([src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())):
            if "__pycache__" not in f.parts:
                yield f.relative_to(repo), f.read_bytes()


wanted = set()
for rel, data in sources():
    rel = pathlib.Path(rel)
    wanted.add(rel)
    top = rel.parts[0]
    if top == "xpdnn" and rel.suffix == ".py":
        data = exclude_import_time_calls(data.decode(), rel.as_posix()).encode()
    if top == "pyproject.toml":
        text = data.decode()
        if rev:
            text = with_mutmut_section_of(text, (repo / "pyproject.toml").read_text())
        data = deselect_order_dependent(text).encode()
    dst = work / rel
    if not dst.is_file() or dst.read_bytes() != data:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
    # mutmut copies a source file that it does not mutate (the CUDA sources) into mutants/ only when
    # no copy is there yet: remove an outdated copy
    old = work / "mutants" / rel
    if top == "xpdnn" and rel.suffix != ".py" and old.is_file() and old.read_bytes() != data:
        old.unlink()
for top in ("xpdnn", "tests", "examples", "docs"):
    for f in sorted((work / top).rglob("*")) if (work / top).exists() else ():
        if f.is_file() and "__pycache__" not in f.parts and f.relative_to(work) not in wanted:
            f.unlink()
    # mutmut's own copy (mutants/) keeps files that are gone from the sources: a stale test file
    # there would still be collected, a stale module still importable
    for f in sorted((work / "mutants" / top).rglob("*")) if (work / "mutants" / top).exists() else ():
        rel = f.relative_to(work / "mutants")
        if rel.suffix == ".meta":
            rel = rel.with_suffix("")
        if f.is_file() and "__pycache__" not in f.parts and rel not in wanted:
            f.unlink()
PYEOF
cd "$WORK"
# not `python -m mutmut`: the mutated code imports mutmut.__main__, which must not be the
# running __main__ module (a second import re-runs its multiprocessing setup and fails)
mutmut=("$PY" -c 'import sys; from mutmut.__main__ import cli; sys.argv[0] = "mutmut"; cli()')
"${mutmut[@]}" --version
# keep_mask fills its masks on the calling thread: no thread pool for a forked test process to
# inherit without its threads (the mutants are tested in forked processes)
export XPDNN_PHILOX_THREADS=${XPDNN_PHILOX_THREADS:-1}
start=$(date +%s)
set +e
"${mutmut[@]}" run --max-children "${MUTMUT_JOBS:-$(nproc)}" "$@"
rc=$?
set -e
echo "mutmut run exited with status $rc after $(( $(date +%s) - start )) s (results: $WORK/mutants)"
only=()
for glob in "$@"; do
    only+=(--only "$glob")
done
"$PY" "$repo/ci/mutation_summary.py" mutants ${only[@]+"${only[@]}"} --survivors
exit "$rc"
