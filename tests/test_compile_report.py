"""Every shipped kernel config compiles ahead of time for the H200 (sm_90) without a GPU, and its
SASS passes the static checks: wgmma tensor-core instructions (HGMMA), no register spills, and
shared memory within the 227 KiB a Hopper block may use.
"""
import importlib
import inspect

import pytest

from litelora_fast.kernels import inspect as kinspect

H200_SHARED_LIMIT = 227 * 1024


@pytest.fixture(scope="module")
def rows():
    # The test session runs with TRITON_INTERPRET=1, so this also covers compile_report's
    # fresh-process path (the interpreter's patched triton.language cannot compile in-process).
    return kinspect.compile_report("sm_90")


def _shipped_kernels(module_name):
    module = importlib.import_module(module_name)
    return {s.name if not isinstance(s, dict) else s["name"] for s in module.AOT_SPECS}


# A pure reduction has no tile product to put on the tensor cores: the fixed-order sum of
# matmul_tn's split-N partials. Every other kernel must lower its matmuls to wgmma.
NO_MATMUL = {"matmul_tn_sum_partials"}


def _kernels_with_tile_products():
    names = {spec.name for spec in kinspect.collect_specs()} - NO_MATMUL
    for spec in kinspect.collect_specs():
        if spec.name in NO_MATMUL:
            fn = getattr(spec.fn, "fn", spec.fn)  # JITFunction / InterpretedFunction -> python fn
            assert "dot" not in inspect.getsource(fn), f"{spec.name} multiplies tiles now"
    return names


def test_every_config_uses_hgmma_without_spills_within_shared_memory(rows):
    assert rows
    needs_hgmma = _kernels_with_tile_products()
    assert {"shrink", "fused_forward", "grad_shrink", "fused_dx", "matmul_tn"} <= needs_hgmma
    bad = [r for r in rows if not ((r["hgmma"] or r["kernel"] not in needs_hgmma)
                                   and r["spill_bytes"] == 0
                                   and 0 <= r["shared_bytes"] <= H200_SHARED_LIMIT)]
    assert not bad, "configs failing the sm_90 checks:\n" + kinspect.format_report(bad)


def test_report_covers_every_shipped_kernel(rows):
    from litelora_fast.kernels import forward

    reported = {r["kernel"] for r in rows}
    assert {"shrink", "fused_forward"} <= reported
    assert len(rows) >= len(forward.AOT_SPECS)
    try:
        expected = _shipped_kernels("litelora_fast.kernels.backward")
    except ModuleNotFoundError:
        expected = set()
    assert expected <= reported


def test_report_rows_have_the_documented_keys(rows):
    for r in rows:
        assert set(r) == {"kernel", "config", "registers", "spill_bytes", "shared_bytes", "hgmma"}
        assert isinstance(r["hgmma"], bool) and r["registers"] > 0
    table = kinspect.format_report(rows).splitlines()
    assert table[0].split() == ["kernel", "config", "registers", "spill_bytes", "shared_bytes",
                                "hgmma"]
    assert len(table) == len(rows) + 2


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="arch"):
        kinspect.compile_report("gfx942")
