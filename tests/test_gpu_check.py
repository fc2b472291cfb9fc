"""``benchmarks/gpu_check.sh``: the dry run imports the script's copy of the package and reads the
plan's real limits, the estimate fits both calls and follows the real lists, the numerics plan
covers every kernel, variant and dtype, and the GPU scripts' CPU paths run.

No GPU is needed: the estimate prices the lists the GPU scripts run (``benchmarks/gpu_plan.py``)
against the kernels' config lists (``litelora_fast.kernels.config_lists``).
"""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BENCH = os.path.join(ROOT, "benchmarks")
GPU = os.path.join(BENCH, "gpu")   # the GPU check's helper modules
sys.path.insert(0, GPU)

import gpu_estimate  # noqa: E402
import gpu_plan  # noqa: E402
from litelora_fast.tools.bench_cases import gpu_cases  # noqa: E402


def _script(*args, env=None, timeout=900):
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", os.path.join(BENCH, "gpu_check.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _printed(stdout: str) -> tuple:
    """``(package file, kernels file, {step: limit})`` from the dry run's first lines."""
    pkg = re.search(r"^package: (.+)$", stdout, re.M).group(1)
    kernels = re.search(r"^kernels: (.+)$", stdout, re.M).group(1)
    limits = {k: int(v) for k, v in re.findall(r"^limit (\w+): (\d+) s$", stdout, re.M)}
    return pkg, kernels, limits


def _under_copy(path: str) -> bool:
    """A file of the script's copy (a fresh ``llf_pkg.*`` folder), not of the checkout."""
    return (re.search(r"/llf_pkg\.[^/]+/litelora_fast/", path) is not None
            and not os.path.abspath(path).startswith(ROOT + os.sep))


def test_dry_run_imports_the_copy_reads_the_real_limits_and_skips_cleanly(tmp_path):
    out = _script(env={"OUT": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    pkg, kernels, limits = _printed(out.stdout)
    # both files from the copy (the checkout's ./litelora_fast has no kernels/ and must not
    # shadow it, for `python -m` too), and the limits are gpu_plan's, not a fallback
    assert _under_copy(pkg) and pkg.endswith("litelora_fast/__init__.py"), pkg
    assert _under_copy(kernels) and kernels.endswith("litelora_fast/kernels/fused_xw_sgb.py"), kernels
    assert os.path.dirname(os.path.dirname(kernels)) == os.path.dirname(pkg)   # one copy
    assert limits == {**gpu_plan.LIMITS, "total": gpu_plan.TOTAL_LIMITS["check"]}
    summary = (tmp_path / "summary.txt").read_text()
    assert f"package: {pkg}" in summary and f"kernels: {kernels}" in summary
    assert "numerics, steady: skipped (no CUDA device)" in summary
    assert "runs x 2 seeds" in summary                 # gpu_numerics --list ran
    assert "gpu_steady imports" in summary
    assert "benchmark: skipped (no CUDA device)" in summary
    n = len(gpu_cases(gpu_plan.BENCH_GRID)) * 3
    assert f"{n} tests collected" in summary or f"{n}/" in summary   # headline cases x 3 modes
    assert "== roofline (dry run, no limit): rc=0" in summary
    files = sorted(os.listdir(tmp_path))
    assert files == ["roofline.md", "summary.txt"] and len(files) <= 8
    assert "predictions, not measurements" in (tmp_path / "roofline.md").read_text()


def test_tune_dry_run_reads_its_own_limits(tmp_path):
    out = _script("--tune", env={"OUT": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    pkg, kernels, limits = _printed(out.stdout)
    assert _under_copy(pkg) and _under_copy(kernels)
    assert limits == {**gpu_plan.TUNE_LIMITS, "total": gpu_plan.TOTAL_LIMITS["tune"]}
    summary = (tmp_path / "summary.txt").read_text()
    assert "gpu_block: Llama-like block" in summary and "gpu_sweep:" in summary
    assert os.listdir(tmp_path) == ["summary.txt"]


def test_unreadable_limits_stop_the_script_with_a_message(tmp_path):
    # a python that cannot import the plan: the script must stop, not fall back to defaults
    bad = tmp_path / "python"
    bad.write_text("#!/bin/sh\nexit 1\n")
    bad.chmod(0o755)
    out = _script(env={"PYTHON": str(bad), "OUT": str(tmp_path / "out")})
    assert out.returncode == 3
    assert "cannot read the step limits" in out.stderr


def test_limits_fit_each_call():
    for mode in ("check", "tune"):
        assert sum(gpu_plan.limits(mode).values()) + gpu_plan.SETUP_LIMIT_S \
            <= gpu_plan.TOTAL_LIMITS[mode]
    assert gpu_plan.TOTAL_LIMITS == {"check": 300, "tune": 240}
    lines = gpu_plan.shell_limits("check").splitlines()
    assert f"LIMIT_benchmark={gpu_plan.LIMITS['benchmark']}" in lines
    with pytest.raises(ValueError, match="mode must be one of"):
        gpu_plan.limits("both")


def test_estimate_fits_both_calls_and_the_warm_rerun():
    out = _script("--estimate")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    totals = {m: int(t) for m, t in re.findall(r"^estimated total \((\S+)\): (\d+) s", out.stdout,
                                                re.M)}
    assert 0 < totals["check"] <= 300 and 0 < totals["--tune"] <= 240, totals
    warm = int(re.search(r"Triton's cache warm\): (\d+) s", out.stdout).group(1))
    assert 0 < warm <= 150
    for step in ("[setup]", "[numerics]", "[steady]", "[benchmark]", "[report]", "[roofline]",
                 "[block]", "[sweep]"):
        assert any(line.startswith(step) for line in lines), step


def test_estimate_prices_the_real_case_lists():
    _, _, steps = gpu_estimate.estimate("check")
    by_name = {s.name: s for s in steps}
    # the benchmark's items are the cases pytest collects, in its order
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(BENCH, "test_gated_lora.py"), "-k",
         "test_gpu", "--grid", gpu_plan.BENCH_GRID, "-q", "-p", "no:cacheprovider",
         "--collect-only"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": "0"})
    ids = re.findall(r"test_gpu\[(.+)-(?:forward|backward|fwd_bwd)\]", collected.stdout)
    assert ids, collected.stdout + collected.stderr
    in_order = list(dict.fromkeys(ids))
    assert [label for label, _ in by_name["benchmark"].items] == in_order
    assert in_order == [c.id for c in gpu_cases(gpu_plan.BENCH_GRID)]
    # the numerics' items are the plan's, in order
    plan = gpu_plan.numerics_part("check")
    assert len(by_name["numerics"].items) == len(plan)
    assert [label for label, _ in by_name["numerics"].items if "/" in label] == [
        r.label for r in plan if not isinstance(r, str)]
    assert gpu_estimate.numerics_costs("check") == [s for _, s in by_name["numerics"].items]
    assert set(gpu_estimate.bench_costs()) == set(in_order)
    # the rows a short budget drops are not the 4096x14336 ones nor the K = 1 dropout rows
    dropped = by_name["benchmark"].dropped()
    assert not [c for c in dropped if "4096x14336" in c], dropped
    assert not [c for c in dropped if "-K1-" in c and c.endswith("-p0.1")], dropped
    # the tune call's numerics are the rest of the plan
    rest = gpu_plan.numerics_part("tune")
    assert len(plan) + len(rest) == len(gpu_plan.numerics_plan())


def test_estimate_counts_every_compile_bucket():
    configs = gpu_estimate.kernel_configs()
    from types import SimpleNamespace as NS

    def compiles(*cases):
        pricer = gpu_estimate.Pricer(configs)
        for c, p in cases:
            pricer.price(gpu_estimate.launches(c, "bfloat16", "auto", False, dropout=p),
                         autotune=True)
        return len(pricer.compiled)

    def case(r):
        return NS(lead=(8192,), d_in=4096, d_out=4096, ranks=[r], zero_gates=(), per_row=False,
                  bias=False, trainable=dict(x=True, lora_A=True, lora_B=True))
    one = compiles((case(16), 0.0))
    assert compiles((case(16), 0.0), (case(64), 0.0)) > one        # BLOCK_R / BLOCK_P bucket
    assert compiles((case(16), 0.0), (case(16), 0.1)) > one        # dropout compiled in
    assert compiles((case(16), 0.1), (case(16), 0.05)) > compiles((case(16), 0.1))   # P_DROP
    assert compiles((case(16), 0.0), (case(16), 0.0)) == one       # the cache is shared
    kernels = {k for k, *_ in gpu_estimate.launches(case(16), "bfloat16", "auto", False,
                                                    dropout=0.1)}
    assert {"shrink", "fused_forward", "grad_shrink", "fused_dx", "masked_addmm",
            "lora_weight_grads", "matmul_tn_sum_partials"} <= kernels


def test_estimate_follows_the_kernels_config_lists(monkeypatch):
    real = gpu_estimate.kernel_configs()
    base, _, base_steps = gpu_estimate.estimate()
    # one more config in every list: the numerics step compiles the first config only, the
    # benchmark autotunes over whole lists, so the estimate must grow by the benchmark's share
    import triton
    doubled = {k: list(v) + list(v[:1]) for k, v in real.items()}
    for k, v in doubled.items():   # distinct configs: a copy with another stage count
        c = v[-1]
        v[-1] = triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages + 1)
    monkeypatch.setattr(gpu_estimate, "kernel_configs", lambda: doubled)
    _, _, steps = gpu_estimate.estimate()
    bench = {s.name: s for s in steps}["benchmark"]
    assert bench.seconds > {s.name: s for s in base_steps}["benchmark"].seconds
    assert base > 0
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
        assert {k for k, _ in launched[dtype]} - gpu_estimate.FIXED_KERNELS == kernels, dtype
        variants = ("pointer",) + (gpu_plan.TMA_VARIANTS if dtype == "bfloat16"
                                   else gpu_plan.OTHER_DTYPE_VARIANTS)
        for kernel in ("fused_forward", "fused_dx"):
            for variant in variants:
                shipped = (kernel, variant) != ("fused_dx", "tma_ws") or gpu_plan.ws_runs_dx(dtype)
                assert ((kernel, variant) in launched[dtype]) == shipped, (dtype, kernel, variant)
    bf16_runs = [r for r in gpu_plan.numerics_runs() if r.dtype == "bfloat16"]
    assert {"train", "frozen"} <= {r.gates for r in bf16_runs}
    assert any(r.case.per_row for r in bf16_runs)
    bf16 = [r.case for r in bf16_runs]
    assert any(not c.bias for c in bf16) and any(c.strided_x for c in bf16)
    assert any(c.lead == (1,) for c in bf16) and any(0 in c.ranks for c in bf16)
    # the first call's part: bf16 on the split-N shape, every variant, dropout, a non-first
    # config (the weight gradients split N there: 20 output tiles < 132 SMs, N // 1024 = 2)
    first = gpu_plan.numerics_part("check")
    assert "non_first_configs" in first
    runs = [r for r in first if not isinstance(r, str)]
    assert {r.variant for r in runs} == {"pointer", *gpu_plan.TMA_VARIANTS}
    assert any(r.dropout for r in runs)
    from litelora_fast.kernels.weight_grad import split_count
    c = gpu_plan.GPU_CASES[gpu_plan.TMA_CASE]
    assert split_count(c.lead[0], c.d_in + c.d_out, sum(c.ranks), 132) > 1
    assert "kernel_tests" in gpu_plan.numerics_part("tune")


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


def test_block_step_runs_on_the_cpu_at_a_tiny_size(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    path = tmp_path / "block.json"
    out = subprocess.run([sys.executable, os.path.join(GPU, "gpu_block.py"), "--tiny", "--json",
                          str(path)], capture_output=True, text=True, cwd=ROOT, timeout=900,
                         env={**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(path.read_text())
    import gpu_block
    assert result["targets"] == list(gpu_plan.BLOCK_TARGETS) and len(result["targets"]) == 7
    p = gpu_block.TINY
    # r (in + out) per projection, the same adapters for ours and PEFT
    h, i, kv = p["hidden"], p["intermediate"], p["hidden"] * p["kv_heads"] // p["heads"]
    dims = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    expected = sum(p["rank"] * (a + b) for a, b in dims)
    for impl in ("ours", "peft"):
        assert result[impl]["trainable_params"] == expected, result[impl]
        assert result[impl]["ms_step_median"] > 0
    assert result["speedup_vs_peft"] > 0
