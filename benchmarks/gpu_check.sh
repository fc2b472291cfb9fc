#!/usr/bin/env bash
# One script for a lent GPU (about 7.5 minutes at most): numerics of the public op in bf16, fp16
# and fp32 against float64 on the GPU, the default benchmark (pytest-benchmark JSON), its report
# (markdown + PNG) and the roofline with the measured times beside the predictions.
#
#   bash benchmarks/gpu_check.sh            # writes to $OUT when set, else ./out
#   SKIP_INSTALL=1 bash benchmarks/gpu_check.sh   # when litelora-fast is already installed
#
# Every step has its own time limit and log; a failing step is recorded in summary.txt and the
# next step still runs, so earlier output is never lost. At most 8 files are written (the device
# tool returns 8): summary.txt numerics.log bench.log bench_gpu.json bench_gpu.jsonl bench_gpu.md
# bench_gpu.png roofline.md.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
SUMMARY="$OUT/summary.txt"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

step() {   # step NAME LIMIT_S LOG COMMAND...: run, log, record the exit status, never abort
    local name=$1 limit=$2 log=$3; shift 3
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*" >>"$SUMMARY"
    timeout -k 15 "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0))s" >>"$SUMMARY"
    return $rc
}

{
    echo "gpu_check.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" 2>&1
} >"$SUMMARY"

# The package maps kernels/ to litelora_fast.kernels, so it must be installed (no network there:
# no deps, no build isolation). Fallback: a copy laid out as the installed package.
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    echo "install skipped (SKIP_INSTALL=1)" >>"$SUMMARY"
elif ! step install 60 "$SUMMARY" "$PY" -m pip install -q --no-deps --no-build-isolation -e .; then
    rm -rf /tmp/llf_pkg && mkdir -p /tmp/llf_pkg && cp -r litelora_fast /tmp/llf_pkg/ \
        && cp -r kernels /tmp/llf_pkg/litelora_fast/kernels
    export PYTHONPATH="/tmp/llf_pkg${PYTHONPATH:+:$PYTHONPATH}"
    echo "install failed: using PYTHONPATH=/tmp/llf_pkg" >>"$SUMMARY"
fi

step numerics 90 "$OUT/numerics.log" "$PY" benchmarks/gpu_numerics.py
tail -3 "$OUT/numerics.log" >>"$SUMMARY"

# The benchmark stops starting cases after 260 s (LITELORA_BENCH_DEADLINE) so pytest still writes
# its JSON; the JSON lines are written as it goes, in case it is killed anyway.
export LITELORA_BENCH_DEADLINE=$(( $(date +%s) + 260 ))
export LITELORA_BENCH_JSONL="$OUT/bench_gpu.jsonl"
rm -f "$LITELORA_BENCH_JSONL"
step benchmark 320 "$OUT/bench.log" "$PY" -m pytest benchmarks/test_gated_lora.py -k test_gpu \
    -q -p no:cacheprovider --benchmark-json "$OUT/bench_gpu.json" --benchmark-columns=median,rounds
tail -3 "$OUT/bench.log" >>"$SUMMARY"

BENCH="$OUT/bench_gpu.json"
[ -s "$BENCH" ] || BENCH="$OUT/bench_gpu.jsonl"
if [ -s "$BENCH" ]; then
    step report 60 "$SUMMARY" "$PY" -m litelora_fast report "$BENCH" --out "$OUT" --name bench_gpu
    step roofline 30 "$OUT/roofline.md" "$PY" -m litelora_fast roofline --measured "$BENCH"
else
    echo "== report, roofline: skipped, the benchmark wrote no results (no GPU case ran)" >>"$SUMMARY"
fi
# The last lines of the reply: where each step ended.
grep '^== .*rc=' "$SUMMARY"
