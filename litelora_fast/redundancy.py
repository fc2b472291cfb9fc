"""Redundancy between LoRA adapters: how much their subspaces and updates overlap.

- :func:`principal_angles`: the principal angles between the column spans of two matrices
  (``arccos`` of the singular values of ``Q_1^T Q_2``, orthonormal bases from an SVD).
- :func:`subspace_similarity`: the LoRA paper's normalized subspace similarity
  ``phi(A, A', i, j) = ||U_A^i^T U_A'^j||_F^2 / min(i, j)`` where ``U_A^i`` holds the top-``i``
  right singular vectors of ``A`` (the directions of input space it reads; for ``B`` pass
  ``B.T``). 1 when one subspace contains the other, 0 when they are orthogonal; it equals the mean
  of ``cos^2`` of the principal angles.
- :func:`explained_share`: the share of adapter j's update ``B_j A_j`` that the other adapters
  explain. ``mode="matrix"``: projection of ``vec(B_j A_j)`` on the linear span of the other
  updates -- what a reuse gate (one magnitude per frozen adapter) can express.
  ``mode="subspace"``: ``||P_U (B_j A_j) P_V||^2 / ||B_j A_j||^2`` with ``U``, ``V`` the joint
  column and row spans of the others -- what their subspaces could hold with re-trained cores.
- :func:`layer_report` / :func:`adapters_from_state_dict`: the matrices for every adapted layer of
  a saved checkpoint (the ``analyze`` command).
"""
from __future__ import annotations

import math
import re

import torch


def _basis(M: torch.Tensor, k=None, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis of the column span of ``M`` (top ``k`` directions if given), float64."""
    U, S, _ = torch.linalg.svd(M.detach().double(), full_matrices=False)
    if k is None:
        k = int((S > rtol * S.max()).sum()) if S.numel() and S.max() > 0 else 0
    return U[:, :k]


def _check_2d(name, M):
    if not isinstance(M, torch.Tensor) or M.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got "
                         f"{tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__}")


def principal_angles(M1: torch.Tensor, M2: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of ``M1`` ``(D, p)`` and
    ``M2`` ``(D, q)``; ``min(rank1, rank2)`` of them."""
    _check_2d("M1", M1)
    _check_2d("M2", M2)
    if M1.shape[0] != M2.shape[0]:
        raise ValueError(f"M1 and M2 must have the same number of rows, got {tuple(M1.shape)} and "
                         f"{tuple(M2.shape)}")
    Q1, Q2 = _basis(M1), _basis(M2)
    cos = torch.linalg.svdvals(Q1.T @ Q2).clamp(0.0, 1.0)
    return torch.arccos(cos)


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor, i=None, j=None) -> float:
    """``phi(A1, A2, i, j)`` (module docstring); rows of ``A1`` ``(r1, D)`` and ``A2`` ``(r2, D)``
    span the subspaces, as for ``lora_A``. ``i``, ``j`` default to the ranks."""
    _check_2d("A1", A1)
    _check_2d("A2", A2)
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(f"A1 and A2 must have the same number of columns, got {tuple(A1.shape)} "
                         f"and {tuple(A2.shape)}")
    i = A1.shape[0] if i is None else i
    j = A2.shape[0] if j is None else j
    if not (1 <= i <= min(A1.shape) and 1 <= j <= min(A2.shape)):
        raise ValueError(f"i and j must be in 1..rank, got i={i} for A1 {tuple(A1.shape)}, "
                         f"j={j} for A2 {tuple(A2.shape)}")
    U1, U2 = _basis(A1.T, i), _basis(A2.T, j)
    return float((U1.T @ U2).pow(2).sum() / min(i, j))


def explained_share(updates: list, j: int, mode: str = "matrix") -> float:
    """Share (0..1) of ``updates[j]`` ``(D_out, D_in)`` explained by the other updates."""
    if mode not in ("matrix", "subspace"):
        raise ValueError(f"mode must be 'matrix' or 'subspace', got {mode!r}")
    target = updates[j].detach().double()
    others = [u.detach().double() for k, u in enumerate(updates) if k != j]
    total = float(target.pow(2).sum())
    if not others or total == 0.0:
        return 0.0
    if mode == "matrix":
        Q = _basis(torch.stack([u.flatten() for u in others], 1))
        proj = Q @ (Q.T @ target.flatten())
        return float(proj.pow(2).sum()) / total
    U = _basis(torch.cat(others, 1))
    V = _basis(torch.cat([u.T for u in others], 1))
    return float((U.T @ target @ V).pow(2).sum()) / total


def layer_report(adapters: list) -> dict:
    """For one layer's adapters ``[(A_k, B_k)]``: ``phi_A``, ``phi_B`` (K x K, at full ranks),
    ``angle_A_deg`` (mean principal angle, degrees), ``explained`` and ``explained_subspace``
    (one share per adapter)."""
    K = len(adapters)
    updates = [B.detach().double() @ A.detach().double() for A, B in adapters]
    phi_A = [[subspace_similarity(adapters[a][0], adapters[b][0]) for b in range(K)]
             for a in range(K)]
    phi_B = [[subspace_similarity(adapters[a][1].T, adapters[b][1].T) for b in range(K)]
             for a in range(K)]
    angle_A = [[math.degrees(float(principal_angles(adapters[a][0].T, adapters[b][0].T).mean()))
                for b in range(K)] for a in range(K)]
    return {"phi_A": phi_A, "phi_B": phi_B, "angle_A_deg": angle_A,
            "explained": [explained_share(updates, j) for j in range(K)],
            "explained_subspace": [explained_share(updates, j, "subspace") for j in range(K)]}


def adapters_from_state_dict(state_dict: dict) -> dict:
    """``{layer prefix: [(A_k, B_k), ...]}`` from a model state dict holding ``GatedLoRALinear``
    layers (keys ``<prefix>.lora_A.<k>`` / ``<prefix>.lora_B.<k>``)."""
    found: dict = {}
    for key in state_dict:
        m = re.fullmatch(r"(.*?)\.?lora_A\.(\d+)", key) if isinstance(key, str) else None
        if m:
            found.setdefault(m.group(1), {})[int(m.group(2))] = key
    out = {}
    for prefix, keys in found.items():
        dot = f"{prefix}." if prefix else ""
        pairs = []
        for k in sorted(keys):
            A, B = state_dict[keys[k]], state_dict.get(f"{dot}lora_B.{k}")
            if not (isinstance(A, torch.Tensor) and A.dim() == 2
                    and isinstance(B, torch.Tensor) and B.dim() == 2
                    and A.shape[0] == B.shape[1]):
                raise ValueError(f"{keys[k]} and {dot}lora_B.{k} must be matrices (r, D_in) and "
                                 f"(D_out, r), got {_what(A)} and {_what(B)}")
            pairs.append((A, B))
        out[prefix or "<root>"] = pairs
    return out


def _what(v) -> str:
    if v is None:
        return "nothing"
    return f"a tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
