"""Redundancy metrics on constructed subspaces whose principal angles and overlaps are known.

Everything is float64 inside ``redundancy``; the constructions are exact up to rounding, so the
bound is 1e-8 (SVD of a 40 x 4 float64 matrix is accurate to ~1e-14; angles near 0 lose digits to
arccos, which is why the drawn angles stay away from 0 and pi/2).
"""
import math

import pytest
import torch

from litelora_fast import GatedLoRALinear
from litelora_fast.redundancy import (adapters_from_state_dict, explained_share, layer_report,
                                      principal_angles, subspace_similarity)

TOL = 1e-8
D = 40


def _frame(g, d=D, k=8):
    """``k`` orthonormal columns in R^d, float64."""
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]


def _mix(M, g):
    """Right-multiply by a random well-conditioned matrix: same span, not orthonormal."""
    k = M.shape[1]
    return M @ (torch.eye(k, dtype=torch.float64) + 0.3 * torch.randn(k, k, generator=g,
                                                                       dtype=torch.float64))


def _pair_with_angles(g, thetas):
    """Two bases whose principal angles are exactly ``thetas``."""
    Q = _frame(g, k=2 * len(thetas))
    r = len(thetas)
    U1 = Q[:, :r]
    U2 = torch.stack([math.cos(t) * Q[:, i] + math.sin(t) * Q[:, r + i]
                      for i, t in enumerate(thetas)], 1)
    return _mix(U1, g), _mix(U2, g)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_principal_angles_known(seed, r):
    g = torch.Generator().manual_seed(seed)
    thetas = sorted((0.1 + 1.3 * torch.rand(r, generator=g, dtype=torch.float64)).tolist())
    U1, U2 = _pair_with_angles(g, thetas)
    got = principal_angles(U1.float().double(), U2)
    assert torch.allclose(got.double(), torch.tensor(thetas, dtype=torch.float64), atol=1e-6)
    got = principal_angles(U1, U2)
    assert torch.allclose(got, torch.tensor(thetas, dtype=torch.float64), atol=TOL)


def test_principal_angles_extremes(seed):
    g = torch.Generator().manual_seed(seed)
    Q = _frame(g)
    same = principal_angles(_mix(Q[:, :3], g), _mix(Q[:, :3], g))
    assert same.abs().max() < 1e-6                       # arccos near 1 keeps ~sqrt(eps) digits
    ortho = principal_angles(Q[:, :3], Q[:, 3:6])
    assert torch.allclose(ortho, torch.full((3,), math.pi / 2, dtype=torch.float64), atol=TOL)


@pytest.mark.parametrize("r", [2, 4])
def test_subspace_similarity_is_mean_cos2(seed, r):
    g = torch.Generator().manual_seed(seed)
    thetas = (0.1 + 1.3 * torch.rand(r, generator=g, dtype=torch.float64)).tolist()
    U1, U2 = _pair_with_angles(g, thetas)
    # lora_A layout: rows span the subspace
    phi = subspace_similarity(U1.T, U2.T)
    assert abs(phi - sum(math.cos(t) ** 2 for t in thetas) / r) < TOL
    assert abs(subspace_similarity(U1.T, U1.T) - 1.0) < TOL


def test_subspace_similarity_top_directions(seed):
    g = torch.Generator().manual_seed(seed)
    Q = _frame(g)
    # A's strongest direction is q0, its weaker one q1; A2 is q1 alone
    A = torch.stack([3.0 * Q[:, 0], 1.0 * Q[:, 1]])
    A2 = Q[:, 1:2].T
    assert abs(subspace_similarity(A, A2, 1, 1) - 0.0) < TOL
    assert abs(subspace_similarity(A, A2, 2, 1) - 1.0) < TOL     # contained: min(i, j) = 1
    assert abs(subspace_similarity(A, Q[:, 2:4].T)) < TOL          # orthogonal


def test_explained_share_matrix_mode(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda: (torch.randn(16, 2, generator=g, dtype=torch.float64)
                 @ torch.randn(2, 24, generator=g, dtype=torch.float64))
    d1, d2 = r(), r()
    c1, c2 = torch.randn(2, generator=g, dtype=torch.float64).tolist()
    inside = c1 * d1 + c2 * d2
    # a part Frobenius-orthogonal to d1 and d2
    Q = torch.linalg.qr(torch.stack([d1.flatten(), d2.flatten()], 1))[0]
    e = torch.randn(16 * 24, generator=g, dtype=torch.float64)
    e = (e - Q @ (Q.T @ e)).reshape(16, 24) * 0.1
    want = float(inside.pow(2).sum() / (inside.pow(2).sum() + e.pow(2).sum()))
    got = explained_share([d1, d2, inside + e], 2)
    assert abs(got - want) < TOL
    assert abs(explained_share([d1, d2, inside], 2) - 1.0) < TOL
    assert explained_share([d1], 0) == 0.0                         # nothing else in the bank


def test_explained_share_subspace_mode(seed):
    g = torch.Generator().manual_seed(seed)
    U, V = _frame(g, 16, 6), _frame(g, 24, 6)
    d1 = U[:, :2] @ torch.randn(2, 2, generator=g, dtype=torch.float64) @ V[:, :2].T
    d2 = U[:, 2:4] @ torch.randn(2, 2, generator=g, dtype=torch.float64) @ V[:, 2:4].T
    # inside the joint column/row spans of d1, d2 but not a combination of them
    inside = U[:, :4] @ torch.randn(4, 4, generator=g, dtype=torch.float64) @ V[:, :4].T
    outside = U[:, 4:5] @ V[:, 4:5].T * 0.7
    want = float(inside.pow(2).sum() / (inside.pow(2).sum() + outside.pow(2).sum()))
    assert abs(explained_share([d1, d2, inside + outside], 2, "subspace") - want) < TOL
    assert explained_share([d1, d2, inside], 2, "matrix") < 1.0 - 1e-3


def test_layer_report_and_state_dict(seed, fast_path):
    torch.manual_seed(seed)
    layer = GatedLoRALinear(24, 16, rank=3, num_adapters=3)
    with torch.no_grad():
        for k in range(3):
            layer.lora_B[k].normal_()
    found = adapters_from_state_dict(torch.nn.Sequential(layer).state_dict())
    assert list(found) == ["0"] and len(found["0"]) == 3
    rep = layer_report(found["0"])
    for key in ("phi_A", "phi_B"):
        assert all(abs(rep[key][k][k] - 1.0) < TOL for k in range(3))
        assert all(0.0 <= v <= 1.0 + TOL for row in rep[key] for v in row)
    assert len(rep["explained"]) == 3 and all(0.0 <= v <= 1.0 + TOL for v in rep["explained"])


def test_errors():
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="same number of columns"):
        subspace_similarity(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="i and j"):
        subspace_similarity(torch.randn(2, 5), torch.randn(2, 5), i=3)
    with pytest.raises(ValueError, match="2-D"):
        principal_angles(torch.randn(5), torch.randn(5, 2))
    with pytest.raises(ValueError, match="mode"):
        explained_share([torch.randn(3, 3)], 0, mode="nope")
