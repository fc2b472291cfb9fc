"""Every launchable kernel config compiles ahead of time for the H200 (sm_90) without a GPU, and
its SASS passes the static checks: wgmma tensor-core instructions (HGMMA) for every tile product,
TMA loads (UTMALDG) for every descriptor kernel, register re-balancing (SETMAXREG) for every
warp-specialized one, a grid-strided tile loop exactly in the persistent ones, no register spills
anywhere (fp32 included), and shared memory within the 232,448 B a Hopper block may use.

The test compiles the "buckets" subset: for every kernel, variant, dtype and compile-time bucket a
launcher can pick (BLOCK_R / BLOCK_N widths), the config it would take first, with the heaviest
flags (dropout, gates). ``python -m litelora_fast inspect`` compiles all of them, every config of
every list and the SWEEP_CONFIGS, for any architecture (benchmarks/results/compile_report.md has
its totals for sm_80, sm_89, sm_90 and sm_100; docs/kernels.md its cost).
"""
import inspect

import pytest

from litelora_fast.kernels import compile_report, compile_spec, tuning

NO_MATMUL = compile_report.NO_MATMUL
KERNELS = {"shrink", "fused_forward", "grad_shrink", "fused_dx", "matmul_tn", "lora_weight_grads",
           "matmul_tn_sum_partials", "masked_addmm", "dropout_mask"}


@pytest.fixture(scope="module")
def rows():
    # The test session runs with TRITON_INTERPRET=1, so this also covers compile_report's
    # fresh-process path (the interpreter's patched triton.language cannot compile in-process).
    return compile_report.compile_report("sm_90", subset="buckets")


def test_no_matmul_kernel_multiplies_tiles():
    for spec in compile_report.specs("all"):
        if spec.name in NO_MATMUL:
            fn = getattr(spec.fn, "fn", spec.fn)  # JITFunction / InterpretedFunction -> python fn
            assert "dot" not in inspect.getsource(fn), f"{spec.name} multiplies tiles now"


def test_every_config_passes_the_sm90_checks(rows):
    bad = compile_report.failing_rows(rows)
    assert not bad, "configs failing the sm_90 checks:\n" + compile_report.format_report(bad)


def test_the_checks_catch_each_failure(rows):
    good = next(r for r in rows if r["variant"] == "tma_ws")
    for broken in ({"spill_bytes": 8}, {"mma": ""}, {"mma": "HMMA"}, {"tma": False},
                   {"warp_specialized": False}, {"persistent": True}, {"registers": 256},
                   {"error": "RuntimeError: PassManager::run failed"},
                   {"shared_bytes": tuning.SMEM_LIMIT + 1}):
        assert compile_report.failing_rows([{**good, **broken}]), broken
    # Each architecture's own instruction and limit: HMMA and 101,376 B on sm_89.
    ada = {**good, "variant": "pointer", "tma": False, "warp_specialized": False, "arch": "sm_89",
           "mma": "HMMA", "shared_bytes": 101_376}
    assert not compile_report.failing_rows([ada])
    for broken in ({"mma": "HGMMA"}, {"shared_bytes": 101_377}):
        assert compile_report.failing_rows([{**ada, **broken}]), broken
    pointer = next(r for r in rows if r["variant"] == "pointer" and r["kernel"] == "fused_dx")
    assert compile_report.failing_rows([{**pointer, "tma": True}])


def test_report_covers_every_launchable_bucket(rows):
    assert {r["kernel"] for r in rows} == KERNELS
    seen = {(r["kernel"], r["variant"], r["dtype"]) for r in rows}
    for kernel in ("fused_forward", "fused_dx"):
        for variant in tuning.VARIANTS:
            for dtype in ("bf16", "fp16", "fp32"):
                if (kernel, variant, dtype) == ("fused_dx", "tma_ws", "fp32"):
                    continue   # never launched: ws_fits
                assert (kernel, variant, dtype) in seen
    for kernel in ("shrink", "fused_forward", "grad_shrink", "fused_dx", "lora_weight_grads"):
        assert {(kernel, "pointer", d) for d in compile_spec.ALL_DTYPES} <= seen
    # Exact fp32 never takes a descriptor kernel (tuning.choose_variant): none is compiled.
    assert all(r["variant"] in ("pointer", "wide", "narrow") for r in rows if r["dtype"] == "fp32-ieee")
    # Every bucket a launcher picks: the shrink's BLOCK_R 16..128 (16-bit), 16..64 (fp32), the
    # warp-specialized adapter tile 16..64, the weight gradients' narrow side 16..64.
    buckets = {(r["kernel"], r["variant"], r["dtype"], r["config"].split(" BLOCK_")[-1].split()[0])
               for r in rows if " BLOCK_" in r["config"]}
    for w in (16, 32, 64, 128):
        assert ("shrink", "pointer", "bf16", f"R={w}") in buckets
        assert ("grad_shrink", "pointer", "fp32-ieee", f"R={w}") in buckets
    for w in (16, 32, 64):
        assert ("shrink", "pointer", "fp32-ieee", f"R={w}") in buckets
        assert ("fused_forward", "tma_ws", "fp32", f"R={w}") in buckets
        assert ("fused_dx", "tma_ws", "fp16", f"R={w}") in buckets
        assert ("lora_weight_grads", "pointer", "fp32-ieee", f"N={w}") in buckets
    assert len(rows) == len(compile_report.specs("buckets"))


def test_spec_list_is_generated_from_every_config_list():
    """Every config list the launchers tune over has compile specs, each config at least once."""
    specs = compile_report.specs("all")
    lists = compile_report.config_lists()
    assert ("fused_forward", "tma_ws") in lists and ("fused_dx", "tma_persistent/fp32") in lists
    labels = {(s.name, s.variant, s.config.split(" ")[0]) for s in specs}
    for (kernel, variant), configs in lists.items():
        assert configs, (kernel, variant)
        for c in configs:
            dims = compile_spec.tuning_label(c).split(" ")[0]
            assert (kernel, variant.split("/")[0], dims) in labels, (kernel, variant, dims)
    assert sum(s.sweep for s in specs) >= 2 * 4, "the fused GEMMs' SWEEP_CONFIGS are compiled"


def test_prune_model_matches_the_sweep_budget():
    """The shared-memory model the prune uses counts the warp-specialized adapter tiles: fp32
    tma_ws at BLOCK_R = 64 (238,976 B with 3 stages in the sm_90 compile) launches 2 stages."""
    from litelora_fast.kernels import fused_xw_sgb

    launcher = fused_xw_sgb._LAUNCH["tma_ws"][True]
    kept = launcher.fit(launcher.configs, 4, {"BLOCK_R": 64})
    assert [c.num_stages for c in kept] == [2]
    assert [c.num_stages for c in launcher.fit(launcher.configs, 4, {"BLOCK_R": 16})] == [3]


def test_report_rows_have_the_documented_keys(rows):
    for r in rows:
        assert list(r) == compile_report.COLUMNS
        assert all(isinstance(r[k], bool) for k in ("tma", "warp_specialized", "persistent"))
        assert r["arch"] == "sm_90" and isinstance(r["mma"], str)
        assert r["registers"] > 0
    table = compile_report.format_report(rows).splitlines()
    assert table[0].split() == compile_report.COLUMNS
    assert len(table) == len(rows) + 2
    totals = compile_report.summary(rows)
    assert f"sm_90: {len(rows)} configs of {len(KERNELS)} kernels" in totals
    assert "spills: 0 configs" in totals and "of 232,448 B" in totals


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="arch"):
        compile_report.compile_report("gfx942")
    with pytest.raises(ValueError, match="subset"):
        compile_report.compile_report("sm_90", subset="some")


def test_dropout_mask_sass_instructions_per_element_are_bounded():
    """The keep-mask (one Philox 4x32-10 call per 4 elements, integer threshold) compiled for
    sm_90 in both tile orientations (x for the shrink and dx, x^T for dA): at most
    ``MASK_INSTRUCTIONS_MAX`` SASS instructions per element, its use (one FMUL) and the seed's
    load included: 17.7 measured, ~52 with one Philox call per element as before."""
    cost = compile_report.mask_instructions("sm_90")
    assert set(cost) == {"x", "x^T"}
    for orientation, per_element in cost.items():
        assert 0 < per_element <= compile_report.MASK_INSTRUCTIONS_MAX, (orientation, per_element)


def test_sass_instructions_counts_instructions_not_padding():
    sass = ("        /*0000*/                   MOV R1, c[0x0][0x28] ;\n"
            "        /*0010*/                   IMAD.WIDE.U32 R2, R3, R4, RZ ;\n"
            "        /*0020*/                   NOP;\n"
            "        /*0030*/                   EXIT ;\n")
    assert compile_report.sass_instructions(sass) == 3
