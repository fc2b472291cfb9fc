"""Multi-tenant batches: ``with llf.route(model, adapter_ids):`` sends each row to its adapter.

``adapter_ids`` says, per sample or per token, which adapter of the bank serves it:

- ``(batch,)``: one adapter per sample, broadcast over the sequence (and any other leading dim);
- ``(batch, seq)``: one adapter per token (the layer input must then be ``(batch, seq, D)``);
- entries are adapter names (``"tenant_a"``), indices into each layer's bank, or ``None`` / ``-1``
  for "no adapter" (the row gets the base output);
- a floating tensor ``(batch, K)`` or ``(batch, seq, K)`` is a weighted mix: column ``c`` is the
  adapter named ``names[c]`` (``names=`` argument), or bank index ``c`` without ``names``.

Inside the block every ``GatedLoRALinear`` of ``model`` uses this routing instead of its own gates
(as ``forward(x, gates=...)`` would); other models are not affected. The routing is exact: a row
gets ``base(x) + c * (alpha_k / r_k) * B_k A_k x`` for its adapter ``k`` (weight ``c``), the
same as running that row alone with adapter ``k`` on.

Cost: one-hot routing (names or indices, or a weighted form with one non-zero per row) runs
``routed_op``: rows grouped by adapter, each group through its own adapter only, so ``K`` tenants
cost one adapter's work. The grouping is decided once, on the host, when the block is entered
(no device read per layer): runs of consecutive samples with the same adapter are slices of the
batch (no copy); a batch whose tenants alternate is grouped by index lists. A mix (several
non-zero weights in a row) or weights that require grad go through ``gated_lora_linear`` with
per-row gates.

Gradient checkpointing: a recompute during ``backward()`` (possibly after the ``with`` block has
closed, inside another one, or on an autograd thread) runs under the routing its forward ran
under, whichever way checkpointing was turned on (HF's flag before or inside the block,
``torch.utils.checkpoint`` by hand, either ``use_reentrant``): ``routing_state.for_call``.

For the HF ``Trainer``: :func:`accept_adapter_ids` lets ``model(..., adapter_ids=ids)`` take the
routing as an input (the collator puts ``adapter_ids`` in the batch; ``llf.trainer_callbacks()``
installs it).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..op import lora_dropout, recompute_seeds
from ..module import routing_state
from .dist_tensors import unwrap as _unwrap
from .inject import injected_layers
from ..op.routed_op import routed_linear, routed_lora_

ROUTE_INPUT = routing_state.ROUTE_INPUT
# Above this many runs per distinct (adapter, weight) group, rows are grouped by index lists
# (one gather per group) instead of by slices (one small GEMM pair per run).
_RUNS_PER_GROUP = 2


def _is_key(v) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _parse_ids(adapter_ids):
    """``(unit, batch_shape, keys)`` for names/indices, ``("weights", batch_shape, tensor)`` for a
    weighted form. ``unit``: ``"sample"`` (``(batch,)``) or ``"token"`` (``(batch, seq)``);
    ``keys``: the flat list (row-major) of names, ints or ``None``."""
    if isinstance(adapter_ids, torch.Tensor):
        t = adapter_ids
        if t.dtype.is_floating_point:
            if t.dim() not in (2, 3):
                raise ValueError(f"adapter_ids: a weighted routing is (batch, K) or "
                                 f"(batch, seq, K), got shape {tuple(t.shape)}")
            return "weights", tuple(t.shape[:-1]), t
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"adapter_ids: expected an integer tensor of indices or a floating "
                            f"tensor of weights, got {t.dtype}")
        if t.dim() not in (1, 2):
            raise ValueError(f"adapter_ids: indices are (batch,) or (batch, seq), got shape "
                             f"{tuple(t.shape)}")
        keys = [None if v == -1 else v for v in t.reshape(-1).tolist()]
        return ("sample" if t.dim() == 1 else "token"), tuple(t.shape), keys
    if isinstance(adapter_ids, (str, bytes)) or not isinstance(adapter_ids, Sequence):
        raise TypeError(f"adapter_ids must be a (batch,) or (batch, seq) list/tensor of adapter "
                        f"names or indices, or a floating (batch, K) tensor of weights; got "
                        f"{type(adapter_ids).__name__}")
    rows = list(adapter_ids)
    if rows and all(isinstance(r, (list, tuple)) for r in rows):
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise ValueError(f"adapter_ids: (batch, seq) rows must have one length, got "
                             f"{sorted(lengths)}")
        keys = [v for r in rows for v in r]
        unit, shape = "token", (len(rows), lengths.pop())
    else:
        keys, unit, shape = rows, "sample", (len(rows),)
    bad = [v for v in keys if not _is_key(v)]
    if bad:
        raise TypeError(f"adapter_ids entries must be adapter names (str), indices (int) or "
                        f"None, got {bad[:4]!r}")
    if not keys:
        raise ValueError("adapter_ids is empty")
    return unit, shape, [None if v == -1 else v for v in keys]


def _runs(keys: list) -> list:
    """``[(start, end, key), ...]`` over maximal runs of equal consecutive keys, ``None`` left
    out."""
    runs, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            if keys[start] is not None:
                runs.append((start, i, keys[start]))
            start = i
    return runs


class Routing:
    """The plan of one :func:`route` call: for each gated layer of the model, which rows go to
    which adapter. Built once on entering the block; read by every routed forward."""

    def __init__(self, model: nn.Module, adapter_ids, names: Optional[Sequence[str]] = None):
        inner = _unwrap(model)
        layers = injected_layers(inner)
        if not layers:
            raise ValueError(f"route: the {type(inner).__name__} has no GatedLoRALinear layer "
                             "(llf.inject first)")
        for name, layer in layers.items():
            if layer.merged_adapters:
                raise ValueError(f"route: layer {name!r} has merged adapters "
                                 f"{layer.merged_adapters} (inside its base weight, so every row "
                                 "would get them); unmerge first (llf.unmerge_adapters(model))")
        self.unit, self.batch_shape, spec = _parse_ids(adapter_ids)
        self._layers = {id(layer): name for name, layer in layers.items()}
        self._zeros: dict = {}
        self._rows: dict = {}
        self.dense: dict = {}     # id(layer) -> (B[, S], K_layer) gates (mixes)
        self.groups: dict = {}    # id(layer) -> [(unit rows: slice | unit index list, k, c)]
        if self.unit == "weights":
            self.unit = "sample" if len(self.batch_shape) == 1 else "token"
            keys = self._one_hot_keys(spec, names, layers)
            if keys is None:
                self._plan_dense(spec, names, layers)
                return
        else:
            if names is not None:
                raise ValueError("route: names= labels the columns of a weighted (batch, K) "
                                 "routing; with names or indices in adapter_ids leave it out")
            keys = [(k, 1.0) if k is not None else None for k in spec]
        self._plan_groups(keys, layers)

    # ------------------------------------------------------------------------ planning
    @staticmethod
    def _column_names(weights, names, layers):
        K = weights.shape[-1]
        if names is None:
            return list(range(K))
        names = list(names)
        if len(names) != K or not all(isinstance(n, str) for n in names):
            raise ValueError(f"route: names must be {K} adapter names, one per column of the "
                             f"weights {tuple(weights.shape)}; got {names!r}")
        return names

    def _one_hot_keys(self, weights, names, layers):
        """Flat ``[(column key, weight) | None]`` when every row has at most one non-zero weight
        and the weights do not train (one host read, here); else ``None`` (a mix)."""
        cols = self._column_names(weights, names, layers)
        self._check_keys(cols, layers)
        if weights.requires_grad:
            return None
        flat = weights.detach().reshape(-1, weights.shape[-1]).cpu()
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("route: the routing weights hold inf or NaN")
        nonzero = flat != 0
        if bool((nonzero.sum(1) > 1).any()):
            return None
        keys = []
        for row, nz in zip(flat.tolist(), nonzero.tolist()):
            c = nz.index(True) if any(nz) else None
            keys.append(None if c is None else (cols[c], row[c]))
        return keys

    def _plan_dense(self, weights, names, layers) -> None:
        cols = self._column_names(weights, names, layers)
        for lname, layer in layers.items():
            index = {c: self._layer_index(lname, layer, c) for c in cols}
            P = torch.zeros(len(cols), layer.num_adapters, dtype=weights.dtype,
                            device=weights.device)
            for c, key in enumerate(cols):
                if index[key] is not None:
                    P[c, index[key]] = 1.0
            self.dense[id(layer)] = weights @ P

    def _plan_groups(self, keys: list, layers) -> None:
        self._check_keys([k[0] for k in keys if k is not None], layers)
        runs = _runs(keys)
        distinct = list(OrderedDict.fromkeys(k for k in keys if k is not None))
        if len(runs) <= _RUNS_PER_GROUP * max(len(distinct), 1):
            unit_groups = [(slice(s, e), key) for s, e, key in runs]
        else:
            unit_groups = [([i for i, k in enumerate(keys) if k == key], key) for key in distinct]
        for lname, layer in layers.items():
            groups = []
            for rows, (key, weight) in unit_groups:
                k = self._layer_index(lname, layer, key)
                if k is not None and weight != 0:
                    groups.append((rows, k, weight * layer.scaling[k]))
            self.groups[id(layer)] = groups

    @staticmethod
    def _check_keys(keys, layers) -> None:
        known = {n for layer in layers.values() for n in layer.adapter_names}
        unknown = sorted({k for k in keys if isinstance(k, str) and k not in known})
        if unknown:
            raise KeyError(f"route: no layer has adapter(s) {unknown}; the adapters are "
                           f"{sorted(known)}")
        for k in {k for k in keys if not isinstance(k, str)}:
            small = [n for n, layer in layers.items() if not -1 <= k < layer.num_adapters]
            if small:
                raise IndexError(f"route: adapter index {k} is out of range for layer "
                                 f"{small[0]!r} ({layers[small[0]].num_adapters} adapters)")

    @staticmethod
    def _layer_index(lname, layer, key):
        """The bank index of ``key`` in this layer, or ``None`` (a name it does not hold)."""
        if isinstance(key, str):
            names = layer.adapter_names
            return names.index(key) if key in names else None
        return key

    # ------------------------------------------------------------------------ forward
    def _check_rows(self, lname: str, x: torch.Tensor) -> int:
        """Rows of ``x`` per routing unit; ``ValueError`` when ``x`` does not fit the routing."""
        if self.unit == "sample":
            if x.dim() < 2 or x.shape[0] != self.batch_shape[0]:
                raise ValueError(f"route: layer {lname!r} got input {tuple(x.shape)}, whose batch "
                                 f"dimension is not the routing's {self.batch_shape[0]} samples")
            return x[..., 0].numel() // self.batch_shape[0]
        if tuple(x.shape[:-1]) != self.batch_shape:
            raise ValueError(f"route: layer {lname!r} got input {tuple(x.shape)}; a (batch, seq) "
                             f"routing {self.batch_shape} needs (batch, seq, D) inputs (route "
                             "generate() with one adapter per sample, shape (batch,))")
        return 1

    def _row_groups(self, groups: list, per: int, device) -> list:
        out = []
        for rows, k, c in groups:
            if isinstance(rows, slice):
                out.append((slice(rows.start * per, rows.stop * per), k, c))
                continue
            key = (id(rows), per, device)
            if key not in self._rows:
                units = torch.tensor(rows, device=device)
                self._rows[key] = (units[:, None] * per + torch.arange(per, device=device)
                                   ).reshape(-1)
            out.append((self._rows[key], k, c))
        return out

    def _base(self, layer, x):
        """The layer's base output, through its own forward with every gate 0 (exactly the base:
        no adapter is active), so any base the layer supports works here."""
        A = layer.lora_A[0]
        key = (id(layer), layer.num_adapters, A.device, A.dtype)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros(layer.num_adapters, device=A.device, dtype=A.dtype)
        return layer(x, gates=self._zeros[key])

    def forward(self, layer, x: torch.Tensor):
        """``layer``'s routed output for ``x``, or ``None`` when ``layer`` is not routed here."""
        lname = self._layers.get(id(layer))
        if lname is None or layer.num_adapters == 0:
            return None
        per = self._check_rows(lname, x)
        if id(layer) in self.dense:
            g = self.dense[id(layer)]
            shape = tuple(x.shape[:-1]) + (g.shape[-1],)
            g = g.reshape(g.shape[0], *([1] * (x.dim() - g.dim())), *g.shape[1:])
            return layer(x, gates=g.expand(shape))
        groups = self._row_groups(self.groups[id(layer)], per, x.device)
        x2d = x.reshape(-1, x.shape[-1])
        x_lora = None
        if layer.training and layer.dropout > 0:
            # The op's seeded mask, not F.dropout: a checkpoint recompute replays the seed.
            x_lora = lora_dropout.dropped(x2d, recompute_seeds.call_seed(x2d.device),
                                          layer.dropout)
        A, B = list(layer.lora_A), list(layer.lora_B)
        if _plain_base(layer, x):
            y2d = routed_linear(x2d, layer.base_weight(), layer.bias, groups, A, B, x_lora)
            return y2d.view(*x.shape[:-1], y2d.shape[-1])
        # a black-box base (QLoRA): its forward
        y = layer._base_forward(x) if hasattr(layer, "base_layer") else self._base(layer, x)
        if not groups:
            return y
        out = routed_lora_(y.reshape(-1, y.shape[-1]), x2d if x_lora is None else x_lora,
                           groups, A, B)
        return out.view(y.shape)


def _plain_base(layer, x: torch.Tensor) -> bool:
    """Whether ``F.linear(x, layer.weight, layer.bias)`` is the layer's base, as is: a floating
    weight of ``x``'s dtype, no autocast, no separate base module."""
    w = layer.weight
    return (getattr(layer, "base_layer", None) is None and isinstance(w, torch.Tensor)
            and w.dtype == x.dtype and w.is_floating_point()
            and not torch.is_autocast_enabled(x.device.type))


@contextlib.contextmanager
def route(model: nn.Module, adapter_ids, names: Optional[Sequence[str]] = None):
    """Route each row of the batches run inside the block to its adapter (module docstring).

    ``adapter_ids``: ``(batch,)`` or ``(batch, seq)`` names / indices / ``None``, or floating
    weights ``(batch, K)`` / ``(batch, seq, K)`` whose columns are ``names`` (default: bank
    indices). Unknown names raise ``KeyError``, out-of-range indices ``IndexError``, inputs whose
    batch does not match ``ValueError``. Yields the :class:`Routing` (on a PEFT model patched
    by ``llf.patch_peft``, a ``peft_routing.PeftRouting``)."""
    from .peft_routing import for_model     # (a patched PEFT model: llf.patch_peft)
    routing = for_model(model, adapter_ids, names, _parse_ids) or Routing(model, adapter_ids,
                                                                          names)
    with routing_state.installed(routing):
        yield routing


def accept_adapter_ids(model: nn.Module, key: str = ROUTE_INPUT) -> nn.Module:
    """Let ``model(..., adapter_ids=ids)`` route that call (as ``with route(model, ids):``) and
    return ``model``: a forward pre-hook takes ``adapter_ids`` out of the keyword arguments
    before the model sees them. This is the HF ``Trainer`` path: the data collator puts
    ``adapter_ids`` in each batch (``TrainingArguments(remove_unused_columns=False)`` keeps the
    dataset column it comes from). Installing twice is a no-op."""
    inner = _unwrap(model)
    if getattr(inner, routing_state.ACCEPTED, None) == key:
        return model
    stack: list = []

    def enter(module, args, kwargs):
        ids = kwargs.pop(key, None)
        cm = None if ids is None else route(module, ids)
        if cm is not None:
            cm.__enter__()
        stack.append(cm)
        return args, kwargs

    def leave(module, args, kwargs, output):
        cm = stack.pop() if stack else None
        if cm is not None:
            cm.__exit__(None, None, None)

    inner.register_forward_pre_hook(enter, with_kwargs=True)
    inner.register_forward_hook(leave, with_kwargs=True, always_call=True)
    setattr(inner, routing_state.ACCEPTED, key)
    return model
