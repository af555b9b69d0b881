"""The label-free early signals of issue 27 (cmcr/engine/spectrum.py): RankMe and alpha-ReQ,
against slow obvious versions and known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmcr.engine import spectrum


def _slow_rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe as the paper writes it: singular values from the eigenvalues of x^T x, a loop."""
    eig = np.linalg.eigvalsh(x.T @ x)
    s = [math.sqrt(max(e, 0.0)) for e in eig]
    total = sum(s)
    h = 0.0
    for v in s:
        p = v / total + eps
        h -= p * math.log(p)
    return math.exp(h)


def _slow_alpha(x: np.ndarray) -> float:
    """alpha-ReQ: eigenvalues of the covariance, sorted, a line through (log rank, log eig)."""
    lam = sorted(np.linalg.eigvalsh(np.cov(x, rowvar=False)), reverse=True)
    lam = [v for v in lam if v > 1e-10 * lam[0]]
    slope, _ = np.polyfit(np.log(np.arange(1, len(lam) + 1)), np.log(lam), 1)
    return float(-slope)


def test_rankme_and_alpha_agree_with_slow_versions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) * np.linspace(3.0, 0.1, 12)  # anisotropic
    t = torch.from_numpy(x)
    assert spectrum.rankme(t) == pytest.approx(_slow_rankme(x), rel=1e-6)
    assert spectrum.alpha_req(t) == pytest.approx(_slow_alpha(x), rel=1e-6)


def test_rankme_of_isotropic_gaussian_is_about_d_and_of_rank_k_about_k():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(20000, 32, generator=g)
    assert 0.97 * 32 < spectrum.rankme(iso) <= 32 + 1e-3
    k = 5
    low = torch.randn(4000, k, generator=g) @ torch.randn(k, 32, generator=g)
    assert 0.8 * k < spectrum.rankme(low) <= k + 1e-3  # the 27 zero directions add ~1e-5
    assert spectrum.rankme(torch.ones(100, 8)) == pytest.approx(1.0, abs=1e-4)  # rank 1


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_a_known_power_law(alpha):
    d, n = 24, 2000
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # orthonormal, centred columns
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** -alpha
    x = q * lam.sqrt() * math.sqrt(n - 1)  # covariance eigenvalues exactly lam
    assert spectrum.alpha_req(x) == pytest.approx(alpha, abs=1e-6)


def test_scores_read_a_capped_subsample_and_handle_degenerate_input():
    x = torch.randn(50000, 4)
    assert len(spectrum.subsample(x)) <= spectrum.MAX_ROWS
    assert torch.equal(spectrum.subsample(x[:10]), x[:10])
    assert spectrum.scores(torch.zeros(0, 4)) == {"rankme": 0.0, "alpha_req": 0.0}
    assert spectrum.alpha_req(torch.ones(10, 3)) == 0.0  # no spread: no spectrum to fit
