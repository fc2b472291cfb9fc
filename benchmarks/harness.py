"""One benchmark case end to end: check the peers once against a float64 oracle, then time every
peer in the requested mode and put the numbers side by side into ``benchmark.extra_info``.

Headline numbers: ``extra_info["ms_<peer>"]``, the median of ``timing.median_ms`` (do_bench on the
GPU, perf_counter on the CPU). pytest-benchmark's own statistics time ``ours`` only, with its host
clock around a synced call (``benchmark.pedantic``), as a cross-check.

Two environment variables make a time-boxed run safe (``gpu_check.sh`` sets both):
``LITELORA_BENCH_DEADLINE`` (seconds since the epoch) is when the last case must be done: a case
whose estimated cost (``gpu_estimate.bench_costs``: its compiles, autotuning and timings; a
later mode of a case only its timings) would run past it is skipped, so pytest ends cleanly and
writes its JSON, and a cheaper later case may still run; ``LITELORA_BENCH_JSONL`` appends each case's
``extra_info`` as one JSON line as soon as it is measured (kept even if the run is killed;
``python -m litelora_fast report`` reads it too).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from numerics import rel_err, worst_row_rel_err  # noqa: E402  (the suite's error helpers)

from cases import Case, Inputs, make_inputs
from litelora_fast.op import lora_dropout
from litelora_fast import settings
from litelora_fast.op.reference import gated_lora_linear_ref
from litelora_fast.tools import roofline
from litelora_fast.tools.bench_cases import MODES, PEERS, applicable
import peers
import peft_peer
import timing
import tuning_record

# Relative error ||out - ref|| / ||ref|| against the float64 oracle, worst of y and the gradients.
# bf16 rounds each stored value to 8 significant bits (unit roundoff 3.9e-3) and the backward
# chains two such roundings (S, dS); fp16's roundoff is 4.9e-4; fp32 on a GPU runs our dots in
# TF32 (10-bit mantissa, ~5e-4 per operand); fp32 on the CPU is exact fp32 arithmetic (~1e-7 per
# op, reductions of a few thousand terms). Each bound leaves ~4-10x headroom over that.
ERROR_BOUNDS = {("cuda", "bfloat16"): 2e-2, ("cuda", "float16"): 5e-3,
                ("cuda", "float32"): 5e-3, ("cpu", "float32"): 1e-5}
# "hybrid": ours forced to the op's hybrid backend (cuBLAS base GEMMs, Triton LoRA work), on CUDA
# where the op has it; timed beside ours so every row names what the hybrid alone does.
# "peft_patched": the PEFT peer's own LoraLayer under llf.patch_peft_model (what a PEFT user
# gets from the one-line switch), beside PEFT unpatched.
EXTRA_PEERS = ("hybrid", "peft_patched")
CHECKED_PEERS = ("ours", "hybrid", "reference", "packed", "peft", "peft_patched")
BENCH_ROUNDS = timing.BENCH_ROUNDS

_case_facts = {}   # case id -> {"rel_err_<peer>", "saved_bytes_<peer>", "peak_bytes_<peer>"}


class Bound:
    """One peer bound to one case's inputs: ``forward()`` runs it, ``wrt`` is what it
    differentiates, ``packed(grads)`` maps its gradients to the reference's layout."""

    def __init__(self, peer: str, case: Case, inp: Inputs):
        self.peer = peer
        if peer in ("peft", "peft_patched"):
            layer = peft_peer.PeftPeer(case, inp, patched=peer == "peft_patched")
            self.forward, self.wrt, self.packed = layer.forward, layer.wrt(), layer.packed_grads
        else:
            self.forward = peers.bind(peer, inp.args(), case.dropout)
            self.wrt = [inp.x] if peer == "base" else inp.grad_inputs()
            self.packed = list


def peers_for(case: Case) -> tuple:
    """``(peers to run, {peer: reason skipped})`` for ``case``."""
    skipped = {}
    for peer in PEERS + EXTRA_PEERS:
        if peer == "hybrid":
            if case.device != "cuda":
                skipped[peer] = "the hybrid backend is timed on CUDA only"
            elif not peers.hybrid_available():
                skipped[peer] = "this version of the op has no hybrid backend"
        elif not applicable(case, "peft" if peer == "peft_patched" else peer):
            skipped[peer] = "PEFT has no trainable gates"
        elif peer in ("peft", "peft_patched") and peft_peer.available():
            skipped[peer] = peft_peer.available()
    return tuple(p for p in PEERS + EXTRA_PEERS if p not in skipped), skipped


def make_fn(bound: Bound, dy, mode: str):
    """The callable timed for a bound peer in ``mode``; the backward mode runs its forward here,
    once, and keeps the graph (``retain_graph``) so only the backward is timed.
    ``autograd.grad`` returns the gradients without accumulating them into ``.grad``."""
    f, wrt = bound.forward, bound.wrt
    if mode == "forward":
        return f
    if mode == "backward":
        y = f()
        return lambda: torch.autograd.grad(y, wrt, dy, retain_graph=True)
    if mode == "fwd_bwd":
        return lambda: torch.autograd.grad(f(), wrt, dy)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


@contextlib.contextmanager
def recorded_dropout():
    """``with recorded_dropout() as masks:`` appends the keep-mask (``out != 0``) of every
    ``F.dropout`` call in training mode: the masks (b) and PEFT draw, for the oracle. ``x`` is
    random normal, so an element of it is never exactly 0."""
    masks, real = [], F.dropout

    def recording(input, p=0.5, training=True, inplace=False):
        out = real(input, p, training, inplace)
        if training and p > 0:
            masks.append(out.detach() != 0)
        return out
    torch.nn.functional.dropout = recording
    try:
        yield masks
    finally:
        torch.nn.functional.dropout = real


def _outputs(bound: Bound, dy) -> tuple:
    """``([y, *grads in the reference's layout], dropout masks of the forward)``: the op's own
    recorded mask for ours/hybrid, the ``F.dropout`` masks for (b) and PEFT."""
    with lora_dropout.recorded_masks() as ours, recorded_dropout() as theirs:
        y = bound.forward()
    masks = ours[-1:] if ours else theirs
    return [y.detach(), *bound.packed(list(torch.autograd.grad(y, bound.wrt, dy)))], masks


def _reference_outputs(inp: Inputs, dropout: float = 0.0, masks=()) -> list:
    """float64 y and gradients, in the order ``_outputs`` returns them. With dropout, ``masks``
    holds one keep-mask shared by the bank, or one per active adapter (PEFT's, in adapter
    order, the zero-gate adapters skipped)."""
    up = inp.upcast(torch.float64)
    x2d = up.x.reshape(-1, up.x.shape[-1])
    if not dropout or len(masks) <= 1:
        mask = masks[0].reshape(up.x.shape) if masks else None
        y = gated_lora_linear_ref(*up.args(), dropout=dropout if mask is not None else 0.0,
                                  dropout_mask=mask)
    else:
        K, r = len(inp.scaling), up.lora_A.shape[0] // len(inp.scaling)
        active = [k for k in range(K) if float(inp.gates[k]) != 0.0]
        if len(active) != len(masks):
            raise ValueError(f"{len(masks)} dropout masks for {len(active)} active adapters")
        y = F.linear(x2d, up.weight)
        for k, m in zip(active, masks):
            x_k = x2d * m.reshape(x2d.shape).to(x2d.dtype) / (1.0 - dropout)
            u = F.linear(F.linear(x_k, up.lora_A[k * r:(k + 1) * r]),
                         up.lora_B[:, k * r:(k + 1) * r])
            y = y + u * (up.gates[k] * inp.scaling[k])
        y = y.reshape(*up.x.shape[:-1], -1)
    return [y.detach(), *torch.autograd.grad(y, up.grad_inputs(), up.dy)]


def worst_rel_err(outs: list, refs: list) -> float:
    """Worst ``||out - ref|| / ||ref||`` over the pairs (``tests/numerics.rel_err``; inf on any
    non-finite value)."""
    worst = 0.0
    for o, r in zip(outs, refs):
        err = rel_err(o, r)
        if not math.isfinite(err):
            return math.inf
        worst = max(worst, err)
    return worst


def worst_row_err(outs: list, refs: list) -> float:
    """Worst per-row relative error (``tests/numerics.worst_row_rel_err``) of the outputs with
    one row per token (y and dx: as many rows as y): at N = 8192 one wrong row moves the whole
    tensor's error by only about 1/sqrt(8192) = 0.011, under the bf16 bound."""
    rows = outs[0].reshape(-1, outs[0].shape[-1]).shape[0]
    worst = 0.0
    for o, r in zip(outs, refs):
        if o.dim() >= 2 and o.reshape(-1, o.shape[-1]).shape[0] == rows:
            err = worst_row_rel_err(o, r)
            if not math.isfinite(err):
                return math.inf
            worst = max(worst, err)
    return worst


def _needs(inp: Inputs) -> tuple:
    """Which of ``(x, weight, bias, lora_A, lora_B, gates)`` require a gradient."""
    return tuple(t.requires_grad for t in (inp.x, inp.weight)) + (False,) + tuple(
        t.requires_grad for t in (inp.lora_A, inp.lora_B, inp.gates))


def check_once(case: Case, seed: int) -> dict:
    """Correctness of every checked peer against the float64 reference (with dropout: on the
    masks each peer drew), plus the memory facts and, on CUDA, the base GEMM of our kernels
    against cuBLAS; computed once per case (the first mode that runs it), on inputs of their
    own seed."""
    if case.id in _case_facts:
        return _case_facts[case.id]
    inp = make_inputs(case, seed)
    bound = ERROR_BOUNDS[(case.device, case.dtype)]
    run, skipped = peers_for(case)
    facts = {f"skipped_{p}": why for p, why in skipped.items()}
    refs = None if case.dropout else _reference_outputs(inp)
    failed = []
    for peer in (p for p in CHECKED_PEERS if p in run):
        if peer == "reference" and case.dropout:
            continue   # (a) draws its mask inside the oracle's own function: nothing to check
        try:
            outs, masks = _outputs(Bound(peer, case, inp), inp.dy)
            if case.dropout and not masks:
                raise RuntimeError("no dropout mask was recorded")
            ref = refs if refs is not None else _reference_outputs(inp, case.dropout, masks)
            # PEFT's gradients are x, A, B (no gates): compare with the reference's first three.
            err = worst_rel_err(outs, ref[:len(outs)])
        except Exception as e:   # a peer that cannot run this case
            if peer == "ours":
                raise
            failed.append(peer)
            facts[f"skipped_{peer}"] = f"raised {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        facts[f"rel_err_{peer}"] = err
        if peer == "ours" and case.device == "cuda":   # the headline shapes: each row too
            rows = worst_row_err(outs, ref[:len(outs)])
            facts["row_rel_err_ours"] = rows
            if not rows <= bound:
                pytest.fail(f"ours on {case.id}: a row's relative error {rows:.3g} > {bound:g} "
                            f"(seed {seed}; whole-tensor {err:.3g})")
        if not err <= bound:
            if peer == "ours":   # our correctness gates the case
                pytest.fail(f"{peer} on {case.id}: relative error {err:.3g} > {bound:g} "
                            f"(seed {seed})")
            failed.append(peer)   # another peer's wrong answer is recorded, not timed
            facts[f"skipped_{peer}"] = f"relative error {err:.3g} > {bound:g} (seed {seed})"
    del refs
    facts["failed_peers"] = failed
    for peer in (p for p in run if p not in failed):
        b = Bound(peer, case, inp)
        inputs = [inp.x, inp.weight, inp.lora_A, inp.lora_B, inp.gates, *b.wrt]
        facts[f"saved_bytes_{peer}"] = timing.saved_bytes(b.forward, inputs)
        facts[f"peak_bytes_{peer}"] = timing.peak_bytes(make_fn(b, inp.dy, "fwd_bwd"), case.device)
    if case.device == "cuda":
        facts["base_gemm"] = tuning_record.base_gemm(case)
    facts["check_seed"] = seed
    _case_facts[case.id] = facts
    return facts


def versions() -> dict:
    import importlib.metadata

    import triton

    import litelora_fast
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    peft = None if peft_peer.available() else importlib.metadata.version("peft")
    return {"torch": torch.__version__, "triton": triton.__version__,
            "litelora_fast": litelora_fast.__version__, "peft": peft, "cuda_device": dev,
            "load_avg_1min": os.getloadavg()[0]}


IMPL_NAMES = {"triton": "kernels", "torch": "composite", "hybrid": "hybrid", None: "not tuned"}


def implementation_of_ours(case: Case, inp: Inputs) -> str:
    """Which implementation ``gated_lora_linear`` ran for this case: on the CPU the PyTorch fast
    path; on CUDA the op's measured choice (``autotune.chosen_implementation``, which asks
    ``autotune.implementation`` without timing: the kernels, the hybrid or the cuBLAS
    composite), asked after the case ran, so its bucket is tuned."""
    if case.device != "cuda":
        return "torch fast path"
    from litelora_fast.op import autotune

    name = autotune.chosen_implementation(
        case.n, case.d_in, case.d_out, case.active_rank, getattr(torch, case.dtype),
        per_row_gates=False, needs=_needs(inp), device=case.device, dropout=bool(case.dropout))
    return IMPL_NAMES.get(name, str(name))


_COSTS = {}


def estimated_cost(case: Case) -> float:
    """Seconds ``case`` is estimated to take in its next mode: the first pays the compiles and
    autotuning (``gpu_estimate.bench_costs``), a later one its peers' timings; 0 when the
    estimate cannot be made (the case then runs)."""
    import timing as t
    if case.id in _case_facts:
        return len(PEERS + EXTRA_PEERS) * ((t.GPU_WARMUP_MS + t.GPU_REP_MS) / 1e3 + 0.02) + 1.0
    if not _COSTS:
        try:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu"))
            import gpu_estimate
            _COSTS.update(gpu_estimate.bench_costs())
        except Exception as e:   # never lose a case over the estimate
            _COSTS["error"] = str(e)
    return float(_COSTS.get(case.id, 0.0))   # all its modes: the first pays most of it


def _kernels_interpreted() -> bool:
    from litelora_fast.kernels import tuning
    return tuning.INTERPRET


def run_case(benchmark, case: Case, mode: str) -> None:
    if case.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: the bf16 GPU cases run on a GPU machine "
                    "(benchmarks/gpu_check.sh); the CPU cases ran instead")
    if case.device == "cuda" and _kernels_interpreted():
        pytest.skip("TRITON_INTERPRET=1 was set when triton was imported (tests/ in the same "
                    "pytest run?): the kernels are interpreted; run `pytest benchmarks/` alone")
    deadline = settings.bench_deadline()
    if deadline is not None:
        cost = estimated_cost(case)
        if time.time() + cost > deadline:
            pytest.skip(f"LITELORA_BENCH_DEADLINE: this case (~{cost:.0f} s) would not finish "
                        f"in this run's time budget")
    seed = torch.seed() % 2**31
    info = benchmark.extra_info
    info.update(case=case.to_dict(), case_id=case.id, mode=mode, seed=seed,
                timer=timing.describe(case.device), **versions())
    info.update(check_once(case, seed + 1))

    inp = make_inputs(case, seed)
    run, _ = peers_for(case)
    run = tuple(p for p in run if p not in info.get("failed_peers", ()))
    if case.device == "cuda":
        ms = {}
        for peer in run:   # one peer's graph alive at a time
            fn = make_fn(Bound(peer, case, inp), inp.dy, mode)
            ms[peer] = timing.gpu_median_ms(fn)
            del fn
    else:
        ms = timing.cpu_median_ms({peer: make_fn(Bound(peer, case, inp), inp.dy, mode)
                                   for peer in run})
    try:   # the op's record; never lose the measured times over it
        info["impl_ours"] = implementation_of_ours(case, inp)
    except Exception as e:
        info["impl_ours"] = f"unknown ({type(e).__name__}: {e})"
    if case.device == "cuda":   # what tuning needs (tuning_record.py)
        try:
            info["candidates_ours"] = tuning_record.candidates(case, _needs(inp))
        except Exception as e:
            info["candidates_ours"] = {"error": f"{type(e).__name__}: {e}"}
        info["triton_configs"] = tuning_record.triton_configs()
    benchmark.pedantic(timing.synced(make_fn(Bound("ours", case, inp), inp.dy, mode),
                                     case.device), rounds=BENCH_ROUNDS, warmup_rounds=1)
    for peer, t in ms.items():
        info[f"ms_{peer}"] = t
        info[f"speedup_vs_{peer}"] = t / ms["ours"]
        if peer not in PEERS:   # no roofline model of its own (hybrid)
            continue
        # ours: the FLOPs and bytes of the implementation it ran (the model's pick if unknown)
        impl = info["impl_ours"] if info["impl_ours"] in roofline.IMPLS else "ours"
        c = roofline.cost(case, impl if peer == "ours" else peer, mode)
        info[f"tflops_{peer}"] = c["flops"] / (t * 1e-3) / 1e12
        info[f"gbps_{peer}"] = c["bytes"] / (t * 1e-3) / 1e9
        if case.device == "cuda":
            info[f"predicted_ms_{peer}"] = c["seconds"] * 1e3
    jsonl = settings.bench_jsonl()
    if jsonl:
        with open(jsonl, "a") as f:
            f.write(json.dumps({"name": getattr(benchmark, "name", case.id), "extra_info": info})
                    + "\n")
