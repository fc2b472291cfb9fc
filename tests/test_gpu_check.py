"""``benchmarks/gpu_check.sh``: the estimate fits 6 minutes and follows the real lists, the
numerics plan covers every kernel, variant and dtype, and a dry run without a GPU skips cleanly.

No GPU is needed: the estimate prices the lists the GPU scripts run (``benchmarks/gpu_plan.py``)
against the kernels' config lists (``litelora_fast.kernels.config_lists``).
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import gpu_estimate  # noqa: E402
import gpu_plan  # noqa: E402


def _script(*args, env=None, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", os.path.join(BENCH, "gpu_check.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_estimate_fits_six_minutes():
    out = _script("--estimate")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    last = lines[-1]
    assert last.startswith("estimated total: ") and last.endswith(" s"), last
    total = int(last.split()[2])
    assert 0 < total <= 360, out.stdout
    for step in ("[numerics]", "[steady]", "[benchmark]", "[report]", "[roofline]"):
        assert any(line.startswith(step) for line in lines), step
    # every step's limit, plus the setup, fits the script's 6 minutes
    assert sum(gpu_plan.LIMITS.values()) + gpu_estimate.SETUP_S <= 360


def test_estimate_follows_the_kernels_config_lists(monkeypatch):
    real = gpu_estimate.kernel_configs()
    base, _ = gpu_estimate.estimate()
    # one more config in every list: the numerics step compiles the first config only, the
    # benchmark autotunes over whole lists, so the estimate must grow by the benchmark's share
    doubled = {k: list(v) + list(v[:1]) for k, v in real.items()}
    for k, v in doubled.items():   # distinct configs: a copy with another stage count
        import triton
        c = v[-1]
        v[-1] = triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages + 1)
    monkeypatch.setattr(gpu_estimate, "kernel_configs", lambda: doubled)
    more, lines = gpu_estimate.estimate()
    assert more > base, (base, more)
    # and an unknown kernel name in a launch fails loudly rather than pricing nothing
    pricer = gpu_estimate.Pricer({("shrink", "pointer"): real[("shrink", "pointer")]})
    with pytest.raises(KeyError, match="update benchmarks/gpu_estimate.py"):
        pricer.candidates("fused_forward", "tma", "bfloat16", autotune=False)


def test_numerics_plan_covers_every_kernel_variant_and_dtype():
    registry = gpu_estimate.kernel_configs()
    launched = {}
    for run in gpu_plan.numerics_runs():
        for kernel, variant, _, _ in gpu_estimate.launches(
                run.case, run.dtype, run.variant, run.gates == "train", run.case.strided_x,
                run.dropout, run.tf32):
            launched.setdefault(run.dtype, set()).add((kernel, variant))
    kernels = {k for k, _ in registry}
    assert not gpu_plan.ws_runs_dx("float32") and gpu_plan.ws_runs_dx("bfloat16")
    for dtype in gpu_plan.DTYPES:
        assert {k for k, _ in launched[dtype]} == kernels, dtype
        for kernel in ("fused_forward", "fused_dx"):
            for variant in ("pointer",) + gpu_plan.TMA_VARIANTS:
                shipped = (kernel, variant) != ("fused_dx", "tma_ws") or gpu_plan.ws_runs_dx(dtype)
                assert ((kernel, variant) in launched[dtype]) == shipped, (dtype, kernel, variant)
        # gates trainable and frozen with a zero gate (the skipping path) in every dtype
        runs = [r for r in gpu_plan.numerics_runs() if r.dtype == dtype]
        assert {"train", "frozen"} <= {r.gates for r in runs}
        assert any(r.case.per_row for r in runs)
    bf16 = [r.case for r in gpu_plan.numerics_runs() if r.dtype == "bfloat16"]
    assert any(not c.bias for c in bf16) and any(c.strided_x for c in bf16)
    assert any(c.lead == (1,) for c in bf16) and any(0 in c.ranks for c in bf16)


def test_dry_run_without_a_gpu_skips_cleanly(tmp_path):
    out = _script(env={"OUT": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "numerics, steady: skipped (no CUDA device)" in summary
    assert "runs x 2 seeds" in summary                 # gpu_numerics --list ran
    assert "gpu_steady imports" in summary
    assert "benchmark: skipped (no CUDA device)" in summary
    assert "18 tests collected" in summary or "18/" in summary   # 6 headline cases x 3 modes
    assert "== roofline: rc=0" in summary
    files = sorted(os.listdir(tmp_path))
    assert files == ["roofline.md", "summary.txt"] and len(files) <= 8
    assert "predictions, not measurements" in (tmp_path / "roofline.md").read_text()


@pytest.mark.parametrize("name,dropout", [("N1-K1", 0.0), ("zero-gates-perrow-nobias", 0.0),
                                          ("N37-K3-ragged", 0.3)])
def test_numerics_check_runs_the_kernels_under_the_interpreter(interpreter, name, dropout, seed):
    # gpu_numerics.check on the CPU: the interpreter runs the same kernels in fp32, so the GPU
    # script's own logic (oracle, gate-gradient scale, error names) is exercised here.
    import gpu_numerics
    from litelora_fast.kernels import LAUNCH_COUNTS
    from numerics import TOL

    import torch
    case = gpu_plan.CASES[name]
    before = LAUNCH_COUNTS["fused_forward"]
    masked = LAUNCH_COUNTS["masked_addmm"]
    errs = gpu_numerics.check(gpu_plan.Run(name, case, "float32", "pointer", "train",
                                           dropout=dropout), seed, device="cpu")
    assert LAUNCH_COUNTS["fused_forward"] > before
    assert (LAUNCH_COUNTS["masked_addmm"] > masked) == (dropout > 0)
    assert set(errs) == {"y", "dx", "dweight", "dlora_A", "dlora_B", "dgates"} | (
        {"dbias"} if case.bias else set())
    assert all(0 <= e < TOL[torch.float32] for e in errs.values()), errs
