"""The metadata of a ``GatedLoRALinear`` bank as one ``uint8`` tensor, for ``state_dict()``.

What a bank's weights do not say (each adapter's ``alpha``, name, frozen flags, merged state; the
gate mode and whether the gates train) travels as the layer's ``_extra_state``. It must be a
tensor, not a dict: safetensors, ``save_pretrained`` and the HF ``Trainer`` checkpoints store only
tensors. So the metadata is a small JSON document encoded as UTF-8 bytes in a 1-D ``uint8`` tensor:
exact (Python floats round-trip through JSON), untouched by ``model.half()`` (only floating-point
tensors are cast) and readable with ``decode(state_dict[key])``.

Version 1 (the dict ``{"alphas": [...], "requires_grad": [[a, b], ...]}``) is still accepted.
"""
from __future__ import annotations

import json

import torch

FORMAT = 2


def encode(meta: dict) -> torch.Tensor:
    """``meta`` (JSON-serialisable) -> 1-D ``uint8`` CPU tensor of its UTF-8 JSON text."""
    data = json.dumps(dict(meta, format=FORMAT), sort_keys=True).encode("utf-8")
    return torch.tensor(list(data), dtype=torch.uint8)


def decode(state) -> dict:
    """The metadata dict from what ``encode`` wrote, or from a version-1 dict.

    Returns keys ``alphas``, ``requires_grad`` and, for version 2, also ``ranks``, ``names``,
    ``gate``, ``gate_trainable``, ``merged`` (missing ones are absent: the caller keeps its own).
    """
    if isinstance(state, dict):            # version 1: written by litelora-fast 0.1.0
        if "alphas" not in state or "requires_grad" not in state:
            raise ValueError(f"GatedLoRALinear extra state: expected the keys 'alphas' and "
                             f"'requires_grad', got {sorted(state)}")
        return {"alphas": list(state["alphas"]), "requires_grad": list(state["requires_grad"])}
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
        kind = (f"a {state.dtype} tensor of shape {tuple(state.shape)}"
                if isinstance(state, torch.Tensor) else type(state).__name__)
        raise ValueError(f"GatedLoRALinear extra state must be a 1-D uint8 tensor (JSON bytes), "
                         f"got {kind}")
    try:
        meta = json.loads(bytes(state.cpu().tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"GatedLoRALinear extra state is not valid JSON bytes: {err}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"GatedLoRALinear extra state has format {meta.get('format')!r}; this "
                         f"version of litelora-fast reads format {FORMAT}")
    return meta
