"""Ahead-of-time compile of every launchable kernel config, with static checks read from the SASS.

    rows = compile_report(arch="sm_90")     # needs no GPU: triton.compile + ptxas + cuobjdump
    print(format_report(rows))
    python -m litelora_fast inspect [--arch sm_80|sm_86|sm_89|sm_90|sm_100|sm_120]
                                    [--subset buckets] [--json] [--check]

``--check`` exits 1 when a row fails its architecture's checks (``failing_rows``). The last lines
of the text report are the totals (``summary``).

One row per (kernel, variant, dtype, bucket, config) of ``specs(subset, arch)`` (the ``SPECS``
each kernel file declares, expanded by ``kernels.compile_spec``): every config each launcher's
prune keeps on that architecture (its shared-memory limit; descriptor and warp-specialized
variants on sm_90 and later only), at every compile-time bucket it can pick (``BLOCK_R`` /
``BLOCK_N`` widths) and feature flags, in every dtype it serves, plus the ``SWEEP_CONFIGS``:

    arch              "sm_90", ...
    kernel, variant ("pointer", "tma", "tma_persistent", "tma_ws"; "wide"/"narrow" for
                      matmul_tn), dtype, config (str: tile, warps, stages, bucket, flags)
    registers         per thread
    spill_bytes       stack + local memory per thread: 0 means no register spills
    shared_bytes      dynamic shared memory Triton launches with + static shared memory
    mma               the MMA instruction families in the SASS ("HGMMA", "HMMA", "UTCHMMA"; ""
                      for none): ``TENSOR_CORE_OP`` names the one each architecture must use
    tma               the SASS holds UTMALDG: operand tiles arrive through the TMA unit
    warp_specialized  the SASS holds SETMAXREG: warp groups re-balance registers, which Triton
                      emits only when the warp-specialization pass took effect
    persistent        the kernel reads the grid size (tt.get_num_programs in its TTIR): it loops
                      over output tiles on a grid of one program per SM
    error             "" when the compile succeeded, else its exception (the row fails)

Cost: see docs/kernels.md (measured on this project's CPU machine; Triton's on-disk cache makes
repeat runs faster).

Under ``TRITON_INTERPRET=1`` (the test session) the kernels are interpreted functions and the
interpreter patches ``triton.language`` while it runs, which breaks Triton's code generator in the
same process; ``compile_report`` then runs itself in a fresh Python process with the interpreter
off (``python -m litelora_fast.kernels.compile_report --json``) and returns that process's rows.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from .tuning import TMA_VARIANTS, arch_smem_limit

COLUMNS = ["arch", "kernel", "variant", "dtype", "config", "registers", "spill_bytes",
           "shared_bytes", "mma", "tma", "warp_specialized", "persistent", "sweep", "error"]

# The tensor-core instruction a tile product must compile to on each architecture: mma.sync
# (HMMA) on Ampere and Ada, wgmma (HGMMA) on Hopper, tcgen05.mma (UTCHMMA, fed from shared and
# tensor memory) on datacenter Blackwell, mma.sync again on consumer Blackwell (sm_120).
TENSOR_CORE_OP = {80: "HMMA", 86: "HMMA", 89: "HMMA", 90: "HGMMA", 100: "UTCHMMA", 120: "HMMA"}
# Registers a thread may hold on every architecture the kernels target.
MAX_REGISTERS = 255
_MMA_RE = re.compile(r"\b([A-Z]+MMA)\b")         # HMMA, HGMMA, UTCHMMA, IMMA, ...: not a bare "MMA"


def kernel_specs() -> list:
    """Every ``KernelSpec`` of the package, in launch order (forward, backward, dropout)."""
    from . import dropout, fused_dyw_dsa, fused_xw_sgb, shrink_dyb, shrink_xa, weight_grad

    return [*shrink_xa.SPECS, *fused_xw_sgb.SPECS, *shrink_dyb.SPECS, *fused_dyw_dsa.SPECS,
            *weight_grad.SPECS, *dropout.SPECS]


def specs(subset: str = "all", arch: str = "sm_90") -> list:
    """Every config launchable on ``arch`` as an ``AotSpec``, the sweep configs included (no
    descriptor variant before sm_90; each config as the prune for that architecture's shared
    memory leaves it). ``subset="buckets"``:
    for each (kernel, variant, dtype, bucket) the first config the launcher would take with the
    heaviest flag set (dropout, gates), no sweep configs: each compile-time shape a launcher can
    pick, once (the unit test's pass)."""
    if subset not in ("all", "buckets"):
        raise ValueError(f"subset: expected 'all' or 'buckets', got {subset!r}")
    out = [a for k in kernel_specs() for a in k.expand(_parse_arch(arch))]
    if subset == "all":
        return out
    key = lambda s: (s.name, s.variant, s.dtype, s.bucket)    # noqa: E731
    heaviest = {}
    for s in out:
        heaviest[key(s)] = max(heaviest.get(key(s), 0), s.flags)
    seen, kept = set(), []
    for s in out:
        if not s.sweep and s.flags == heaviest[key(s)] and key(s) not in seen:
            seen.add(key(s))
            kept.append(s)
    return kept


def uncovered(arch: str = "sm_90") -> list:
    """``[(kernel, variant, dtype, bucket, flags)]`` a launcher can meet on ``arch`` where its
    prune leaves no config (that launch would raise "no launch config fits"): empty when every
    launch has a config within the architecture's shared memory and without spills."""
    number = _parse_arch(arch)
    return [(k.name, k.variant, dtype, tag, k.flags[rank])
            for k in kernel_specs() for dtype, rank, tag, _, kept in k.launches(number) if not kept]


def config_lists() -> dict:
    """``{(kernel, variant): [triton.Config, ...]}``: every config list the launchers can tune
    over on a GPU (16-bit lists, and the fp32 lists under ``variant + "/fp32"`` where they
    differ), for tools that count compiles and timings (``benchmarks/gpu/gpu_estimate.py``)."""
    lists = {}
    for k in kernel_specs():
        if not k.listed:
            continue
        for fp32, launcher in k.launchers.items():
            lists.setdefault((k.name, k.variant + ("/fp32" if fp32 else "")), launcher.configs)
    return lists


def _parse_arch(arch: str) -> int:
    m = re.fullmatch(r"sm_?(\d+)a?", str(arch))
    if not m:
        raise ValueError(f"arch: expected a CUDA arch like 'sm_90', got {arch!r}")
    if int(m.group(1)) < 80:
        # the kernels use bf16 tensor cores and async copies: Ampere (sm_80) and newer
        raise ValueError(f"arch: {arch!r} is older than sm_80, the oldest the kernels target")
    if int(m.group(1)) not in TENSOR_CORE_OP:
        raise ValueError(f"arch: {arch!r} is not one the report knows (known: "
                         f"{', '.join(f'sm_{a}' for a in TENSOR_CORE_OP)})")
    return int(m.group(1))


def _tool(name: str) -> str:
    import triton

    return getattr(triton.knobs.nvidia, name).path


def _resource_usage(cubin_path: str) -> dict:
    out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin_path],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cuobjdump: no resource usage line in:\n{out}")
    reg, stack, shared, local = map(int, m.groups())
    return {"registers": reg, "stack": stack, "static_shared": shared, "local": local}


def _sass(cubin_path: str) -> str:
    return subprocess.run([_tool("cuobjdump"), "--dump-sass", cubin_path],
                          check=True, capture_output=True, text=True).stdout


def compile_spec(spec, arch: str = "sm_90") -> dict:
    """Compile one ``compile_spec.AotSpec`` for ``arch`` and read its resources and SASS: one row."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec.fn
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.aligned or ()}
    src = ASTSource(fn=fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    number = _parse_arch(arch)
    compiled = triton.compile(src, target=GPUTarget("cuda", number, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{spec.name}.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = _resource_usage(path)
        sass = _sass(path)
    return {
        "arch": f"sm_{number}",
        "kernel": spec.name,
        "variant": spec.variant,
        "dtype": spec.dtype,
        "config": spec.label(),
        "registers": usage["registers"],
        "spill_bytes": usage["stack"] + usage["local"],
        "shared_bytes": compiled.metadata.shared + usage["static_shared"],
        # every MMA instruction family in the SASS, e.g. "HGMMA" or "HMMA" ("" for none)
        "mma": "+".join(sorted(set(_MMA_RE.findall(sass)))),
        "tma": "UTMALDG" in sass,
        "warp_specialized": "SETMAXREG" in sass,
        # A persistent kernel strides its tile loop by the grid size.
        "persistent": "tt.get_num_programs" in compiled.asm["ttir"],
        "sweep": spec.sweep,
        "error": "",
    }


def _compile_or_error(spec, arch: str) -> dict:
    """``compile_spec``, or a row whose ``error`` names the compile's failure (it fails the
    checks) so one broken config does not hide the rest of the report."""
    try:
        return compile_spec(spec, arch)
    except Exception as e:     # triton's compile raises RuntimeError / CompilationError
        return {"arch": f"sm_{_parse_arch(arch)}", "kernel": spec.name, "variant": spec.variant,
                "dtype": spec.dtype, "config": spec.label(), "registers": 0, "spill_bytes": 0,
                "shared_bytes": -1, "mma": "", "tma": False, "warp_specialized": False,
                "persistent": False, "sweep": spec.sweep,
                "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"}


def _interpreted() -> bool:
    import triton

    return bool(triton.knobs.runtime.interpret)


def compile_report(arch: str = "sm_90", subset: str = "all") -> list[dict]:
    """One row per launchable (kernel, variant, dtype, bucket, config), compiled ahead of time
    for ``arch`` (no GPU needed). ``subset="buckets"``: the first config of each (kernel, variant,
    dtype, bucket, flags) and every sweep config."""
    _parse_arch(arch)
    if subset not in ("all", "buckets"):
        raise ValueError(f"subset: expected 'all' or 'buckets', got {subset!r}")
    if _interpreted():
        return _report_in_subprocess(arch, subset)
    return [_compile_or_error(spec, arch) for spec in specs(subset, arch)]


def _report_in_subprocess(arch: str, subset: str) -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "litelora_fast.kernels.compile_report",
                           "--arch", arch, "--subset", subset, "--json"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compile_report subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


# A pure reduction has no tile product to put on the tensor cores (the fixed-order sum of split-N
# partials), and exact fp32 ("fp32-ieee": torch's TF32 switch off) multiplies on the FMA units.
NO_MATMUL = {"matmul_tn_sum_partials", "dropout_mask"}


def failing_rows(rows: list[dict]) -> list[dict]:
    """Rows that fail the checks of their architecture (``row["arch"]``): the architecture's
    tensor-core instruction (``TENSOR_CORE_OP``) wherever tiles are multiplied on tensor cores,
    TMA loads exactly in the descriptor variants, SETMAXREG exactly in the warp-specialized one,
    the persistent kernel exactly in the persistent variant, at most 255 registers, no spills,
    shared memory within the architecture's limit (``tuning.ARCH_SMEM_LIMIT``), and a compile
    that succeeded (``error`` empty)."""
    def ok(r):
        arch = _parse_arch(r["arch"])
        tensor_cores = (TENSOR_CORE_OP[arch] in r["mma"].split("+") or r["kernel"] in NO_MATMUL
                        or r["dtype"] == "fp32-ieee")
        return (not r["error"] and tensor_cores
                and r["tma"] == (r["variant"] in TMA_VARIANTS)
                and r["warp_specialized"] == (r["variant"] == "tma_ws")
                and r["persistent"] == (r["variant"] == "tma_persistent")
                and r["registers"] <= MAX_REGISTERS
                and r["spill_bytes"] == 0
                and 0 <= r["shared_bytes"] <= arch_smem_limit(arch))
    return [r for r in rows if not ok(r)]


def format_report(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    cells = [[str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """The totals per architecture: configs, kernels, spills, the largest shared memory against
    the limit, the most registers, and how many rows hold the tensor-core instruction, UTMALDG
    and SETMAXREG."""
    lines = []
    for arch in sorted({r["arch"] for r in rows}, key=_parse_arch):
        part = [r for r in rows if r["arch"] == arch]
        number = _parse_arch(arch)
        op = TENSOR_CORE_OP[number]
        kernels = {(r["kernel"], r["variant"]) for r in part}
        biggest = max(part, key=lambda r: r["shared_bytes"])
        lines += [
            f"{arch}: {len(part)} configs of {len({r['kernel'] for r in part})} kernels "
            f"({len(kernels)} kernel/variant pairs), {sum(r['sweep'] for r in part)} of them sweep configs",
            f"spills: {sum(r['spill_bytes'] > 0 for r in part)} configs; registers: max "
            f"{max(r['registers'] for r in part)}; shared memory: max {biggest['shared_bytes']:,} B of "
            f"{arch_smem_limit(number):,} B ({biggest['kernel']}/{biggest['variant']} "
            f"{biggest['dtype']} {biggest['config']})",
            f"{op} in {sum(op in r['mma'].split('+') for r in part)}, UTMALDG in "
            f"{sum(r['tma'] for r in part)}, SETMAXREG in {sum(r['warp_specialized'] for r in part)}; "
            f"failing the checks: {len(failing_rows(part))}; launches with no config: "
            f"{len(uncovered(arch))}"]
    return "\n".join(lines) if lines else "0 configs"


# The keep-mask's bound (docs/kernels.md, "LoRA dropout mask"): SASS instructions per element of
# x. It measures 17.7 on sm_90 (51.7 with one Philox call per element). Issue 26 asks for 16: a
# Philox with one wide multiply per product measures 13.9 but makes three dropout configs spill
# (lora_weight_grads 64x128 w4 bf16/fp16, masked_addmm exact fp32), which their prunes would
# first have to drop.
MASK_INSTRUCTIONS_MAX = 18
MASK_TILE = dict(BLOCK_M=32, BLOCK_D=128, num_warps=4)   # 32 elements per thread
_SASS_INSTRUCTION_RE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);")


def sass_instructions(sass: str) -> int:
    """Instructions in a SASS dump, the NOP padding excluded (straight-line code: each runs once)."""
    return sum(1 for m in _SASS_INSTRUCTION_RE.finditer(sass) if m.group(1).split()[0] != "NOP")


def mask_instructions(arch: str = "sm_90") -> dict:
    """SASS instructions per element of ``x`` that the LoRA-dropout keep-mask costs, both tile
    orientations (``{"x": ..., "x^T": ...}``): ``dropout.mask_cost_kernel`` compiled with and
    without dropout on a ``MASK_TILE`` tile, the difference over the elements each thread holds
    (the seed's load included)."""
    number = _parse_arch(arch)
    if _interpreted():
        env = dict(os.environ, TRITON_INTERPRET="0")
        proc = subprocess.run([sys.executable, "-m", "litelora_fast.kernels.compile_report",
                               "--arch", arch, "--mask-cost"], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"mask_instructions subprocess failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .dropout import mask_cost_kernel

    tile = dict(MASK_TILE)
    warps = tile.pop("num_warps")
    per_thread = tile["BLOCK_M"] * tile["BLOCK_D"] // (32 * warps)
    signature = {"seed_ptr": "*i64", "x_ptr": "*fp32", "out_ptr": "*fp32"}

    def count(p_drop, along_rows):
        consts = dict(tile, P_DROP=p_drop, D_ALONG_ROWS=along_rows)
        index = mask_cost_kernel.arg_names.index
        src = ASTSource(fn=mask_cost_kernel,
                        signature={**signature, **dict.fromkeys(consts, "constexpr")},
                        constexprs={(index(k),): v for k, v in consts.items()},
                        attrs={(i,): [["tt.divisibility", 16]] for i in range(3)})
        compiled = triton.compile(src, target=GPUTarget("cuda", number, 32),
                                  options={"num_warps": warps, "num_stages": 1})
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "mask_cost.cubin")
            with open(path, "wb") as f:
                f.write(compiled.asm["cubin"])
            return sass_instructions(_sass(path))

    return {name: (count(0.1, along_rows) - count(0.0, along_rows)) / per_thread
            for name, along_rows in (("x", False), ("x^T", True))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--subset", default="all", choices=["all", "buckets"])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--mask-cost", action="store_true",
                        help="print the dropout mask's SASS instructions per element as JSON")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a row fails its architecture's checks (see failing_rows)")
    args = parser.parse_args(argv)
    if args.mask_cost:
        print(json.dumps(mask_instructions(args.arch)))
        return 0
    rows = compile_report(args.arch, args.subset)
    print(json.dumps(rows) if args.json else format_report(rows) + "\n\n" + summary(rows))
    bad = failing_rows(rows)
    empty = uncovered(args.arch)
    if args.check and empty:
        print(f"{len(empty)} launch(es) with no config on {args.arch}: {empty}", file=sys.stderr)
        return 1
    if args.check and bad:
        print(f"{len(bad)} config(s) fail the {args.arch} checks:\n{format_report(bad)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
