"""Ahead-of-time compile specs: how each kernel is compiled without a GPU, declared beside the
kernel in its own file as a ``KernelSpec``, and expanded here into one ``AotSpec`` per launchable
config (what ``kernels.compile_report`` compiles for an architecture: sm_80, sm_86, sm_89, sm_90,
sm_100, sm_120).

A ``KernelSpec`` names the kernel, its launchers (their config lists and shared-memory model:
what the prune keeps is exactly what is compiled), the arguments that are not "a pointer to the
operand dtype" or "an int32 divisible by 16", the constexpr buckets the launcher can pick
(``BLOCK_R`` widths, ...) and the feature flags to compile (dropout, gates). ``expand`` yields,
for every dtype the kernel serves, every bucket and every flag set, every config its launcher's
prune (``Launcher.fit``, the same call a launch makes) keeps at those constants on that
architecture, plus the kernel's ``sweep`` configs (bf16).

dtype labels: "fp32" runs TF32 wgmma (torch's TF32 switch on), "fp32-ieee" exact fp32 products
(the switch off, torch's default), which only the pointer kernels take (``tuning.choose_variant``).
Arguments are specialised as the JIT sees them at the benchmark shapes: a contiguous tensor's
unit inner stride is the constant 1, every other pointer, size and stride divisible by 16 (the
JIT's divisibility specialisation) except the ``unaligned`` ones (the gates' row stride with K = 8
per-row gates).
"""
from __future__ import annotations

import dataclasses
import itertools

from .tuning import DEFAULT_ARCH, variant_on_arch

TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "fp32-ieee": "fp32"}
ELEM = {"bf16": 2, "fp16": 2, "fp32": 4, "fp32-ieee": 4}
ALL_DTYPES = ("bf16", "fp16", "fp32", "fp32-ieee")
TF32_DTYPES = ("bf16", "fp16", "fp32")       # the descriptor kernels never run exact fp32


def precision(dtype: str) -> str:
    return "ieee" if dtype == "fp32-ieee" else "tf32"


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
    aligned: tuple
    config: str
    variant: str = "pointer"
    dtype: str = "bf16"
    bucket: str = ""
    sweep: bool = False
    flags: int = 0          # index into the KernelSpec's flag sets (the last is the heaviest)

    def label(self) -> str:
        return self.config


@dataclasses.dataclass
class KernelSpec:
    """How one kernel compiles ahead of time (see the module docstring).

    ``launchers``: ``{False: Launcher, True: Launcher}`` (16-bit, fp32 operands).
    ``types``: argument -> triton type, where not the default; "*T" stands for the operand dtype.
    ``unit_strides``: stride arguments fixed to 1. ``buckets(dtype, flags)``: ``{constexpr:
    values}`` the launcher picks from for that dtype and flag set. ``flags``: constexpr sets compiled for each bucket (e.g. with and
    without dropout). ``consts``: constexprs fixed for every compile. ``blocks(meta)``: the
    descriptor block shapes of a descriptor kernel (the same function its config pre_hook uses).
    ``sweep``: extra bf16 configs to compile (``SWEEP_CONFIGS``). ``listed``: in
    ``config_lists()`` (False for the fixed one-config helpers: the partial sum, the mask).
    """

    name: str
    variant: str
    kernel: object
    launchers: dict
    types: dict = dataclasses.field(default_factory=dict)
    unit_strides: tuple = ()
    unaligned: tuple = ()
    buckets: object = None
    flags: tuple = ({},)
    consts: dict = dataclasses.field(default_factory=dict)
    dtypes: tuple = ALL_DTYPES
    blocks: object = None
    sweep: tuple = ()
    listed: bool = True

    def _one(self, dtype, config, consts, bucket, sweep=False, flags=0) -> AotSpec:
        t = TYPES[dtype]
        names = self.kernel.arg_names
        meta = {**consts, **config.kwargs}
        blocks = self.blocks(meta) if self.blocks else {}
        signature, aligned = {}, []
        for arg in names:
            if arg in meta:
                signature[arg] = "constexpr"
            elif arg in blocks:
                signature[arg] = f"tensordesc<{t}[{blocks[arg][0]}, {blocks[arg][1]}]>"
            else:
                default = f"*{t}" if arg.endswith("_ptr") else "i32"
                signature[arg] = self.types.get(arg, default).replace("*T", f"*{t}")
                if arg not in self.unaligned:
                    aligned.append(arg)
        flag_tag = " ".join(f"{k}={v}" for k, v in self.flags[flags].items())
        label = tuning_label(config, " ".join(t for t in (bucket, flag_tag) if t))
        return AotSpec(self.name, self.kernel, signature, {a: meta[a] for a in names if a in meta},
                       config.num_warps, config.num_stages, tuple(aligned),
                       label + (" sweep" if sweep else ""), self.variant, dtype, bucket, sweep,
                       flags)

    def _launchable_on(self, arch: int) -> bool:
        return variant_on_arch(self.variant, arch)

    def launches(self, arch: int = DEFAULT_ARCH):
        """``(dtype, flag rank, bucket tag, consts, kept configs)`` for every dtype, flag set and
        bucket a launcher of this kernel can meet on ``sm_<arch>`` (none for a descriptor
        variant where ``tuning.variant_on_arch`` says no); ``kept`` is what its prune launches
        there."""
        if not self._launchable_on(arch):
            return
        for dtype in self.dtypes:
            launcher = self.launchers[dtype.startswith("fp32")]
            for rank, flags in enumerate(self.flags):
                buckets = self.buckets(dtype, flags) if self.buckets else {}
                for values in itertools.product(*buckets.values()):
                    bucket = dict(zip(buckets, values))
                    consts = {**self.consts, **bucket, **flags, "DOT_PRECISION": precision(dtype),
                              **{s: 1 for s in self.unit_strides}}
                    tag = " ".join(f"{k}={v}" for k, v in bucket.items())
                    yield (dtype, rank, tag, consts,
                           launcher.fit(launcher.configs, ELEM[dtype], consts, arch))

    def expand(self, arch: int = DEFAULT_ARCH) -> list:
        """Every config of this kernel a launcher can launch on ``sm_<arch>`` as an ``AotSpec``."""
        if not self._launchable_on(arch):
            return []
        out = [self._one(dtype, c, consts, tag, flags=rank)
               for dtype, rank, tag, consts, kept in self.launches(arch) for c in kept]
        for c in self.sweep:
            launcher = self.launchers[False]
            consts = {**self.consts, **(self.flags[0]), "DOT_PRECISION": "tf32",
                      **{s: 1 for s in self.unit_strides}}
            bucket = self.buckets("bf16", self.flags[0]) if self.buckets else {}
            consts.update({k: v[0] for k, v in bucket.items()})
            tag = " ".join(f"{k}={v[0]}" for k, v in bucket.items())
            for kept in launcher.fit([c], ELEM["bf16"], consts, arch):
                out.append(self._one("bf16", kept, consts, tag, sweep=True))
        return out


def tuning_label(config, bucket: str = "") -> str:
    k = config.kwargs
    dims = "x".join(str(k[n]) for n in ("BLOCK_M", "BLOCK_N", "BLOCK_R", "BLOCK_K", "BLOCK")
                    if n in k)
    group = f" G{k['GROUP_M']}" if "GROUP_M" in k else ""
    split = " split" if k.get("EPILOGUE_SPLIT") else ""
    return f"{dims}{group}{split} w{config.num_warps} s{config.num_stages}" + (f" {bucket}" if bucket else "")
