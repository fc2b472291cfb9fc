"""One PEFT LoRA layer's forward through ``gated_lora_linear``, or the reason it cannot be.

PEFT's ``lora.Linear`` (on an ``nn.Linear`` or HF ``Conv1D`` base) and its bitsandbytes
``Linear8bitLt`` / ``Linear4bit`` loop over the active adapters: ``result += lora_B(lora_A(
dropout(x))) * scaling``, one dropped copy of ``x`` and two GEMMs per adapter. Here every adapter
of the call goes into one packed bank (``torch.cat`` of the adapters' own Parameters per call: no
copy is kept, so whatever writes the Parameters is seen) and one call of the op computes it, the
dropout drawn in the op (no dropped copy of ``x`` is saved).

Two forms, chosen per call:

- **fused**: base and bank in one op (``weight`` = the base's own weight, ``W^T`` for a Conv1D),
  when ``x``, the base weight and the adapters share one dtype (or autocast runs them in one), the
  base is a plain ``nn.Linear``/``Conv1D`` with no hooks, and no extra arguments reach the base.
- **LoRA-only**: the base module's own forward, plus the op with ``weight=None`` on ``x`` cast to
  the adapters' dtype, added as PEFT adds it. This is PEFT's precision: a bf16 base beside fp32
  adapters (``autocast_adapter_dtype``) gets its LoRA term in fp32, added to the bf16 base output
  and then rounded (rounding the adapters to bf16 instead doubled the logit error).

What the op cannot compute runs PEFT's own forward for that call, so a number is never wrong:
:func:`static_reason` / :func:`call_reason` name why. The disabled and merged states are PEFT's
forward too: there the output is the base's alone, which PEFT computes exactly.

``OP_CALLS`` counts the calls that went through the op (``"fused"``, ``"lora_only"``) and the
ones PEFT computed (``"peft"``; ``FALLBACK_REASONS`` says why): PEFT's own test suite run patched checks it (a comparison that
never reached the op would prove nothing).
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Optional

import torch
import torch.nn as nn

from ..module import routing_state
from ..module.base_layers import base_kind
from ..op.ops import gated_lora_linear

OP_CALLS: Counter = Counter()
FALLBACK_REASONS: Counter = Counter()     # reason -> calls PEFT computed for it


def _adapter_modules(layer, name):
    return layer.lora_A[name], layer.lora_B[name]


def _dropout_p(module) -> Optional[float]:
    """The LoRA dropout probability a PEFT dropout module applies now; ``None`` for a module the
    op cannot reproduce."""
    if isinstance(module, nn.Identity):
        return 0.0
    if type(module) is nn.Dropout and not module.inplace:
        return float(module.p) if module.training else 0.0
    return None


def static_reason(layer, names) -> Optional[str]:
    """Why adapters ``names`` of ``layer`` cannot run through the op in any call, or ``None``."""
    dtypes, devices, probs = set(), set(), set()
    for name in names:
        if name in getattr(layer, "lora_variant", {}):
            return (f"adapter {name!r} is a LoRA variant "
                    f"({type(layer.lora_variant[name]).__name__}: DoRA, aLoRA, ...)")
        A, B = _adapter_modules(layer, name)
        if type(A) is not nn.Linear or type(B) is not nn.Linear:
            return f"adapter {name!r}: lora_A/lora_B are not plain nn.Linear modules"
        if A.bias is not None or B.bias is not None:
            return f"adapter {name!r} has a LoRA bias (lora_bias=True)"
        if isinstance(layer.scaling.get(name), torch.Tensor):
            return f"adapter {name!r}: its scaling is a tensor, not a number"
        drop = layer.lora_dropout[name]
        if isinstance(drop, nn.Dropout) and type(drop) is nn.Dropout and not drop.inplace:
            probs.add(float(drop.p))
        elif not isinstance(drop, nn.Identity):
            return f"adapter {name!r}: its dropout module {type(drop).__name__} is not nn.Dropout"
        else:
            probs.add(0.0)
        dtypes |= {A.weight.dtype, B.weight.dtype}
        devices |= {A.weight.device, B.weight.device}
    if len(dtypes) > 1:
        return f"the adapters' dtypes differ ({sorted(map(str, dtypes))})"
    if len(devices) > 1:
        return f"the adapters' devices differ ({sorted(map(str, devices))})"
    if len(probs) > 1:
        return (f"the adapters' dropout probabilities differ ({sorted(probs)}): the op draws one "
                "mask for the whole bank")
    return None


def call_reason(layer, x, names) -> Optional[str]:
    """Why this call (``x``, adapters ``names``) runs PEFT's forward, or ``None``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        return "the input is not a floating tensor"
    reason = static_reason(layer, names)
    if reason is not None:
        return reason
    A = layer.lora_A[names[0]].weight
    if (A.dtype != x.dtype and not getattr(layer, "cast_input_dtype_enabled", True)
            and not torch.is_autocast_enabled(x.device.type)):
        return "input dtype casting is disabled (peft.helpers.disable_input_dtype_casting)"
    if len({_dropout_p(layer.lora_dropout[n]) for n in names}) > 1:
        return "the adapters' dropout modules are in different train/eval modes"
    return None


def _offsets(ranks) -> list:
    out = [0]
    for r in ranks:
        out.append(out[-1] + r)
    return out


@functools.lru_cache(maxsize=64)
def _ones(k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A constant we own and never write: the op reads frozen per-adapter gates once per tensor
    # version, so one shared tensor is read once instead of a fresh one per call.
    return torch.ones(k, device=device, dtype=dtype)


def _bank(layer, names):
    """``(lora_A, lora_B, rank_offsets, scaling, trainable)`` of adapters ``names``, packed now."""
    As = [layer.lora_A[n].weight for n in names]
    Bs = [layer.lora_B[n].weight for n in names]
    if len(names) == 1:
        lora_A, lora_B = As[0], Bs[0]
    else:
        lora_A, lora_B = torch.cat(As, 0), torch.cat(Bs, 1)
    offsets = _offsets([a.shape[0] for a in As])
    scaling = [float(layer.scaling[n]) for n in names]
    trainable = [a.requires_grad or b.requires_grad for a, b in zip(As, Bs)]
    return lora_A, lora_B, offsets, scaling, trainable


def _fused_weight(base: nn.Module, x: torch.Tensor, adapter_dtype, has_args: bool):
    """The base's ``(weight, bias)`` for the fused form, or ``None`` when it must run itself."""
    if has_args or base._forward_hooks or base._forward_pre_hooks:
        return None
    kind = base_kind(base)
    if kind not in ("linear", "conv1d"):
        return None
    weight = base.weight if kind == "linear" else base.weight.t()
    bias = base.bias
    if not torch.is_autocast_enabled(x.device.type):
        dtypes = {x.dtype, weight.dtype, adapter_dtype} | ({bias.dtype} if bias is not None
                                                           else set())
        if len(dtypes) > 1:
            return None
    return weight, bias


def compute(layer, x: torch.Tensor, args, kwargs, names, gates, round_first: bool):
    """``layer``'s output for adapters ``names`` with ``gates`` (``None``: every adapter on; else
    per-row gates ``x.shape[:-1] + (K,)``) through the op. ``round_first``: the LoRA term is
    rounded to the base output's dtype before it is added (bitsandbytes layers, mixed batches)."""
    lora_A, lora_B, offsets, scaling, trainable = _bank(layer, names)
    p = _dropout_p(layer.lora_dropout[names[0]])
    if gates is None:
        gates = _ones(len(names), lora_A.device, lora_A.dtype)
    fused = _fused_weight(layer.base_layer, x, lora_A.dtype, bool(args or kwargs))
    if fused is not None:
        OP_CALLS["fused"] += 1
        return gated_lora_linear(x, fused[0], fused[1], lora_A, lora_B, gates, offsets, scaling,
                                 trainable_adapters=trainable, dropout=p)
    OP_CALLS["lora_only"] += 1
    result = layer.base_layer(x, *args, **kwargs)
    x_lora = layer._cast_input_dtype(x, lora_A.dtype)
    lora = gated_lora_linear(x_lora, None, None, lora_A, lora_B, gates, offsets, scaling,
                             trainable_adapters=trainable, dropout=p)
    if round_first:
        return result + lora.to(result.dtype)
    return (result + lora).to(result.dtype)


def row_gates(layer, x: torch.Tensor, adapter_names, names) -> torch.Tensor:
    """Per-row one-hot gates ``x.shape[:-1] + (K,)`` for PEFT's ``adapter_names`` (one name per
    sample; ``"__base__"`` and names this layer lacks get no adapter)."""
    index = {n: k for k, n in enumerate(names)}
    cols = torch.tensor([index.get(n, -1) for n in adapter_names], device=x.device)
    A = layer.lora_A[names[0]].weight
    onehot = (cols[:, None] == torch.arange(len(names), device=x.device)).to(A.dtype)
    shape = (onehot.shape[0],) + (1,) * (x.dim() - 2) + (len(names),)
    return onehot.reshape(shape).expand(*x.shape[:-1], len(names))


def patched_forward(original, bnb_style: bool, is_patched):
    """The forward installed on a PEFT LoRA class: ours when ``is_patched(layer)``, else
    ``original``."""

    def forward(self, x, *args, **kwargs):
        if not is_patched(self):
            return original(self, x, *args, **kwargs)
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.get("adapter_names")
        if self.disable_adapters or self.merged or any(kwargs.get(k) is not None
                                                       for k in _variant_keys()):
            return original(self, x, *args, **kwargs)
        routing = routing_state.for_call()
        gates = None
        if adapter_names is not None:
            used = set(adapter_names)
            names = [n for n in self.lora_A.keys() if n in used]
        elif getattr(routing, "peft_layers", None) is not None and id(self) in routing.peft_layers:
            names = list(self.lora_A.keys())       # llf.route: every adapter the layer holds
        else:
            names = [n for n in self.active_adapters if n in self.lora_A.keys()]
        routed = adapter_names is None and getattr(routing, "peft_layers", None) is not None \
            and id(self) in routing.peft_layers
        reason = call_reason(self, x, names) if names else "no adapter of this layer is used"
        if reason is not None:
            if routed:
                raise ValueError(f"route: a PEFT layer ({type(self).__name__}) cannot route this "
                                 f"call through litelora_fast's op: {reason}")
            OP_CALLS["peft"] += 1
            FALLBACK_REASONS[reason] += 1
            return original(self, x, *args, **kwargs)
        # (PEFT pops these before calling the base layer)
        kwargs = {k: v for k, v in kwargs.items()
                  if k != "adapter_names" and k not in _variant_keys()}
        if adapter_names is not None:
            gates = row_gates(self, x, adapter_names, names)
        elif routed:
            gates = routing.gates(self, x, names)
        # PEFT's mixed batch rounds each adapter's term to the output dtype before adding it
        round_first = bnb_style or gates is not None
        return compute(self, x, args, kwargs, names, gates, round_first)

    forward.__wrapped__ = original
    forward.__doc__ = original.__doc__
    return forward


@functools.lru_cache(maxsize=1)
def _variant_keys() -> tuple:
    """PEFT's extra forward keywords for LoRA variants (``alora_offsets``, ...): a call that
    passes one is a variant's call, PEFT's to compute."""
    try:
        from peft.tuners.lora.layer import VARIANT_KWARG_KEYS
    except ImportError:
        return ()
    return tuple(VARIANT_KWARG_KEYS)
