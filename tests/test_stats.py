"""What the seeds support (cmcr/results/stats.py): constructed data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from cmcr.results import stats as S


def test_large_consistent_paired_difference_holds() -> None:
    """+2.0 on every seed with ±0.1 jitter, while seeds themselves swing by ±5: paired, it holds."""
    ref = {0: 30.0, 1: 35.0, 2: 25.0}
    row = {0: 32.1, 1: 36.9, 2: 27.0}  # differences 2.1, 1.9, 2.0
    c = S.compare(row, ref)
    assert c.test == S.PAIRED and c.n == 3
    assert c.diff == pytest.approx(2.0)
    # t-interval by hand: mean ± t_{0.975, 2} · sd / √3 with sd = 0.1
    half = sps.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (c.lo, c.hi) == pytest.approx((2.0 - half, 2.0 + half))
    assert c.p < 0.001
    # unpaired, the same numbers are noise: the seed-to-seed swing hides the difference
    unpaired = S.compare({10: 32.1, 11: 36.9, 12: 27.0}, ref)
    assert unpaired.test == S.WELCH and unpaired.p > 0.5 and unpaired.lo < 0 < unpaired.hi


def test_difference_within_noise_does_not_hold() -> None:
    """Per-seed differences +1, −1, +0.5: the interval covers 0 and p is large."""
    c = S.compare({0: 31.0, 1: 29.0, 2: 30.5}, {0: 30.0, 1: 30.0, 2: 30.0})
    assert c.lo < 0 < c.hi and c.p > 0.5
    assert S.holm([c.p])[0] >= S.ALPHA


def test_paired_matches_scipy_ttest_rel() -> None:
    """Paired t over the shared seeds only (seed 3 of the row has no partner)."""
    ref = {0: 1.0, 1: 2.0, 2: 4.0}
    row = {0: 1.5, 1: 2.2, 2: 4.9, 3: 100.0}
    c = S.compare(row, ref)
    want = sps.ttest_rel([1.5, 2.2, 4.9], [1.0, 2.0, 4.0])
    assert c.n == 3 and c.p == pytest.approx(want.pvalue)


def test_one_run_has_no_interval() -> None:
    """n = 1 on either side and no shared pair: no test, no interval, says n = 1."""
    c = S.compare({0: 31.0}, {1: 30.0, 2: 30.5})
    assert c.test == S.SINGLE and math.isnan(c.p) and math.isnan(c.lo)
    assert c.diff == pytest.approx(0.75)


def test_identical_differences_are_exact() -> None:
    """No spread: p is 0 for a nonzero difference, 1 for none (scipy would divide by zero)."""
    assert S.compare({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}).p == 0.0
    c = S.compare({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert c.p == 1.0 and c.diff == 0.0


def test_holm_known_values() -> None:
    """Holm by hand: sorted p × (m, m−1, …), running max, capped at 1; NaN left out."""
    adj = S.holm([0.01, 0.04, 0.03, np.nan, 0.5])
    # m = 4: 0.01·4 = 0.04; 0.03·3 = 0.09; 0.04·2 = 0.08 → max(0.09, 0.08) = 0.09; 0.5·1
    assert adj[[0, 2, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert math.isnan(adj[3])


def test_holm_changes_a_borderline_decision() -> None:
    """p = 0.02 holds alone, not among three rows (0.02·3 = 0.06); the smallest still holds."""
    assert S.holm([0.02])[0] < S.ALPHA
    adj = S.holm([0.02, 0.01, 0.6])
    assert adj[1] == pytest.approx(0.03) and adj[1] < S.ALPHA  # 0.01 · 3
    assert adj[0] == pytest.approx(0.04) and adj[0] < S.ALPHA  # 0.02 · 2, step-down
    adj = S.holm([0.02, 0.018, 0.6])
    assert adj[0] == pytest.approx(0.054) and adj[0] > S.ALPHA  # max(0.018·3, 0.02·2)
    # Bonferroni would need p < 0.05/3 for all; Holm is never stricter
    assert np.all(S.holm([0.02, 0.018, 0.6]) <= np.minimum(1, 3 * np.array([0.02, 0.018, 0.6])))


@pytest.mark.parametrize(("diff", "sd"), [(0.5, 1.0), (1.0, 2.0), (0.3, 1.0), (1.0, 1.0)])
def test_seeds_needed_matches_closed_form(diff: float, sd: float) -> None:
    """The noncentral-t answer ≈ the normal closed form ((z_.975 + z_.8) sd / d)², a little
    above it (the t test pays for estimating sd: about z²/2 ≈ 2 more pairs)."""
    n = S.seeds_needed(diff, sd)
    normal = S.seeds_needed_normal(diff, sd)
    assert math.ceil(normal) <= n <= math.ceil(normal) + 3
    assert S.paired_power(n, diff, sd) >= S.POWER > S.paired_power(n - 1, diff, sd)


def test_seeds_needed_textbook_case() -> None:
    """d = 0.5 (sd units), α = 0.05, power 0.8: normal 31.4 → 32 pairs; paired t needs 34."""
    assert S.seeds_needed_normal(0.5, 1.0) == pytest.approx(31.4, abs=0.05)
    assert S.seeds_needed(0.5, 1.0) == 34


def test_seeds_needed_edges() -> None:
    """Zero difference: None (shown '—'); tiny: capped at MAX_SEEDS + 1 (shown '>100')."""
    assert S.seeds_needed(0.0, 1.0) is None
    assert S.seeds_needed(0.01, 1.0) == S.MAX_SEEDS + 1
    assert S.seeds_needed(1.0, math.nan) is None
    assert S.seeds_needed(-2.0, 1.0) == S.seeds_needed(2.0, 1.0)  # two-sided


def test_mean_halfwidth() -> None:
    """t_{0.975, n−1} · s / √n; NaN with one value."""
    v = [1.0, 2.0, 3.0, 4.0]
    want = sps.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2
    assert S.mean_halfwidth(v) == pytest.approx(want)
    assert math.isnan(S.mean_halfwidth([1.0]))


def test_one_shared_seed_gives_that_seeds_difference() -> None:
    """A single run sharing its seed with the reference: the difference on that seed."""
    c = S.compare({0: 31.0}, {0: 30.0, 1: 40.0})
    assert c.test == S.SINGLE and c.diff == pytest.approx(1.0)
