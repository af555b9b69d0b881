"""What the seeds support: paired differences, intervals, Holm-corrected tests, seeds needed.

Choices (issue 18):
- **Interval: Student t over seeds, not the bootstrap.** With 2–5 seeds a bootstrap can draw
  only a handful of distinct resamples (3 seeds: 10), so its percentiles are coarse and too
  narrow; the t-interval is exact under normal seed noise and widens honestly as n shrinks.
- **Test: paired t-test** (``scipy.stats.ttest_rel``) on the per-seed differences when two rows
  share at least two seeds: the same seed means the same data order, masks and initial
  weights, so pairing removes the noise both rows share. Rows sharing fewer than two seeds
  fall back to Welch's unpaired t-test (``ttest_ind(equal_var=False)``) and say so.
- **Correction: Holm** across the table's rows (every row against the one reference row): it
  controls the family-wise error like Bonferroni and is uniformly more powerful.
- **Seeds needed:** the smallest n for which a two-sided paired t-test at ``ALPHA`` reaches
  ``POWER`` against the observed mean difference with the observed spread, from the
  noncentral t distribution (exact for normal noise; the normal-approximation closed form
  ``seeds_needed_normal`` is a little optimistic at small n).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # two-sided, after the Holm correction
CONFIDENCE = 0.95
POWER = 0.8
MAX_SEEDS = 100  # beyond this the table says ">100": a tie for any practical purpose

PAIRED = "paired t"
WELCH = "Welch t (unpaired)"
SINGLE = "n = 1"
REFERENCE = "reference"


@dataclass(frozen=True)
class Comparison:
    """One row against the reference row: row − reference, in the metric's own units."""

    test: str  # PAIRED, WELCH, SINGLE (no interval possible) or REFERENCE
    n: int  # shared seeds (paired) or min of the two rows' runs (Welch)
    diff: float  # mean difference (paired: mean of the per-seed differences)
    lo: float  # CONFIDENCE interval of the difference
    hi: float
    p: float  # two-sided, uncorrected; NaN when there is no test
    sd: float  # spread of one seed's difference: paired sd, or sqrt(s_row² + s_ref²)


def compare(row: Mapping[int, float], ref: Mapping[int, float]) -> Comparison:
    """Paired t over the shared seeds when there are ≥ 2, else Welch, else no test (n = 1)."""
    shared = sorted(set(row) & set(ref))
    if len(shared) >= 2:
        d = np.array([row[s] - ref[s] for s in shared], dtype=float)
        return _one_sample(d, PAIRED)
    a, b = np.array(list(row.values()), float), np.array(list(ref.values()), float)
    if len(a) >= 2 and len(b) >= 2:
        return _welch(a, b)
    if shared:  # one shared seed: its own difference is the best estimate there is
        diff = row[shared[0]] - ref[shared[0]]
    else:
        diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    return Comparison(SINGLE, min(len(a), len(b)), diff, math.nan, math.nan, math.nan, math.nan)


def _one_sample(d: np.ndarray, test: str) -> Comparison:
    """t-test and t-interval of the per-seed differences ``d`` against 0."""
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:  # identical differences: scipy divides by zero; the answer is plain
        return Comparison(test, n, mean, mean, mean, 1.0 if mean == 0 else 0.0, 0.0)
    res = stats.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(CONFIDENCE)
    return Comparison(test, n, mean, float(ci.low), float(ci.high), float(res.pvalue), sd)


def _welch(a: np.ndarray, b: np.ndarray) -> Comparison:
    """Welch's unpaired t-test and interval of mean(a) − mean(b)."""
    diff = float(a.mean() - b.mean())
    sd = math.sqrt(a.var(ddof=1) + b.var(ddof=1))
    n = min(len(a), len(b))
    if sd == 0.0:
        return Comparison(WELCH, n, diff, diff, diff, 1.0 if diff == 0 else 0.0, 0.0)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    return Comparison(WELCH, n, diff, float(ci.low), float(ci.high), float(res.pvalue), sd)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values; NaN (no test) stays NaN and is not counted in the family."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    # step-down: the i-th smallest is multiplied by (m − i); adjusted values never decrease
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def paired_power(n: int | np.ndarray, diff: float, sd: float, alpha: float = ALPHA) -> np.ndarray:
    """Power of a two-sided paired t-test with ``n`` pairs (noncentral t)."""
    n = np.asarray(n, dtype=float)
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = diff / sd * np.sqrt(n)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


def seeds_needed(
    diff: float, sd: float, alpha: float = ALPHA, power: float = POWER, cap: int = MAX_SEEDS
) -> int | None:
    """Smallest n (≥ 2) whose paired t-test has ``power``; None when diff is 0 or sd unknown;
    ``cap + 1`` when more than ``cap`` seeds would be needed."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or diff == 0.0:
        return None
    if sd == 0.0:
        return 2  # no spread: any two seeds show the difference
    n = np.arange(2, cap + 1)
    ok = np.flatnonzero(paired_power(n, diff, sd, alpha) >= power)
    return int(n[ok[0]]) if ok.size else cap + 1


def seeds_needed_normal(
    diff: float, sd: float, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Closed-form normal approximation: n = ((z_{1−α/2} + z_power) · sd / diff)²."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return (z * sd / diff) ** 2


def mean_halfwidth(values: Sequence[float]) -> float:
    """Half-width of the CONFIDENCE t-interval of a row's mean; NaN with fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
