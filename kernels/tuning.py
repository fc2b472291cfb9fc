"""Launch helpers shared by every kernel file: the config machinery (shared-memory fit, the tuned
or first-fit launch, an explicit config, what each launch chose), the variant choice of the fused
GEMMs, the dot precision, descriptor legality and padded buffers.

``Launcher(name, kernel, configs, interpreter_config, key, smem)`` is what a kernel file builds
per kernel and dtype family, and indexes with a grid like a ``@triton.jit`` function:

- on a GPU with autotuning on, ``triton.autotune`` over the configs that fit this device's shared
  memory at the call's constants (pruned per call before the tuner sees them; a list the prune
  leaves one config launches that one, untimed);
- under ``TRITON_INTERPRET=1`` (the CPU test path) the one small ``interpreter_config``;
- with ``LITELORA_AUTOTUNE=0``, the first config of the list that fits (no benchmarking), so a
  run is reproducible and starts without the autotuning pause;
- ``launcher.with_config(config)[grid](...)``: exactly that config (a sweep, a test), no tuner.

Every launch records the config it ran per tuning key; ``chosen_configs()`` returns them.

Variants of the fused GEMMs (``fused_forward``, ``fused_dx``), each its own kernel, chosen per
call by ``choose_variant``: ``"pointer"`` (masked pointer loads, any strides), ``"tma"`` (host
tensor descriptors, one tile per program), ``"tma_persistent"`` (a grid of one program per SM
looping over tiles) and ``"tma_ws"`` (warp-specialized: a producer warp issues the TMA loads). A
launcher's ``variant=`` keyword, else the environment variable ``LITELORA_KERNEL_VARIANT``, forces
one; unset (or ``"auto"``) takes the descriptor kernels whenever the operands allow them.
"""
from __future__ import annotations

import contextlib
import functools

import triton

from litelora_fast import settings

# Read once, at import, as triton reads TRITON_INTERPRET when it builds the @triton.jit objects.
INTERPRET = settings.interpret()
AUTOTUNE = settings.autotune() and not INTERPRET

# The status of every launch config in kernels/ (the one place it is written).
STATUS = ("untuned: the launch configs in kernels/ were written without a GPU, from the Triton "
          "tutorials' Hopper lists and common practice (128x128 / 128x256 tiles, 3-4 stages, "
          "64 rows per warpgroup for wgmma); nobody has timed them on an H200 yet "
          "(benchmarks/gpu_check.sh times SWEEP_CONFIGS and records chosen_configs())")

# Shared memory per block (``shared_memory_per_block_optin``): 232,448 B (227 KiB) on Hopper
# (sm_90) and datacenter Blackwell (sm_100), 166,912 B on A100 (sm_80), 101,376 B on the A10 /
# RTX 30xx (sm_86), L4 / RTX 40xx (sm_89) and consumer Blackwell (sm_120). The prune counts every
# buffer a kernel allocates (``smem`` of each Launcher) against the device's limit less
# SMEM_HEADROOM, which leaves room for what it cannot see: barriers and the layout-conversion
# scratch of the epilogue. On a GPU the limit is read from the device; the compile report takes
# it from ARCH_SMEM_LIMIT and checks every launchable config against it in the real compile.
ARCH_SMEM_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448, 100: 232_448,
                   120: 101_376}
DEFAULT_ARCH = 90            # what the interpreter (CPU) stands in for: it runs every variant
SMEM_LIMIT = ARCH_SMEM_LIMIT[DEFAULT_ARCH]
SMEM_BUDGET = 200 * 1024
SMEM_HEADROOM = SMEM_LIMIT - SMEM_BUDGET       # 27,648 B below every device's limit
TMA_MIN_ARCH = 90            # TMA, wgmma and warp specialization: sm_90 and later (mma.sync before)
TCGEN05_ARCH = 100           # datacenter Blackwell: tcgen05.mma, accumulators in tensor memory


def descriptor_arch(arch: int, limit: int) -> bool:
    """The descriptor (TMA) and warp-specialized kernels launch on ``sm_<arch>`` with ``limit``
    bytes of shared memory per block: sm_90 and later with Hopper's 232,448 B (their config
    lists are sized for it; sm_120's 101,376 B fits none of the persistent or warp-specialized
    ones, so it takes the pointer kernels, as sm_80 and sm_89 do)."""
    return arch >= TMA_MIN_ARCH and limit >= SMEM_LIMIT


# Warp-specialized kernels (``tma_ws``): triton 3.6 compiles them for sm_90 only (for sm_100 its
# TritonGPUHoistTMEMAlloc pass fails on them: the compile report, 2026-12-08).
WS_ARCHS = (90,)


def variant_on_arch(variant: str, arch: int) -> bool:
    """A launcher of ``variant`` can launch on ``sm_<arch>``: the pointer kernels (and the weight
    gradients' "wide"/"narrow") everywhere, the descriptor ones where ``descriptor_arch``, the
    warp-specialized one on ``WS_ARCHS`` only."""
    if variant not in TMA_VARIANTS:
        return True
    if not descriptor_arch(arch, arch_smem_limit(arch)):
        return False
    return variant != "tma_ws" or arch in WS_ARCHS


def smem_budget(limit: int) -> int:
    """The bytes the prune lets a launch hold on a device with ``limit`` bytes per block."""
    return limit - SMEM_HEADROOM


def arch_smem_limit(arch: int) -> int:
    """``ARCH_SMEM_LIMIT[arch]``; ``ValueError`` naming the known architectures otherwise."""
    if arch not in ARCH_SMEM_LIMIT:
        raise ValueError(f"arch: no shared-memory limit known for sm_{arch} (known: "
                         f"{', '.join(f'sm_{a}' for a in ARCH_SMEM_LIMIT)})")
    return ARCH_SMEM_LIMIT[arch]


VARIANTS = ("pointer", "tma", "tma_persistent", "tma_ws")
TMA_VARIANTS = VARIANTS[1:]
VARIANT_ENV = "LITELORA_KERNEL_VARIANT"
_CPU_NUM_SMS = 4             # the "SM count" persistent grids and split heuristics assume on CPU


def stage_bytes(rows: int, cols: int, depth: int, elem: int) -> int:
    """Shared memory of one pipeline stage of a GEMM loop: an ``(rows, depth)`` tile of the left
    operand and a ``(depth, cols)`` tile of the right one, ``elem`` bytes per element."""
    return (rows + cols) * depth * elem


def torch_allows_tf32() -> bool:
    """What ``F.linear`` on CUDA fp32 tensors does: TF32 iff torch's cuBLAS setting allows it.

    Both of torch's APIs: the per-backend ``torch.backends.cuda.matmul.fp32_precision`` (torch
    >= 2.9: "tf32" or "ieee", and "none" while unset; it also reflects the global
    ``torch.backends.fp32_precision`` and the legacy setters) is read first, because once a user
    has set it, reading the legacy ``allow_tf32`` raises ("mix of the legacy and new APIs"). Unset
    (or an older torch), the legacy ``allow_tf32``, which ``torch.set_float32_matmul_precision``
    "high"/"medium" turns on and "highest", the default, turns off."""
    import torch

    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def dot_precision(t, *, cuda=None) -> str:
    """``tl.dot``'s ``input_precision`` for operands like ``t``.

    fp32 on a GPU follows torch's TF32 setting as ``F.linear`` does, so a layer's precision does
    not change with whether an adapter is active: "tf32" only when torch would use TF32, else
    "ieee" (exact fp32 products). Off the GPU (the interpreter) always "ieee". fp16/bf16 ignore
    the value; they get "tf32" on the GPU so a change of torch's setting recompiles nothing.
    ``cuda`` overrides ``t.is_cuda`` (tests of the chooser on a CPU tensor).
    """
    import torch

    on_cuda = t.is_cuda if cuda is None else cuda
    if not on_cuda:
        return "ieee"
    if t.dtype != torch.float32:
        return "tf32"
    return "tf32" if torch_allows_tf32() else "ieee"


def fit_stages(configs, smem_per_stage, smem_fixed=None, budget=SMEM_BUDGET):
    """Configs whose shared memory fits ``budget`` (sm_90's ``SMEM_BUDGET`` unless given):
    ``stages * smem_per_stage(c) + smem_fixed(c)``; stages are lowered (to 2 at least) before a
    config is dropped, so fp32 inputs still find a config on the GPU. A config's ``pre_hook`` is
    kept."""
    total = budget
    kept, seen = [], set()
    for c in configs:
        per_stage = smem_per_stage(c)
        budget = total - (smem_fixed(c) if smem_fixed else 0)
        stages = c.num_stages
        while stages > 2 and stages * per_stage > budget:
            stages -= 1
        if stages * per_stage > budget:
            continue
        key = (tuple(sorted(c.kwargs.items())), c.num_warps, stages)
        if key in seen:
            continue
        seen.add(key)
        kept.append(triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages,
                                  pre_hook=c.pre_hook))
    return kept


def by_dtype(configs: dict) -> dict:
    """``{"16-bit": [...], "fp32": [...]}`` as ``{False: ..., True: ...}`` (keyed by "the operands
    are fp32"): fp32 takes twice the shared memory and registers per element, so it has its own
    list. A list given for one key only serves both."""
    return {False: configs["16-bit"], True: configs.get("fp32", configs["16-bit"])}


def config_label(c) -> str:
    """A config in one line: ``BLOCK_M=128,BLOCK_N=128,... w8 s3``."""
    kw = ",".join(f"{k}={v}" for k, v in c.kwargs.items())
    return f"{kw} w{c.num_warps} s{c.num_stages}"


_LAUNCHERS: list = []


class Launcher:
    """One kernel's launchable form for one config list (see the module docstring).

    ``pre_hook``: run before each launch with the config's arguments (the descriptor kernels set
    their descriptors' block shapes with ``block_hook``). ``spills(config, elem, consts, arch)``:
    True for a config the compile for ``arch`` (``sm_<arch>``) showed to spill registers at these
    constants; the prune leaves it out (the compile report then checks that what is left does not
    spill). ``smem(config, elem, consts)`` -> ``(per_stage, fixed)``: the bytes one pipeline stage
    holds and the bytes held once (a TMA-store output tile, the warp-specialized kernel's adapter
    tiles), for operands of ``elem`` bytes and the launch's constexprs ``consts``.

    ``fit`` is the one prune: every launch path runs it per call before choosing (the tuner
    times exactly what it keeps, ``LITELORA_AUTOTUNE=0`` takes its first config, a one-config
    list launches its pruned form), and the compile report compiles what it keeps, so what is
    launched is what is checked. (``triton.autotune`` never calls ``early_config_prune`` on a
    one-entry list, so the prune cannot be left to it.)
    """

    def __init__(self, name, kernel, configs, interpreter_config, key, smem, variant="pointer",
                 pre_hook=None, spills=None, fallback=()):
        self.name, self.kernel, self.key, self.smem = name, kernel, list(key), smem
        self.variant, self.pre_hook, self.spills = variant, pre_hook, spills
        self.configs = [self._hooked(c) for c in configs]
        self.fallback = [self._hooked(c) for c in fallback]
        self.interpreter_config = self._hooked(interpreter_config)
        self.picked = {}                 # tuning key -> config, for untuned launches
        self._tuners = {}                # labels of the pruned configs -> triton.autotune over them
        _LAUNCHERS.append(self)

    def _hooked(self, c):
        """``c`` with this kernel's ``pre_hook`` (descriptor block shapes), if it has one."""
        if self.pre_hook is None:
            return c
        return triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages,
                             pre_hook=self.pre_hook)

    def fit(self, configs, elem, consts, arch=DEFAULT_ARCH, smem_limit=None):
        """The configs of ``configs`` a launch may run on ``sm_<arch>`` with operands of ``elem``
        bytes and constexprs ``consts``: stages lowered to fit the budget under ``smem_limit``
        (the device's limit; ``ARCH_SMEM_LIMIT[arch]`` when not given), then the ones that would
        spill at those stages left out. When ``configs`` is the launcher's list and none of it
        is left, its ``fallback`` configs (small tiles for 101 KB GPUs), pruned the same way."""
        limit = smem_limit if smem_limit is not None else arch_smem_limit(arch)

        def prune(candidates):
            kept = fit_stages(candidates, lambda c: self.smem(c, elem, consts)[0],
                              lambda c: self.smem(c, elem, consts)[1], budget=smem_budget(limit))
            if self.spills is not None:
                kept = [c for c in kept if not self.spills(c, elem, consts, arch)]
            return kept

        kept = prune(configs)
        if not kept and configs is self.configs and self.fallback:
            kept = prune(self.fallback)
        return kept

    def launchable(self, configs, nargs, consts):
        """``fit`` for a call: the operand size, architecture and shared-memory limit read from
        the call's first argument (a tensor, or a descriptor over one) and its device."""
        first = nargs[self.kernel.arg_names[0]]
        tensor = getattr(first, "base", first)
        arch, limit = device_arch(tensor.device)
        return self.fit(configs, tensor.element_size(), consts, arch, limit)

    def _tuning_key(self, nargs):
        return tuple([nargs[k] for k in self.key if k in nargs]
                     + [str(v.dtype) for v in nargs.values() if hasattr(v, "dtype")])

    def _launch(self, config, grid, args, kwargs):
        nargs = dict(zip(self.kernel.arg_names, args))
        self.picked[self._tuning_key({**nargs, **kwargs})] = config
        meta = {**nargs, **kwargs, **config.kwargs}
        if config.pre_hook is not None:
            config.pre_hook(meta)
        g = grid(meta) if callable(grid) else grid
        return self.kernel[g](*args, **kwargs, **config.kwargs, num_warps=config.num_warps,
                              num_stages=config.num_stages)

    def _tuner(self, fits):
        """``triton.autotune`` over exactly ``fits`` (already pruned), one per distinct list."""
        labels = tuple(config_label(c) for c in fits)
        if labels not in self._tuners:
            self._tuners[labels] = triton.autotune(configs=fits, key=self.key)(self.kernel)
        return self._tuners[labels]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if INTERPRET:
                return self._launch(self.interpreter_config, grid, args, kwargs)
            fits = self.launchable(self.configs, dict(zip(self.kernel.arg_names, args)), kwargs)
            if not fits:
                raise ValueError(f"{self.name}/{self.variant}: no launch config fits shared "
                                 f"memory for {kwargs}")
            if AUTOTUNE and len(fits) > 1:
                return self._tuner(fits)[grid](*args, **kwargs)
            return self._launch(fits[0], grid, args, kwargs)
        return launch

    def with_config(self, config):
        """Launch exactly ``config`` (no tuner, no interpreter substitute); ``ValueError`` when it
        does not fit shared memory with its own stages."""
        config = self._hooked(config)

        def index(grid):
            def launch(*args, **kwargs):
                nargs = dict(zip(self.kernel.arg_names, args))
                kept = self.launchable([config], nargs, kwargs)
                if not kept or kept[0].num_stages != config.num_stages:
                    raise ValueError(f"config: {config_label(config)} does not fit shared memory "
                                     f"for {self.name}/{self.variant}")
                return self._launch(config, grid, args, kwargs)
            return launch
        return _Indexed(index)

    def chosen(self) -> list:
        """``[{"variant", "key", "config", "num_warps", "num_stages"}]`` per tuning key seen."""
        table = dict(self.picked)
        for tuner in self._tuners.values():
            table.update(tuner.cache)
        return [{"variant": self.variant, "key": list(key), "config": dict(c.kwargs),
                 "num_warps": c.num_warps, "num_stages": c.num_stages}
                for key, c in table.items()]


class _Indexed:
    """``obj[grid](*args)`` for a function of the grid, like a ``@triton.jit`` kernel."""

    def __init__(self, index):
        self.index = index

    def __getitem__(self, grid):
        return self.index(grid)


_VARIANT_PICKS: dict = {}        # (kernel name, tuning key) -> the variant that timed fastest


def chosen_configs() -> dict:
    """``{kernel name: [record, ...]}``: the config each launch of this process picked, one
    record per launcher and tuning key (block sizes, warps, stages, variant); for the fused GEMMs
    also ``{"variant_choice": ...}`` records of ``variant="auto"`` timings on a GPU."""
    out: dict = {}
    for launcher in _LAUNCHERS:
        out.setdefault(launcher.name, []).extend(launcher.chosen())
    for (name, key), variant in _VARIANT_PICKS.items():
        out.setdefault(name, []).append({"variant_choice": variant, "key": list(key)})
    return {k: v for k, v in out.items() if v}


def pick_variant(name: str, key: tuple, candidates, run) -> str:
    """On a GPU with autotuning on: the fastest of ``candidates`` for this tuning key, timed once
    (``run(variant)`` launches it; each variant first tunes its own configs)."""
    if (name, key) not in _VARIANT_PICKS:
        from triton.testing import do_bench

        times = {v: do_bench(lambda v=v: run(v)) for v in candidates}
        _VARIANT_PICKS[(name, key)] = min(times, key=times.get)
    return _VARIANT_PICKS[(name, key)]


def block_r(r_act: int, cap: int) -> int:
    """Column tile over the R_act adapter columns: a power of two in [16, cap] (tl.dot needs
    every extent >= 16)."""
    return min(max(16, triton.next_power_of_2(max(r_act, 1))), cap)


def n_bucket(n: int) -> int:
    """Autotune key for a row count: one tuning per power of two, not per sequence length."""
    return triton.next_power_of_2(max(n, 16))


def buckets(cap: int) -> tuple:
    """Every ``block_r(r, cap)`` value: the compile-time widths a launcher can pick."""
    return tuple(w for w in (16, 32, 64, 128, 256) if w <= cap)


def on_device(t):
    """Triton launches on the current CUDA device: make it the tensor's (multi-GPU safety)."""
    import torch

    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _cuda_props(index: int):
    import torch

    props = torch.cuda.get_device_properties(index)
    return (props.multi_processor_count, (props.major, props.minor),
            props.shared_memory_per_block_optin)


def _cuda_index(device) -> int:
    import torch

    return device.index if device.index is not None else torch.cuda.current_device()


def device_arch(device) -> tuple:
    """``(arch, smem_limit)`` of ``device``: ``(90, 232448)`` for an H100/H200, the limit read
    from the device (``shared_memory_per_block_optin``); off the GPU ``DEFAULT_ARCH`` and its
    limit (the interpreter runs what sm_90 launches)."""
    if device.type == "cuda":
        _, (major, minor), limit = _cuda_props(_cuda_index(device))
        return major * 10 + minor, limit
    return DEFAULT_ARCH, SMEM_LIMIT


def num_sms(device) -> int:
    """SMs of ``device`` (cached); ``_CPU_NUM_SMS`` off the GPU, so persistent grids still loop."""
    if device.type == "cuda":
        return _cuda_props(_cuda_index(device))[0]
    return _CPU_NUM_SMS


def has_tma(device) -> bool:
    """Tensor descriptors run on sm_90 and sm_100 GPUs (``descriptor_arch``) and under the
    interpreter (which enforces the same 16-byte rules)."""
    if device.type == "cuda":
        return descriptor_arch(*device_arch(device))
    return INTERPRET


def has_ws(device) -> bool:
    """The warp-specialized kernels run on ``device``: an sm_90 GPU (``WS_ARCHS``) or the
    interpreter."""
    if device.type == "cuda":
        return has_tma(device) and device_arch(device)[0] in WS_ARCHS
    return INTERPRET


TMA_DTYPES = ("float16", "bfloat16", "float32")


def tma_legal(t) -> bool:
    """A 2-D tensor a host ``TensorDescriptor`` can address as is: unit inner stride, the row
    stride and the base address 16-byte aligned (the TMA unit's rules), a 16-bit or fp32 dtype."""
    if t is None or t.dim() != 2 or t.numel() == 0 or str(t.dtype).split(".")[-1] not in TMA_DTYPES:
        return False
    size = t.element_size()
    return (t.stride(1) == 1 and (t.stride(0) * size) % 16 == 0 and t.data_ptr() % 16 == 0)


def requested_variant(variant=None) -> str:
    """``variant`` if given, else ``LITELORA_KERNEL_VARIANT`` (read per call), else "auto"."""
    value = variant if variant is not None else settings.kernel_variant(("auto",) + VARIANTS)
    if value != "auto" and value not in VARIANTS:
        raise ValueError(f"variant: expected one of {('auto',) + VARIANTS} (argument or "
                         f"{VARIANT_ENV}), got {value!r}")
    return value


def untuned_variant(tiles: int, sms: int, ws_ok: bool) -> str:
    """The descriptor variant "auto" takes without timing (interpreter, ``LITELORA_AUTOTUNE=0``):
    persistent when there are more output tiles than SMs (the next tile's loads overlap this
    tile's epilogue), else warp-specialized where it fits, else the plain one."""
    if tiles > sms:
        return "tma_persistent"
    return "tma_ws" if ws_ok else "tma"


def choose_variant(variant, device, operands, ws_ok: bool, precision: str = "tf32", *,
                   tiles: int = 1, sms: int = 1) -> str:
    """The variant a fused GEMM launches, or "auto": time the descriptor variants
    (``pick_variant``; only on a GPU with autotuning on).

    The requested one (``variant``, else ``LITELORA_KERNEL_VARIANT``), or under "auto" the
    descriptor kernels when every operand in ``operands`` (the large ones: input, weight, output)
    is ``tma_legal`` on an sm_90+ device (interpreter too), else "pointer"; untimed, "auto" is
    ``untuned_variant(tiles, sms, ws_ok)``. The thin adapter operands are made legal by the
    launcher (``tma_operand``) and do not decide. ``ws_ok``: the warp-specialized kernel fits
    this call (the launcher's ``ws_fits``; the device must also run them: ``has_ws``). Exact fp32 on the GPU (``precision == "ieee"``:
    torch's TF32 switch off) takes the pointer kernel: without wgmma the descriptor kernels' FMA
    tiles spill registers. A forced variant that cannot run raises ``ValueError`` rather than
    running something else.
    """
    value = requested_variant(variant)
    exact_fp32_gpu = precision == "ieee" and device.type == "cuda" and operands[0].element_size() == 4
    if value == "pointer" or (value == "auto" and exact_fp32_gpu):
        return "pointer"
    if exact_fp32_gpu:
        raise ValueError(f"variant={value!r}: exact fp32 (torch's TF32 setting off) runs on the "
                         "pointer kernel only")
    legal = has_tma(device) and all(tma_legal(t) for t in operands)
    ws_ok = ws_ok and has_ws(device)
    if value == "auto":
        if not legal:
            return "pointer"
        return "auto" if AUTOTUNE else untuned_variant(tiles, sms, ws_ok)
    if not legal:
        shapes = [(tuple(t.shape), tuple(t.stride()), str(t.dtype)) for t in operands]
        raise ValueError(f"variant={value!r}: the operands are not tensor-descriptor legal (need "
                         f"unit inner stride, 16-byte aligned rows and base, sm_90+): {shapes}")
    if value == "tma_ws" and not has_ws(device):
        raise ValueError(f"variant='tma_ws': the warp-specialized kernels run on sm_90 only "
                         f"(WS_ARCHS), not on {device}")
    if value == "tma_ws" and not ws_ok:
        raise ValueError("variant='tma_ws' does not fit this call: the adapter bank is wider "
                         "than its single adapter tile, or fp32 fused_dx (see ws_fits)")
    return value


def block_hook(blocks):
    """A config ``pre_hook`` that gives the host tensor descriptors their block shapes for the
    config about to launch: ``blocks(meta)`` -> ``{descriptor argument: [rows, cols]}`` (the same
    function the kernel's compile spec types its descriptors with)."""
    def hook(meta):
        for name, shape in blocks(meta).items():
            meta[name].block_shape = list(shape)
    return hook


def run_variant(name, requested, chosen, config, key, candidates, run):
    """Launch ``run(variant, config)`` for the variant ``choose_variant`` returned: with
    ``config`` (an explicit ``triton.Config``) that exact config of the variant the caller
    ``requested``; under "auto" (a GPU with autotuning on) the fastest of ``candidates`` for this
    tuning key. Returns the variant that ran."""
    if config is not None:
        if requested_variant(requested) == "auto":
            raise ValueError(f"{name}: config= needs a concrete variant= (one of {VARIANTS})")
        run(chosen, config)
        return chosen
    if chosen == "auto":
        chosen = pick_variant(name, key, candidates, lambda v: run(v, None))
    run(chosen, None)
    return chosen


def check_launch(condition: bool, message: str) -> None:
    """A launcher's shape check: ``ValueError(message)`` when ``condition`` is False (never an
    ``assert``, which ``python -O`` strips)."""
    if not condition:
        raise ValueError(message)


def check_2d(name, t, rows=None, cols=None) -> None:
    """``ValueError`` naming ``name`` unless ``t`` is 2-D with ``rows`` rows and ``cols`` columns
    (either None: any)."""
    if t.dim() != 2 or (rows is not None and t.shape[0] != rows) or (cols is not None and t.shape[1] != cols):
        want = f"({'?' if rows is None else rows}, {'?' if cols is None else cols})"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")


def check_same_dtype(**tensors) -> None:
    """``TypeError`` naming every operand's dtype unless they share one."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) != 1:
        raise TypeError(f"matmul operands must share one dtype, got {dtypes}")


def check_out(out, name, shape, dtype, device):
    """A caller-supplied output buffer must match exactly what the launcher would allocate."""
    import torch

    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"{name}: expected a {tuple(shape)} {dtype} tensor on {device}, "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    return out


def padded_columns(rows: int, cols: int, dtype, device):
    """An ``(rows, cols)`` view of a fresh ``(rows, pad16(cols))`` buffer: its row stride is a
    multiple of 16 elements, so a tensor descriptor can read it (TMA needs 16-byte aligned row
    strides; R_act = 5 bf16 columns would be 10 bytes). The pad columns are never read: the
    descriptor's shape stops at ``cols`` and the TMA unit fills tiles past it with zeros."""
    import torch

    width = max(16, (cols + 15) // 16 * 16)
    return torch.empty((rows, width), dtype=dtype, device=device)[:, :cols]


def tma_operand(t):
    """``t`` if a descriptor can read it, else a copy into a padded, aligned buffer (used for the
    thin ``lora_B`` bank, D_out x R_act, whose row stride R is often not 16-byte aligned; a small
    copy next to the GEMM)."""
    if tma_legal(t):
        return t
    buf = padded_columns(t.shape[0], t.shape[1], t.dtype, t.device)
    return buf.copy_(t)
