"""PEFT itself as a benchmark peer: the case's adapters active at once on one PEFT ``LoraLayer``.

This is what a PEFT user runs to apply several adapters together: ``get_peft_model`` on the base
``nn.Linear``, ``add_adapter`` for the others, then ``set_adapter([...])`` with every name, so
PEFT's forward loops over the active adapters (``result += lora_B(lora_A(x)) * scaling``).

The layer computes the same function as ours on the same tensors:

- the base weight is the case's ``weight`` (frozen), adapter k's ``lora_A``/``lora_B`` weights are
  rows/columns ``[k r, (k+1) r)`` of the packed bank, in the case's dtype (``autocast_adapter_dtype``
  off, so bf16 adapters stay bf16 as ours do);
- PEFT has no gates: adapter k's scaling is ``g_k * s_k`` (the gate folded in), and an adapter
  whose gate is exactly 0 is simply not activated, as a PEFT user would do. Cases with trainable
  gates have no PEFT counterpart (``bench_cases.applicable``);
- with ``case.dropout`` > 0 it is PEFT's ``lora_dropout`` (an ``nn.Dropout`` per adapter, in
  training mode): each active adapter draws its own mask and materialises its dropped ``x``.

``PeftPeer(case, inp, patched=True)`` is the same PEFT layer under ``llf.patch_peft_model``
(peer ``peft_patched``): PEFT's module, our op, one mask for the bank drawn in the op.

``available()`` says why the peer cannot run (PEFT not installed: the GPU machine may lack it)
or ``None``; the harness then records the peer as skipped and times the others.
"""
from __future__ import annotations

import importlib.util
from collections import OrderedDict

import torch


def available():
    """``None`` when PEFT can be imported, else the reason it cannot."""
    if importlib.util.find_spec("peft") is None:
        return "peft is not installed (pip install -e '.[peft]')"
    return None


class PeftPeer:
    """One PEFT ``LoraLayer`` holding the case's adapters; ``layer(x)`` is the peer's forward."""

    def __init__(self, case, inp, patched: bool = False):
        from peft import LoraConfig, get_peft_model

        K, r = case.k, case.r
        weight = inp.weight.detach()
        base = torch.nn.Linear(case.d_in, case.d_out, bias=False, device="meta")
        base.weight = torch.nn.Parameter(weight, requires_grad=False)   # the same storage as W
        config = LoraConfig(r=r, lora_alpha=r, target_modules=["proj"],
                            lora_dropout=float(getattr(case, "dropout", 0.0)),
                            init_lora_weights=False)
        model = get_peft_model(torch.nn.Sequential(OrderedDict(proj=base)), config,
                               adapter_name="a0", autocast_adapter_dtype=False)
        for k in range(1, K):
            model.add_adapter(f"a{k}", config)
        layer = model.base_model.model.proj
        gates = inp.gates.detach().float().tolist()
        self.active = [k for k in range(K) if gates[k] != 0.0]
        with torch.no_grad():
            for k in range(K):
                name = f"a{k}"
                layer.lora_A[name].to(weight.dtype)
                layer.lora_B[name].to(weight.dtype)
                layer.lora_A[name].weight.copy_(inp.lora_A.detach()[k * r:(k + 1) * r])
                layer.lora_B[name].weight.copy_(inp.lora_B.detach()[:, k * r:(k + 1) * r])
                layer.scaling[name] = gates[k] * inp.scaling[k]
        layer.set_adapter([f"a{k}" for k in self.active])
        for k in range(K):   # the active adapters train, as with ours; the base stays frozen
            for p in (layer.lora_A[f"a{k}"].weight, layer.lora_B[f"a{k}"].weight):
                p.requires_grad_(k in self.active)
        layer.base_layer.weight.requires_grad_(False)
        layer.train()   # lora_dropout acts in training mode only
        if patched:     # the same layer through our op (llf.patch_peft's path)
            import litelora_fast as llf

            llf.patch_peft_model(model)
        self.layer, self.case, self.x = layer, case, inp.x
        self.params = [t for k in self.active
                       for t in (layer.lora_A[f"a{k}"].weight, layer.lora_B[f"a{k}"].weight)]

    def forward(self):
        return self.layer(self.x)

    def wrt(self) -> list:
        """What the peer differentiates: x and the active adapters' weights (ours: x, A, B)."""
        return [self.x, *self.params]

    def packed_grads(self, grads: list) -> list:
        """``[dx, dA, dB]`` in the packed layout (zeros for inactive adapters), from the grads
        ``autograd.grad(y, self.wrt())`` returned, to compare with the reference's."""
        K, r = self.case.k, self.case.r
        dx, rest = grads[0], grads[1:]
        dA = torch.zeros(K * r, self.case.d_in, dtype=dx.dtype, device=dx.device)
        dB = torch.zeros(self.case.d_out, K * r, dtype=dx.dtype, device=dx.device)
        for i, k in enumerate(self.active):
            dA[k * r:(k + 1) * r] = rest[2 * i]
            dB[:, k * r:(k + 1) * r] = rest[2 * i + 1]
        return [dx, dA, dB]
