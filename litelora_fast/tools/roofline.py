"""Roofline model of the benchmark cases: FLOPs, minimal bytes and predicted times at the
ceilings of one GPU (``CEILINGS``: the H200 and the H100 SXM, measured; the GPU a run is on is
read from the device or from the benchmark JSON, ``ceilings_for``).

Each implementation is written out as the list of steps it runs; a step is one GEMM or one
pointwise pass. A step's FLOPs count only matrix products (``2 m n k``); its bytes are its inputs
read once plus its outputs written once (an accumulating GEMM reads its output too). A step takes
``max(flops / PEAK_FLOPS, bytes / PEAK_BYTES)``; steps run one after the other, so an
implementation's predicted time is the sum over its steps. Launch overheads, cache effects and
how close a kernel gets to the ceilings are not modelled: these are floors, not promises.

The design the model follows (``kernels/``, ``docs/DESIGN.md``):

- **kernels** (``ours`` on CUDA when the kernels win): a shrink kernel (``S = x A^T`` and the
  gated ``SG``) and a fused GEMM ``y = [x, SG] [W, B]^T`` whose adapter columns continue the base
  K-loop's pipeline (one loop: no second drain, which a roofline never charges anyway); backward:
  grad-shrink, the fused ``dx = [dy, dS] [W; A]`` and the ``dA``/``dB`` weight-gradient GEMMs.
  The tiles load through TMA descriptors, which need 16-byte rows: the active bank is copied
  into a zero-padded one of ``R_pad`` = ``R_act`` rounded up to 16 columns whenever adapters are
  skipped or ``R_act`` is not a multiple of 16, and the padded columns are computed (they cost
  FLOPs and bytes like real ones). In the fused GEMMs the adapter stretch runs in ``BLOCK_K``-wide
  steps of the single loop (``FUSED_STEP`` = 64 columns, the TMA unit zero-filling past
  ``R_pad`` without reading memory), or, when ``R_pad <= 64``, as one power-of-two tile after the
  warp-specialized loop; the model charges the cheaper of the two (``fused_adapter_cols``);
- **composite**: the cuBLAS composite that peer (b) runs (packed shrink GEMM, gate scaling,
  ``addmm``), which the op may choose instead;
- **ours** = whichever of the two the model predicts faster, as the op chooses by measuring on
  the user's GPU: by construction never slower than (b) (on the CPU ``ours`` is the PyTorch fast
  path, i.e. the composite).

The peers are those of ``bench_cases`` (``reference`` (a), ``packed`` (b), ``base`` (c),
``peft``); targets are in docs/MATH.md, section 6. ``python -m litelora_fast roofline`` prints
the targets as the model sees them and the table; ``--measured BENCH.json`` puts the times of a
benchmark run beside it.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from . import bench_json
from .bench_cases import GRIDS, MODES, PEERS, Case, applicable, gpu_cases
from .cli_types import output_file



@dataclass(frozen=True)
class Ceilings:
    """One GPU's measured ceilings: bf16 matrix FLOP/s and HBM bytes/s."""

    gpu: str
    flops: float
    bytes: float
    source: str

    def describe(self) -> str:
        return (f"{self.gpu} {self.flops / 1e12:.0f} TFLOP/s bf16, {self.bytes / 1e12:.1f} TB/s "
                f"({self.source})")


# Measured on this workplace's machines (the device tool's docs): an 8192^3 bf16 matrix product
# through PyTorch on random data, and a device-to-device copy counting bytes read plus written.
CEILINGS = {
    "H200": Ceilings("H200", 790e12, 4.3e12, "measured here 2026-10-28/11-04"),
    "H100 SXM": Ceilings("H100 SXM", 798e12, 3.0e12, "measured here 2026-11-13, H100 80GB HBM3"),
}
DEFAULT_GPU = "H200"
# The ceilings the model predicts with (``use``): the H200's unless told otherwise.
PEAK_FLOPS = CEILINGS[DEFAULT_GPU].flops
PEAK_BYTES = CEILINGS[DEFAULT_GPU].bytes
_active = [CEILINGS[DEFAULT_GPU]]


def ceilings_for(device_name: Optional[str]) -> tuple:
    """``(Ceilings, note)`` for a device name as CUDA reports it (``"NVIDIA H100 80GB HBM3"``,
    ``"NVIDIA H200"``); an H100 other than SXM (PCIe, NVL: HBM2e, other clocks) or another GPU
    has no measured row: the H200's ceilings, and a note saying so."""
    name = (device_name or "").upper()
    if "H200" in name:
        return CEILINGS["H200"], ""
    if "H100" in name and ("HBM3" in name or "SXM" in name):
        return CEILINGS["H100 SXM"], ""
    return CEILINGS[DEFAULT_GPU], (f"no measured ceilings for {device_name!r}: the "
                                   f"{DEFAULT_GPU}'s are used" if device_name else "")


def device_ceilings() -> Ceilings:
    """The ceilings of the CUDA device this process sees (the H200's without one)."""
    import torch
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return ceilings_for(name)[0]


def use(ceilings: Ceilings) -> None:
    """Predict with ``ceilings`` from now on (this process)."""
    _active[0] = ceilings


def active() -> Ceilings:
    return _active[0]

ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}
IMPLS = ("kernels", "composite")
PAD = 16   # the bank's column multiple for descriptor-legal tiles (16-byte rows in bf16 x 8)
FUSED_STEP = 64      # BLOCK_K of the single-loop descriptor kernels (kernels/fused_xw_sgb.py)
WS_MAX_BLOCK_R = 64  # the warp-specialized kernel holds at most this many adapter columns


@dataclass(frozen=True)
class Step:
    name: str
    flops: int
    bytes: int

    def seconds(self) -> float:
        peak = _active[0]
        return max(self.flops / peak.flops, self.bytes / peak.bytes)


def gemm(name: str, m: int, n: int, k: int, e: int, accumulate: bool = False) -> Step:
    """``C (m, n) = A (m, k) @ B (k, n)``: A and B read once, C written once (and read first when
    the product is added into it)."""
    return Step(name, 2 * m * n * k, e * (m * k + k * n + m * n * (2 if accumulate else 1)))


def moved(name: str, nbytes: int) -> Step:
    """A pointwise pass (or copy) of ``nbytes`` read plus written; no matrix FLOPs."""
    return Step(name, 0, nbytes)


def padded_rank(c: Case) -> int:
    """Columns the kernels compute: ``R_act`` rounded up to a multiple of ``PAD``."""
    return -(-c.active_rank // PAD) * PAD


def fused_adapter_cols(c: Case) -> int:
    """Adapter columns the fused GEMMs multiply: one power-of-two tile (>= 16) after the
    warp-specialized loop when ``R_pad`` fits it, else ``R_pad`` in whole ``FUSED_STEP`` steps."""
    Rp = padded_rank(c)
    if Rp == 0:
        return 0
    if Rp <= WS_MAX_BLOCK_R:
        return max(PAD, 1 << (Rp - 1).bit_length())
    return -(-Rp // FUSED_STEP) * FUSED_STEP


def _kernels(c: Case, mode: str) -> list:
    N, Di, Do, R, Ra, e = c.n, c.d_in, c.d_out, c.rank, c.active_rank, ELEMENT_BYTES[c.dtype]
    Rp, Rf = padded_rank(c), fused_adapter_cols(c)
    skip, copy_bank = Ra < R, Ra < R or Rp != Ra
    fwd = []
    if copy_bank:
        fwd.append(moved("copy active A, B into the padded bank", e * (Ra + Rp) * (Di + Do)))
    fwd.append(Step("shrink: S = x A^T, SG = S * G_E", 2 * N * Rp * Di,
                    e * (N * Di + Rp * Di + 2 * N * Rp)))
    fwd.append(Step("fused: y = [x, SG] [W, B]^T (one pipelined loop)", 2 * N * Do * (Di + Rf),
                    e * (N * (Di + Rp) + Do * (Di + Rp) + N * Do)))
    if skip:
        fwd.append(moved("scatter S into (N, R)", e * (N * R + N * Rp + N * Ra)))
    bwd = []
    if copy_bank:
        bwd.append(moved("copy active A, B into the padded bank", e * (Ra + Rp) * (Di + Do)))
    if skip:
        bwd.append(moved("gather active S", e * N * (Ra + Rp)))
    gate_bytes = (e * N * Rp + 4 * N * Rp) if c.train_gates else 0  # read S, write fp32 P
    bwd.append(Step("grad-shrink: dS = (dy B) * G_E", 2 * N * Do * Rp,
                    e * (N * Do + Do * Rp + N * Rp) + gate_bytes))
    if c.dropout:
        # the fused dx runs base-only; the masked adapter term dx += (dS A) * keep / (1 - p),
        # the mask redrawn in-kernel from the seed, is its own accumulating pass
        bwd.append(gemm("fused dx = dy W (base only, dropout)", N, Di, Do, e))
        bwd.append(gemm("dx += (dS A) * keep / (1 - p)", N, Di, Rp, e, accumulate=True))
    else:
        bwd.append(Step("fused dx = [dy, dS] [W; A] (one pipelined loop)",
                        2 * N * Di * (Do + Rf), e * (N * (Do + Rp) + Di * (Do + Rp) + N * Di)))
    bwd.append(gemm("dA = dS^T x", Rp, Di, N, e))
    bwd.append(moved("SG = S * G_E (recomputed)", 2 * e * N * Rp))
    bwd.append(gemm("dB = dy^T SG", Do, Rp, N, e))
    if copy_bank:
        bwd.append(moved("scatter dA, dB", e * (R + Rp) * (Di + Do)))
    if c.train_gates:
        bwd.append(moved("dg = per-adapter sums of P", 4 * N * Rp))
    return _pick(fwd, bwd, mode)


def _packed(c: Case, mode: str) -> list:
    N, Di, Do, R, Ra, e = c.n, c.d_in, c.d_out, c.rank, c.active_rank, ELEMENT_BYTES[c.dtype]
    skip = Ra < R
    fwd = []
    if skip:
        fwd.append(moved("gather active A, B", 2 * e * Ra * (Di + Do)))
    fwd = _dropped_x(c, fwd)
    fwd += [gemm("S = x A^T", N, Ra, Di, e),
            moved("SG = S * G_E", 2 * e * N * Ra),
            gemm("y = x W^T", N, Do, Di, e),
            gemm("y += SG B^T", N, Do, Ra, e, accumulate=True)]
    bwd = [gemm("dSG = dy B", N, Ra, Do, e),
           gemm("dB = dy^T SG", Do, Ra, N, e),
           moved("dS = dSG * G_E", 2 * e * N * Ra)]
    if c.train_gates:
        bwd.append(moved("dG_E = row sums of dSG * S", 4 * e * N * Ra))
    bwd += [gemm("dx_lora = dS A", N, Di, Ra, e),
            gemm("dA = dS^T x", Ra, Di, N, e),
            gemm("dx_base = dy W", N, Di, Do, e),
            moved("dx = dx_base + dx_lora", 3 * e * N * Di)]
    if skip:
        bwd.append(moved("scatter dA, dB", e * (R + Ra) * (Di + Do)))
    return _pick(fwd, bwd, mode)


def _loop(c: Case, mode: str, adapters: int, gated: bool, slices: bool) -> list:
    """A loop over ``adapters`` adapters of rank r, each a shrink and an expand GEMM added into
    the base output: the reference (a) (gated, slices of the packed bank) and PEFT (one
    ``nn.Linear`` pair per adapter, the scaling a Python float)."""
    N, Di, Do, R, r, e = c.n, c.d_in, c.d_out, c.rank, c.r, ELEMENT_BYTES[c.dtype]
    fwd = _dropped_x(c, [gemm("y = x W^T", N, Do, Di, e)])
    bwd = [gemm("dx = dy W", N, Di, Do, e)]
    scale = "g_k s_k" if gated else "s_k"
    for k in range(adapters):
        fwd += [gemm(f"s_{k} = x A_{k}^T", N, r, Di, e),
                gemm(f"u_{k} = s_{k} B_{k}^T", N, Do, r, e),
                moved(f"v_{k} = u_{k} * {scale}", 2 * e * N * Do),
                moved(f"y = y + v_{k}", 3 * e * N * Do)]
        bwd.append(moved(f"du_{k} = dy * {scale}", 2 * e * N * Do))
        if c.train_gates and gated:
            bwd.append(moved(f"dg_{k} = sum(dy * u_{k})", 4 * e * N * Do))
        bwd += [gemm(f"ds_{k} = du_{k} B_{k}", N, r, Do, e),
                gemm(f"dB_{k} = du_{k}^T s_{k}", Do, r, N, e),
                gemm(f"dx_{k} = ds_{k} A_{k}", N, Di, r, e),
                gemm(f"dA_{k} = ds_{k}^T x", r, Di, N, e),
                moved(f"dx += dx_{k}", 3 * e * N * Di)]
        if slices:
            # autograd's slice backward: a zero (R, D) gradient with the slice copied in...
            bwd.append(moved(f"slice backward A_{k}, B_{k}", e * (R + r) * (Di + Do)))
            if k:  # ...and the K full-size gradients summed into one
                bwd.append(moved(f"dA, dB += slice grads {k}", 3 * e * R * (Di + Do)))
    return _pick(fwd, bwd, mode)


def _reference(c: Case, mode: str) -> list:
    return _loop(c, mode, c.k, gated=True, slices=True)


def _peft(c: Case, mode: str) -> list:
    # Zero-gate adapters are simply not active in PEFT (a user would not activate them).
    return _loop(c, mode, c.k - c.zero_gates, gated=False, slices=False)


def _base(c: Case, mode: str) -> list:
    e = ELEMENT_BYTES[c.dtype]
    return _pick([gemm("y = x W^T", c.n, c.d_out, c.d_in, e)],
                 [gemm("dx = dy W", c.n, c.d_in, c.d_out, e)], mode)


def _dropped_x(c: Case, fwd: list) -> list:
    """A peer that drops ``x`` with ``F.dropout`` first (packed (b), the reference (a), PEFT):
    one pass reading ``x`` and writing the dropped copy (and its mask, one byte per element),
    which autograd keeps for the adapters' backward."""
    if not c.dropout:
        return fwd
    e = ELEMENT_BYTES[c.dtype]
    return [moved("x_d = dropout(x) (materialised)", (2 * e + 1) * c.n * c.d_in)] + fwd


def _pick(fwd: list, bwd: list, mode: str) -> list:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return {"forward": fwd, "backward": bwd, "fwd_bwd": fwd + bwd}[mode]


_IMPL_STEPS = {"kernels": _kernels, "composite": _packed}
_STEPS = {"reference": _reference, "packed": _packed, "base": _base, "peft": _peft}


def _total(s: list) -> float:
    return sum(x.seconds() for x in s)


def choice(case: Case, mode: str) -> str:
    """The implementation ``ours`` runs: the CPU fast path is the composite; on the GPU the one
    the model predicts faster (the op measures instead; ties go to the kernels)."""
    if case.device != "cuda":
        return "composite"
    t = {impl: _total(_IMPL_STEPS[impl](case, mode)) for impl in IMPLS}
    return "kernels" if t["kernels"] <= t["composite"] else "composite"


def steps(case: Case, peer: str, mode: str) -> list:
    """The steps ``peer`` (or an implementation of ours, ``kernels``/``composite``) runs for
    ``case`` in ``mode``."""
    if peer in _IMPL_STEPS:
        return _IMPL_STEPS[peer](case, mode)
    if peer == "ours":
        return _IMPL_STEPS[choice(case, mode)](case, mode)
    if peer not in _STEPS:
        raise ValueError(f"peer must be one of {PEERS + IMPLS}, got {peer!r}")
    if not applicable(case, peer):
        raise ValueError(f"{peer} does not compute {case.id} (PEFT has no trainable gates)")
    return _STEPS[peer](case, mode)


def cost(case: Case, peer: str, mode: str) -> dict:
    """``{"flops", "bytes", "seconds"}``: totals over the steps and the predicted time (at the
    ``active()`` ceilings); for
    ``ours`` also ``"impl"``, the implementation the model picks."""
    s = steps(case, peer, mode)
    out = {"flops": sum(x.flops for x in s), "bytes": sum(x.bytes for x in s),
           "seconds": _total(s)}
    if peer == "ours":
        out["impl"] = choice(case, mode)
    return out


# --- targets (docs/MATH.md, section 6) as the model sees them ----------------------------------

def targets(cases: list) -> list:
    """``(target, predicted, verdict)`` rows for the cases of ``cases`` the targets speak about
    (N = 8192, r = 16, frozen gates, no zero gates, no dropout)."""
    def pred(c, peer, mode):
        return cost(c, peer, mode)["seconds"]

    rows = []
    for c in cases:
        if (c.n, c.r, c.sparsity, c.train_gates, c.dropout) != (8192, 16, 0.0, False, 0.0):
            continue
        shape = f"{c.d_in}x{c.d_out} K={c.k}"
        x_a = pred(c, "reference", "fwd_bwd") / pred(c, "ours", "fwd_bwd")
        if c.k in (1, 8):
            goal = 1.2 if c.k == 1 else 3.0
            rows.append((f"{shape}: fwd+bwd >= {goal}x over (a)", f"{x_a:.2f}x",
                         "met" if x_a >= goal else "missed"))
        for mode in ("forward", "fwd_bwd"):
            x_b = pred(c, "packed", mode) / pred(c, "ours", mode)
            goal = 1.05 if c.k == 8 else 1.0
            rows.append((f"{shape}: {mode} >= {goal}x over (b)",
                         f"{x_b:.3f}x ({cost(c, 'ours', mode)['impl']})",
                         "met" if x_b >= goal - 1e-12 else "missed"))
        if c.k == 8:
            x_c = pred(c, "ours", "forward") / pred(c, "base", "forward")
            rows.append((f"{shape}: forward within 1.08x of (c)", f"{x_c:.3f}x",
                         "met" if x_c <= 1.08 else "missed"))
    return rows


# --- command line -----------------------------------------------------------------------------

def measured_gpu(path: str) -> Optional[str]:
    """The CUDA device a benchmark run names (its rows' ``cuda_device``), or ``None``."""
    names = {info.get("cuda_device") for info in bench_json.rows(bench_json.load(path), path)}
    names.discard(None)
    return sorted(names)[0] if names else None


def load_measured(path: str) -> dict:
    """``{(case_id, mode): (Case, {peer: ms}, impl or None)}`` from a benchmark run."""
    out = {}
    for info in bench_json.rows(bench_json.load(path), path):
        ms = {p: info[f"ms_{p}"] for p in PEERS if info.get(f"ms_{p}") is not None}
        out[(info["case_id"], info["mode"])] = (info["case"], ms, info.get("impl_ours"))
    return out


def table(cases: list, measured: Optional[dict] = None) -> str:
    """Markdown: one row per case, mode and peer ('-' where a peer does not apply)."""
    head = ["case", "mode", "peer", "GFLOP", "MB", "FLOP/B", "bound", "pred us", "pred x"]
    if measured is not None:
        head += ["meas us", "meas x", "meas/pred"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cases:
        for mode in MODES:
            ours = cost(c, "ours", mode)
            _, ms, impl = (measured.get((c.id, mode), (None, {}, None)) if measured is not None
                           else (None, {}, None))
            for peer in PEERS:
                if not applicable(c, peer):
                    continue
                p = cost(c, peer, mode)
                peak = active()
                compute = p["flops"] / peak.flops >= p["bytes"] / peak.bytes
                bound = "compute" if compute else "memory"
                name = f"ours ({p['impl']})" if peer == "ours" else peer
                row = [c.id, mode, name, f"{p['flops'] / 1e9:.1f}", f"{p['bytes'] / 1e6:.1f}",
                       f"{p['flops'] / max(p['bytes'], 1):.0f}", bound,
                       f"{p['seconds'] * 1e6:.1f}", f"{p['seconds'] / ours['seconds']:.2f}"]
                if measured is not None:
                    m = ms.get(peer)
                    row += ["-" if m is None else f"{m * 1e3:.1f}"
                            + (f" ({impl})" if peer == "ours" and impl else ""),
                            "-" if m is None or not ms.get("ours") else f"{m / ms['ours']:.2f}",
                            "-" if m is None else f"{m * 1e-3 / p['seconds']:.2f}"]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m litelora_fast roofline",
        description="FLOPs, minimal bytes and predicted times of the fused layer and each peer at "
                    "one GPU's measured ceilings (H200: 790 TFLOP/s bf16, 4.3 TB/s; H100 SXM: "
                    "798, 3.0); 'pred x' is the peer's predicted time over ours (> 1: ours "
                    "should be faster). Predictions, not measurements.")
    parser.add_argument("--grid", choices=GRIDS, default="default",
                        help="which GPU cases (default: the default subset of `pytest benchmarks/`)")
    parser.add_argument("--full", action="store_true", help="same as --grid full")
    parser.add_argument("--measured", metavar="BENCH.json",
                        help="a benchmark run (JSON or JSON lines): show its cases with measured "
                             "times ('meas x' = peer over ours, 'meas/pred' = measured over "
                             "predicted)")
    parser.add_argument("--out", metavar="FILE", type=output_file,
                        help="also write the text to FILE")
    parser.add_argument("--gpu", choices=("auto",) + tuple(CEILINGS), default="auto",
                        help="whose ceilings: auto (default) = the GPU the --measured run names, "
                             "else this process's CUDA device, else the H200")
    ns = parser.parse_args(argv)
    note = ""
    if ns.gpu != "auto":
        peak = CEILINGS[ns.gpu]
    elif ns.measured and measured_gpu(ns.measured):
        peak, note = ceilings_for(measured_gpu(ns.measured))
    else:
        peak = device_ceilings()
    before = active()
    use(peak)
    try:
        return _print(ns, peak, note)
    finally:   # the model's other callers in this process keep their ceilings
        use(before)


def _print(ns, peak: Ceilings, note: str) -> int:
    measured = None
    if ns.measured:
        measured = load_measured(ns.measured)
        cases = list({c.id: c for c, _, _ in measured.values()}.values())
    else:
        cases = gpu_cases("full" if ns.full else ns.grid)
    goals = targets(cases)
    text = [f"Roofline: ceilings of the {peak.describe()}" + (f"; {note}" if note else "")
            + "; times are predictions, not measurements. 'ours' is the cheaper of the "
            f"kernels (TMA, one pipelined loop, bank padded to {PAD} columns) and the cuBLAS "
            f"composite, as the op's measured choice.", ""]
    if goals:
        text += ["Targets (docs/MATH.md, section 6) as the model sees them:", "",
                 "| target | predicted | model says |", "|---|---|---|"]
        text += [f"| {t} | {p} | {v} |" for t, p, v in goals] + [""]
    text.append(table(cases, measured))
    out = "\n".join(text)
    print(out)
    if ns.out:
        with open(ns.out, "w") as f:
            f.write(out + "\n")
    return 0
