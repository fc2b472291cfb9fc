"""Shipped kernel configs compile ahead of time for the H200 (sm_90) without a GPU, and their
SASS passes the static checks: wgmma tensor-core instructions (HGMMA) for every tile product, TMA
loads (UTMALDG) for every descriptor config, register re-balancing (SETMAXREG) for every
warp-specialized one, no register spills anywhere (fp32 included), and shared memory within the
227 KiB a Hopper block may use.

The test compiles the representative subset (the first config of every kernel, variant and dtype);
``python -m litelora_fast inspect`` compiles all of them (see the module docstring of
``kernels.compile_report`` for the time each takes).
"""
import inspect

import pytest

from litelora_fast.kernels import aot_specs, compile_report

NO_MATMUL = compile_report.NO_MATMUL
KERNELS = {"shrink", "fused_forward", "grad_shrink", "fused_dx", "matmul_tn", "lora_weight_grads",
           "matmul_tn_sum_partials", "masked_addmm"}


@pytest.fixture(scope="module")
def rows():
    # The test session runs with TRITON_INTERPRET=1, so this also covers compile_report's
    # fresh-process path (the interpreter's patched triton.language cannot compile in-process).
    return compile_report.compile_report("sm_90", subset="representative")


def test_no_matmul_kernel_multiplies_tiles():
    for spec in aot_specs.specs("all"):
        if spec.name in NO_MATMUL:
            fn = getattr(spec.fn, "fn", spec.fn)  # JITFunction / InterpretedFunction -> python fn
            assert "dot" not in inspect.getsource(fn), f"{spec.name} multiplies tiles now"


def test_every_config_passes_the_sm90_checks(rows):
    bad = compile_report.failing_rows(rows)
    assert not bad, "configs failing the sm_90 checks:\n" + compile_report.format_report(bad)


def test_the_checks_catch_each_failure(rows):
    good = next(r for r in rows if r["variant"] == "tma_ws")
    for broken in ({"spill_bytes": 8}, {"hgmma": False}, {"tma": False},
                   {"warp_specialized": False}, {"persistent": True},
                   {"shared_bytes": compile_report.H200_SHARED_LIMIT + 1}):
        assert compile_report.failing_rows([{**good, **broken}]), broken
    pointer = next(r for r in rows if r["variant"] == "pointer" and r["kernel"] == "fused_dx")
    assert compile_report.failing_rows([{**pointer, "tma": True}])


def test_report_covers_every_kernel_variant_and_dtype(rows):
    assert {r["kernel"] for r in rows} == KERNELS
    seen = {(r["kernel"], r["variant"], r["dtype"]) for r in rows}
    for kernel in ("fused_forward", "fused_dx"):
        for variant in ("pointer", "tma", "tma_persistent", "tma_ws"):
            for dtype in ("bf16", "fp16", "fp32"):
                if (kernel, variant, dtype) == ("fused_dx", "tma_ws", "fp32"):
                    continue   # not shipped: fused_tma.ws_fits
                assert (kernel, variant, dtype) in seen
    for kernel in ("shrink", "fused_forward", "grad_shrink", "fused_dx", "matmul_tn",
                   "lora_weight_grads"):
        assert {(kernel, "pointer", d) for d in ("bf16", "fp16", "fp32", "fp32-ieee")} <= seen
    # Exact fp32 never takes a descriptor kernel (tuning.choose_variant): none is shipped.
    assert all(r["variant"] == "pointer" for r in rows if r["dtype"] == "fp32-ieee")
    # The representative subset is one spec per (kernel, variant, dtype) of the full list.
    assert len(rows) == len(seen) == len({(s.name, s.variant, s.dtype) for s in aot_specs.specs()})


def test_full_spec_list_is_generated_from_every_config_list():
    """Every launch config of every list appears in the full AOT list (by its tile label)."""
    specs = aot_specs.specs("all")
    lists = aot_specs.config_lists()
    assert ("fused_forward", "tma_ws") in lists and ("fused_dx", "tma_persistent/fp32") in lists
    labels = {(s.name, s.variant) for s in specs}
    for (kernel, variant), configs in lists.items():
        assert configs, (kernel, variant)
        base = variant.split("/")[0]
        if base in ("pointer", "tma", "tma_persistent", "tma_ws"):
            assert (kernel, base) in labels


def test_report_rows_have_the_documented_keys(rows):
    for r in rows:
        assert list(r) == compile_report.COLUMNS
        assert all(isinstance(r[k], bool) for k in ("hgmma", "tma", "warp_specialized", "persistent"))
        assert r["registers"] > 0
    table = compile_report.format_report(rows).splitlines()
    assert table[0].split() == compile_report.COLUMNS
    assert len(table) == len(rows) + 2


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="arch"):
        compile_report.compile_report("gfx942")
    with pytest.raises(ValueError, match="subset"):
        compile_report.compile_report("sm_90", subset="some")
