#!/usr/bin/env bash
# xpdnn on a CUDA machine: xpdnn selftest, the GPU tests, the whole suite, the GPU benchmarks;
# one results file.
#
#   ci/gpu.sh [RESULTS_FILE]
#
# RESULTS_FILE defaults to $OUT/gpu-results-<UTC date>.txt ($OUT is the device tool's output
# folder; ./ when it is unset).  Needs python3 with CuPy, PyTorch, pytest (pytest-benchmark for
# bench/); pure-Python wheels the machine lacks (array-api-compat, array-api-strict, ...) are
# installed from .whl/*.whl when that folder exists, without the network.
#
# Environment: PYTHON (default python3); XPDNN_CI_BENCH = quick (default) | full | off;
# XPDNN_CI_TESTS = the test paths/args for the whole-suite run (default: tests).
# Exit status: 0 when the selftest, the GPU tests and the suite passed (benchmarks never fail the run).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-python3}
BENCH=${XPDNN_CI_BENCH:-quick}
TESTS=${XPDNN_CI_TESTS:-tests}
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
results=${1:-${OUT:-.}/gpu-results-$stamp.txt}
mkdir -p "$(dirname "$results")" || exit 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # the checkout's xpdnn, not an installed one
export PYTHONUNBUFFERED=1

section() { printf '\n== %s ==\n' "$1" >>"$results"; }

{
    echo "xpdnn GPU results"
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "host: $(uname -srm)"
} >"$results"

section "xpdnn selftest"
"$PY" -m xpdnn.cli selftest --json "$work/selftest.json" >>"$results" 2>&1
rc_self=$?
echo "exit status: $rc_self" >>"$results"
[ -s "$work/selftest.json" ] && { echo "-- selftest json --"; cat "$work/selftest.json"; } >>"$results"

section "device"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader >>"$results" 2>&1 \
        || nvidia-smi -L >>"$results" 2>&1
else
    echo "nvidia-smi not found" >>"$results"
fi

section "versions"
"$PY" - >>"$results" 2>&1 <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch", "array_api_compat", "array_api_strict", "pytest", "pytest_benchmark",
             "safetensors", "xpdnn"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(name, "not importable:", type(exc).__name__, exc)
try:
    import cupy
    print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
    from xpdnn.devices import cuda_available
    print("xpdnn cuda_available:", cuda_available())
except Exception as exc:
    print("cupy/cuda:", type(exc).__name__, exc)
EOF

# pytest summary: the "short test summary info" block (failures, skips with reasons) and the
# final count line; the full log only for failures.
summarize() {
    local log=$1 rc=$2
    sed -n '/short test summary info/,$p' "$log" >>"$results"
    grep -qs 'short test summary info' "$log" || tail -n 3 "$log" >>"$results"
    echo "exit status: $rc" >>"$results"
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        section "log of the failing run (last 200 lines)"
        tail -n 200 "$log" >>"$results"
    fi
}

section "pytest -m gpu"
"$PY" -m pytest -q -rfEs -p no:cacheprovider -m gpu tests >"$work/gpu.log" 2>&1
rc_gpu=$?
summarize "$work/gpu.log" $rc_gpu
if ! "$PY" -c 'import sys; from xpdnn.devices import cuda_available; sys.exit(not cuda_available()[0])' 2>/dev/null; then
    echo "no usable CUDA device: the GPU tests were skipped, which counts as a failure here" >>"$results"
    rc_gpu=1
fi

section "pytest (whole suite: $TESTS)"
# shellcheck disable=SC2086
"$PY" -m pytest -q -rfEs -p no:cacheprovider -m "slow or not slow" $TESTS >"$work/all.log" 2>&1
rc_all=$?
summarize "$work/all.log" $rc_all

if [ "$BENCH" != "off" ]; then
    if compgen -G "bench/test_*.py" >/dev/null; then
        section "bench/ (pytest-benchmark, -m gpu)"
        "$PY" -m pytest -q -p no:cacheprovider -m gpu bench --benchmark-json="$work/bench.json" \
            >"$work/bench.log" 2>&1
        rc=$?
        tail -n 40 "$work/bench.log" >>"$results"
        echo "exit status: $rc" >>"$results"
        [ -s "$work/bench.json" ] && { echo "-- benchmark json --"; cat "$work/bench.json"; } >>"$results"
    fi
    if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("xpdnn.bench") is None)' 2>/dev/null; then
        section "python -m xpdnn.bench ($BENCH)"
        args=(--json "$work/xbench.json")
        "$PY" -m xpdnn.bench --help 2>/dev/null | grep -q -- '--gpu' && args+=(--gpu)
        [ "$BENCH" = quick ] && args+=(--quick)
        "$PY" -m xpdnn.bench "${args[@]}" >"$work/xbench.log" 2>&1
        rc=$?
        tail -n 60 "$work/xbench.log" >>"$results"
        echo "exit status: $rc" >>"$results"
        [ -s "$work/xbench.json" ] && { echo "-- xpdnn.bench json --"; cat "$work/xbench.json"; } >>"$results"

        # the GPU targets of the kernels' issue, always at full size: softmax cross-entropy
        # N=16384 x C=32768 and dropout on 2^28 elements (bandwidth fractions, peak extra
        # device memory, speed against PyTorch), and W4
        section "GPU targets (python -m xpdnn.bench --only W2,W3,W4, full size, GPU peers)"
        "$PY" -m xpdnn.bench --only W2,W3,W4 --peers xpdnn-cupy,torch-cuda,xpdnn-torch-cuda --repeat 20 \
            --no-memory --json "$work/targets.json" >"$work/targets.log" 2>&1
        rc=$?
        tail -n 60 "$work/targets.log" >>"$results"
        echo "exit status: $rc" >>"$results"
        [ -s "$work/targets.json" ] && { echo "-- targets json --"; cat "$work/targets.json"; } >>"$results"
    fi
fi

section "overall"
if [ $rc_self -eq 0 ] && [ $rc_gpu -eq 0 ] && [ $rc_all -eq 0 ]; then
    echo "PASS" >>"$results"
    status=0
else
    echo "FAIL (selftest: $rc_self, pytest -m gpu: $rc_gpu, whole suite: $rc_all)" >>"$results"
    status=1
fi
echo "results: $results"
tail -n 1 "$results"
exit $status
