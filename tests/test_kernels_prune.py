"""The prune on every launch path, and the shared-memory budget of each GPU architecture.

``triton.autotune`` never calls ``early_config_prune`` on a one-config list, so a launcher that
left the prune to it launched fp32 ``tma_ws`` at 33-64 rank columns with its unpruned 3 stages
(238,976 B on sm_90, over the 232,448 B limit). The launcher now prunes per call before the
tuner sees the list. The budget is the device's ``shared_memory_per_block_optin`` less the same
headroom sm_90 has always had. Pure Python: a recording stand-in for the JIT kernel, no GPU.
"""
import inspect

import pytest
import torch
import triton
from triton.runtime import autotuner

from litelora_fast.kernels import fused_xw_sgb, shrink_xa, tuning


def _plain(x_ptr, N):
    pass


class _TunableKernel(triton.runtime.jit.KernelInterface):
    """A JIT kernel's stand-in that ``triton.autotune`` can wrap: records each launch's config."""

    arg_names = ["x_ptr", "N"]
    fn = staticmethod(_plain)

    def __init__(self):
        self.launches = []

    def run(self, *args, grid, warmup, **kwargs):
        self.launches.append(kwargs)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)


def _launcher(configs, smem, monkeypatch, autotune=True):
    monkeypatch.setattr(tuning, "INTERPRET", False)
    monkeypatch.setattr(tuning, "AUTOTUNE", autotune)
    kernel = _TunableKernel()
    launcher = tuning.Launcher("prune_test", kernel, configs, configs[0], ["N"], smem, "tma_ws")
    tuning._LAUNCHERS.remove(launcher)
    return launcher, kernel


def test_one_config_list_launches_its_pruned_form_under_autotuning(monkeypatch):
    """fp32 tma_ws at BLOCK_R = 64: the list's one 3-stage config must launch with 2 stages."""
    configs = fused_xw_sgb.CONFIGS["tma_ws"]["fp32"]
    assert len(configs) == 1 and configs[0].num_stages == 3
    launcher, kernel = _launcher(configs, fused_xw_sgb.ws_smem, monkeypatch)
    launcher[(1,)](torch.empty(4, dtype=torch.float32), 4096, BLOCK_R=64)
    assert [k["num_stages"] for k in kernel.launches] == [2]
    # 16 rank columns leave room for all 3 stages.
    launcher[(1,)](torch.empty(4, dtype=torch.float32), 4096, BLOCK_R=16)
    assert kernel.launches[-1]["num_stages"] == 3


def test_the_tuner_times_only_pruned_configs(monkeypatch):
    timed = []

    def fake_bench(self, *args, config, **meta):
        timed.append(config.num_stages)
        return [float(config.num_stages)]

    monkeypatch.setattr(autotuner.Autotuner, "_bench", fake_bench)
    configs = [triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8},
                             num_warps=4, num_stages=s) for s in (3, 4)]
    launcher, kernel = _launcher(configs, fused_xw_sgb.ws_smem, monkeypatch)
    launcher[(1,)](torch.empty(4, dtype=torch.float32), 4096, BLOCK_R=32)
    # 4 stages lower to 3 (a duplicate, dropped) at BLOCK_R = 32: one config left, untimed.
    assert timed == [] and kernel.launches[-1]["num_stages"] == 3
    launcher[(1,)](torch.empty(4, dtype=torch.float16), 4096, BLOCK_R=16)
    assert sorted(timed) == [3, 4] and kernel.launches[-1]["num_stages"] == 3
    assert {r["num_stages"] for r in launcher.chosen()} == {3}


def test_the_compile_report_compiles_what_the_launcher_launches():
    """``KernelSpec.expand`` and the call-time prune are one function (``Launcher.fit``)."""
    from litelora_fast.kernels import compile_spec

    assert "launcher.fit(" in inspect.getsource(compile_spec.KernelSpec.expand)
    assert "self.fit(" in inspect.getsource(tuning.Launcher.launchable)
    ws = next(s for s in fused_xw_sgb.SPECS if s.variant == "tma_ws")
    stages = {a.config.split(" BLOCK_R=")[1].split()[0]: a.num_stages
              for a in ws.expand() if a.dtype == "fp32"}
    assert stages == {"16": 3, "32": 3, "64": 2}


@pytest.mark.parametrize("arch,limit", [(80, 166_912), (86, 101_376), (89, 101_376),
                                        (90, 232_448), (100, 232_448), (120, 101_376)])
def test_budget_is_the_architecture_limit_less_the_sm90_headroom(arch, limit):
    assert tuning.arch_smem_limit(arch) == limit
    assert tuning.smem_budget(limit) == limit - (232_448 - 200 * 1024)
    for fp32, launcher in shrink_xa._LAUNCH.items():
        elem = 4 if fp32 else 2
        for r in tuning.buckets(128):
            consts = {"BLOCK_R": r, "P_DROP": 0.0}
            for c in launcher.fit(launcher.configs, elem, consts, arch):
                per_stage, fixed = shrink_xa.rank_smem(c, elem, consts)
                assert c.num_stages * per_stage + fixed <= tuning.smem_budget(limit)


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="sm_75"):
        tuning.arch_smem_limit(75)


class _FakeCudaTensor:
    """What the prune reads of a launch's first argument: its device and element size."""

    device = torch.device("cuda", 0)

    def element_size(self):
        return 2


# bf16 shrink at BLOCK_R = 128: 64 x 128-deep (48 KiB a stage), 128 x 64-deep (32 KiB) and 64 x
# 64-deep (24 KiB) tiles with 4, 4 and 3 stages in the list.
@pytest.mark.parametrize("props,kept", [
    ((58, (8, 9), 101_376), [(128, 64, 2), (64, 64, 3)]),   # 72 KiB budget
    ((108, (8, 0), 166_912), [(64, 128, 2), (128, 64, 4), (64, 64, 3)]),         # 136 KiB
    ((132, (9, 0), 232_448), [(64, 128, 4), (128, 64, 4), (64, 64, 3)])])        # 200 KiB
def test_launch_prunes_against_the_device_limit(monkeypatch, props, kept):
    monkeypatch.setattr(tuning, "_cuda_props", lambda index: props)
    device = _FakeCudaTensor.device
    assert tuning.device_arch(device) == (props[1][0] * 10 + props[1][1], props[2])
    assert tuning.has_tma(device) == (props[1][0] >= 9)
    launcher = shrink_xa._LAUNCH[False]
    fits = launcher.launchable(launcher.configs, {launcher.kernel.arg_names[0]: _FakeCudaTensor()},
                               {"BLOCK_R": 128, "P_DROP": 0.0})
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_K"], c.num_stages) for c in fits] == kept


def test_descriptor_variants_need_sm90(monkeypatch):
    """An sm_89 device takes the pointer kernel under "auto" and refuses a forced descriptor one;
    so does sm_120 (TMA, but 101,376 B: no persistent or warp-specialized config fits). sm_100
    takes the descriptor kernels but not the warp-specialized one (triton 3.6 cannot compile it
    there)."""
    x = torch.empty(64, 64, dtype=torch.bfloat16)           # descriptor-legal strides
    assert tuning.tma_legal(x)
    for arch_props, auto in (((58, (8, 9), 101_376), "pointer"), ((132, (9, 0), 232_448), "tma_ws"),
                             ((148, (10, 0), 232_448), "tma"), ((84, (12, 0), 101_376), "pointer")):
        monkeypatch.setattr(tuning, "_cuda_props", lambda index, p=arch_props: p)
        assert tuning.choose_variant("auto", _FakeCudaTensor.device, (x, x, x), ws_ok=True) == auto
    monkeypatch.setattr(tuning, "_cuda_props", lambda index: (58, (8, 9), 101_376))
    with pytest.raises(ValueError, match="sm_90"):
        tuning.choose_variant("tma_ws", _FakeCudaTensor.device, (x, x, x), ws_ok=True)
    monkeypatch.setattr(tuning, "_cuda_props", lambda index: (148, (10, 0), 232_448))
    assert tuning.choose_variant("tma", _FakeCudaTensor.device, (x, x, x), ws_ok=True) == "tma"
    with pytest.raises(ValueError, match="sm_90 only"):
        tuning.choose_variant("tma_ws", _FakeCudaTensor.device, (x, x, x), ws_ok=True)


@pytest.mark.parametrize("arch", ["sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"])
def test_every_launch_has_a_config_on_every_architecture(arch):
    """No (kernel, variant, dtype, bucket, flags) a launcher can meet there is left without a
    config by the shared-memory budget and the spill rules (it would raise at launch)."""
    from litelora_fast.kernels import compile_report

    assert compile_report.uncovered(arch) == []
    variants = {s.variant for s in compile_report.specs("buckets", arch)}
    assert ("tma" in variants) == (arch in ("sm_90", "sm_100"))
    assert ("tma_ws" in variants) == (arch == "sm_90")


def test_a_small_gpu_takes_the_fallback_configs():
    """Exact fp32 shrink at BLOCK_R = 64 on sm_89: the list's 64 x 64-deep tile (32 KiB a stage)
    fits the 72 KiB budget only with 2 stages, where the sm_89 compile spills, so the 32-deep
    fallback runs (3 stages); sm_90 keeps the list's config."""
    launcher = shrink_xa._LAUNCH[True]
    consts = {"BLOCK_R": 64, "P_DROP": 0.0, "DOT_PRECISION": "ieee"}
    assert [c.kwargs["BLOCK_K"] for c in launcher.fit(launcher.configs, 4, consts, 90)] == [64]
    kept = launcher.fit(launcher.configs, 4, consts, 89)
    assert [(c.kwargs["BLOCK_K"], c.num_stages) for c in kept] == [(32, 3)]
    # An explicit list (a sweep config, config=) never falls back.
    assert launcher.fit(list(launcher.configs), 4, consts, 89) == []
