"""Roofline model of the benchmark cases: FLOPs, minimal bytes and predicted H200 times.

Each implementation (ours, and the peers of SPEC section 4) is written out as the list of steps it
runs; a step is one GEMM or one pointwise pass. A step's FLOPs count only matrix products
(``2 m n k``); its bytes are its inputs read once plus its outputs written once (an accumulating
GEMM reads its output too). A step takes ``max(flops / PEAK_FLOPS, bytes / PEAK_BYTES)``; steps run
one after the other, so an implementation's predicted time is the sum over its steps. Launch
overheads and cache effects are not modelled.

The peers (names used everywhere in the benchmarks and the report):

- ``ours``: ``gated_lora_linear`` (shrink kernel, fused base+adapter GEMM; grad-shrink, fused
  ``dx`` GEMM, two weight-grad GEMMs);
- ``reference``: ``gated_lora_linear_ref``, the loop over adapters (no zero-gate skipping);
- ``packed``: the best plain-PyTorch path (``benchmarks/peers.py``): one shrink GEMM over the
  packed active bank, gate scaling, ``addmm`` into the base output;
- ``base``: ``F.linear`` alone (the floor).

In every case ``x``, ``lora_A`` and ``lora_B`` require grad, the base weight is frozen, there is no
bias, and gates are one per adapter (trainable or not). ``python -m litelora_fast roofline``
prints the table; ``--measured BENCH.json`` puts the times of a benchmark run beside it.
"""
from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import dataclass, fields
from typing import Optional

# Ceilings measured on this workplace's H200 (docs of the device tool, 2026-10-28/11-04): an
# 8192^3 bf16 matrix product through PyTorch on random data, and a device-to-device copy counting
# bytes read plus bytes written.
PEAK_FLOPS = 790e12
PEAK_BYTES = 4.3e12

PEERS = ("ours", "reference", "packed", "base")
MODES = ("forward", "backward", "fwd_bwd")
ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class Case:
    """One benchmark case: shapes, bank, gate pattern and dtype.

    ``sparsity`` is the share of gates set to exactly 0 (every other adapter, so the active
    columns are not contiguous); ``train_gates`` makes the gates require grad, which keeps every
    adapter active (see docs/DESIGN.md).
    """

    d_in: int
    d_out: int
    n: int
    k: int
    r: int
    sparsity: float = 0.0
    train_gates: bool = False
    dtype: str = "bfloat16"
    device: str = "cuda"

    @property
    def zero_gates(self) -> int:
        return int(self.k * self.sparsity)

    @property
    def rank(self) -> int:
        return self.k * self.r

    @property
    def active_rank(self) -> int:
        """Columns ours and the packed peer compute (zero gates skipped unless gates train)."""
        return self.rank if self.train_gates else (self.k - self.zero_gates) * self.r

    @property
    def id(self) -> str:
        return (f"{self.device}-{self.dtype}-{self.d_in}x{self.d_out}-N{self.n}-K{self.k}-r{self.r}"
                f"-s{round(self.sparsity * 100)}-{'gtrain' if self.train_gates else 'gfrozen'}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


# --- the GPU grid of the issue (SPEC section 4) ----------------------------------------------

GPU_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))
GPU_N = (2048, 8192, 16384)
GPU_K = (1, 4, 8, 16)
GPU_R = (16, 64)


def gpu_cases(full: bool = False) -> list:
    """The GPU cases: the whole grid with ``full``, else the default subset (< 5 min on an H200).

    The default subset holds the points SPEC section 4 sets goals for: N = 8192, r = 16, every K
    at 4096x4096 and 4096x14336; trainable gates and half-zero gates at K = 8; one each of
    14336x4096, r = 64, N = 2048 and N = 16384.
    """
    if full:
        out = []
        for (d_in, d_out), n, k, r, s, t in itertools.product(
                GPU_SHAPES, GPU_N, GPU_K, GPU_R, (0.0, 0.5), (False, True)):
            if s and k == 1:
                continue  # half of one gate is no gate pattern
            out.append(Case(d_in, d_out, n, k, r, s, t))
        return out
    out = [Case(d_in, d_out, 8192, k, 16) for d_in, d_out in GPU_SHAPES[:2] for k in GPU_K]
    out += [Case(4096, 4096, 8192, 8, 16, train_gates=True),
            Case(4096, 4096, 8192, 8, 16, sparsity=0.5),
            Case(4096, 4096, 8192, 16, 16, sparsity=0.5),
            Case(14336, 4096, 8192, 8, 16),
            Case(4096, 4096, 8192, 8, 64),
            Case(4096, 4096, 2048, 8, 16),
            Case(4096, 4096, 16384, 8, 16)]
    return out


# --- steps ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    name: str
    flops: int
    bytes: int

    def seconds(self) -> float:
        return max(self.flops / PEAK_FLOPS, self.bytes / PEAK_BYTES)


def gemm(name: str, m: int, n: int, k: int, e: int, accumulate: bool = False) -> Step:
    """``C (m, n) = A (m, k) @ B (k, n)``: A and B read once, C written once (and read first when
    the product is added into it)."""
    return Step(name, 2 * m * n * k, e * (m * k + k * n + m * n * (2 if accumulate else 1)))


def moved(name: str, nbytes: int) -> Step:
    """A pointwise pass (or copy) of ``nbytes`` read plus written; no matrix FLOPs."""
    return Step(name, 0, nbytes)


def _ours(c: Case, mode: str) -> list:
    N, Di, Do, R, Ra, e = c.n, c.d_in, c.d_out, c.rank, c.active_rank, ELEMENT_BYTES[c.dtype]
    skip = Ra < R
    fwd = []
    if skip:
        fwd.append(moved("gather active A, B", 2 * e * Ra * (Di + Do)))
    fwd.append(Step("shrink: S = x A^T, SG = S * G_E", 2 * N * Ra * Di,
                    e * (N * Di + Ra * Di + 2 * N * Ra)))
    fwd.append(Step("fused: y = [x, SG] [W, B]^T", 2 * N * Do * (Di + Ra),
                    e * (N * (Di + Ra) + Do * (Di + Ra) + N * Do)))
    if skip:
        fwd.append(moved("scatter S into (N, R)", e * (N * R + 2 * N * Ra)))
    bwd = []
    if skip:
        bwd.append(moved("gather active A, B", 2 * e * Ra * (Di + Do)))
        bwd.append(moved("gather active S", 2 * e * N * Ra))
    gate_bytes = (e * N * Ra + 4 * N * Ra) if c.train_gates else 0  # read S, write fp32 P
    bwd.append(Step("grad-shrink: dS = (dy B) * G_E", 2 * N * Do * Ra,
                    e * (N * Do + Do * Ra + N * Ra) + gate_bytes))
    bwd.append(Step("fused dx = [dy, dS] [W; A]", 2 * N * Di * (Do + Ra),
                    e * (N * (Do + Ra) + Di * (Do + Ra) + N * Di)))
    bwd.append(gemm("dA = dS^T x", Ra, Di, N, e))
    bwd.append(moved("SG = S * G_E (recomputed)", 2 * e * N * Ra))
    bwd.append(gemm("dB = dy^T SG", Do, Ra, N, e))
    if skip:
        bwd.append(moved("scatter dA, dB", e * (R + Ra) * (Di + Do)))
    if c.train_gates:
        bwd.append(moved("dg = per-adapter sums of P", 4 * N * Ra))
    return _pick(fwd, bwd, mode)


def _packed(c: Case, mode: str) -> list:
    N, Di, Do, R, Ra, e = c.n, c.d_in, c.d_out, c.rank, c.active_rank, ELEMENT_BYTES[c.dtype]
    skip = Ra < R
    fwd = []
    if skip:
        fwd.append(moved("gather active A, B", 2 * e * Ra * (Di + Do)))
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


def _reference(c: Case, mode: str) -> list:
    N, Di, Do, R, r, e = c.n, c.d_in, c.d_out, c.rank, c.r, ELEMENT_BYTES[c.dtype]
    fwd = [gemm("y = x W^T", N, Do, Di, e)]
    bwd = [gemm("dx = dy W", N, Di, Do, e)]
    for k in range(c.k):
        fwd += [gemm(f"s_{k} = x A_{k}^T", N, r, Di, e),
                gemm(f"u_{k} = s_{k} B_{k}^T", N, Do, r, e),
                moved(f"v_{k} = u_{k} * g_{k} s_{k}", 2 * e * N * Do),
                moved(f"y = y + v_{k}", 3 * e * N * Do)]
        bwd.append(moved(f"du_{k} = dy * g_{k} s_{k}", 2 * e * N * Do))
        if c.train_gates:
            bwd.append(moved(f"dg_{k} = sum(dy * u_{k})", 4 * e * N * Do))
        bwd += [gemm(f"ds_{k} = du_{k} B_{k}", N, r, Do, e),
                gemm(f"dB_{k} = du_{k}^T s_{k}", Do, r, N, e),
                gemm(f"dx_{k} = ds_{k} A_{k}", N, Di, r, e),
                gemm(f"dA_{k} = ds_{k}^T x", r, Di, N, e),
                moved(f"dx += dx_{k}", 3 * e * N * Di),
                # autograd's slice backward: a zero (R, D) gradient with the slice copied in...
                moved(f"slice backward A_{k}, B_{k}", e * (R + r) * (Di + Do))]
        if k:  # ...and the K full-size gradients summed into one
            bwd.append(moved(f"dA, dB += slice grads {k}", 3 * e * R * (Di + Do)))
    return _pick(fwd, bwd, mode)


def _base(c: Case, mode: str) -> list:
    e = ELEMENT_BYTES[c.dtype]
    return _pick([gemm("y = x W^T", c.n, c.d_out, c.d_in, e)],
                 [gemm("dx = dy W", c.n, c.d_in, c.d_out, e)], mode)


def _pick(fwd: list, bwd: list, mode: str) -> list:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return {"forward": fwd, "backward": bwd, "fwd_bwd": fwd + bwd}[mode]


_STEPS = {"ours": _ours, "reference": _reference, "packed": _packed, "base": _base}


def steps(case: Case, peer: str, mode: str) -> list:
    """The steps ``peer`` runs for ``case`` in ``mode``."""
    if peer not in _STEPS:
        raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
    return _STEPS[peer](case, mode)


def cost(case: Case, peer: str, mode: str) -> dict:
    """``{"flops", "bytes", "seconds"}``: totals over the steps, and the predicted H200 time."""
    s = steps(case, peer, mode)
    return {"flops": sum(x.flops for x in s), "bytes": sum(x.bytes for x in s),
            "seconds": sum(x.seconds() for x in s)}


# --- command line -----------------------------------------------------------------------------

def load_measured(path: str) -> dict:
    """``{(case_id, mode): (Case, {peer: ms})}`` from a pytest-benchmark JSON of our benchmarks."""
    from .report import load
    data = load(path)
    out = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "case_id" not in info:
            continue
        ms = {p: info[f"ms_{p}"] for p in PEERS if info.get(f"ms_{p}") is not None}
        out[(info["case_id"], info["mode"])] = (Case.from_dict(info["case"]), ms)
    return out


def table(cases: list, measured: Optional[dict] = None) -> str:
    """Markdown: one row per case, mode and peer."""
    head = ["case", "mode", "peer", "GFLOP", "MB", "FLOP/B", "bound", "pred us", "pred x"]
    if measured is not None:
        head += ["meas us", "meas x", "meas/pred"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cases:
        for mode in MODES:
            ours = cost(c, "ours", mode)
            ms = measured.get((c.id, mode), (None, {}))[1] if measured is not None else {}
            for peer in PEERS:
                p = cost(c, peer, mode)
                bound = "compute" if p["flops"] / PEAK_FLOPS >= p["bytes"] / PEAK_BYTES else "memory"
                row = [c.id, mode, peer, f"{p['flops'] / 1e9:.1f}", f"{p['bytes'] / 1e6:.1f}",
                       f"{p['flops'] / max(p['bytes'], 1):.0f}", bound,
                       f"{p['seconds'] * 1e6:.1f}", f"{p['seconds'] / ours['seconds']:.2f}"]
                if measured is not None:
                    m = ms.get(peer)
                    row += ["-" if m is None else f"{m * 1e3:.1f}",
                            "-" if m is None or not ms.get("ours") else f"{m / ms['ours']:.2f}",
                            "-" if m is None else f"{m * 1e-3 / p['seconds']:.2f}"]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m litelora_fast roofline",
        description="FLOPs, minimal bytes and predicted H200 times (790 TFLOP/s bf16, 4.3 TB/s) of "
                    "the fused layer and each peer; 'pred x' is the peer's predicted time over "
                    "ours (> 1: ours should be faster).")
    parser.add_argument("--full", action="store_true", help="the whole GPU grid, not the default "
                        "subset of `pytest benchmarks/`")
    parser.add_argument("--measured", metavar="BENCH.json",
                        help="pytest-benchmark JSON: show its cases with measured times "
                             "('meas x' = peer over ours, 'meas/pred' = measured over predicted)")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE")
    ns = parser.parse_args(argv)
    measured = None
    if ns.measured:
        if not os.path.isfile(ns.measured):
            parser.error(f"no such file: {ns.measured}")
        measured = load_measured(ns.measured)
        cases = list({c.id: c for c, _ in measured.values()}.values())
        if not cases:
            parser.error(f"{ns.measured} holds no litelora-fast benchmark entries")
    else:
        cases = gpu_cases(ns.full)
    text = (f"Roofline: H200 ceilings {PEAK_FLOPS / 1e12:.0f} TFLOP/s, {PEAK_BYTES / 1e12:.1f} TB/s; "
            f"times are predictions, not measurements.\n\n" + table(cases, measured))
    print(text)
    if ns.out:
        with open(ns.out, "w") as f:
            f.write(text + "\n")
    return 0
