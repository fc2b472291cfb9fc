#!/usr/bin/env bash
# The one script for a lent GPU: ONE call runs every step (the machine stays warm only 30 s
# after a command: a second command would land on a fresh machine with a cold compile cache),
# within 450 s on a fresh machine, setup included; the same command rerun on the still-warm
# machine ends within 200 s and goes further down the numerics and the benchmark. At most 8
# files in $OUT. Every step has its own limit (benchmarks/gpu/gpu_plan.py: LIMITS, WARM_LIMITS)
# and deadline, none runs past the call's ceiling, and each writes its JSON as it goes, so a
# killed step still returns what it measured.
#
#   bash benchmarks/gpu_check.sh              # the GPU check, in this order:
#     numerics   every kernel x variant (pointer, tma, tma_persistent, tma_ws) x dtype (bf16,
#                fp16, fp32 with TF32, exact fp32) and LoRA dropout once on one shape, before
#                any second shape; then a non-first launch config of each fused GEMM, the
#                kernels' 8 bf16 GPU tests of tests/, frozen gates, the other shapes and edge
#                cases; each output and dx also row by row; LITELORA_AUTOTUNE=0; items whose
#                estimated cost no longer fits are skipped and listed  (gpu/gpu_numerics.py)
#     steady     training steps under torch.cuda.set_sync_debug_mode("error") (ours and peer
#                (b)), and one step captured in a CUDA graph              (gpu/gpu_steady.py)
#     benchmark  the headline grid, most valuable rows first (4096x14336, LoRA dropout): ours vs
#                (a), (b), (c), PEFT and the hybrid backend, autotuning on; per bucket every
#                candidate's time, the Triton configs chosen, the base GEMM vs cuBLAS
#     report     the table and the plot;  roofline: measured beside predicted, at the ceilings
#                of the GPU it runs on (H100 SXM or H200: litelora_fast.tools.roofline)
#     block      one training step of a Llama-like decoder block, ours vs PEFT (gpu/gpu_block.py)
#     sweep      SWEEP_CONFIGS of the fused GEMMs at the headline shapes vs cuBLAS (gpu/gpu_sweep.py)
#   The rerun (the script finds the marker a call of the same kernels left in Triton's cache)
#   runs numerics, steady, benchmark, report and roofline again under WARM_LIMITS.
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
# Files in $OUT: summary.txt (the steps, their limits and ends, the report's and the roofline's
# tables), steps.log (every step's output), numerics.json, bench_gpu.json (or bench_gpu.jsonl),
# bench_gpu.md, bench_gpu.png, block.json, sweep.json.
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
    --estimate) MODE=estimate ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--estimate]" >&2; exit 2 ;;
esac
GPU_DIR=benchmarks/gpu   # the check's helper modules
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
    "$PY" "$GPU_DIR/gpu_estimate.py"
    exit $?
fi

OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
LOG="$OUT/steps.log"
export LITELORA_CACHE_DIR="$CACHE"   # the op's implementation choices, fresh per run
# A rerun on the same machine: Triton's on-disk cache holds what a call of these kernels
# compiled (the marker, keyed by the kernel sources, is written when a call on a GPU starts its
# steps: a first call cut short still makes the next one a rerun, with the rerun's limits).
KERNELS_KEY=$(cat kernels/*.py | cksum | cut -d' ' -f1)
MARKER="${TRITON_CACHE_DIR:-$HOME/.triton/cache}/litelora_gpu_check.$KERNELS_KEY"
if [ -e "$MARKER" ]; then export LITELORA_GPU_CHECK_WARM=1; RUN=rerun; else export LITELORA_GPU_CHECK_WARM=0; RUN=cold; fi
{
    echo "gpu_check.sh $RUN $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | head -3
} >"$SUMMARY"

# One probe (gpu_setup.py), run as every step runs: versions into the summary; the plan's limits
# (read with the copy on the path; the script stops if they cannot be), where the package comes
# from and whether CUDA is there, for the eval.
if ! SETUP_SH=$("$PY" "$GPU_DIR/gpu_setup.py" "$SUMMARY" 2>"$CACHE/setup.err"); then
    echo "gpu_check.sh: cannot read the step limits from benchmarks/gpu/gpu_plan.py (or import the package copy):" | tee -a "$SUMMARY" >&2
    tail -20 "$CACHE/setup.err" | tee -a "$SUMMARY" >&2
    exit 3
fi
eval "$SETUP_SH"
TOTAL_LIMIT=$LIMIT_total
limit_of() {   # the step's limit; a missing one is a bug in gpu/gpu_plan.py, never a default
    local v="LIMIT_$1"
    if [ -z "${!v:-}" ]; then echo "gpu_check.sh: no limit for step $1 in gpu/gpu_plan.py" >&2; exit 3; fi
    echo "${!v}"
}

in_call() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

step() {   # step NAME LOG COMMAND...: run under min(its limit, time left), log, never abort
    local name=$1 log=$2; shift 2
    local limit left t0=$SECONDS rc
    if ! in_call "$name"; then
        echo "== $name: not in the rerun (the cold call ran it)" >>"$SUMMARY"
        return 0
    fi
    limit=$(limit_of "$name") || exit 3
    left=$(( TOTAL_LIMIT - 5 - (SECONDS - START) ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        echo "== $name: skipped, the call's ${TOTAL_LIMIT}s are spent" >>"$SUMMARY"
        return 124
    fi
    echo "== $name (limit ${limit}s): $*" >>"$SUMMARY"
    echo "== $name (limit ${limit}s)" >>"$LOG"
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0))s" >>"$SUMMARY"
    return $rc
}

# Where the package comes from (both files must lie under the copy) and each step's limit.
{
    echo "package: $PKG_FILE"
    echo "kernels: $KERNELS_FILE"
    echo "call: $RUN (rerun marker: $MARKER)"
    for name in $STEPS total; do
        echo "limit $name: $(limit_of "$name") s"
    done
} | tee -a "$SUMMARY"
for f in "$PKG_FILE" "$KERNELS_FILE"; do
    case "$f" in "$PKG"/*) ;; *) echo "gpu_check.sh: $f does not come from the package copy $PKG" | tee -a "$SUMMARY" >&2; exit 3 ;; esac
done
echo "CUDA: $HAVE_GPU; setup $((SECONDS - START))s" >>"$SUMMARY"
if [ "$HAVE_GPU" = 1 ]; then   # the next call on this machine is a rerun
    mkdir -p "$(dirname "$MARKER")" && touch "$MARKER"
fi

step_deadline() {   # seconds since the epoch at which step $1 should stop starting work ($2 s early)
    local limit left
    in_call "$1" || { echo 0; return; }
    limit=$(limit_of "$1") || exit 3
    left=$(( TOTAL_LIMIT - 5 - (SECONDS - START) ))
    [ "$left" -lt "$limit" ] && limit=$left
    echo $(( $(date +%s) + limit - $2 ))
}

if [ "$HAVE_GPU" = 1 ]; then
    LITELORA_NUMERICS_END=$(step_deadline numerics "$MARGIN_numerics") LITELORA_AUTOTUNE=0 \
        step numerics "$LOG" "$PY" "$GPU_DIR/gpu_numerics.py" --json "$OUT/numerics.json"
    tail -3 "$LOG" >>"$SUMMARY"
    LITELORA_AUTOTUNE=0 step steady "$LOG" "$PY" "$GPU_DIR/gpu_steady.py"
    tail -9 "$LOG" >>"$SUMMARY"
else
    echo "== numerics, steady: skipped (no CUDA device); checking that they import:" >>"$SUMMARY"
    "$PY" "$GPU_DIR/gpu_numerics.py" --list 2>&1 | tail -1 >>"$SUMMARY"
    "$PY" "$GPU_DIR/gpu_steady.py" --list >>"$SUMMARY" 2>&1
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
    step benchmark "$LOG" "$PY" -m pytest benchmarks/test_gated_lora.py -k test_gpu \
        --grid headline -q -p no:cacheprovider --benchmark-json "$BENCH" \
        --benchmark-columns=median,rounds
    tail -3 "$LOG" >>"$SUMMARY"
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
# the roofline's table goes into summary.txt (at most 8 files in $OUT)
if has_entries "$BENCH"; then
    step report "$SUMMARY" "$PY" -m litelora_fast report "$BENCH" --out "$OUT" --name bench_gpu
    step roofline "$SUMMARY" "$PY" -m litelora_fast roofline --measured "$BENCH"
elif [ "$HAVE_GPU" = 1 ]; then
    echo "== report: skipped, the benchmark wrote no results (no GPU case ran)" >>"$SUMMARY"
    step roofline "$SUMMARY" "$PY" -m litelora_fast roofline --grid headline
else   # a dry run: the predictions alone, with no time limit (a loaded CPU machine is slow)
    echo "== report: skipped, the benchmark wrote no results (no GPU case ran)" >>"$SUMMARY"
    "$PY" -m litelora_fast roofline --grid headline >>"$SUMMARY" 2>&1
    echo "== roofline (dry run, no limit): rc=$?" >>"$SUMMARY"
fi

if [ "$HAVE_GPU" = 1 ]; then
    step block "$LOG" "$PY" "$GPU_DIR/gpu_block.py" --json "$OUT/block.json" \
        --deadline "$(step_deadline block "$MARGIN_block")"
    in_call block && tail -2 "$LOG" >>"$SUMMARY"
    LITELORA_SWEEP_DEADLINE=$(step_deadline sweep "$MARGIN_sweep") \
        step sweep "$LOG" "$PY" "$GPU_DIR/gpu_sweep.py" --json "$OUT/sweep.json"
    in_call sweep && tail -6 "$LOG" >>"$SUMMARY"
else
    echo "== block, sweep: skipped (no CUDA device); checking what they would run:" >>"$SUMMARY"
    "$PY" "$GPU_DIR/gpu_block.py" --list 2>&1 | tail -1 >>"$SUMMARY"
    "$PY" "$GPU_DIR/gpu_sweep.py" --list 2>&1 | tail -1 >>"$SUMMARY"
fi
echo "== total: $((SECONDS - START))s of ${TOTAL_LIMIT}s ($RUN); files in $OUT: $(ls "$OUT" | wc -l)" >>"$SUMMARY"
# The last lines of the reply: where each step ended (the package's files and the limits were
# printed first).
grep -E '^== ' "$SUMMARY"
