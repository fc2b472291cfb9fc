"""bf16 kernels under Triton's interpreter: a patch that makes them run as a GPU runs them.

The interpreter keeps bfloat16 values as their uint16 bit patterns, so its ``tl.dot`` multiplies
the bit patterns as integers (triton issue 11584), and its fp32 -> bf16 cast truncates instead of
rounding to nearest even. ``patched()`` replaces, for the ``with`` block:

- ``create_dot``: bf16 operands widened to fp32 exactly (the bit pattern shifted into the top half
  of an fp32 word) and multiplied and accumulated in fp32, as the tensor cores do;
- the casts between fp32 and bf16: widening exact, narrowing round-to-nearest-even (NaN kept
  NaN), as ``cvt.rn.bf16.f32`` does;
- the interpreted float add, subtract, multiply, divide and fma: they raise ``Bf16Arithmetic``
  on bf16 operands. The kernels must upcast to fp32 before any arithmetic (an interpreted add
  on bit patterns would be silently wrong, and on the GPU a bf16 add rounds at every step).

It also sets ``backends.INTERPRETER_BF16_EXACT``, so bf16 CPU tensors take the kernels instead of
the PyTorch path. ``patched(dot=False)`` leaves the dot and the casts as triton ships them (the
test that shows the patch is what makes the results right).
"""
import contextlib

import numpy as np
import triton.language as tl
from triton.runtime import interpreter

Builder = interpreter.InterpreterBuilder


class Bf16Arithmetic(AssertionError):
    """An interpreted float operation ran on bf16 operands."""


def bf16_to_fp32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> the same values as fp32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def fp32_to_bf16(values: np.ndarray) -> np.ndarray:
    """fp32 values -> bf16 bit patterns (uint16), rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    nan = np.isnan(values)
    out = rounded.astype(np.uint16)
    out[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)    # quiet NaN
    return out


def _is_bf16(handle) -> bool:
    return handle.dtype.scalar == tl.bfloat16


def _dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    if not (_is_bf16(a) or _is_bf16(b)):
        return _ORIGINAL["create_dot"](self, a, b, d, input_precision, max_num_imprecise_acc)
    a32 = bf16_to_fp32(a.data) if _is_bf16(a) else a.data.astype(np.float32)
    b32 = bf16_to_fp32(b.data) if _is_bf16(b) else b.data.astype(np.float32)
    acc = np.matmul(a32, b32, dtype=np.float32) + d.data.astype(np.float32)
    return interpreter.TensorHandle(acc.astype(d.data.dtype), d.dtype.scalar)


def _cast(self, src, dst_type, *rounding):
    src_ty, dst_ty = src.dtype.scalar, dst_type.scalar
    if src_ty == tl.bfloat16 and dst_ty == tl.float32:
        return interpreter.TensorHandle(bf16_to_fp32(src.data), tl.float32)
    if src_ty == tl.float32 and dst_ty == tl.bfloat16:
        return interpreter.TensorHandle(fp32_to_bf16(src.data), tl.bfloat16)
    original = _ORIGINAL["create_fp_to_fp" if rounding else "cast_impl"]
    return original(self, src, dst_type, *rounding)


def _guarded(name):
    def op(self, *operands):
        if any(_is_bf16(h) for h in operands):
            raise Bf16Arithmetic(f"interpreted {name[len('create_'):]} on bf16 operands: upcast "
                                 "to fp32 first")
        return _ORIGINAL[name](self, *operands)
    return op


_GUARDED = ("create_fadd", "create_fsub", "create_fmul", "create_fdiv", "create_fma")
_ORIGINAL = {name: getattr(Builder, name)
             for name in ("create_dot", "cast_impl", "create_fp_to_fp") + _GUARDED}


@contextlib.contextmanager
def patched(dot: bool = True):
    """The patch described in the module docstring, undone on exit (also on an exception)."""
    from litelora_fast.op import backends

    replacements = {name: _guarded(name) for name in _GUARDED}
    if dot:
        replacements.update(create_dot=_dot, cast_impl=_cast, create_fp_to_fp=_cast)
    saved_flag = backends.INTERPRETER_BF16_EXACT
    try:
        for name, fn in replacements.items():
            setattr(Builder, name, fn)
        backends.INTERPRETER_BF16_EXACT = True
        yield
    finally:
        for name in replacements:
            setattr(Builder, name, _ORIGINAL[name])
        backends.INTERPRETER_BF16_EXACT = saved_flag
