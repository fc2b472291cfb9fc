#!/usr/bin/env bash
# The one script for a lent GPU, at most 6 minutes in all (each step has its own limit, and no
# step runs past the script's deadline):
#
#   numerics   bf16/fp16/fp32 numerics of every kernel (pointer path and each descriptor variant,
#              forced) against float64, LITELORA_AUTOTUNE=0        (benchmarks/gpu_numerics.py)
#   steady     training steps under torch.cuda.set_sync_debug_mode("error"), and one step
#              captured in a CUDA graph                               (benchmarks/gpu_steady.py)
#   benchmark  the headline grid (N = 8192; 4096x4096 and 4096x14336; r = 16; K = 1, 4, 8; bf16):
#              ours vs (a), (b), (c) and PEFT, autotuning on       (benchmarks/test_gated_lora.py)
#   report     the table (naming the implementation ours ran) and the plot
#   roofline   measured beside predicted
#
#   bash benchmarks/gpu_check.sh              # writes to $OUT when set, else ./out
#   bash benchmarks/gpu_check.sh --estimate   # no GPU: compiles, timed configs, predicted total
#
# It runs with the machine's own python3 and packages (no network, no install): the package is
# copied to /tmp/llf_pkg as it would install. It never runs tests/ (the interpreter tests need
# numpy < 2.4); it imports two helpers from there (op_cases, numerics). A failing step is
# recorded in summary.txt and the next step still runs. Without CUDA (a dry run) the GPU steps
# are skipped after checking that they import and collect. It writes at most 8 files to $OUT:
# summary.txt numerics.log steady.log bench.log bench_gpu.json (bench_gpu.jsonl if the JSON is
# missing) bench_gpu.md bench_gpu.png roofline.md.
set -u
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

if [ "${1:-}" = "--estimate" ]; then
    exec "$PY" benchmarks/gpu_estimate.py
fi

START=$SECONDS
TOTAL_LIMIT=360
OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"

# Step limits from benchmarks/gpu_plan.py (one source for the script and the estimate), read once.
eval "$(cd benchmarks && "$PY" -c "import gpu_plan
for k, v in gpu_plan.LIMITS.items(): print(f'LIMIT_{k}={int(v)}')" 2>/dev/null)"
limit_of() { local v="LIMIT_$1"; echo "${!v:-30}"; }

step() {   # step NAME LOG COMMAND...: run under min(its limit, time left), log, never abort
    local name=$1 log=$2; shift 2
    local limit left t0=$SECONDS rc
    limit=$(limit_of "$name")
    left=$(( TOTAL_LIMIT - 5 - (SECONDS - START) ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        echo "== $name: skipped, the script's ${TOTAL_LIMIT}s are spent" >>"$SUMMARY"
        return 124
    fi
    echo "== $name (limit ${limit}s): $*" >>"$SUMMARY"
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0))s" >>"$SUMMARY"
    return $rc
}

{
    echo "gpu_check.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | head -3
    "$PY" -c "import sys, torch, triton, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)" 2>&1
    "$PY" -c "import peft; print('peft', peft.__version__)" 2>/dev/null || echo "peft: not installed (the PEFT peer is skipped)"
} >"$SUMMARY"

# The package as it installs (kernels/ becomes litelora_fast.kernels), without pip or network.
PKG=/tmp/llf_pkg
rm -rf "$PKG" && mkdir -p "$PKG" && cp -r litelora_fast "$PKG/" && rm -rf "$PKG/litelora_fast/kernels" \
    && cp -r kernels "$PKG/litelora_fast/kernels"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
export LITELORA_CACHE_DIR=/tmp/llf_cache   # the op's implementation choices, fresh per run
HAVE_GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>>"$SUMMARY" || echo 0)
echo "package: $PKG ($("$PY" -c 'import litelora_fast; print(litelora_fast.__file__)' 2>&1)); CUDA: $HAVE_GPU" >>"$SUMMARY"

if [ "$HAVE_GPU" = 1 ]; then
    LITELORA_AUTOTUNE=0 step numerics "$OUT/numerics.log" "$PY" benchmarks/gpu_numerics.py
    tail -3 "$OUT/numerics.log" >>"$SUMMARY"
    LITELORA_AUTOTUNE=0 step steady "$OUT/steady.log" "$PY" benchmarks/gpu_steady.py
    tail -8 "$OUT/steady.log" >>"$SUMMARY"
else
    echo "== numerics, steady: skipped (no CUDA device); checking that they import:" >>"$SUMMARY"
    "$PY" benchmarks/gpu_numerics.py --list 2>&1 | tail -1 >>"$SUMMARY"
    "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import gpu_steady; print('gpu_steady imports')" >>"$SUMMARY" 2>&1
fi

# The benchmark stops starting cases 25 s before its limit (LITELORA_BENCH_DEADLINE) so pytest
# still writes its JSON; the JSON lines are written as it goes, in case it is killed anyway.
BENCH="$OUT/bench_gpu.json"
JSONL=/tmp/llf_bench_gpu.jsonl
rm -f "$JSONL" "$BENCH"
BENCH_LIMIT=$(limit_of benchmark)
export LITELORA_BENCH_DEADLINE=$(( $(date +%s) + BENCH_LIMIT - 25 ))
export LITELORA_BENCH_JSONL="$JSONL"
if [ "$HAVE_GPU" = 1 ]; then
    step benchmark "$OUT/bench.log" "$PY" -m pytest benchmarks/test_gated_lora.py -k test_gpu \
        --grid headline -q -p no:cacheprovider --benchmark-json "$BENCH" \
        --benchmark-columns=median,rounds
    tail -3 "$OUT/bench.log" >>"$SUMMARY"
else
    echo "== benchmark: skipped (no CUDA device); collecting the headline grid:" >>"$SUMMARY"
    "$PY" -m pytest benchmarks/test_gated_lora.py -k test_gpu --grid headline -q \
        -p no:cacheprovider --collect-only 2>&1 | tail -1 >>"$SUMMARY"
fi

has_entries() {
    [ -s "$1" ] && "$PY" -c "import sys; sys.path.insert(0, '$PKG'); from litelora_fast.tools import bench_json; bench_json.rows(bench_json.load(sys.argv[1]))" "$1" 2>/dev/null
}
if ! has_entries "$BENCH" && has_entries "$JSONL"; then
    rm -f "$BENCH"   # unreadable or empty: the JSON lines stand in for it (still <= 8 files)
    cp "$JSONL" "$OUT/bench_gpu.jsonl" && BENCH="$OUT/bench_gpu.jsonl"
fi
if has_entries "$BENCH"; then
    step report "$SUMMARY" "$PY" -m litelora_fast report "$BENCH" --out "$OUT" --name bench_gpu
    step roofline "$OUT/roofline.md" "$PY" -m litelora_fast roofline --measured "$BENCH"
else
    echo "== report: skipped, the benchmark wrote no results (no GPU case ran)" >>"$SUMMARY"
    step roofline "$OUT/roofline.md" "$PY" -m litelora_fast roofline --grid headline
fi
echo "== total: $((SECONDS - START))s of ${TOTAL_LIMIT}s; files in $OUT: $(ls "$OUT" | wc -l)" >>"$SUMMARY"
# The last lines of the reply: where each step ended.
grep '^== ' "$SUMMARY"
