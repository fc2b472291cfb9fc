"""``GatedLoRALinear``: the drop-in ``nn.Linear`` with a gated bank of LoRA adapters.

The module owns the parameters and the bookkeeping (recruit, freeze, remove, state-dict rebuild);
the arithmetic is one call of :func:`litelora_fast.gated_lora_linear` on the packed bank.

Storage: adapter ``k`` is two Parameters, ``lora_A[k]`` ``(r_k, D_in)`` and ``lora_B[k]``
``(D_out, r_k)`` in two ``ParameterList`` s, so freezing is per adapter and an optimizer keeps its
references when later adapters are recruited. They are packed with ``torch.cat`` at every forward
(``R x D`` elements: small next to the GEMMs). Per-adapter ``alpha_k`` (scaling ``alpha_k / r_k``,
the PEFT convention), names, ``requires_grad`` flags and merged state travel in the state dict as
extra state: one ``uint8`` tensor of JSON bytes (``layer_meta``), so safetensors,
``save_pretrained`` and HF ``Trainer`` checkpoints store it. Loading a state dict copies into the
live Parameters when the bank's layout matches (an optimizer built before keeps training them) and
rebuilds the bank, with a warning, when it does not.

Merging (:meth:`GatedLoRALinear.merge`) folds gated adapters into ``W`` for inference and zeroes
their gates; :meth:`GatedLoRALinear.unmerge` subtracts them again (exact up to one rounding of
``W`` each way).

Gates, in the order a forward looks for them:

0. ``with llf.route(model, adapter_ids):`` (``routing.py``): each row to its adapter, when no
   ``gates`` are passed;
1. ``forward(x, gates=...)``: explicit gates, ``(K,)`` or ``x.shape[:-1] + (K,)``;
2. ``set_gates(g)``: external task-level gates ``(K,)`` (LiteLoRA: one tensor shared by every
   layer, possibly requiring grad), used until ``set_gates(None)``;
3. the layer's own gates. ``gate="per_adapter"``: the Parameter ``gates`` ``(K,)``, init 1.0,
   **frozen by default** (``layer.gates.requires_grad_(True)`` learns the mix; a trainable gate
   cannot be skipped at zero). ``gate="per_row"``: a learned router,
   ``g = 2 * sigmoid(x @ router_weight^T + router_bias)`` ``(..., K)``, zero-initialised so every
   gate starts at exactly 1.0, and trainable by default.

Data parallelism (tested on CPU/gloo, ``tests/test_distributed.py``): DDP and FSDP2
(``fully_shard``) give the single-process gradients. Recruit or remove adapters before wrapping
(the wrappers fix the parameter set), and a ``set_gates`` tensor is averaged across ranks only if
it is a Parameter of the wrapped model.
"""
from __future__ import annotations

import itertools
import math
import numbers
import warnings
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import base_layers, layer_meta, resized_state, routing_state
from .packed_bank import cat_bank
from ..op.lora_dropout import check_p
from ..op.ops import gated_lora_linear
from ..op.reference import gated_lora_linear_ref
from ..op.validation import as_list

GATE_MODES = ("per_adapter", "per_row")
_ADAPTER_LIST = "a list or tuple of adapter indices or names"


class GatedLoRALinear(nn.Module):
    """``y = x @ W^T + b + sum_k g_k * (alpha_k / r_k) * (x @ A_k^T) @ B_k^T``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``; the base weight and bias are frozen.
        rank: default rank of recruited adapters; ``alpha``: default ``alpha_k`` (scaling
            ``alpha / rank``), a finite non-zero real number.
        num_adapters: adapters recruited at construction (B at zero: the output is unchanged).
        gate: ``"per_adapter"`` (a ``(K,)`` gate Parameter) or ``"per_row"`` (a learned router);
            see the module docstring.
        dropout: LoRA dropout ``p`` in ``[0, 1)`` on the adapters' input only, as PEFT's
            ``lora_dropout`` (one mask per call shared by the adapters, drawn in-kernel on the
            GPU, never stored); applied in training mode only.
        device, dtype: as ``nn.Linear``; ``device="meta"`` allocates nothing (deferred
            initialisation: ``to_empty(device=...)``, then :meth:`reset_parameters`).
        fan_in_fan_out: the weight is stored ``(in_features, out_features)``, as HF's ``Conv1D``
            (GPT-2) holds it; the op reads its transpose (a view).
        adapter_dtype: dtype of the adapters and gates; default: float32 beside a float16/
            bfloat16 base (PEFT's ``autocast_adapter_dtype``), the base dtype otherwise
            (``base_layers``). Pass the base's dtype to keep a half-precision bank.
    """

    # The class that wraps a base of kind "module" (a bitsandbytes layer...): set by
    # layer_on_module, which the package imports (it builds on this module, not the other way).
    on_module_class = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rank: int = 8,
                 alpha: float = 16, num_adapters: int = 0, gate: str = "per_adapter",
                 dropout: float = 0.0, device=None, dtype=None, *, fan_in_fan_out: bool = False,
                 adapter_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self._init_settings(in_features, out_features, rank, alpha, num_adapters, gate, dropout)
        self.fan_in_fan_out = bool(fan_in_fan_out)
        factory = {"device": device, "dtype": dtype}
        shape = (in_features, out_features) if fan_in_fan_out else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(*shape, **factory), requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._reset_base()
        self._init_bank(adapter_dtype, num_adapters)

    def _init_settings(self, in_features, out_features, rank, alpha, num_adapters, gate,
                       dropout) -> None:
        if gate not in GATE_MODES:
            raise ValueError(f"gate must be one of {GATE_MODES}, got {gate!r}")
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        _check_rank(rank, "rank")
        alpha = _check_alpha(alpha, "alpha")
        if not isinstance(num_adapters, int) or num_adapters < 0:
            raise ValueError(f"num_adapters must be an int >= 0, got {num_adapters!r}")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.gate_mode = rank, alpha, gate
        self.dropout = check_p(dropout)

    def _init_bank(self, adapter_dtype: Optional[torch.dtype], num_adapters: int) -> None:
        self._adapter_dtype = base_layers.check_adapter_dtype(adapter_dtype)
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self._alphas: list = []
        self._names: list = []
        self._merged: list = []     # per adapter: None, or the gate value it was merged with
        self._external_gates: Optional[torch.Tensor] = None
        self._resize_gates([])
        for _ in range(num_adapters):
            self.add_adapter()

    def _reset_base(self) -> None:
        if self.weight.is_meta:
            return
        # nn.Linear's initialisation, so a fresh layer behaves like a fresh nn.Linear.
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.base_weight(), a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(self.in_features) if self.in_features else 0.0
                nn.init.uniform_(self.bias, -bound, bound)

    def reset_parameters(self) -> None:
        """Initialise every Parameter as a fresh layer does: the base as ``nn.Linear``, each
        ``A_k`` kaiming-uniform, each ``B_k`` zero, gates 1.0 (router 0). This is the reset of
        deferred initialisation: ``GatedLoRALinear(..., device="meta")``, then
        ``to_empty(device=...)`` (uninitialised memory), then ``reset_parameters()``. Like
        ``nn.Linear.reset_parameters`` it overwrites the base weight, pretrained or not. Merged
        state is forgotten."""
        self._reset_base()
        with torch.no_grad():
            for A, B in zip(self.lora_A, self.lora_B):
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
                B.zero_()
            if self.gate_mode == "per_adapter":
                self.gates.fill_(1.0)
            else:
                self.router_weight.zero_()
                self.router_bias.zero_()
        self._merged = [None] * self.num_adapters

    @classmethod
    def from_linear(cls, linear: nn.Module, rank: int = 8, alpha: float = 16,
                    num_adapters: int = 0, gate: str = "per_adapter",
                    dropout: float = 0.0,
                    adapter_dtype: Optional[torch.dtype] = None) -> "GatedLoRALinear":
        """Wrap a trained linear-like base (``base_layers``): ``nn.Linear``, HF ``Conv1D``, or a
        module the kernels cannot read (bitsandbytes ``Linear4bit``/``Linear8bitLt``...), which
        gives a :class:`~litelora_fast.module.layer_on_module.GatedLoRAOnModule`. The base's weight and
        bias Parameters are *shared* (no copy) and frozen (``requires_grad=False``, which the
        original module sees too). ``adapter_dtype``: see ``base_layers`` (default float32 beside
        a half-precision or quantized base)."""
        kind = base_layers.base_kind(linear) if isinstance(linear, nn.Module) else None
        if kind is None:
            raise TypeError(f"from_linear expects an nn.Linear or another linear-like module (HF "
                            f"Conv1D, a bitsandbytes Linear4bit/Linear8bitLt, a module with int "
                            f"in_features/out_features), got {type(linear).__name__}")
        if kind == "module":
            return GatedLoRALinear.on_module_class.wrap(
                linear, rank=rank, alpha=alpha, num_adapters=num_adapters, gate=gate,
                dropout=dropout, adapter_dtype=adapter_dtype)
        d_in, d_out = base_layers.features(linear, kind)
        layer = cls(d_in, d_out, bias=linear.bias is not None,
                    rank=rank, alpha=alpha, num_adapters=0, gate=gate, dropout=dropout,
                    device="meta", dtype=linear.weight.dtype, fan_in_fan_out=kind == "conv1d",
                    adapter_dtype=adapter_dtype)
        layer.weight = linear.weight.requires_grad_(False)
        if linear.bias is not None:
            layer.bias = linear.bias.requires_grad_(False)
        layer._resize_gates([])     # the gate Parameters move to the real device
        for _ in range(num_adapters):
            layer.add_adapter()
        return layer

    # ----------------------------------------------------------------------------- the base
    def base_weight(self) -> torch.Tensor:
        """``W`` as the op reads it, ``(D_out, D_in)``: the weight, or for a Conv1D base
        (``fan_in_fan_out``) the transposed view of its ``(D_in, D_out)`` weight (no copy)."""
        return self.weight.t() if self.fan_in_fan_out else self.weight

    def _base_dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def adapter_dtype(self) -> torch.dtype:
        """The dtype of the adapters and the gates: the bank's own once it holds an adapter (the
        bank is one dtype), else ``adapter_dtype=`` as given, else the rule of ``base_layers``:
        float32 beside a half-precision or quantized base, the base dtype otherwise."""
        if self.num_adapters:
            return self.lora_A[0].dtype
        if self._adapter_dtype is not None:
            return self._adapter_dtype
        return base_layers.default_adapter_dtype(self._base_dtype())

    # ----------------------------------------------------------------------------- the bank
    @property
    def num_adapters(self) -> int:
        return len(self.lora_A)

    @property
    def ranks(self) -> list:
        """``[r_0, ..., r_{K-1}]``."""
        return [a.shape[0] for a in self.lora_A]

    @property
    def rank_offsets(self) -> list:
        """``(K+1,)`` list: adapter ``k`` owns columns ``[o_k, o_{k+1})`` of the packed bank."""
        return list(itertools.accumulate(self.ranks, initial=0))

    @property
    def alphas(self) -> list:
        """``[alpha_0, ..., alpha_{K-1}]`` as recruited (exact, unlike ``scaling * rank``)."""
        return list(self._alphas)

    @property
    def adapter_names(self) -> list:
        """``[name_0, ..., name_{K-1}]``: ``adapter_k`` unless named in ``add_adapter`` (or by
        ``from_peft``, which keeps PEFT's names). ``set_active_adapters`` and ``to_peft`` use
        them; they travel in the state dict."""
        return list(self._names)

    @property
    def merged_adapters(self) -> list:
        """Indices of the adapters folded into ``W`` by :meth:`merge` (their gates read 0)."""
        return [k for k, g in enumerate(self._merged) if g is not None]

    @property
    def scaling(self) -> list:
        """``[alpha_k / r_k]`` as Python floats."""
        return [a / r for a, r in zip(self._alphas, self.ranks)]

    @property
    def active_adapters(self) -> list:
        """Indices ``k`` whose gate in effect is not exactly zero: the ``set_gates`` tensor when one
        is set, else the ``gates`` Parameter (``per_adapter``). In ``per_row`` mode without
        external gates every adapter is active (the router's ``2 * sigmoid`` is never zero).
        Gates passed to ``forward`` are per call and not seen here."""
        g = self._external_gates
        if g is None and self.gate_mode == "per_adapter":
            g = self.gates
        if g is None:
            return list(range(self.num_adapters))
        return [k for k, v in enumerate(g.detach().tolist()) if v != 0]

    def adapter(self, k: Union[int, str]):
        """``(A_k, B_k)``: adapter ``k``'s Parameters (``k`` an index or a name), ``(r_k, D_in)``
        and ``(D_out, r_k)``."""
        k = self.adapter_index(k)
        return self.lora_A[k], self.lora_B[k]

    def adapter_index(self, key: Union[int, str]) -> int:
        """The index of adapter ``key``: an index (negative counts from the end) or a name."""
        if isinstance(key, str):
            if key not in self._names:
                raise KeyError(f"no adapter named {key!r}; this layer's adapters are "
                               f"{self._names}")
            return self._names.index(key)
        return self._check_index(key)

    def is_frozen(self, k: Union[int, str]) -> bool:
        """Whether adapter ``k`` (an index or a name) trains neither ``A_k`` nor ``B_k``."""
        A, B = self.adapter(k)
        return not (A.requires_grad or B.requires_grad)

    def add_adapter(self, rank: Optional[int] = None, alpha: Optional[float] = None,
                    name: Optional[str] = None) -> int:
        """Recruit an adapter and return its index ``K``. ``A`` gets PEFT's kaiming-uniform init,
        ``B`` zeros, so the output is unchanged; its gate starts at 1.0. ``alpha`` must be a
        finite non-zero real number (default: the layer's); ``name`` must be new to the layer
        (default ``adapter_<K>``, or the next free ``adapter_<i>``)."""
        rank = self.rank if rank is None else rank
        _check_rank(rank, "rank")
        alpha = self.alpha if alpha is None else _check_alpha(alpha, "alpha")
        if name is None:
            i = self.num_adapters
            while f"adapter_{i}" in self._names:
                i += 1
            name = f"adapter_{i}"
        elif not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        elif name in self._names:
            raise ValueError(f"name {name!r} is taken; this layer's adapters are {self._names}")
        factory = {"device": self.weight.device, "dtype": self.adapter_dtype}
        A = torch.empty(rank, self.in_features, **factory)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        self.lora_A.append(nn.Parameter(A))
        self.lora_B.append(nn.Parameter(torch.zeros(self.out_features, rank, **factory)))
        self._alphas.append(alpha)
        self._names.append(name)
        self._merged.append(None)
        K = self.num_adapters
        self._resize_gates(list(range(K - 1)) + [None])
        return K - 1

    def freeze_adapter(self, k: Union[int, str]) -> None:
        """Stop training adapter ``k`` (an index or a name): its ``A_k`` and ``B_k`` no longer get
        gradients."""
        for p in self.adapter(k):
            p.requires_grad_(False)

    def remove_adapter(self, k: Union[int, str]) -> None:
        """Drop adapter ``k`` (index or name) with its gate (or router row); adapters after it
        shift down by one. Gates set with ``set_gates`` must then be reset to the new ``K``. A
        merged adapter must be unmerged first (its update is inside ``W``)."""
        k = self.adapter_index(k)
        if self._merged[k] is not None:
            raise ValueError(f"adapter {k} ({self._names[k]!r}) is merged into the base weight; "
                             "call unmerge() before removing it")
        keep = [i for i in range(self.num_adapters) if i != k]
        self.lora_A = nn.ParameterList([self.lora_A[i] for i in keep])
        self.lora_B = nn.ParameterList([self.lora_B[i] for i in keep])
        for meta in (self._alphas, self._names, self._merged):
            del meta[k]
        self._resize_gates(keep)

    def _check_index(self, k) -> int:
        K = self.num_adapters
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"an adapter is named by its index (int) or its name (str), got "
                            f"{type(k).__name__} {k!r}")
        if not -K <= k < K:
            raise IndexError(f"adapter index {k} out of range for a layer with {K} adapters")
        return k % K

    def _resize_gates(self, keep: list) -> None:
        """Resize the gate Parameters to the new bank. ``keep[i]`` is the old index of new
        adapter ``i``, or ``None`` for a new one (gate 1.0, router row 0 -> gate 1.0).

        In place: the Parameter objects stay the same (their ``.data`` is swapped), so an
        optimizer built before ``add_adapter``/``remove_adapter`` steps the live gates, the new
        adapter's included. Their ``.grad`` (of the old size) is dropped; a torch optimizer's
        state for them (momentum, Adam's moments) follows the rows at its next step, a new
        adapter's rows starting at zero (``resized_state.py``)."""
        factory = {"device": self.weight.device, "dtype": self.adapter_dtype}
        if self.gate_mode == "per_adapter":
            self._resized("gates", torch.ones(len(keep), **factory), keep, False)
            return
        self._resized("router_weight", torch.zeros(len(keep), self.in_features, **factory),
                      keep, True)
        self._resized("router_bias", torch.zeros(len(keep), **factory), keep, True)

    def _resized(self, name: str, fresh: torch.Tensor, keep: list, trainable: bool) -> None:
        """Put ``fresh``, with the kept rows of the old Parameter ``name`` copied in, into that
        Parameter in place (or register it, ``requires_grad=trainable``, when there is none)."""
        old = self._parameters.get(name)
        if old is None or old.is_meta:       # (from_linear: meta gates onto the real device)
            setattr(self, name, nn.Parameter(fresh, requires_grad=trainable))
            return
        if not fresh.is_meta:
            with torch.no_grad():
                for i, j in enumerate(keep):
                    if j is not None:
                        fresh[i] = old.detach()[j]
        if (old.device, old.dtype) != (fresh.device, fresh.dtype):   # cannot swap in place
            setattr(self, name, nn.Parameter(fresh, requires_grad=old.requires_grad))
            return
        rows_before = old.shape[0]
        old.data = fresh
        old.grad = None
        resized_state.resized(old, rows_before, keep)   # optimizers' state follows the rows

    # ----------------------------------------------------------------------------- gates
    def set_gates(self, gates: Optional[torch.Tensor]) -> None:
        """Use ``gates`` ``(K,)`` (task-level, may require grad, may be shared by many layers) in
        every later forward instead of the layer's own gates; ``None`` restores them. The tensor is
        held by reference, not registered: it is in neither ``parameters()`` nor
        ``state_dict()``."""
        if gates is not None:
            if not isinstance(gates, torch.Tensor):
                raise TypeError(f"set_gates expects a (K,) tensor or None, "
                                f"got {type(gates).__name__}")
            self._check_gate_shape(gates, None, "set_gates")
        self._external_gates = gates

    @property
    def external_gates(self) -> Optional[torch.Tensor]:
        """The tensor given to ``set_gates``, or ``None`` when the layer's own gates are used."""
        return self._external_gates

    def _check_gate_shape(self, gates: torch.Tensor, x: Optional[torch.Tensor], name: str):
        K = self.num_adapters
        shapes = [(K,)] if x is None else [(K,), tuple(x.shape[:-1]) + (K,)]
        if tuple(gates.shape) not in shapes:
            raise ValueError(f"{name}: gates must have shape "
                             f"{' or '.join(str(s) for s in shapes)} for a layer with K = {K} "
                             f"adapters, got {tuple(gates.shape)}")

    def _gates_for(self, x: torch.Tensor, gates: Optional[torch.Tensor]) -> torch.Tensor:
        if gates is not None:
            if not isinstance(gates, torch.Tensor):
                raise TypeError(f"gates must be a tensor, got {type(gates).__name__}")
            self._check_gate_shape(gates, x, "forward")
            return gates
        if self._external_gates is not None:
            self._check_gate_shape(self._external_gates, None, "set_gates")
            return self._external_gates
        if self.gate_mode == "per_adapter":
            return self.gates
        weight = self.router_weight
        return 2.0 * torch.sigmoid(F.linear(x.to(weight.dtype), weight, self.router_bias))

    # ----------------------------------------------------------------------------- forward
    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., in_features) = (..., {self.in_features}), "
                             f"got {tuple(x.shape)}")
        self._check_dtype(x)

    def _check_dtype(self, x: torch.Tensor) -> None:
        # Meta tensors have no autocast state (asking raises): a dtype mismatch is an error there.
        if x.dtype != self.weight.dtype and (
                x.is_meta or not torch.is_autocast_enabled(x.device.type)):
            raise TypeError(f"x has dtype {x.dtype} but the layer's weight is {self.weight.dtype} "
                            f"(shape {tuple(self.weight.shape)}); cast one to the other")

    def packed_bank(self, dtype: Optional[torch.dtype] = None):
        """``(lora_A, lora_B)`` packed: ``(R, D_in)`` and ``(D_out, R)``, differentiable, in
        ``dtype`` (default the bank's), packed afresh from the Parameters at every call
        (``packed_bank``)."""
        return cat_bank(self.lora_A, self.lora_B, dtype or self.adapter_dtype)

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype the op multiplies in: autocast's when it is on, else ``x``'s."""
        device = x.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return x.dtype

    def _trainable(self) -> list:
        return [a.requires_grad or b.requires_grad for a, b in zip(self.lora_A, self.lora_B)]

    def _routed_forward(self, x: torch.Tensor, gates: Optional[torch.Tensor]):
        """Inside ``llf.route`` (and without explicit ``gates``): this layer's output with each
        row sent to its adapter (``routing.py``); else ``None``."""
        routing = routing_state.for_call() if gates is None else None
        return None if routing is None else routing.forward(self, x)

    def forward(self, x: torch.Tensor, gates: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``(..., in_features)`` -> ``(..., out_features)``; ``gates`` overrides the
        layer's own gates for this call (see the module docstring)."""
        self._check_input(x)
        if self.num_adapters == 0:
            return F.linear(x, self.base_weight(), self.bias)
        routed = self._routed_forward(x, gates)
        if routed is not None:
            return routed
        g = self._gates_for(x, gates)
        lora_A, lora_B = self.packed_bank(self._compute_dtype(x))
        # Frozen adapters are left out of the weight-gradient GEMMs (only the newest trains).
        return gated_lora_linear(x, self.base_weight(), self.bias, lora_A, lora_B, g,
                                 self.rank_offsets, self.scaling,
                                 trainable_adapters=self._trainable(),
                                 dropout=self.dropout if self.training else 0.0)

    def reference_forward(self, x: torch.Tensor, gates: Optional[torch.Tensor] = None,
                          dropout_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The same module through the unfused reference ``gated_lora_linear_ref``. In training
        mode with ``dropout > 0`` the reference draws its own mask unless ``dropout_mask`` (bool,
        ``x``'s shape, e.g. from ``lora_dropout.recorded_masks``) gives the forward's."""
        self._check_input(x)
        if self.num_adapters == 0:
            return F.linear(x, self.base_weight(), self.bias)
        lora_A, lora_B = cat_bank(self.lora_A, self.lora_B)
        p = self.dropout if self.training else 0.0
        return gated_lora_linear_ref(x, self.base_weight(), self.bias, lora_A, lora_B,
                                     self._gates_for(x, gates), self.rank_offsets, self.scaling,
                                     dropout=p, dropout_mask=dropout_mask if p > 0 else None)

    def extra_repr(self) -> str:
        base = "frozen" if not self.weight.requires_grad else "trainable"
        adapters = ", ".join(
            f"{k}: r={r} s={s:g}{' frozen' if self.is_frozen(k) else ''}"
            f"{' merged' if self._merged[k] is not None else ''}"
            for k, (r, s) in enumerate(zip(self.ranks, self.scaling)))
        external = ", external gates" if self._external_gates is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, base={base}, gate={self.gate_mode}{external}, "
                f"{f'dropout={self.dropout:g}, ' if self.dropout else ''}adapters=[{adapters}]")

    # ----------------------------------------------------------------------------- merge
    def delta_weight(self, adapters: Optional[Sequence] = None,
                     gates: Optional[Sequence[float]] = None) -> torch.Tensor:
        """``sum_k g_k * (alpha_k / r_k) * B_k @ A_k`` ``(D_out, D_in)`` over ``adapters`` (indices
        or names; default all), in float64 for a float64 base and float32 otherwise (not yet
        rounded to the base dtype). ``gates``: one value per adapter of the bank (default: the
        gates in effect, ``set_gates`` tensor or the ``gates`` Parameter)."""
        ks = range(self.num_adapters) if adapters is None else [
            self.adapter_index(a) for a in as_list(adapters, "adapters", _ADAPTER_LIST)]
        if gates is None:
            gates = self._gate_values("delta_weight")
        else:
            gates = as_list(gates, "gates", "K numbers (a list, tuple or tensor)")
            if len(gates) != self.num_adapters:
                raise ValueError(f"delta_weight: gates must have K = {self.num_adapters} "
                                 f"entries, got {len(gates)}")
        dtype = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        delta = torch.zeros(self.out_features, self.in_features, dtype=dtype,
                            device=self.weight.device)
        for k in ks:
            A, B = self.lora_A[k].detach().to(dtype), self.lora_B[k].detach().to(dtype)
            delta.addmm_(B, A, alpha=float(gates[k]) * self.scaling[k])
        return delta

    def _gate_values(self, what: str) -> list:
        if self.gate_mode != "per_adapter" and self._external_gates is None:
            raise ValueError(f"{what}: gate='per_row' routes every row to its own mix of "
                             "adapters, which no single weight matrix can hold; set per-adapter "
                             "gates with set_gates(g) first")
        g = self._external_gates if self._external_gates is not None else self.gates
        return [float(v) for v in g.detach().tolist()]

    def merge(self, adapters: Optional[Sequence] = None) -> list:
        """Fold adapters into the base weight for inference and zero their gates, so the output
        is unchanged (up to one rounding of ``W`` to its dtype) and they cost nothing.

        ``adapters``: indices or names; default every adapter with a non-zero gate that is not
        merged yet. Uses the layer's own per-adapter gates (a ``set_gates`` tensor is shared with
        other layers and cannot be zeroed here: ``set_gates(None)`` first, or use
        ``llf.merge_and_unload``). Returns the merged indices. Do not train merged adapters:
        :meth:`unmerge` subtracts their *current* weights. ``W`` is changed in place (it is the
        Parameter shared with the ``nn.Linear`` the layer wraps)."""
        if self._external_gates is not None:
            raise ValueError("merge: this layer uses gates from set_gates (possibly shared by "
                             "other layers), which merge cannot zero; call set_gates(None) "
                             "first, or use llf.merge_and_unload(model)")
        gates = self._gate_values("merge")
        if adapters is None:
            ks = [k for k in range(self.num_adapters)
                  if gates[k] != 0 and self._merged[k] is None]
        else:
            ks = [self.adapter_index(a) for a in as_list(adapters, "adapters", _ADAPTER_LIST)]
            twice = [k for k in ks if self._merged[k] is not None]
            if twice or len(set(ks)) != len(ks):
                raise ValueError(f"merge: adapter(s) {twice or ks} already merged or listed "
                                 f"twice (merged now: {self.merged_adapters})")
        if not ks:
            return []
        self._add_to_weight(self.delta_weight(ks, gates))
        with torch.no_grad():
            for k in ks:
                self._merged[k] = gates[k]
                self.gates[k] = 0.0
        return ks

    def unmerge(self) -> list:
        """Undo :meth:`merge`: subtract the merged adapters from ``W`` and give them back their
        gates. Returns the indices that were unmerged."""
        ks = self.merged_adapters
        if not ks:
            return []
        gates = [0.0 if g is None else g for g in self._merged]
        self._add_to_weight(-self.delta_weight(ks, gates))
        with torch.no_grad():
            for k in ks:
                self.gates[k] = gates[k]
                self._merged[k] = None
        return ks

    def _add_to_weight(self, delta: torch.Tensor) -> None:
        with torch.no_grad():
            # One rounding to the base dtype: the sum is formed in delta's (wider) dtype.
            W = self.base_weight()
            W.copy_((W.to(delta.dtype) + delta).to(W.dtype))

    # ----------------------------------------------------------------------------- state dict
    def get_extra_state(self) -> torch.Tensor:
        """The bank's metadata as a ``uint8`` tensor (``layer_meta``): alphas, names, ranks,
        frozen flags, gate mode and trainability, merged gates."""
        if self.gate_mode == "per_adapter":
            gate_trainable = self.gates.requires_grad
        else:
            gate_trainable = self.router_weight.requires_grad
        return layer_meta.encode({
            "gate": self.gate_mode, "gate_trainable": gate_trainable, "ranks": self.ranks,
            "dropout": self.dropout,
            "alphas": list(self._alphas), "names": list(self._names), "merged": list(self._merged),
            "requires_grad": [[A.requires_grad, B.requires_grad]
                              for A, B in zip(self.lora_A, self.lora_B)]})

    def set_extra_state(self, state) -> None:
        meta = layer_meta.decode(state)
        K = self.num_adapters
        alphas, flags = meta["alphas"], meta["requires_grad"]
        if len(alphas) != K or len(flags) != K or len(meta.get("ranks", self.ranks)) != K:
            raise ValueError(f"GatedLoRALinear extra state describes {len(alphas)} adapters, the "
                             f"layer has {K}")
        if meta.get("ranks", self.ranks) != self.ranks:
            raise ValueError(f"GatedLoRALinear extra state has ranks {meta['ranks']}, the layer "
                             f"{self.ranks}")
        if meta.get("gate", self.gate_mode) != self.gate_mode:
            raise ValueError(f"GatedLoRALinear extra state has gate={meta['gate']!r}, the layer "
                             f"gate={self.gate_mode!r}")
        self._alphas = [float(a) for a in alphas]
        self._names = list(meta.get("names", [f"adapter_{k}" for k in range(K)]))
        self._merged = list(meta.get("merged", [None] * K))
        for (A, B), (ga, gb) in zip(zip(self.lora_A, self.lora_B), flags):
            A.requires_grad_(ga)
            B.requires_grad_(gb)
        if "dropout" in meta:
            self.dropout = check_p(meta["dropout"])
        if "gate_trainable" in meta:
            for name in ("gates", "router_weight", "router_bias"):
                if self._parameters.get(name) is not None:
                    self._parameters[name].requires_grad_(meta["gate_trainable"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Same layout (adapter count and ranks): the ordinary load copies into the live
        # Parameters, so an optimizer built before the load trains the loaded values (resume).
        # Another layout: rebuild the bank from the saved shapes first, so a freshly constructed
        # layer accepts any saved bank; Parameters it had are replaced, which an optimizer built
        # earlier cannot see, hence the warning.
        ranks = []
        while f"{prefix}lora_A.{len(ranks)}" in state_dict:
            ranks.append(state_dict[f"{prefix}lora_A.{len(ranks)}"].shape[0])
        if ranks != self.ranks:
            if self.num_adapters:
                warnings.warn(
                    f"GatedLoRALinear {prefix.rstrip('.') or '(root)'}: the state dict holds "
                    f"adapters of ranks {ranks}, the layer had {self.ranks}; the bank was rebuilt "
                    "with new Parameters, so an optimizer built before this load holds stale "
                    "ones: build the optimizer after loading", stacklevel=2)
            self._merged = [None] * self.num_adapters
            while self.num_adapters:
                self.remove_adapter(self.num_adapters - 1)
            for r in ranks:
                self.add_adapter(rank=r)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _check_rank(rank, name: str) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{name} must be an int >= 1, got {rank!r}")


def _check_alpha(alpha, name: str) -> float:
    """``alpha`` as a float: a finite, non-zero real number (a zero alpha makes an adapter that
    never changes the output; a string such as ``"16"`` is a caller's bug, not a number)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float), got "
                        f"{type(alpha).__name__} {alpha!r}")
    value = float(alpha)
    if not math.isfinite(value) or value == 0.0:
        raise ValueError(f"{name} must be a finite non-zero number, got {alpha!r}")
    return value
