#!/usr/bin/env bash
# The one script for a lent GPU: two calls at most, each with its own ceiling and at most 8 files
# in $OUT. Every step has a limit (benchmarks/gpu_plan.py) and none runs past the call's ceiling.
#
#   bash benchmarks/gpu_check.sh              # first call, <= 300 s cold (setup included):
#     numerics   every kernel in bf16 against float64 on a GPU shape whose weight gradients
#                split N (pointer path and each descriptor variant forced, LoRA dropout) and a
#                non-first launch config of each fused GEMM; LITELORA_AUTOTUNE=0; each step of
#                both calls skips the items whose estimated cost no longer fits (gpu_numerics.py)
#     steady     training steps under torch.cuda.set_sync_debug_mode("error") (ours and peer
#                (b)), and one step captured in a CUDA graph               (gpu_steady.py)
#     benchmark  the headline grid, most valuable rows first (4096x14336, LoRA dropout): ours vs
#                (a), (b), (c), PEFT and the hybrid backend, autotuning on; per bucket every
#                candidate's time, the Triton configs chosen, the base GEMM vs cuBLAS
#     report     the table and the plot;  roofline: measured beside predicted
#   bash benchmarks/gpu_check.sh --tune       # second call, <= 240 s:
#     block      one training step of a Llama-like decoder block, ours vs PEFT (gpu_block.py)
#     sweep      SWEEP_CONFIGS of the fused GEMMs at the headline shapes vs cuBLAS (gpu_sweep.py)
#     numerics   the rest of the numerics plan: fp32 and fp16, the kernels' 8 bf16 GPU tests of
#                tests/, the edge cases (gpu_numerics.py --tune-part)
#   bash benchmarks/gpu_check.sh --estimate   # no GPU: compiles, timed configs, predicted totals
#
# It runs with the machine's own python3 and packages (no network, no install): the package is
# copied to a fresh folder as it would install (kernels/ becomes litelora_fast.kernels), put first
# on PYTHONPATH, and PYTHONSAFEPATH=1 keeps the repository's own ./litelora_fast (no kernels/)
# off sys.path for `python -m ...` and scripts alike; the script stops if either file does not
# come from the copy, or if the plan's limits cannot be read. It never runs tests/ with pytest
# (the interpreter tests need numpy < 2.4); it imports helpers from there. A failing step is
# recorded in summary.txt and the next step still runs. Without CUDA (a dry run) the GPU steps
# are skipped after checking that they import and collect.
# Files in $OUT, first call: summary.txt numerics.log steady.log bench.log bench_gpu.json (or
# bench_gpu.jsonl) bench_gpu.md bench_gpu.png roofline.md; --tune: summary.txt block.log
# block.json sweep.log sweep.json numerics.log.
set -u
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

MODE=check
case "${1:-}" in
    "") ;;
    --tune) MODE=tune ;;
    --estimate) MODE=estimate ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--tune | --estimate]" >&2; exit 2 ;;
esac
START=$SECONDS

# The package as it installs, without pip or network, in a folder of this run's own.
PKG="$(mktemp -d "${TMPDIR:-/tmp}/llf_pkg.XXXXXX")"
CACHE="$(mktemp -d "${TMPDIR:-/tmp}/llf_cache.XXXXXX")"
trap 'rm -rf "$PKG" "$CACHE"' EXIT
mkdir -p "$PKG/litelora_fast" && cp -r litelora_fast/. "$PKG/litelora_fast/" \
    && rm -rf "$PKG/litelora_fast/kernels" && cp -r kernels "$PKG/litelora_fast/kernels" \
    || { echo "gpu_check.sh: could not copy the package to $PKG" >&2; exit 3; }
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"

# Neither `python -m` nor a script puts the repository root (or the script's folder) first on
# sys.path: the copy is what every step imports (the checkout's ./litelora_fast has no kernels/).
export PYTHONSAFEPATH=1

if [ "$MODE" = estimate ]; then
    "$PY" benchmarks/gpu_estimate.py
    exit $?
fi

OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
export LITELORA_CACHE_DIR="$CACHE"   # the op's implementation choices, fresh per run
{
    echo "gpu_check.sh $MODE $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | head -3
} >"$SUMMARY"

# One probe (gpu_setup.py), run as every step runs: versions into the summary; the plan's limits
# (read with the copy on the path; the script stops if they cannot be), where the package comes
# from and whether CUDA is there, for the eval.
if ! SETUP_SH=$("$PY" benchmarks/gpu_setup.py "$MODE" "$SUMMARY" 2>"$CACHE/setup.err"); then
    echo "gpu_check.sh: cannot read the step limits from benchmarks/gpu_plan.py (or import the package copy):" | tee -a "$SUMMARY" >&2
    tail -20 "$CACHE/setup.err" | tee -a "$SUMMARY" >&2
    exit 3
fi
eval "$SETUP_SH"
TOTAL_LIMIT=$LIMIT_total
limit_of() {   # the step's limit; a missing one is a bug in gpu_plan.py, never a default
    local v="LIMIT_$1"
    if [ -z "${!v:-}" ]; then echo "gpu_check.sh: no limit for step $1 in gpu_plan.py" >&2; exit 3; fi
    echo "${!v}"
}

step() {   # step NAME LOG COMMAND...: run under min(its limit, time left), log, never abort
    local name=$1 log=$2; shift 2
    local limit left t0=$SECONDS rc
    limit=$(limit_of "$name") || exit 3
    left=$(( TOTAL_LIMIT - 5 - (SECONDS - START) ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        echo "== $name: skipped, the call's ${TOTAL_LIMIT}s are spent" >>"$SUMMARY"
        return 124
    fi
    echo "== $name (limit ${limit}s): $*" >>"$SUMMARY"
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0))s" >>"$SUMMARY"
    return $rc
}

# Where the package comes from (both files must lie under the copy) and each step's limit.
{
    echo "package: $PKG_FILE"
    echo "kernels: $KERNELS_FILE"
    for name in $(echo "$SETUP_SH" | sed -n 's/^LIMIT_\([a-z_]*\)=.*/\1/p'); do
        echo "limit $name: $(limit_of "$name") s"
    done
} | tee -a "$SUMMARY"
for f in "$PKG_FILE" "$KERNELS_FILE"; do
    case "$f" in "$PKG"/*) ;; *) echo "gpu_check.sh: $f does not come from the package copy $PKG" | tee -a "$SUMMARY" >&2; exit 3 ;; esac
done
echo "CUDA: $HAVE_GPU; setup $((SECONDS - START))s" >>"$SUMMARY"

step_deadline() {   # seconds since the epoch at which step $1 should stop starting work ($2 s early)
    local limit left
    limit=$(limit_of "$1") || exit 3
    left=$(( TOTAL_LIMIT - 5 - (SECONDS - START) ))
    [ "$left" -lt "$limit" ] && limit=$left
    echo $(( $(date +%s) + limit - $2 ))
}

if [ "$MODE" = tune ]; then
    if [ "$HAVE_GPU" = 1 ]; then
        step block "$OUT/block.log" "$PY" benchmarks/gpu_block.py --json "$OUT/block.json"
        tail -2 "$OUT/block.log" >>"$SUMMARY"
        LITELORA_SWEEP_DEADLINE=$(step_deadline sweep 5) \
            step sweep "$OUT/sweep.log" "$PY" benchmarks/gpu_sweep.py --json "$OUT/sweep.json"
        tail -6 "$OUT/sweep.log" >>"$SUMMARY"
        LITELORA_NUMERICS_END=$(step_deadline numerics 5) LITELORA_AUTOTUNE=0 \
            step numerics "$OUT/numerics.log" "$PY" benchmarks/gpu_numerics.py --tune-part
        tail -3 "$OUT/numerics.log" >>"$SUMMARY"
    else
        echo "== block, sweep, numerics: skipped (no CUDA device); checking what they would run:" >>"$SUMMARY"
        "$PY" benchmarks/gpu_block.py --list 2>&1 | tail -1 >>"$SUMMARY"
        "$PY" benchmarks/gpu_sweep.py --list 2>&1 | tail -1 >>"$SUMMARY"
        "$PY" benchmarks/gpu_numerics.py --list 2>&1 | tail -1 >>"$SUMMARY"
    fi
    echo "== total: $((SECONDS - START))s of ${TOTAL_LIMIT}s; files in $OUT: $(ls "$OUT" | wc -l)" >>"$SUMMARY"
    grep -E '^== ' "$SUMMARY"
    exit 0
fi

if [ "$HAVE_GPU" = 1 ]; then
    LITELORA_NUMERICS_END=$(step_deadline numerics 3) LITELORA_AUTOTUNE=0 step numerics "$OUT/numerics.log" "$PY" benchmarks/gpu_numerics.py
    tail -3 "$OUT/numerics.log" >>"$SUMMARY"
    LITELORA_AUTOTUNE=0 step steady "$OUT/steady.log" "$PY" benchmarks/gpu_steady.py
    tail -9 "$OUT/steady.log" >>"$SUMMARY"
else
    echo "== numerics, steady: skipped (no CUDA device); checking that they import:" >>"$SUMMARY"
    "$PY" benchmarks/gpu_numerics.py --list 2>&1 | tail -1 >>"$SUMMARY"
    "$PY" benchmarks/gpu_steady.py --list >>"$SUMMARY" 2>&1
fi

# The benchmark skips the cases whose estimated cost would run past BENCH_MARGIN s before its
# limit (LITELORA_BENCH_DEADLINE), so pytest still writes its JSON; the JSON lines are written as
# it goes, in case it is killed.
BENCH="$OUT/bench_gpu.json"
JSONL="$CACHE/bench_gpu.jsonl"
rm -f "$BENCH"
export LITELORA_BENCH_DEADLINE=$(step_deadline benchmark "$BENCH_MARGIN")
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
    [ -s "$1" ] && "$PY" -c "import sys; from litelora_fast.tools import bench_json; bench_json.rows(bench_json.load(sys.argv[1]))" "$1" 2>/dev/null
}
if ! has_entries "$BENCH" && has_entries "$JSONL"; then
    rm -f "$BENCH"   # unreadable or empty: the JSON lines stand in for it (still <= 8 files)
    cp "$JSONL" "$OUT/bench_gpu.jsonl" && BENCH="$OUT/bench_gpu.jsonl"
fi
if has_entries "$BENCH"; then
    step report "$SUMMARY" "$PY" -m litelora_fast report "$BENCH" --out "$OUT" --name bench_gpu
    step roofline "$OUT/roofline.md" "$PY" -m litelora_fast roofline --measured "$BENCH"
elif [ "$HAVE_GPU" = 1 ]; then
    echo "== report: skipped, the benchmark wrote no results (no GPU case ran)" >>"$SUMMARY"
    step roofline "$OUT/roofline.md" "$PY" -m litelora_fast roofline --grid headline
else   # a dry run: the predictions alone, with no time limit (a loaded CPU machine is slow)
    echo "== report: skipped, the benchmark wrote no results (no GPU case ran)" >>"$SUMMARY"
    "$PY" -m litelora_fast roofline --grid headline >"$OUT/roofline.md" 2>&1
    echo "== roofline (dry run, no limit): rc=$?" >>"$SUMMARY"
fi
echo "== total: $((SECONDS - START))s of ${TOTAL_LIMIT}s; files in $OUT: $(ls "$OUT" | wc -l)" >>"$SUMMARY"
# The last lines of the reply: where each step ended (the package's files and the limits were
# printed first).
grep -E '^== ' "$SUMMARY"
