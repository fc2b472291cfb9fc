"""The launch helpers of ``kernels.tuning``: shared-memory fitting, the untuned first-fit launch,
tile widths and output-buffer checks. Pure Python: no kernel runs here."""
import pytest
import torch
import triton

from litelora_fast.kernels import tuning


def cfg(bm, bk, warps=4, stages=4):
    return triton.Config({"BLOCK_M": bm, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


def per_stage(elem_bytes):
    return lambda c: (c.kwargs["BLOCK_M"] + 128) * c.kwargs["BLOCK_K"] * elem_bytes


def test_fit_stages_keeps_fitting_configs_unchanged():
    kept = tuning.fit_stages([cfg(64, 64, stages=4)], per_stage(2))   # 4 x 24 KiB
    assert [(c.kwargs, c.num_warps, c.num_stages) for c in kept] == \
        [({"BLOCK_M": 64, "BLOCK_K": 64}, 4, 4)]


def test_fit_stages_lowers_stages_then_drops():
    # 128 x 256 tiles: 256 KiB per fp32 stage -> 2 stages exceed the budget: dropped.
    # 128 x 64 tiles: 64 KiB per fp32 stage -> 5 stages lowered to 3.
    kept = tuning.fit_stages([cfg(128, 256, stages=3), cfg(128, 64, stages=5)], per_stage(4))
    assert [(c.kwargs["BLOCK_K"], c.num_stages) for c in kept] == [(64, 3)]
    assert all(c.num_stages * per_stage(4)(c) <= tuning.SMEM_BUDGET for c in kept)


def test_fit_stages_removes_configs_that_become_equal():
    kept = tuning.fit_stages([cfg(128, 64, stages=5), cfg(128, 64, stages=4)], per_stage(4))
    assert len(kept) == 1 and kept[0].num_stages == 3


class _RecordingKernel:
    """Stands in for a JIT kernel: records the grid and keyword arguments of each launch."""

    arg_names = ["x_ptr", "n"]
    __name__ = "recording_kernel"

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


def smem(c, elem, consts):
    return (c.kwargs["BLOCK_M"] + 128) * c.kwargs["BLOCK_K"] * elem, 0


def test_first_fit_launches_the_first_config_that_fits(monkeypatch):
    monkeypatch.setattr(tuning, "INTERPRET", False)     # as with LITELORA_AUTOTUNE=0 on a GPU
    kernel = _RecordingKernel()
    configs = [cfg(128, 256, stages=3), cfg(64, 32, warps=8, stages=2)]
    launcher = tuning.Launcher("recording", kernel, configs, cfg(16, 16), ["n"], smem)
    launcher[lambda meta: (triton.cdiv(meta["n"], meta["BLOCK_M"]),)](torch.empty(1), 300, FLAG=True)
    grid, args, kwargs = kernel.launches[0]
    assert grid == (5,)
    assert kwargs == {"FLAG": True, "BLOCK_M": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 2}
    # What the launch picked, per tuning key (the key's values, then the tensors' dtypes).
    record = {"variant": "pointer", "key": [300, "torch.float32"],
              "config": {"BLOCK_M": 64, "BLOCK_K": 32}, "num_warps": 8, "num_stages": 2}
    assert launcher.chosen() == [record]
    assert record in tuning.chosen_configs()["recording"]
    tuning._LAUNCHERS.remove(launcher)
    with pytest.raises(ValueError, match="no launch config fits"):
        tuning.Launcher("big", kernel, configs[:1], cfg(16, 16), [], smem)[(1,)](torch.empty(1), 3)


def test_explicit_config_launches_as_given_or_raises(monkeypatch):
    kernel = _RecordingKernel()
    launcher = tuning.Launcher("explicit", kernel, [cfg(64, 32)], cfg(16, 16), [], smem)
    tuning._LAUNCHERS.remove(launcher)
    launcher.with_config(cfg(32, 64, warps=8, stages=3))[(2,)](torch.empty(1), 7)
    assert kernel.launches[0][2] == {"BLOCK_M": 32, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}
    # 128 x 256 fp32 tiles: 2 stages of 256 KiB do not fit; never launched with fewer stages.
    with pytest.raises(ValueError, match="does not fit shared memory"):
        launcher.with_config(cfg(128, 256, stages=2))[(1,)](torch.empty(1), 7)


@pytest.mark.parametrize("r,cap,expected", [(1, 64, 16), (16, 64, 16), (17, 64, 32), (70, 64, 64),
                                            (100, 128, 128), (0, 64, 16)])
def test_block_r(r, cap, expected):
    assert tuning.block_r(r, cap) == expected


def test_dot_precision_is_exact_on_the_cpu():
    assert tuning.dot_precision(torch.empty(1)) == "ieee"


def test_check_out_allocates_or_validates():
    fresh = tuning.check_out(None, "y", (3, 4), torch.float16, torch.device("cpu"))
    assert fresh.shape == (3, 4) and fresh.dtype == torch.float16 and fresh.is_contiguous()
    given = torch.empty(3, 4)
    assert tuning.check_out(given, "y", (3, 4), torch.float32, torch.device("cpu")) is given
    with pytest.raises(ValueError, match=r"y: expected a \(3, 4\)"):
        tuning.check_out(torch.empty(4, 3), "y", (3, 4), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="float16"):
        tuning.check_out(given, "y", (3, 4), torch.float16, torch.device("cpu"))


def test_fit_stages_keeps_pre_hooks_and_counts_fixed_smem():
    hook = lambda nargs: None   # noqa: E731
    c = triton.Config({"BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=5, pre_hook=hook)
    # 32 KiB per bf16 stage; a 64 KiB output tile leaves 136 KiB of the 200 KiB budget: 4 stages.
    kept = tuning.fit_stages([c], per_stage(2), lambda c: 64 * 1024)
    assert kept[0].pre_hook is hook and kept[0].num_stages == 4


def test_launch_runs_the_config_pre_hook_before_the_launch():
    kernel, seen = _RecordingKernel(), []
    c = triton.Config({"BLOCK_M": 32, "BLOCK_K": 16}, num_warps=4, num_stages=1,
                      pre_hook=lambda nargs: seen.append((nargs["BLOCK_M"], nargs["n"])))
    launcher = tuning.Launcher("hooked", kernel, [], c, [], smem)    # the interpreter's config
    tuning._LAUNCHERS.remove(launcher)
    launcher[(1,)](torch.empty(1), 7)
    assert seen == [(32, 7)] and len(kernel.launches) == 1


def test_tma_legal_and_padded_columns():
    assert tuning.tma_legal(torch.empty(5, 8, dtype=torch.float16))          # 16-byte rows
    assert not tuning.tma_legal(torch.empty(5, 7, dtype=torch.float16))      # 14-byte rows
    assert not tuning.tma_legal(torch.empty(8, 5).t())                       # unit stride on rows
    assert not tuning.tma_legal(torch.empty(5, 9)[:, 1:])                    # base off by 4 bytes
    assert not tuning.tma_legal(torch.empty(5, 8, dtype=torch.float64))
    view = tuning.padded_columns(5, 7, torch.float16, torch.device("cpu"))
    assert view.shape == (5, 7) and view.stride() == (16, 1) and tuning.tma_legal(view)
    assert tuning.tma_operand(view) is view
    copy = tuning.tma_operand(torch.arange(35.0).reshape(5, 7))
    assert tuning.tma_legal(copy) and torch.equal(copy, torch.arange(35.0).reshape(5, 7))


def test_choose_variant(monkeypatch):
    monkeypatch.delenv(tuning.VARIANT_ENV, raising=False)
    cpu = torch.device("cpu")
    legal, strided_ = [torch.empty(4, 8)], [torch.empty(8, 4).t()]
    # Untimed "auto" (interpreter): warp-specialized for one tile; no descriptors on a CPU run.
    expected_auto = "tma_ws" if tuning.INTERPRET else "pointer"
    assert tuning.choose_variant(None, cpu, legal, True) == expected_auto
    assert tuning.choose_variant(None, cpu, strided_, True) == "pointer"
    assert tuning.choose_variant("pointer", cpu, legal, True) == "pointer"
    monkeypatch.setenv(tuning.VARIANT_ENV, "pointer")
    assert tuning.choose_variant(None, cpu, legal, True) == "pointer"
    with pytest.raises(ValueError, match="variant"):
        tuning.choose_variant("persistent", cpu, legal, True)
    monkeypatch.delenv(tuning.VARIANT_ENV)
    # Exact fp32 on a GPU (torch's TF32 off) takes the pointer kernel: the descriptor kernels'
    # FMA tiles spill. Decided before any device query, so a CPU test can ask with a cuda device.
    cuda = torch.device("cuda")
    assert tuning.choose_variant(None, cuda, legal, True, "ieee") == "pointer"
    with pytest.raises(ValueError, match="exact fp32"):
        tuning.choose_variant("tma", cuda, legal, True, "ieee")
    half = [torch.empty(4, 8, dtype=torch.float16)]
    assert tuning.choose_variant(None, cpu, half, True, "ieee") == expected_auto


@pytest.mark.parametrize("tiles,ws_ok,expected", [(5, True, "tma_persistent"),
                                                  (4, True, "tma_ws"), (4, False, "tma")])
def test_untuned_variant(tiles, ws_ok, expected):
    assert tuning.untuned_variant(tiles, 4, ws_ok) == expected
