"""Argument checking for the public op: every argument is checked once, here, and normalised into a
``Problem`` that the planner, the backends and the reference consume; ``validate_call`` adds the
op's options (autocast, ``trainable_adapters``, ``nonzero_gates``, ``dropout``, ``backend``) and
returns the ``Call`` that ``ops.gated_lora_linear`` hands on.

Errors are ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape, rank table or
device) and always name the argument and the shapes involved, so that a user never meets a
Triton crash or a silent broadcast.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterator, Mapping, Sequence as SequenceABC, Set
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .lora_dropout import check_p

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

RankOffsets = Union[None, torch.Tensor, Sequence[int]]
Scaling = Union[None, float, int, torch.Tensor, Sequence[float]]


@dataclass
class Problem:
    """One call of the op, flattened to rows.

    ``gates2d`` is ``(N, K)``: per-row gates reshaped, or per-adapter gates ``(K,)`` expanded with
    row stride 0 (autograd sums the expansion's gradient over rows for free).
    """

    x2d: torch.Tensor
    lead_shape: tuple
    weight: Optional[torch.Tensor]    # None: the LoRA-only op (no base term)
    bias: Optional[torch.Tensor]
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    gates: torch.Tensor
    gates2d: torch.Tensor
    per_row_gates: bool
    rank_offsets: list
    scaling: list

    @property
    def num_rows(self) -> int:
        return self.x2d.shape[0]

    @property
    def num_adapters(self) -> int:
        return len(self.scaling)

    @property
    def ranks(self) -> list:
        o = self.rank_offsets
        return [o[k + 1] - o[k] for k in range(len(o) - 1)]


def _shape(t) -> str:
    return "None" if t is None else str(tuple(t.shape))


def _check_tensor(name: str, t, ndim: Optional[int] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {_shape(t)}")


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), "
                        f"got {t.dtype}")


def as_list(value, name: str, expected: str = "a list or tuple", ordered: bool = True) -> list:
    """``value`` as a list, for every list-like argument of the op, the module and ``inject``.

    Accepted: lists, tuples, ranges, numpy arrays and 1-D tensors (``len`` and a fixed order),
    and sets when ``ordered`` is False (names, where order means nothing). Refused with a
    ``TypeError`` naming ``name``: strings, mappings (iterating a dict gives its keys: a
    ``{0: 5.0}`` scaling would silently be ``[0]``), sets where entries are per adapter (no
    order), and iterators and generators (consumed by the first pass, unsized).
    """
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        return value.tolist()
    ok = (isinstance(value, SequenceABC) or (hasattr(value, "__array__")
                                             and getattr(value, "ndim", 0) == 1)
          or (not ordered and isinstance(value, Set)))
    if (not ok or isinstance(value, (str, bytes, bytearray, Mapping, Iterator))):
        kind = ("a mapping" if isinstance(value, Mapping) else
                "a set (no order)" if isinstance(value, Set) else
                "an iterator or generator" if isinstance(value, Iterator) else
                type(value).__name__)
        raise TypeError(f"{name} must be {expected}, got {kind} {_brief(value)}")
    return list(value)


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def normalize_rank_offsets(rank_offsets: RankOffsets, num_adapters: int, total_rank: int) -> list:
    """Return the rank table as a list of ``K+1`` ints, checked against ``R`` and ``K``."""
    K, R = num_adapters, total_rank
    if rank_offsets is None:
        if K == 0:
            if R != 0:
                raise ValueError(f"gates has K = 0 adapters but lora_A has R = {R} rank rows")
            return [0]
        if R % K != 0:
            raise ValueError(f"rank_offsets is None, so every adapter must have rank R // K, but "
                             f"R = {R} (lora_A rows) is not divisible by K = {K} (gates.shape[-1]); "
                             f"pass rank_offsets for ragged ranks")
        r = R // K
        return [k * r for k in range(K + 1)]
    if isinstance(rank_offsets, torch.Tensor):
        if rank_offsets.dim() != 1 or rank_offsets.dtype.is_floating_point or rank_offsets.is_complex():
            raise TypeError(f"rank_offsets must be a 1-D integer tensor, got dtype "
                            f"{rank_offsets.dtype} and shape {_shape(rank_offsets)}")
        offsets = [int(v) for v in host_values(rank_offsets)]
    else:
        offsets = as_list(rank_offsets, "rank_offsets", "None, a list of ints or an int tensor")
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                   for v in offsets):
            raise TypeError(f"rank_offsets must hold ints, got {offsets!r}")
        offsets = [int(v) for v in offsets]        # (numpy integers too)
    if len(offsets) != K + 1:
        raise ValueError(f"rank_offsets must have K + 1 = {K + 1} entries (K = gates.shape[-1]), "
                         f"got {len(offsets)}: {offsets}")
    if offsets[0] != 0 or offsets[-1] != R:
        raise ValueError(f"rank_offsets must start at 0 and end at R = {R} (lora_A rows), "
                         f"got {offsets}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"rank_offsets must be non-decreasing, got {offsets}")
    return offsets


def _real(v, what: str) -> float:
    """``v`` as a finite Python float; strings, bytes, bools, complex numbers, NaN and inf are
    rejected (``float("22")`` would otherwise take a string as a number)."""
    if isinstance(v, (str, bytes, bytearray, bool)) or isinstance(v, complex):
        raise TypeError(f"scaling must hold real numbers, got {what} {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"scaling must hold real numbers, got {what} of type "
                        f"{type(v).__name__}") from None
    if not math.isfinite(f):
        raise ValueError(f"scaling must be finite, got {what} {f}")
    return f


def normalize_scaling(scaling: Scaling, num_adapters: int) -> list:
    """Return one finite float scaling per adapter (``None`` means 1.0)."""
    K = num_adapters
    if scaling is None:
        return [1.0] * K
    if isinstance(scaling, torch.Tensor):
        if scaling.requires_grad:
            raise TypeError("scaling is a constant of the op and must not require grad; "
                            "put a trainable magnitude into gates instead")
        if scaling.dtype == torch.bool or scaling.is_complex():
            raise TypeError(f"scaling must be a real tensor, got dtype {scaling.dtype}")
        if scaling.dim() == 0:
            return [_real(v, "the value") for v in host_values(scaling)] * K
        if scaling.dim() != 1 or scaling.shape[0] != K:
            raise ValueError(f"scaling must have shape (K,) = ({K},), got {_shape(scaling)}")
        return [_real(v, f"entry {k}") for k, v in enumerate(host_values(scaling))]
    if isinstance(scaling, numbers.Number) or getattr(scaling, "ndim", None) == 0:
        return [_real(scaling, "the value")] * K      # one number (numpy scalars too)
    values = as_list(scaling, "scaling", "a float, a list of K floats or a (K,) tensor")
    values = [_real(v, f"entry {k}") for k, v in enumerate(values)]
    if len(values) != K:
        raise ValueError(f"scaling must have K = {K} entries (K = gates.shape[-1]), "
                         f"got {len(values)}")
    return values


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_FLOAT64_MAX = float(torch.finfo(torch.float64).max)


def check_scaling_range(scaling: list, dtype: torch.dtype) -> None:
    """Every ``s_k`` must fit the dtype the op multiplies in (float32 below float64)."""
    limit = _FLOAT64_MAX if dtype == torch.float64 else _FLOAT32_MAX
    if not scaling or max(map(abs, scaling)) <= limit:
        return
    k = next(k for k, s in enumerate(scaling) if abs(s) > limit)
    raise ValueError(f"scaling entry {k} = {scaling[k]:g} overflows the op's "
                     f"{'float64' if dtype == torch.float64 else 'float32'} gate arithmetic for "
                     f"x of dtype {dtype} (|scaling| <= {limit:.3g})")


def host_values(t: torch.Tensor) -> tuple:
    """A small constant tensor's values (``rank_offsets``, ``scaling``), read at every call.

    Never kept between calls: a host copy keyed on the tensor's version counter misses writes
    that do not bump it (``t.data[...] = v``, fused optimizers, a numpy array shared through
    ``torch.from_numpy``). A CPU tensor costs no device sync; a CUDA tensor costs one per call
    (pass a list or a CPU tensor to avoid it)."""
    return tuple(t.detach().reshape(-1).tolist())


def check_adapter_dtype(x_dtype: torch.dtype, lora_A: torch.Tensor,
                        lora_B: torch.Tensor) -> None:
    """The bank has ``x``'s dtype, or float32 beside a float16/bfloat16 ``x`` (PEFT keeps the
    adapters of a half-precision model in float32; the op rounds them to ``x``'s dtype)."""
    allowed = (x_dtype, torch.float32) if x_dtype in (torch.float16, torch.bfloat16) else (x_dtype,)
    for name, t in (("lora_A", lora_A), ("lora_B", lora_B)):
        if t.dtype not in allowed:
            extra = " or float32" if len(allowed) > 1 else ""
            raise TypeError(f"{name} must have x's dtype {x_dtype}{extra}, got {t.dtype}")
    if lora_A.dtype != lora_B.dtype:
        raise TypeError(f"lora_A and lora_B must share one dtype, got {lora_A.dtype} and "
                        f"{lora_B.dtype}")


def validate(x, weight, bias, lora_A, lora_B, gates,
             rank_offsets: RankOffsets = None, scaling: Scaling = None) -> Problem:
    """Check the public op's arguments and return the normalised ``Problem``."""
    _check_tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension (..., D_in), got shape {_shape(x)}")
    _check_float("x", x)
    if weight is None and bias is not None:
        raise ValueError(f"weight is None (the LoRA-only op: the adapter term alone) but bias is "
                         f"given, shape {_shape(bias)}; add the bias to the base module's output "
                         f"instead, or pass the weight too")
    if weight is not None:
        _check_tensor("weight", weight, 2)
    _check_tensor("lora_A", lora_A, 2)
    _check_tensor("lora_B", lora_B, 2)
    _check_tensor("gates", gates)
    if bias is not None:
        _check_tensor("bias", bias, 1)

    # weight None (LoRA-only): the widths come from the bank, lora_A (R, D_in), lora_B (D_out, R).
    d_out, d_in = weight.shape if weight is not None else (lora_B.shape[0], lora_A.shape[1])
    if x.shape[-1] != d_in:
        of = (f"weight's D_in = {d_in} (weight is (D_out, D_in) = {_shape(weight)})"
              if weight is not None else f"lora_A's D_in = {d_in} (lora_A is {_shape(lora_A)})")
        raise ValueError(f"x's last dimension must equal {of}, got x of shape {_shape(x)}")
    if bias is not None and bias.shape[0] != d_out:
        raise ValueError(f"bias must have shape (D_out,) = ({d_out},), got {_shape(bias)}")
    R = lora_A.shape[0]
    if lora_A.shape[1] != d_in:
        raise ValueError(f"lora_A must have shape (R, D_in) = (R, {d_in}), got {_shape(lora_A)}")
    if lora_B.shape != (d_out, R):
        raise ValueError(f"lora_B must have shape (D_out, R) = ({d_out}, {R}) to match weight "
                         f"{_shape(weight)} and lora_A {_shape(lora_A)}, got {_shape(lora_B)}")

    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    check_adapter_dtype(x.dtype, lora_A, lora_B)
    _check_float("gates", gates)
    for name, t in (("weight", weight), ("bias", bias), ("lora_A", lora_A), ("lora_B", lora_B),
                    ("gates", gates)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; "
                             f"all tensors must share one device")

    lead = tuple(x.shape[:-1])
    if gates.dim() == 0:
        raise ValueError("gates must have shape (K,) or x's leading dims + (K,), got a scalar; "
                         "use gates of shape (1,) for one adapter")
    K = gates.shape[-1]
    if gates.dim() == 1:
        per_row = False
    elif tuple(gates.shape[:-1]) == lead:
        per_row = True
    else:
        raise ValueError(f"gates must have shape (K,) (per adapter) or x's leading dims + (K,) = "
                         f"{lead + ('K',)} (per row), got {_shape(gates)} for x of shape {_shape(x)}")

    offsets = normalize_rank_offsets(rank_offsets, K, R)
    scales = normalize_scaling(scaling, K)
    check_scaling_range(scales, x.dtype)

    # Already-2-D tensors are used as they are and (K,) gates expand in one step: each view op
    # skipped saves host time and, for a tensor that trains, an autograd node per call.
    # (The row count is spelled out: reshape(-1, 0) cannot infer it for D_in = 0.)
    n = math.prod(lead)
    x2d = x if x.dim() == 2 else x.reshape(n, d_in)
    if per_row:
        gates2d = gates if gates.dim() == 2 else gates.reshape(n, K)
    else:
        gates2d = gates.expand(n, K)
    return Problem(x2d=x2d, lead_shape=lead, weight=weight, bias=bias, lora_A=lora_A,
                   lora_B=lora_B, gates=gates, gates2d=gates2d, per_row_gates=per_row,
                   rank_offsets=offsets, scaling=scales)


@dataclass
class Call:
    """One call of the public op, every argument checked: its ``Problem`` (the bank already in
    ``x``'s dtype) and its options."""

    x: torch.Tensor                   # after autocast, with its leading dims (the reference's)
    problem: Problem
    grad_adapters: list               # K booleans: whose dA/dB are computed
    nonzero_gates: Optional[list]     # K booleans, the caller's hint; None: no hint
    p_drop: float                     # LoRA dropout probability in [0, 1)
    backend: Optional[str]            # a forced backend name, None: chosen per call


# Device types -> whether autocast exists for them (meta has none: asking it raises). Filled
# ahead for the usual types because Dynamo cannot trace ``torch.amp.is_autocast_available`` on
# torch 2.11 (``torch.compile(fullgraph=True)`` raised there), while a dict lookup it traces.
_AUTOCAST_AVAILABLE = {t: torch.amp.is_autocast_available(t) for t in ("cpu", "cuda", "meta")}


def _autocast(tensors, device_type: str):
    """Follow autocast like ``F.linear``: the matmul operands run in the autocast dtype."""
    available = _AUTOCAST_AVAILABLE.get(device_type)
    if available is None:                   # another device type: asked once, outside tracing
        available = _AUTOCAST_AVAILABLE[device_type] = torch.amp.is_autocast_available(
            device_type)
    if not available or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def _flags(name: str, values, K: int) -> list:
    flags = [bool(v) for v in as_list(values, name, "K booleans (a list or tuple)")]
    if len(flags) != K:
        raise ValueError(f"{name} must have K = {K} entries (K = gates.shape[-1]), "
                         f"got {len(flags)}")
    return flags


def validate_call(x, weight, bias, lora_A, lora_B, gates, rank_offsets: RankOffsets,
                  scaling: Scaling, trainable_adapters, nonzero_gates, dropout,
                  backend: Optional[str], backend_names: Collection) -> Call:
    """Every argument of ``gated_lora_linear`` checked, in the order its errors are raised:
    ``backend`` (one of ``backend_names``), the tensors (after autocast), the flags, ``dropout``."""
    if backend is not None and backend not in backend_names:
        raise ValueError(f"backend must be None or one of {tuple(backend_names)}, "
                         f"got {backend!r}")
    if isinstance(x, torch.Tensor):
        x, weight, bias, lora_A, lora_B = _autocast([x, weight, bias, lora_A, lora_B],
                                                    x.device.type)
    p = validate(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    if lora_A.dtype != x.dtype:
        # A float32 bank beside a half-precision x (PEFT's adapter dtype): the kernels read one
        # dtype, so the bank is rounded to x's; autograd casts dA/dB back to float32.
        p.lora_A, p.lora_B = lora_A.to(x.dtype), lora_B.to(x.dtype)
    K = p.num_adapters
    grad_adapters = [True] * K if trainable_adapters is None else _flags(
        "trainable_adapters", trainable_adapters, K)
    hint = None if nonzero_gates is None else _flags("nonzero_gates", nonzero_gates, K)
    return Call(x=x, problem=p, grad_adapters=grad_adapters, nonzero_gates=hint,
                p_drop=check_p(dropout), backend=backend)
