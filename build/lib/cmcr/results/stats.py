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
- **Seed noise** (issue 27): the objective's seed SD is the pooled within-configuration SD
  over every configuration run with ≥ 2 seeds, set beside the spread between configurations
  (the SD of their means). A configuration is *indistinguishable from the best at these seeds*
  by ``NOISE_RULE``: the interval of ``compare`` where both have ≥ 2 seeds, else a t-interval
  of the difference of means built on the pooled SD. No seed SD, no mark: the noise is unknown.
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


NOISE_RULE = (
    "indistinguishable from the best at these seeds: where both have ≥ 2 seeds, the 95 % "
    "interval of the difference to the best (paired t over shared seeds, else Welch) contains "
    "0; otherwise |Δ| ≤ t(0.975, df) · s · √(1/n + 1/n_best), s the pooled seed SD with its df "
    "(no mark while no configuration has ≥ 2 seeds)"
)
# how to measure the noise when it is unknown: 2 more seeds for the 3 best configurations
# (sweeps/run.py; cmcr.sweep.seeds)
ADD_SEEDS_HINT = "--add-seeds 2 --top 3"


@dataclass(frozen=True)
class Noise:
    """The objective's seed noise beside the spread between configurations (metric units)."""

    seed_sd: float  # pooled within-configuration SD; NaN when no configuration has ≥ 2 seeds
    df: int  # its degrees of freedom, Σ (n_i − 1)
    n_repeated: int  # configurations with ≥ 2 seeds
    spread: float  # SD (ddof 1) of the configuration means; NaN with < 2 configurations
    n_configs: int
    best: int  # index of the best configuration (-1: none)
    tied: tuple[bool, ...] = ()  # per configuration: NOISE_RULE holds (best: False)

    @property
    def known(self) -> bool:
        """Whether some configuration ran ≥ 2 seeds, so the seed SD has been measured."""
        return self.df >= 1

    @property
    def cannot_rank(self) -> bool:
        """The spread between configurations is smaller than one seed's noise."""
        return self.known and math.isfinite(self.spread) and self.spread < self.seed_sd


def pooled_sd(configs: Sequence[Sequence[float]]) -> tuple[float, int]:
    """(√(Σ (n_i − 1) s_i² / Σ (n_i − 1)), Σ (n_i − 1)) over groups of ≥ 2 values; (NaN, 0)
    when there are none."""
    ss, df = 0.0, 0
    for values in configs:
        v = _finite(values)
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            df += len(v) - 1
    return (math.sqrt(ss / df), df) if df else (math.nan, 0)


def indistinguishable(
    row: Mapping[int, float], best: Mapping[int, float], sd: float, df: int
) -> bool:
    """Whether ``row`` is within the seed noise of ``best`` by ``NOISE_RULE``."""
    c = compare(row, best)
    if c.test in (PAIRED, WELCH):
        return bool(c.lo <= 0.0 <= c.hi)
    a, b = _finite(list(row.values())), _finite(list(best.values()))
    if df < 1 or not math.isfinite(sd) or not (len(a) and len(b)):
        return False
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * sd * math.sqrt(1 / len(a) + 1 / len(b))
    return bool(abs(a.mean() - b.mean()) <= half)


def seed_noise(
    configs: Sequence[Mapping[int, float]], maximise: bool = True, best: int | None = None
) -> Noise:
    """The seed noise of configurations given as {seed: value}, and which of them are
    indistinguishable from the best mean at these seeds (``best``: the index of the one the
    caller crowned instead, e.g. Optuna's best trial)."""
    values = [_finite(list(c.values())) for c in configs]
    sd, df = pooled_sd(values)
    means = np.array([v.mean() if v.size else np.nan for v in values])
    finite = means[np.isfinite(means)]
    spread = float(finite.std(ddof=1)) if finite.size >= 2 else math.nan
    if not finite.size:
        return Noise(sd, df, 0, spread, len(configs), -1, (False,) * len(configs))
    if best is None:
        best = int(np.nanargmax(means) if maximise else np.nanargmin(means))
    tied = tuple(i != best and indistinguishable(c, configs[best], sd, df)
                 for i, c in enumerate(configs))  # fmt: skip
    repeated = sum(v.size >= 2 for v in values)
    return Noise(sd, df, repeated, spread, len(configs), best, tied)


def noise_sentence(noise: Noise, scale: float = 100.0, unit: str = "points") -> str:
    """``seed SD 1.61 points (pooled over 1 configuration with ≥ 2 seeds, df 2) beside a spread
    of 0.70 points between 10 configurations``; the values times ``scale``."""
    spread = (f"a spread of {noise.spread * scale:.2f} {unit} between {noise.n_configs} "
              "configurations (SD of their means)" if math.isfinite(noise.spread)
              else "one configuration (no spread between configurations)")  # fmt: skip
    if not noise.known:
        return f"seed SD unknown (no configuration has ≥ 2 seeds) beside {spread}"
    return (f"seed SD {noise.seed_sd * scale:.2f} {unit} (pooled over {noise.n_repeated} "
            f"configuration(s) with ≥ 2 seeds, df {noise.df}) beside {spread}")  # fmt: skip


def _finite(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]
