"""The fused GEMMs' variants as records (``kernels/fused_launch.py``): each variant of each product
is one ``Variant`` whose kernel is named by product and variant (a profile and Triton's cache tell
the forward from the dx GEMM) and carries a ``launch_metadata`` hook with the launch's shape and
FLOPs (Triton tutorial 09); the config tables the benchmarks and docs read are the records'."""
import types

import pytest
import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from litelora_fast.kernels import fused_dyw_dsa, fused_xw_sgb
from litelora_fast.kernels.tuning import VARIANTS

PRODUCTS = {"fused_xw_sgb": fused_xw_sgb, "fused_dyw_dsa": fused_dyw_dsa}


def _hook(kernel):
    # JITFunction keeps it as an attribute; the interpreter's InterpretedFunction in its kwargs.
    return getattr(kernel, "launch_metadata", None) or kernel.kwargs["launch_metadata"]


def _name(kernel):
    return kernel.fn.__name__


@pytest.mark.parametrize("file", PRODUCTS)
def test_each_variant_is_one_record_with_a_kernel_named_by_product(file):
    module = PRODUCTS[file]
    assert tuple(module.VARIANTS) == VARIANTS
    for name, v in module.VARIANTS.items():
        assert _name(v.kernel) == f"{file}_{name}_kernel"
        assert v.compile_spec.kernel is v.kernel and v.compile_spec.variant == name
        assert all(launcher.kernel is v.kernel and launcher.variant == name
                   for launcher in v.launchers.values())
        assert module.CONFIGS[name] is v.configs
        assert module.SWEEP_CONFIGS[name] == list(v.sweep)
        assert (v.blocks is None) == (name == "pointer")
    assert [s.variant for s in module.SPECS] == list(VARIANTS)


def test_the_two_products_share_no_kernel_name():
    names = [_name(v.kernel) for m in PRODUCTS.values() for v in m.VARIANTS.values()]
    assert len(set(names)) == len(names) == 2 * len(VARIANTS)


@pytest.mark.parametrize("file, cols, depth", [("fused_xw_sgb", "D_out", "D_in"),
                                               ("fused_dyw_dsa", "D_in", "D_out")])
@pytest.mark.parametrize("dtype, bits", [(torch.bfloat16, 16), (torch.float32, 32)])
def test_launch_metadata_names_the_shape_and_counts_the_flops(file, cols, depth, dtype, bits):
    N, width, base, r_act = 48, 40, 32, 16
    first = torch.zeros(N, base, dtype=dtype)
    module = PRODUCTS[file]
    for name, v in module.VARIANTS.items():
        hook = _hook(v.kernel)
        assert hook is module.launch_metadata
        operand = first if name == "pointer" else TensorDescriptor.from_tensor(first, [16, 16])
        args = {v.kernel.arg_names[0]: operand, "N": N, cols: width, depth: base, "R_act": r_act}
        meta = hook((1, 1, 1), types.SimpleNamespace(name=_name(v.kernel)), args)
        assert meta["name"] == (f"{file}_{name}_kernel [N={N}, {cols}={width}, {depth}={base}, "
                                f"R_act={r_act}]")
        assert meta[f"flops{bits}"] == 2.0 * N * width * (base + r_act)
        elem = bits // 8
        assert meta["bytes"] == elem * (N * (base + r_act) + width * (base + r_act) + N * width)
