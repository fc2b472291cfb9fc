"""Ahead-of-time compile specs of every shipped kernel config, generated from the config lists.

``specs(subset="all")`` lists one ``AotSpec`` per compiled variant; ``kernels.compile_report``
compiles them for sm_90 without a GPU and reads the SASS. ``config_lists()`` is the registry of
launch configs by (kernel, variant), for tools that count compiles and timings
(``benchmarks/gpu_check.sh --estimate``).

Coverage ("all"): every config of every list in the benchmark dtype (bf16), at the narrowest
(R_act <= 16) and the widest adapter tile where the tile width is a compile-time constant; the
fp32 lists at both widths, with TF32 wgmma ("fp32") and, for the pointer kernels that serve it,
exact fp32 products ("fp32-ieee": torch's TF32 switch off, its default); one fp16 spec per
kernel and variant. Arguments are
specialised as the JIT sees them at the benchmark shapes: a contiguous tensor's unit inner stride
is a constant, every other pointer, size and stride a multiple of 16 (the JIT's divisibility
specialisation), except the gates' row stride (per-row gates with K = 8 adapters). Stages are the
ones ``tuning.fit_stages`` would launch with. ``subset="representative"`` keeps the first spec of
each (kernel, variant, dtype): the unit test's quicker pass.
"""
from __future__ import annotations

import dataclasses

# dtype labels: "fp32" runs TF32 wgmma (torch's TF32 switch on), "fp32-ieee" exact fp32 products
# (the switch off, torch's default), which only the pointer kernels take (tuning.choose_variant).
TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "fp32-ieee": "fp32"}
ELEM = {"bf16": 2, "fp16": 2, "fp32": 4, "fp32-ieee": 4}


def _precision(dt):
    return "ieee" if dt == "fp32-ieee" else "tf32"


@dataclasses.dataclass
class AotSpec:
    """One compile: ``signature`` maps every argument to a triton type ("*bf16", "i32",
    "tensordesc<bf16[128, 64]>", or "constexpr" with its value in ``constexprs``); ``aligned``
    names the arguments assumed divisible by 16."""

    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    aligned: tuple | None = None
    config: str | None = None
    variant: str = "pointer"
    dtype: str = "bf16"

    def label(self) -> str:
        if self.config:
            return self.config
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs.items() if k.isupper())
        return f"{consts},w{self.num_warps},s{self.num_stages},{self.dtype}"


def make_spec(name, fn, types, constexprs, num_warps, num_stages, *, unaligned=(), config=None,
              variant="pointer", dtype="bf16") -> AotSpec:
    """An ``AotSpec`` typing the arguments in ``types`` as given, ``constexprs`` as constexpr and
    every other argument of ``fn`` as "i32"; every non-constexpr argument but ``unaligned`` is
    assumed divisible by 16."""
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        else:
            signature[arg] = types.get(arg, "i32")
    aligned = tuple(a for a in fn.arg_names
                    if a not in constexprs and a not in unaligned and not types.get(a, "").startswith("tensordesc"))
    return AotSpec(name, fn, signature, dict(constexprs), num_warps, num_stages, aligned, config,
                   variant, dtype)


def _dims(c, *names):
    return "x".join(str(c.kwargs[n]) for n in names if n in c.kwargs)


def _label(c, dims, extra=""):
    group = f" G{c.kwargs['GROUP_M']}" if "GROUP_M" in c.kwargs else ""
    return f"{dims}{group}{extra} w{c.num_warps} s{c.num_stages}"


# ---------------------------------------------------------------------------------------------
# Pointer kernels.
# ---------------------------------------------------------------------------------------------
def _pointer_specs(name, fn, dtypes, per_stage, consts, pointers, dims, extra_types=None,
                   unaligned=(), tag=""):
    """Specs of one pointer kernel: for each ``(dtype, configs, BLOCK_R widths)`` in ``dtypes``,
    every config that ``fit_stages`` keeps at that width, with ``consts`` added."""
    from .tuning import fit_stages

    out = []
    for dt, configs, widths in dtypes:
        for br in widths:
            for c in fit_stages(configs, lambda c, dt=dt, br=br: per_stage(c, ELEM[dt], br)):
                types = {p: f"*{TYPES[dt]}" for p in pointers}
                types.update(extra_types or {})
                all_consts = dict(c.kwargs, BLOCK_R=br, **consts, DOT_PRECISION=_precision(dt))
                out.append(make_spec(name, fn, types, all_consts,
                                     c.num_warps, c.num_stages, unaligned=unaligned, dtype=dt,
                                     config=_label(c, *dims(c, br)) + tag))
    return out


def _row_tile(c, br):
    return f"{c.kwargs['BLOCK_M']}x{br}x{c.kwargs['BLOCK_K']}", ""


def _gemm_tile(c, br):
    return _dims(c, "BLOCK_M", "BLOCK_N", "BLOCK_K"), f" R{br}"


def _forward_kernel_specs():
    from . import forward as f

    gate_tables = {"col_adapter_ptr": "*i32", "col_scale_ptr": "*fp32", "seed_ptr": "*i64"}
    shrink_consts = dict(stride_x_i=1, stride_lora_A_i=1, stride_gates_k=1, stride_S_r=1,
                         stride_SG_r=1)
    shrink_args = (("x_ptr", "lora_A_ptr", "gates_ptr", "S_ptr", "SG_ptr"), _row_tile)
    out = _pointer_specs(
        "shrink", f._shrink_kernel,
        [("bf16", f.SHRINK_CONFIGS, (16, f.SHRINK_MAX_BLOCK_R)), ("fp16", f.SHRINK_CONFIGS[:1], (16,)),
         ("fp32", f.SHRINK_FP32_CONFIGS, (16, f.SHRINK_FP32_MAX_BLOCK_R)),
         ("fp32-ieee", f.SHRINK_FP32_CONFIGS, (16, f.SHRINK_FP32_MAX_BLOCK_R))],
        f.shrink_smem_per_stage, dict(shrink_consts, P_DROP=0.0), *shrink_args,
        extra_types=gate_tables, unaligned=("stride_gates_n",))
    # With LoRA dropout: the Philox mask on the x tiles must not cost the HGMMA or spill.
    out += _pointer_specs(
        "shrink", f._shrink_kernel,
        [("bf16", f.SHRINK_CONFIGS[:1], (16,)), ("fp32", f.SHRINK_FP32_CONFIGS[:1], (16,))],
        f.shrink_smem_per_stage, dict(shrink_consts, P_DROP=0.1), *shrink_args,
        extra_types=gate_tables, unaligned=("stride_gates_n",), tag=" dropout")
    out += _pointer_specs(
        "fused_forward", f._fused_forward_kernel,
        [("bf16", f.FUSED_FORWARD_CONFIGS, (16, f.FUSED_MAX_BLOCK_R)),
         ("fp16", f.FUSED_FORWARD_CONFIGS[:1], (16,)),
         ("fp32", f.FUSED_FORWARD_FP32_CONFIGS, (16, f.FUSED_MAX_BLOCK_R)),
         ("fp32-ieee", f.FUSED_FORWARD_FP32_CONFIGS, (16, f.FUSED_MAX_BLOCK_R))],
        lambda c, elem, br: f.fused_smem_per_stage(c, elem),
        dict(HAS_BIAS=True, stride_x_i=1, stride_weight_i=1,
             stride_bias_o=1, stride_SG_r=1, stride_lora_B_r=1, stride_y_o=1),
        ("x_ptr", "weight_ptr", "bias_ptr", "SG_ptr", "lora_B_ptr", "y_ptr"), _gemm_tile)
    return out


def _backward_kernel_specs():
    from . import backward as b

    out = _pointer_specs(
        "grad_shrink", b._grad_shrink_kernel,
        [("bf16", b.GRAD_SHRINK_CONFIGS, (16, b.GRAD_SHRINK_MAX_BLOCK_R)),
         ("fp16", b.GRAD_SHRINK_CONFIGS[:1], (16,)),
         ("fp32", b.GRAD_SHRINK_FP32_CONFIGS, (16, b.GRAD_SHRINK_MAX_BLOCK_R)),
         ("fp32-ieee", b.GRAD_SHRINK_FP32_CONFIGS, (16, b.GRAD_SHRINK_MAX_BLOCK_R))],
        b.grad_shrink_smem_per_stage,
        dict(NEED_GATE_GRAD=True, stride_dy_o=1, stride_lora_B_r=1,
             stride_S_r=1, stride_gates_k=1, stride_dS_r=1, stride_P_r=1),
        ("dy_ptr", "lora_B_ptr", "S_ptr", "gates_ptr", "dS_ptr"), _row_tile,
        extra_types={"col_adapter_ptr": "*i32", "col_scale_ptr": "*fp32", "P_ptr": "*fp32"},
        unaligned=("stride_gates_n",))
    out += _pointer_specs(
        "fused_dx", b._fused_dx_kernel,
        [("bf16", b.FUSED_DX_CONFIGS, (16, b.FUSED_DX_MAX_BLOCK_R)), ("fp16", b.FUSED_DX_CONFIGS[:1], (16,)),
         ("fp32", b.FUSED_DX_FP32_CONFIGS, (16, b.FUSED_DX_MAX_BLOCK_R)),
         ("fp32-ieee", b.FUSED_DX_FP32_CONFIGS, (16, b.FUSED_DX_MAX_BLOCK_R))],
        lambda c, elem, br: b.fused_dx_smem_per_stage(c, elem),
        dict(stride_dy_o=1, stride_weight_i=1, stride_dS_r=1,
             stride_lora_A_i=1, stride_dx_i=1),
        ("dy_ptr", "weight_ptr", "dS_ptr", "lora_A_ptr", "dx_ptr"), _gemm_tile)
    return out


def _weight_grad_specs():
    from . import weight_grad as w
    from .tuning import fit_stages

    out = []

    def add(dt, out_type, c, block_p, out_consts, tag):
        consts = dict(c.kwargs, DOT_PRECISION=_precision(dt), stride_a_m=1, stride_b_p=1,
                      **out_consts)
        if block_p is not None:
            consts["BLOCK_P"] = block_p
        types = {"a_ptr": f"*{TYPES[dt]}", "b_ptr": f"*{TYPES[dt]}", "out_ptr": out_type}
        dims = f"{consts['BLOCK_M']}x{consts['BLOCK_P']}x{consts['BLOCK_K']}"
        out.append(make_spec("matmul_tn", w._matmul_tn_kernel, types, consts, c.num_warps,
                             c.num_stages, dtype=dt, config=_label(c, dims, f" {tag}")))

    def fit(configs, dt, block_p=None):
        return fit_stages(configs, lambda c: w.tn_smem_per_stage(c, ELEM[dt], block_p))

    wide = {"bf16": fit(w.MATMUL_TN_WIDE_CONFIGS, "bf16"), "fp16": fit(w.MATMUL_TN_WIDE_CONFIGS[:1], "fp16"),
            "fp32": fit(w.MATMUL_TN_WIDE_FP32_CONFIGS, "fp32"),
            "fp32-ieee": fit(w.MATMUL_TN_WIDE_FP32_CONFIGS, "fp32")}
    for dt, configs in wide.items():
        for c in configs:
            add(dt, f"*{TYPES[dt]}", c, None, {"stride_out_p": 1}, "dW")
    narrow_lists = {"bf16": w.MATMUL_TN_NARROW_CONFIGS, "fp16": w.MATMUL_TN_NARROW_CONFIGS[:1],
                    "fp32": w.MATMUL_TN_NARROW_FP32_CONFIGS,
                    "fp32-ieee": w.MATMUL_TN_NARROW_FP32_CONFIGS}
    for dt, configs in narrow_lists.items():
        for bp in ((16, w.NARROW_MAX_P) if dt != "fp16" else (16,)):
            for c in fit(configs, dt, bp):
                add(dt, "*fp32", c, bp, {"stride_out_p": 1}, "dB split")
    add("bf16", "*bf16", fit(w.MATMUL_TN_NARROW_CONFIGS, "bf16", 16)[0], 16, {"stride_out_m": 1},
        "dA swapped")

    # lora_weight_grads: dA^T and dB in one grid. Split into fp32 partials (what the benchmark
    # shapes run: their output tiles cannot fill the SMs) for every narrow config at BLOCK_P = 16,
    # the first at 64; unsplit (dA stored column-major through its swapped strides) once.
    def add_pair(dt, c, bp, split, gated=False, p_drop=0.0):
        consts = dict(c.kwargs, DOT_PRECISION=_precision(dt), GATED=gated, BLOCK_P=bp, P_DROP=p_drop,
                      stride_x_i=1, stride_dS_r=1, stride_dy_o=1, stride_SG_r=1, stride_dB_r=1,
                      stride_gates_k=1)
        consts.update({"stride_dA_r": 1} if split else {"stride_dA_i": 1})
        tt = TYPES[dt]
        otype = "*fp32" if split else f"*{tt}"
        types = {"x_ptr": f"*{tt}", "dS_ptr": f"*{tt}", "SG_ptr": f"*{tt}", "dy_ptr": f"*{tt}",
                 "dA_ptr": otype, "dB_ptr": otype, "gates_ptr": "*fp32",
                 "col_adapter_ptr": "*i32", "col_scale_ptr": "*fp32", "seed_ptr": "*i64"}
        dims = f"{c.kwargs['BLOCK_M']}x{bp}x{c.kwargs['BLOCK_K']}"
        tag = (" split" if split else "") + (" gated" if gated else "") + (
            " dropout" if p_drop else "")
        # Per-row gates (N, K) with K = 8 adapters: the gates' row stride is not a multiple of 16.
        out.append(make_spec("lora_weight_grads", w._lora_weight_grads_kernel, types, consts,
                             c.num_warps, c.num_stages, dtype=dt, unaligned=("stride_gates_n",),
                             config=_label(c, dims, tag)))

    for c in fit(w.MATMUL_TN_NARROW_CONFIGS, "bf16", 16):
        add_pair("bf16", c, 16, True)
    add_pair("bf16", fit(w.MATMUL_TN_NARROW_CONFIGS, "bf16", w.NARROW_MAX_P)[0], w.NARROW_MAX_P, True)
    add_pair("bf16", fit(w.MATMUL_TN_NARROW_CONFIGS, "bf16", 16)[0], 16, False)
    add_pair("fp16", fit(w.MATMUL_TN_NARROW_CONFIGS, "fp16", 16)[0], 16, True)
    # SG formed in the kernel from S and the gates (lora_weight_grads(..., gates=...)).
    add_pair("bf16", fit(w.MATMUL_TN_NARROW_CONFIGS, "bf16", 16)[0], 16, True, gated=True)
    add_pair("fp32", fit(w.MATMUL_TN_NARROW_FP32_CONFIGS, "fp32", 16)[0], 16, True, gated=True)
    # LoRA dropout: dA's x tiles get the Philox mask (the op's usual call: gated, split).
    add_pair("bf16", fit(w.MATMUL_TN_NARROW_CONFIGS, "bf16", 16)[0], 16, True, gated=True, p_drop=0.1)
    for dt in ("fp32", "fp32-ieee"):
        for bp in (16, w.NARROW_MAX_P):
            for c in fit(w.MATMUL_TN_NARROW_FP32_CONFIGS, dt, bp):
                add_pair(dt, c, bp, True)

    for dt in ("bf16", "fp32"):
        consts = {"BLOCK": w.SUM_BLOCK, "stride_out_p": 1, "stride_out2_p": 1}
        out.append(make_spec("matmul_tn_sum_partials", w._sum_partials_kernel,
                             {"part_ptr": "*fp32", "out_ptr": f"*{dt}", "out2_ptr": f"*{dt}"},
                             consts, 4, 3, dtype=dt, config=f"{w.SUM_BLOCK} w4"))
    return out


# ---------------------------------------------------------------------------------------------
# Descriptor (TMA) kernels.
# ---------------------------------------------------------------------------------------------
def _tma_specs(name, b_kmajor, has_bias):
    from . import fused_tma as t
    from .tuning import fit_stages

    out = []
    lists = [("bf16", t.TMA_CONFIGS, None), ("fp16", t.TMA_CONFIGS, 1), ("fp32", t.TMA_FP32_CONFIGS, None)]
    for dt, table, first_only in lists:
        for variant, configs in table.items():
            if variant == "tma_ws" and not t.ws_fits(16, dt == "fp32", b_kmajor):
                continue
            configs = fit_stages(configs, lambda c: t._smem_per_stage(c, ELEM[dt]),
                                 lambda c: t._smem_fixed(c, ELEM[dt]))[:first_only]
            widths = (16, t.WS_MAX_BLOCK_R) if variant == "tma_ws" and dt == "bf16" else (16,)
            for c in configs:
                for br in widths:
                    k = c.kwargs
                    bm, bn, bk = k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"]
                    kr = br if k["WARP_SPECIALIZE"] else bk
                    blocks = {"a1_desc": [bm, bk], "b1_desc": [bn, bk] if b_kmajor else [bk, bn],
                              "a2_desc": [bm, kr], "b2_desc": [bn, kr] if b_kmajor else [kr, bn],
                              "out_desc": [bm, bn]}
                    types = {a: f"tensordesc<{dt}[{s[0]}, {s[1]}]>" for a, s in blocks.items()}
                    types.update(out_ptr=f"*{dt}", bias_ptr=f"*{dt}")
                    consts = dict(k, HAS_BIAS=has_bias, HAS_ADAPTER=True, B_KMAJOR=b_kmajor,
                                  DOT_PRECISION="tf32", BLOCK_R=br, stride_bias=1)
                    extra = f" R{br}" if k["WARP_SPECIALIZE"] else ""
                    out.append(make_spec(name, t._fused_gemm_tma_kernel, types, consts,
                                         c.num_warps, c.num_stages, variant=variant, dtype=dt,
                                         config=_label(c, f"{bm}x{bn}x{bk}", extra)))
    return out


def _dropout_specs():
    """``masked_addmm_`` (the masked adapter term of dx under LoRA dropout): its one untuned
    launch config, at R_act <= 16 and 64, in bf16 and TF32."""
    from . import dropout as d

    out = []
    for dt, br in (("bf16", 16), ("bf16", 64), ("fp32", 16)):
        consts = dict(DOT_PRECISION=_precision(dt), P_DROP=0.1, BLOCK_M=64, BLOCK_N=128,
                      BLOCK_R=br, stride_dx_i=1, stride_dS_r=1, stride_lora_A_i=1)
        types = {"dx_ptr": f"*{TYPES[dt]}", "dS_ptr": f"*{TYPES[dt]}",
                 "lora_A_ptr": f"*{TYPES[dt]}", "seed_ptr": "*i64"}
        c = d.MASKED_ADDMM_CONFIG
        out.append(make_spec("masked_addmm", d._masked_addmm_kernel, types, consts, c.num_warps, 1,
                             dtype=dt, config=f"64x128xR{br} w{c.num_warps}"))
    return out


def specs(subset: str = "all") -> list:
    """Every shipped config as an ``AotSpec`` (``subset="representative"``: the first spec of
    each (kernel, variant, dtype))."""
    if subset not in ("all", "representative"):
        raise ValueError(f"subset: expected 'all' or 'representative', got {subset!r}")
    out = _forward_kernel_specs()
    out += _tma_specs("fused_forward", b_kmajor=True, has_bias=True)
    out += _backward_kernel_specs()
    out += _tma_specs("fused_dx", b_kmajor=False, has_bias=False)
    out += _weight_grad_specs()
    out += _dropout_specs()
    if subset == "all":
        return out
    seen, kept = set(), []
    for s in out:
        key = (s.name, s.variant, s.dtype)
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return kept


def config_lists() -> dict:
    """``{(kernel, variant): [triton.Config, ...]}``: every launch config list the launchers can
    autotune over on a GPU (bf16/fp16 lists, and the fp32 lists under ``variant + "/fp32"``)."""
    from . import backward as b
    from . import dropout as d
    from . import forward as f
    from . import fused_tma as t
    from . import weight_grad as w

    lists = {
        ("shrink", "pointer"): f.SHRINK_CONFIGS, ("shrink", "pointer/fp32"): f.SHRINK_FP32_CONFIGS,
        ("fused_forward", "pointer"): f.FUSED_FORWARD_CONFIGS,
        ("fused_forward", "pointer/fp32"): f.FUSED_FORWARD_FP32_CONFIGS,
        ("grad_shrink", "pointer"): b.GRAD_SHRINK_CONFIGS,
        ("grad_shrink", "pointer/fp32"): b.GRAD_SHRINK_FP32_CONFIGS,
        ("fused_dx", "pointer"): b.FUSED_DX_CONFIGS, ("fused_dx", "pointer/fp32"): b.FUSED_DX_FP32_CONFIGS,
        ("matmul_tn", "wide"): w.MATMUL_TN_WIDE_CONFIGS, ("matmul_tn", "wide/fp32"): w.MATMUL_TN_WIDE_FP32_CONFIGS,
        ("matmul_tn", "narrow"): w.MATMUL_TN_NARROW_CONFIGS,
        ("matmul_tn", "narrow/fp32"): w.MATMUL_TN_NARROW_FP32_CONFIGS,
        ("lora_weight_grads", "pointer"): w.MATMUL_TN_NARROW_CONFIGS,
        ("lora_weight_grads", "pointer/fp32"): w.MATMUL_TN_NARROW_FP32_CONFIGS,
        ("masked_addmm", "pointer"): [d.MASKED_ADDMM_CONFIG],
    }
    for kernel in ("fused_forward", "fused_dx"):
        for variant in t.TMA_CONFIGS:
            lists[(kernel, variant)] = t.TMA_CONFIGS[variant]
            lists[(kernel, variant + "/fp32")] = t.TMA_FP32_CONFIGS[variant]
    return lists
