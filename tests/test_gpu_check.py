"""``benchmarks/gpu_check.sh``: the dry run imports the script's copy of the package and reads the
plan's real limits, the estimate fits both calls and follows the real lists, the numerics plan
covers every kernel, variant and dtype, and the GPU scripts' CPU paths run.

No GPU is needed: the estimate prices the lists the GPU scripts run (``benchmarks/gpu/gpu_plan.py``)
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
sys.path.insert(0, BENCH)   # harness (the benchmark's per-row check)

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
    out = _script(env={"OUT": str(tmp_path / "out"), "TRITON_CACHE_DIR": str(tmp_path / "tc")})
    assert out.returncode == 0, out.stdout + out.stderr
    pkg, kernels, limits = _printed(out.stdout)
    # both files from the copy (the checkout's ./litelora_fast has no kernels/ and must not
    # shadow it, for `python -m` too), and the limits are gpu_plan's, not a fallback
    assert _under_copy(pkg) and pkg.endswith("litelora_fast/__init__.py"), pkg
    assert _under_copy(kernels) and kernels.endswith("litelora_fast/kernels/fused_xw_sgb.py"), kernels
    assert os.path.dirname(os.path.dirname(kernels)) == os.path.dirname(pkg)   # one copy
    assert limits == {**gpu_plan.LIMITS, "total": gpu_plan.TOTAL_LIMIT_S}
    assert re.search(r"^call: cold ", out.stdout, re.M), out.stdout
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert f"package: {pkg}" in summary and f"kernels: {kernels}" in summary
    assert "numerics, steady: skipped (no CUDA device)" in summary
    assert "runs x 2 seeds" in summary                 # gpu_numerics --list ran
    assert "gpu_steady imports" in summary
    assert "benchmark: skipped (no CUDA device)" in summary
    n = len(gpu_cases(gpu_plan.BENCH_GRID)) * 3
    assert f"{n} tests collected" in summary or f"{n}/" in summary   # headline cases x 3 modes
    assert "== roofline (dry run, no limit): rc=0" in summary
    assert "predictions, not measurements" in summary   # the roofline's table, in the summary
    # the block step and the sweep are in the same call
    assert "gpu_block: Llama-like block" in summary and "gpu_sweep:" in summary
    assert os.listdir(tmp_path / "out") == ["summary.txt"]


def test_rerun_on_the_warm_machine_takes_the_warm_limits(tmp_path):
    env = {"OUT": str(tmp_path / "out"), "TRITON_CACHE_DIR": str(tmp_path / "tc")}
    cold = _script(env=env)
    assert cold.returncode == 0, cold.stdout + cold.stderr
    marker = re.search(r"^call: cold \(rerun marker: (.+)\)$", cold.stdout, re.M).group(1)
    assert marker.startswith(str(tmp_path / "tc") + os.sep)
    assert not os.path.exists(marker)   # a dry run compiles nothing: no marker
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()           # what a call on a GPU leaves when its steps start
    warm = _script(env=env)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert re.search(r"^call: rerun ", warm.stdout, re.M), warm.stdout
    assert _printed(warm.stdout)[2] == {**gpu_plan.WARM_LIMITS, "total": gpu_plan.WARM_LIMIT_S}


def test_unreadable_limits_stop_the_script_with_a_message(tmp_path):
    # a python that cannot import the plan: the script must stop, not fall back to defaults
    bad = tmp_path / "python"
    bad.write_text("#!/bin/sh\nexit 1\n")
    bad.chmod(0o755)
    out = _script(env={"PYTHON": str(bad), "OUT": str(tmp_path / "out")})
    assert out.returncode == 3
    assert "cannot read the step limits" in out.stderr


def test_limits_fit_the_call_and_the_rerun():
    assert gpu_plan.TOTAL_LIMIT_S == 450 and gpu_plan.WARM_LIMIT_S == 200
    assert sum(gpu_plan.LIMITS.values()) + gpu_plan.SETUP_LIMIT_S <= gpu_plan.TOTAL_LIMIT_S
    assert sum(gpu_plan.WARM_LIMITS.values()) + gpu_plan.SETUP_LIMIT_S <= gpu_plan.WARM_LIMIT_S
    # one call runs every step, in this order; the rerun keeps that order
    assert list(gpu_plan.LIMITS) == ["numerics", "steady", "benchmark", "report", "roofline",
                                     "block", "sweep"]
    assert [k for k in gpu_plan.LIMITS if k in gpu_plan.WARM_LIMITS] == list(gpu_plan.WARM_LIMITS)
    lines = gpu_plan.shell_limits().splitlines()
    assert f"LIMIT_benchmark={gpu_plan.LIMITS['benchmark']}" in lines
    assert "STEPS='numerics steady benchmark report roofline block sweep'" in lines
    # every step that starts work item by item gets a deadline of its own before its limit
    for step in ("numerics", "block", "sweep"):
        assert 0 < gpu_plan.DEADLINE_MARGIN_S[step] < gpu_plan.LIMITS[step]
        assert f"MARGIN_{step}={gpu_plan.DEADLINE_MARGIN_S[step]}" in lines
    assert f"LIMIT_total={gpu_plan.WARM_LIMIT_S}" in gpu_plan.shell_limits(warm=True).splitlines()


def test_the_script_gives_each_step_its_deadline_and_json():
    script = open(os.path.join(BENCH, "gpu_check.sh")).read()
    assert "LITELORA_NUMERICS_END=$(step_deadline numerics" in script
    assert '--json "$OUT/numerics.json"' in script
    assert '--json "$OUT/block.json"' in script and '--deadline "$(step_deadline block' in script
    assert "LITELORA_SWEEP_DEADLINE=$(step_deadline sweep" in script
    assert '--json "$OUT/sweep.json"' in script
    assert "--tune" not in script   # one call


def test_estimate_fits_the_call_cold_and_the_warm_rerun():
    out = _script("--estimate")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    totals = {m: int(t) for m, t in re.findall(r"^estimated total \((cold|warm)\): (\d+) s",
                                                out.stdout, re.M)}
    assert 0 < totals["cold"] <= 450 and 0 < totals["warm"] <= 200, totals
    for step in ("[setup]", "[numerics]", "[steady]", "[benchmark]", "[report]", "[roofline]",
                 "[block]", "[sweep]"):
        assert any(line.startswith(step) for line in lines), step
    # what is not reached is named, and the cold call reaches every kernel x variant x dtype
    assert out.stdout.count("not reached: ") == 2
    assert out.stdout.count("coverage (dtype kind x variant, dropout; tier 1) reached: all") == 2
    for warm in (False, True):
        total, _, steps = gpu_estimate.estimate(warm)
        assert total <= gpu_plan.total_limit(warm)
        numerics = {s.name: s for s in steps}["numerics"]
        dropped = set(numerics.dropped())
        assert not gpu_estimate.missing_coverage(gpu_plan.numerics_plan(), dropped)
        assert [s.name for s in steps] == list(gpu_plan.limits(warm))


def test_the_warm_rerun_pays_for_what_the_cold_call_did_not_reach():
    _, _, cold = gpu_estimate.estimate(False)
    _, _, warm = gpu_estimate.estimate(True)
    cold_n, warm_n = ({s.name: s for s in steps}["numerics"] for steps in (cold, warm))
    not_reached = set(cold_n.dropped())
    assert not_reached   # else this test says nothing
    costs = dict(warm_n.items)
    # an item the cold call reached costs its draws only; one it did not still compiles
    assert all(costs[label] < 1.0 for label, _ in cold_n.items if label not in not_reached)
    assert any(costs[label] > 1.0 for label in not_reached)


def test_estimate_prices_the_real_case_lists():
    _, _, steps = gpu_estimate.estimate()
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
    plan = gpu_plan.numerics_plan()
    assert len(by_name["numerics"].items) == len(plan)
    assert [label for (label, _), item in zip(by_name["numerics"].items, plan)
            if not isinstance(item, str)] == [r.label for r in plan if not isinstance(r, str)]
    assert gpu_estimate.numerics_costs() == [s for _, s in by_name["numerics"].items]
    assert set(gpu_estimate.bench_costs()) == set(in_order)
    # the rows a short budget drops are not the 4096x14336 ones nor the K = 1 dropout rows
    dropped = by_name["benchmark"].dropped()
    assert not [c for c in dropped if "4096x14336" in c], dropped
    assert not [c for c in dropped if "-K1-" in c and c.endswith("-p0.1")], dropped
    block = gpu_estimate.block_costs()
    assert set(block) == {"ours", "peft"} and all(v > 0 for v in block.values())


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
    with pytest.raises(KeyError, match="update benchmarks/gpu/gpu_estimate.py"):
        pricer.candidates("fused_forward", "tma", "bfloat16", autotune=False)


def test_numerics_plan_covers_every_kernel_variant_and_dtype():
    registry = gpu_estimate.kernel_configs()
    launched = {}
    for run in gpu_plan.numerics_runs():
        for kernel, variant, _, _ in gpu_estimate.launches(
                run.case, run.dtype, run.variant, run.gates == "train", run.case.strided_x,
                run.dropout, run.tf32):
            launched.setdefault((run.dtype, run.tf32), set()).add((kernel, variant))
    kernels = {k for k, _ in registry}
    assert not gpu_plan.ws_runs_dx("float32") and gpu_plan.ws_runs_dx("bfloat16")
    kinds = {(d, tf32): v for d, tf32, v in gpu_plan.DTYPE_KINDS}
    # bf16, fp16, fp32 with TF32 (every variant the launchers pick on sm_90), exact fp32
    # (the pointer kernel only: kernels.tuning.choose_variant)
    assert kinds == {("bfloat16", False): ("pointer",) + gpu_plan.TMA_VARIANTS,
                     ("float16", False): ("pointer",) + gpu_plan.TMA_VARIANTS,
                     ("float32", True): ("pointer",) + gpu_plan.TMA_VARIANTS,
                     ("float32", False): ("pointer",)}
    for kind, variants in kinds.items():
        assert {k for k, _ in launched[kind]} - gpu_estimate.FIXED_KERNELS == kernels, kind
        for kernel in ("fused_forward", "fused_dx"):
            for variant in ("pointer",) + gpu_plan.TMA_VARIANTS:
                shipped = ((kernel, variant) != ("fused_dx", "tma_ws")
                           or gpu_plan.ws_runs_dx(kind[0]))
                expected = variant in variants and shipped
                assert ((kernel, variant) in launched[kind]) == expected, (kind, kernel, variant)
    bf16_runs = [r for r in gpu_plan.numerics_runs() if r.dtype == "bfloat16"]
    assert {"train", "frozen"} <= {r.gates for r in bf16_runs}
    assert any(r.case.per_row for r in bf16_runs)
    bf16 = [r.case for r in bf16_runs]
    assert any(not c.bias for c in bf16) and any(c.strided_x for c in bf16)
    assert any(c.lead == (1,) for c in bf16) and any(0 in c.ranks for c in bf16)
    from litelora_fast.kernels.weight_grad import split_count
    c = gpu_plan.GPU_CASES[gpu_plan.TMA_CASE]
    assert split_count(c.lead[0], c.d_in + c.d_out, sum(c.ranks), 132) > 1


def test_numerics_run_every_kernel_variant_dtype_once_before_any_second_shape():
    plan = gpu_plan.numerics_plan()
    keys = {gpu_plan.coverage_key(r) for r in plan if not isinstance(r, str)}
    # 4 variants x (bf16, fp16, TF32 fp32) + exact fp32's pointer, and dropout per dtype kind
    assert len(keys) == 3 * 4 + 1 + 4
    seen, first_other = set(), None
    for i, item in enumerate(plan):
        is_first_shape = (not isinstance(item, str) and item.name == gpu_plan.TMA_CASE
                          and item.gates == "train")
        if not is_first_shape and first_other is None:
            first_other = i
        if not isinstance(item, str):
            seen.add(gpu_plan.coverage_key(item))
            if first_other is not None:
                assert gpu_plan.coverage_key(item) in set(
                    gpu_plan.coverage_key(r) for r in plan[:first_other]), item.label
    assert first_other is not None and len(seen) == len(keys)
    assert {gpu_plan.coverage_key(r) for r in plan[:first_other]} == keys
    # the estimate lists the coverage it reaches
    assert len(gpu_estimate.coverage(plan)) == len(keys)
    exact = [r for r in plan if not isinstance(r, str) and r.dtype == "float32"
             and not r.tf32 and not r.dropout]
    assert len(exact) == 1   # exact fp32's pointer kernels run once: dropping it is a gap
    assert gpu_estimate.missing_coverage(plan, {exact[0].label}) == ["float32/exact/pointer"]


def test_a_wrong_row_is_caught_by_the_row_error_not_by_the_whole_tensor():
    import torch
    from numerics import TOL, rel_err, worst_row_rel_err

    import harness
    torch.manual_seed(0)
    ref = torch.randn(8192, 64, dtype=torch.float64)
    out = ref * (1 + 1e-3 * torch.randn_like(ref))
    out[1234] = 0.0                        # one row lost: 1/sqrt(8192) = 0.011 of the whole
    bound = TOL[torch.bfloat16]
    assert rel_err(out, ref) < bound
    assert worst_row_rel_err(out, ref) > 0.99
    assert worst_row_rel_err(ref.clone(), ref) == 0.0
    zero = torch.zeros(3, 4, dtype=torch.float64)          # zero rows: against the mean norm
    assert worst_row_rel_err(zero, zero) == 0.0
    # the benchmark's check takes y and dx (rows per token), not the weight gradients
    outs, refs = [out, ref.clone(), torch.ones(16, 64)], [ref, ref, torch.zeros(16, 64)]
    assert harness.worst_row_err(outs, refs) == worst_row_rel_err(out, ref)


def test_block_step_stops_at_its_deadline_and_writes_json_as_it_goes(tmp_path, monkeypatch):
    import gpu_block
    path = str(tmp_path / "block.json")
    seen = []

    def measure(impl, p, device, dtype):
        # by the second implementation, the first one's result is already on disk
        seen.append(json.loads(open(path).read()) if os.path.exists(path) else None)
        return {"ms_step_median": 2.0 if impl == "ours" else 3.0, "trainable_params": 1,
                "peak_bytes_above_start": None}
    monkeypatch.setattr(gpu_block, "measure", measure)
    result = gpu_block.run(gpu_block.TINY, "cpu", None, path)
    assert seen[0] is None and seen[1]["ours"]["ms_step_median"] == 2.0 and "peft" not in seen[1]
    assert result["speedup_vs_peft"] == 1.5 and json.loads(open(path).read()) == result
    # a deadline already past: nothing starts, and the JSON says what was not reached
    monkeypatch.setattr(gpu_block, "block_costs", lambda: {"ours": 30.0, "peft": 20.0})
    import time
    late = gpu_block.run(gpu_block.TINY, "cpu", None, path, deadline=time.time() + 25)
    assert late["not_reached"] == ["ours"] and "peft" in late and "ours" not in late
    assert json.loads(open(path).read())["not_reached"] == ["ours"]


def test_numerics_json_is_rewritten_whole(tmp_path):
    import gpu_numerics
    path = str(tmp_path / "numerics.json")
    gpu_numerics.write_json(path, {"items": [1]})
    gpu_numerics.write_json(path, {"items": [1, 2]})
    assert json.loads(open(path).read()) == {"items": [1, 2]}
    assert os.listdir(tmp_path) == ["numerics.json"]   # no temporary left behind
    gpu_numerics.write_json(None, {"items": []})         # no --json: nothing written


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
    assert set(errs) == {"y", "y/rows", "dx", "dx/rows", "dweight", "dlora_A", "dlora_B",
                         "dgates"} | ({"dbias"} if case.bias else set())
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
