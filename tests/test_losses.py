"""Each loss term against a slow, obvious implementation written here (float64, 1e-5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmcr import losses as L
from cmcr.configs.schema import LossWeights
from cmcr.errors import CMCRError

TOL = 1e-5


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def test_nce_matches_loop() -> None:
    k, q, tau = _unit(7, 5, 0), _unit(7, 5, 1), 0.07
    total = 0.0
    for i in range(len(k)):
        sims = [float(k[i] @ q[j]) / tau for j in range(len(q))]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    assert abs(float(L.nce(k, q, tau)) - total / len(k)) < TOL


def _probs_loop(f: torch.Tensor, codes: torch.Tensor) -> list[list[float]]:
    rows = []
    for i in range(len(f)):
        e = [math.exp(-math.sqrt(float(((f[i] - c) ** 2).sum()))) for c in codes]
        rows.append([x / sum(e) for x in e])
    return rows


def test_cmcm_matches_pair_loop() -> None:
    f_p, f_v, codes = _unit(6, 4, 2), _unit(6, 4, 3), _unit(5, 4, 4)
    p, v = _probs_loop(f_p, codes), _probs_loop(f_v, codes)
    n, m = len(p), len(codes)
    s = [
        [
            sum(p[i][c] * math.log(v[j][c]) + v[i][c] * math.log(p[j][c]) for c in range(m))
            for j in range(n)
        ]
        for i in range(n)
    ]
    expected = sum(-(s[i][i] - math.log(sum(math.exp(x) for x in s[i]))) for i in range(n)) / n
    assert abs(float(L.cmcm(f_p, f_v, codes)) - expected) < TOL


def test_cmcm_prefers_matching_codes() -> None:
    codes = torch.eye(4, dtype=torch.float64)
    f = codes.clone()
    matched = L.cmcm(f, f, codes)
    shuffled = L.cmcm(f, f[[1, 2, 3, 0]], codes)
    assert matched < shuffled


def test_commit_matches_formula() -> None:
    f_p, f_v, e_p, e_v = (_unit(5, 3, s) for s in range(4))
    beta = 0.25

    def mse(a: torch.Tensor, b: torch.Tensor) -> float:
        return (
            sum(float(x - y) ** 2 for x, y in zip(a.flatten(), b.flatten(), strict=True))
            / a.numel()
        )

    expected = (
        2 * beta * mse(f_p, e_p) + beta * mse(f_p, e_v) + 2 * beta * mse(f_v, e_v)
    ) + beta * mse(f_v, e_p)
    assert abs(float(L.commit(f_p, f_v, e_p, e_v, beta)) - expected) < TOL


def test_commit_stops_gradient_to_codes() -> None:
    f = _unit(4, 3, 0).requires_grad_()
    e = _unit(4, 3, 1).requires_grad_()
    L.commit(f, f, e, e, 0.25).backward()
    assert e.grad is None and f.grad is not None


def test_orth_matches_loop() -> None:
    g = torch.Generator().manual_seed(5)
    shared = _unit(9, 4, 6)
    spec = torch.randn(9, 4, generator=g, dtype=torch.float64)
    d = shared.shape[1]
    spec_n = [[float(x) / math.sqrt(float((row**2).sum())) for x in row] for row in spec]
    total = 0.0
    for a in range(d):
        for b in range(d):
            total += sum(float(shared[i, a]) * spec_n[i][b] for i in range(len(spec))) ** 2
    assert abs(float(L.orth(shared, spec)) - math.sqrt(total) / d**2) < TOL


def test_orth_zero_when_point_columns_are_orthogonal() -> None:
    # shared features live on points 0-2, specific ones on points 3-5: Fsᵀ·Fp = 0
    shared = torch.zeros(6, 4, dtype=torch.float64)
    shared[:3] = torch.randn(3, 4, dtype=torch.float64)
    spec = torch.zeros(6, 4, dtype=torch.float64)
    spec[3:] = torch.randn(3, 4, dtype=torch.float64)
    assert float(L.orth(shared, spec)) < 1e-12
    assert float(L.orth(shared, shared)) > 1e-3


def test_occ_matches_bce() -> None:
    logits = torch.tensor([2.0, -1.0, 0.3, -3.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    expected = 0.0
    for x, t in zip(logits.tolist(), y.tolist(), strict=True):
        s = 1 / (1 + math.exp(-x))
        expected -= t * math.log(s) + (1 - t) * math.log(1 - s)
    assert abs(float(L.occ(logits, y)) - expected / 4) < TOL


def test_intensity_only_on_valid_queries() -> None:
    pred = torch.tensor([0.5, 0.2, 9.0], dtype=torch.float64)
    target = torch.tensor([0.1, 0.4, 0.0], dtype=torch.float64)
    valid = torch.tensor([True, True, False])
    assert abs(float(L.intensity(pred, target, valid)) - (0.4 + 0.2) / 2) < TOL


def test_mim_all_and_masked() -> None:
    g = torch.Generator().manual_seed(0)
    recon = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 4, 5, generator=g) < 0.4
    sq = (recon - target) ** 2
    assert abs(float(L.mim(recon, target, mask, "all")) - float(sq.mean())) < TOL
    picked = [
        float(sq[i, c, r, k])
        for i in range(2)
        for c in range(3)
        for r in range(4)
        for k in range(5)
        if mask[i, r, k]
    ]
    expected = sum(picked) / len(picked)
    assert abs(float(L.mim(recon, target, mask, "masked")) - expected) < TOL


def test_weighted_total_applies_weights() -> None:
    losses = {"nce": torch.tensor(2.0), "orth": torch.tensor(3.0)}
    w = LossWeights(nce=0.5, orth=0.1)
    assert abs(float(L.weighted_total(losses, w)) - (1.0 + 0.3)) < 1e-6
    with pytest.raises(CMCRError, match="loss.weights.bogus"):
        L.weighted_total({"bogus": torch.tensor(1.0)}, w)
    with pytest.raises(CMCRError):
        L.weighted_total({}, w)
