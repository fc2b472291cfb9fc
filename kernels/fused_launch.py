"""Host side of the two fused GEMMs (``fused_xw_sgb``: y, ``fused_dyw_dsa``: dx): what one
variant is (``Variant``: its kernel, configs, shared-memory model, descriptor blocks, compile
spec, launchers), the product's table of them (``FusedGemm``: the variant choice, the launch, its
``LAUNCH_COUNTS``), and the helpers both files build them from.

- ``gemm_config``: a GEMM ``triton.Config`` in one line; ``descriptors``: placeholder host
  descriptors (the config's pre_hook sets their blocks).
- ``pointer_smem``, ``tma_smem``, ``persistent_smem``, ``ws_smem``: each variant's
  ``(per_stage, fixed)`` shared memory (``tuning.Launcher``); ``ws_fits``: whether the
  warp-specialized kernel takes a call.
- ``gemm_launch_metadata``: the kernels' ``launch_metadata`` hook (Triton tutorial 09): each
  launch's name with its shape, FLOPs and bytes, as profilers (proton) list it.
"""
from __future__ import annotations

import dataclasses

import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from . import LAUNCH_COUNTS
from .compile_spec import KernelSpec
from .tuning import (INTERPRET, Launcher, block_hook, by_dtype, choose_variant, num_sms,
                     on_device, run_variant, stage_bytes)

# The warp-specialized kernels hold the whole adapter bank in one tile of at most this many columns.
WS_MAX_BLOCK_R = 64


def gemm_config(bm, bn, bk, warps, stages, group=8, split=None):
    """``triton.Config`` of a fused-GEMM tile: BLOCK_M x BLOCK_N x BLOCK_K, GROUP_M ``group``,
    ``EPILOGUE_SPLIT`` where ``split`` is given (the TMA-store kernels)."""
    kw = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}
    if split is not None:
        kw["EPILOGUE_SPLIT"] = split
    return triton.Config(kw, num_warps=warps, num_stages=stages)


def descriptors(*tensors):
    """Host tensor descriptors over ``tensors``; the block shapes are placeholders here: the
    config's pre_hook (``tuning.block_hook``) sets them before the launch."""
    return [TensorDescriptor.from_tensor(t, [16, 16]) for t in tensors]


def pointer_smem(c, elem, consts):
    """Both stretches' loops have the same BLOCK_K-deep tiles; only one is live at a time."""
    return stage_bytes(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], elem), 0


def tma_smem(c, elem, consts):
    """The pipelined base tiles (the adapter steps reuse them). The TMA store's staging tile
    reuses the dead pipeline buffers after the loop (sm_90 compile: 128x128x64 bf16 4 stages
    take 132,128 B, the 4 x 32 KiB stages and barriers)."""
    k = c.kwargs
    return stage_bytes(k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], elem), 0


def persistent_smem(c, elem, consts):
    """As ``tma_smem``, plus the staging tile held apart: the flattened tile loop overlaps the
    next tile's loads with this tile's store (sm_90 compile: 164,896 B at 128x128x64 bf16 4
    stages)."""
    k = c.kwargs
    out_cols = k["BLOCK_N"] // 2 if k["EPILOGUE_SPLIT"] else k["BLOCK_N"]
    return stage_bytes(k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], elem), k["BLOCK_M"] * out_cols * elem


def ws_smem(c, elem, consts):
    """The warp-specialized kernels' shared memory: the pipelined base tiles, plus the adapter
    step's (BLOCK_M + BLOCK_N) x BLOCK_R tiles, plus an output-sized tile for the epilogue's
    layout conversion (sm_90 compile, 128x128 tiles: 17,792 B beyond the operand tiles in bf16,
    66,944-75,136 B in fp32, where leaving it out launched 238,976 B at BLOCK_R = 64)."""
    k = c.kwargs
    fixed = stage_bytes(k["BLOCK_M"], k["BLOCK_N"], consts["BLOCK_R"], elem)
    return (stage_bytes(k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], elem),
            fixed + k["BLOCK_M"] * k["BLOCK_N"] * elem)


def ws_fits(r_act: int, fp32: bool, b_kmajor: bool) -> bool:
    """The warp-specialized kernel fits this call: the whole adapter bank in one tile, and not
    fp32 with N-major b operands (fused_dx): triton 3.6 fails to lower that TF32 wgmma in a
    specialized loop (ConvertNVGPUToLLVM error at compile time)."""
    return r_act <= WS_MAX_BLOCK_R and not (fp32 and not b_kmajor)


def gemm_launch_metadata(cols: str, depth: str):
    """A ``launch_metadata`` hook for a fused GEMM kernel whose ``(N, <cols>)`` output reduces
    over ``<depth>`` base columns then ``R_act`` adapter columns (``cols``/``depth``: the
    kernel's argument names). Triton calls it at each launch only while a profiler's launch hook
    is set (``knobs.runtime.launch_enter_hook``), with the compiled kernel's metadata and the
    arguments by name; it returns the launch's name with its shape (the kernel name is the
    product's, so the forward and the dx GEMM stay apart), its FLOPs (``flops16`` for 16-bit
    operands, ``flops32`` for fp32) and the bytes of the operands and the output."""
    def metadata(grid, kernel, args):
        n, width, base, r_act = args["N"], args[cols], args[depth], args["R_act"]
        first = next(iter(args.values()))               # x / dy: a tensor or a descriptor over one
        elem = getattr(first, "base", first).element_size()
        return {"name": f"{kernel.name} [N={n}, {cols}={width}, {depth}={base}, R_act={r_act}]",
                f"flops{8 * elem}": 2.0 * n * width * (base + r_act),
                "bytes": elem * ((n + width) * (base + r_act) + n * width)}
    return metadata


@dataclasses.dataclass
class Variant:
    """One variant of a fused GEMM, everything about it in one place.

    ``name``: "pointer", "tma", "tma_persistent" or "tma_ws"; ``kernel``: its ``@triton.jit``
    kernel; ``configs``: ``{"16-bit": [...], "fp32": [...]}`` (``tuning.by_dtype``); ``sweep``:
    the wider bf16 set the GPU check's sweep step times (also compiled by the report);
    ``interpreter``: the one small config under ``TRITON_INTERPRET=1``; ``smem``: its
    shared-memory model; ``blocks(meta)``: the descriptor block shapes (descriptor variants: the
    configs' pre_hook and the compile spec's descriptor types); ``spills``: configs the compile
    showed to spill (``tuning.Launcher``); ``spec``: the other ``KernelSpec`` fields
    (``unit_strides``, ``consts``, ``dtypes``, ``buckets``). ``launchers`` (``{fp32: Launcher}``)
    and ``compile_spec`` are built by ``FusedGemm``.
    """

    name: str
    kernel: object
    configs: dict
    sweep: tuple
    interpreter: triton.Config
    smem: object
    blocks: object = None
    spills: object = None
    spec: dict = dataclasses.field(default_factory=dict)
    launchers: dict = dataclasses.field(init=False, default=None)
    compile_spec: KernelSpec = dataclasses.field(init=False, default=None)

    def bind(self, product: str, key) -> None:
        hook = block_hook(self.blocks) if self.blocks is not None else None
        self.launchers = {fp32: Launcher(product, self.kernel, configs, self.interpreter, key,
                                         self.smem, self.name, pre_hook=hook, spills=self.spills)
                          for fp32, configs in by_dtype(self.configs).items()}
        self.compile_spec = KernelSpec(product, self.name, self.kernel, self.launchers,
                                       blocks=self.blocks, sweep=tuple(self.sweep), **self.spec)


class FusedGemm:
    """A fused GEMM product (``"fused_forward"``, ``"fused_dx"``): its ``Variant`` records by
    name, launched over an ``(N, cols)`` output.

    ``choose`` is ``tuning.choose_variant`` with the untimed choice's tile count; ``launch``
    runs one variant's kernel on its grid (one program per output tile, at most one per SM for
    the persistent kernel); ``dispatch`` launches the chosen (or, under "auto", the fastest)
    variant and counts it in ``LAUNCH_COUNTS`` as ``"<product>"`` and ``"<product>/<variant>"``.
    """

    def __init__(self, product: str, key, variants):
        self.product = product
        self.variants = {v.name: v for v in variants}
        for v in variants:
            v.bind(product, key)

    @property
    def specs(self) -> list:
        return [v.compile_spec for v in self.variants.values()]

    def choose(self, variant, device, operands, ws_ok, precision, fp32, rows, cols) -> str:
        tma = self.variants["tma"]
        first = tma.interpreter if INTERPRET else by_dtype(tma.configs)[fp32][0]
        tiles = triton.cdiv(rows, first.kwargs["BLOCK_M"]) * triton.cdiv(cols, first.kwargs["BLOCK_N"])
        return choose_variant(variant, device, operands, ws_ok, precision, tiles=tiles,
                              sms=num_sms(device))

    def launch(self, variant, config, fp32, rows, cols, device_tensor, args, consts) -> None:
        launcher = self.variants[variant].launchers[fp32]
        launch = launcher.with_config(config) if config is not None else launcher
        sms = num_sms(device_tensor.device)
        persistent = variant == "tma_persistent"

        def grid(meta):
            tiles = triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"])
            return (min(tiles, sms) if persistent else tiles,)

        with on_device(device_tensor):
            launch[grid](*args, **consts)

    def dispatch(self, requested, chosen, config, key, ws_ok, run) -> str:
        candidates = ["tma", "tma_persistent"] + (["tma_ws"] if ws_ok else [])
        chosen = run_variant(self.product, requested, chosen, config, key, candidates, run)
        LAUNCH_COUNTS[self.product] += 1
        LAUNCH_COUNTS[f"{self.product}/{chosen}"] += 1
        return chosen
