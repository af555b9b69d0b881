"""Ablation tables: one row per configuration, mean ± std over seeds, Δ to the baseline, and
what the seeds support against a reference row (``stats.py``: paired t-interval, Holm, seeds
needed), and the objective's seed noise: the rows indistinguishable from the best at these seeds
(``stats.seed_noise``, issue 27).

The csv keeps raw values (IoU as the fractions MLflow stores); ``ablation_formats.py`` writes
the same table as markdown, LaTeX and HTML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmcr.configs import COMPONENTS
from cmcr.data.classes import CHALLENGE_CLASSES
from cmcr.names import Metric
from cmcr.results import stats as S
from cmcr.results.collect import ReportError, RunTable

CLASSES = CHALLENGE_CLASSES[1:]
# The paper's row order for the components study; other variants follow, sorted.
VARIANT_ORDER = ("random", "ppkt", "cmcr") + tuple(f"cmcr-{c}" for c in COMPONENTS)
TARGET = Metric.VAL_MIOU
IOU = Metric.VAL_IOU_PREFIX
SUMMARY = (TARGET, Metric.VAL_FWIOU)
MARK = "†"  # a difference to the reference that holds after the Holm correction
TIED_MARK = "≈"  # a row indistinguishable from the best at these seeds (stats.NOISE_RULE)
# csv columns of the comparison with the reference row (TARGET only; differences as fractions)
DIFF, LO, HI = f"diff_{TARGET}", f"diff_lo_{TARGET}", f"diff_hi_{TARGET}"
P, P_HOLM, HOLDS = f"p_{TARGET}", f"p_holm_{TARGET}", "holds"
TEST, N_PAIRED, SEEDS_NEEDED = "test", "n_paired", "seeds_needed"
CI = f"{TARGET}_ci95"  # half-width of the 95 % t-interval of the row's mean
TIED, IS_BEST = "within_noise_of_best", "best"  # csv columns of the seed-noise mark
# mIoU is shown in % at this many decimals: rows that read the same there tie for the best (all
# marked best, none picked silently)
SHOWN_DECIMALS = 2


@dataclass
class Ablation:
    """The aggregated table and how it was grouped."""

    table: pd.DataFrame  # one row per configuration; csv columns
    group_by: list[str]  # "variant" or the swept params
    baseline: str  # label of the Δ reference row
    metrics: list[str]  # aggregated metric keys, summary first then per class
    reference: str = ""  # label of the row every other row is tested against
    picked_best: bool = False  # the reference is the best mean, chosen after seeing the results
    ranked: bool = False  # a continuous study: rows ranked by mIoU, labelled by trial, Δ to best
    pruned_trials: int = 0  # trials Optuna's pruner stopped: listed apart, not in the means
    pruned_runs: int = 0
    noise: S.Noise | None = None  # the seed SD beside the spread; which rows tie with the best
    study: str = ""  # the study the runs belong to, when they name one


def variant_label(variant: str) -> str:
    """Paper-style row label: random init, PPKT, CMCR, CMCR − mim."""
    names = {"random": "random init", "ppkt": "PPKT", "cmcr": "CMCR"}
    if variant in names:
        return names[variant]
    if variant.startswith("cmcr-"):
        return "CMCR − " + ", ".join(variant[len("cmcr-") :].split(","))
    return variant


def group_keys(rt: RunTable) -> list[str]:
    """Group by the variant tag when it varies (components study), else by the swept params."""
    done = rt.complete
    if "variant" in done and done["variant"].nunique(dropna=True) > 1:
        return ["variant"]
    return rt.swept()


def ablation(rt: RunTable, reference: str | None = None) -> Ablation:
    """Mean ± std over seeds per configuration, run count, Δ to the baseline row, and each
    row's difference to ``reference`` (a label or variant; default ``reference_index``)."""
    done = rt.complete
    keys = group_keys(rt)
    metrics = [m for m in SUMMARY if m in done] + [
        f"{IOU}{c}" for c in CLASSES if f"{IOU}{c}" in done
    ]
    grouped = done.assign(_key=_row_keys(done, keys)).groupby("_key", sort=False)
    agg = grouped[metrics].agg(["mean", "std"])  # std: sample std (ddof=1) over seeds
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    first = grouped[keys].first() if keys else pd.DataFrame(index=agg.index)
    out = pd.concat([first, grouped.size().rename("n_runs"), agg], axis=1)
    out["seeds"] = grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s.dropna())))
    ranked = is_continuous(rt, keys)
    if ranked:  # one configuration per trial: rank them, name them by trial, Δ to the best
        out.insert(0, "trial", grouped["trial"].min().astype("Int64"))
        out = out.sort_values(f"{TARGET}_mean", ascending=not _maximise(rt), kind="stable",
                              na_position="last")  # fmt: skip
        out.insert(0, "config", _trial_labels(out, keys))
        base = 0
    else:
        out = _order(out, keys)
        out.insert(0, "config", [_label(row, keys) for _, row in out.iterrows()])
        base = _baseline_index(out, keys)
    out.insert(out.columns.get_loc(f"{TARGET}_mean") + 2, f"delta_{TARGET}",
               out[f"{TARGET}_mean"] - out[f"{TARGET}_mean"].iloc[base])  # fmt: skip
    per_seed = [_by_seed(grouped.get_group(k)) for k in out.index]
    out = out.reset_index(drop=True)
    ref = reference_index(out, keys, reference)
    out = _with_comparisons(out, per_seed, ref)
    noise = S.seed_noise(per_seed, maximise=_maximise(rt))
    out[IS_BEST] = tied_best(out[f"{TARGET}_mean"].to_numpy(dtype=float), noise.best)
    out[TIED] = [t and not b for t, b in zip(noise.tied, out[IS_BEST], strict=True)]
    for k in keys:  # tuples (list params) read badly in a csv
        out[k] = out[k].map(lambda v: list(v) if isinstance(v, tuple) else v)
    return Ablation(out, keys, str(out["config"].iloc[base]), metrics,
                    reference=str(out["config"].iloc[ref]),
                    picked_best=reference is None and _is_best_pick(out, keys),
                    ranked=ranked, pruned_trials=n_trials(rt.pruned),
                    pruned_runs=len(rt.pruned), noise=noise, study=_study(done))  # fmt: skip


def tied_best(means: np.ndarray, best: int) -> np.ndarray:
    """Per row: whether its mean reads the same as the best's in the tables (mIoU in % at
    ``SHOWN_DECIMALS``): a tie, every tied row is the best; all False when there is no best."""
    shown = np.round(np.asarray(means, dtype=float) * 100, SHOWN_DECIMALS)
    if best < 0 or not np.isfinite(shown[best]):
        return np.zeros(len(shown), dtype=bool)
    return np.isfinite(shown) & (shown == shown[best])


def best_rows(ab: Ablation) -> list[str]:
    """Labels of the best rows: one, or every row tied with it."""
    return list(ab.table["config"][ab.table[IS_BEST].to_numpy(dtype=bool)])


def _study(done: pd.DataFrame) -> str:
    """The one study the runs are tagged with; empty when none or several."""
    names = done["study"].dropna().unique() if "study" in done else []
    return str(names[0]) if len(names) == 1 else ""


def n_trials(runs: pd.DataFrame) -> int:
    """Distinct trials among ``runs`` (a run without a trial number counts as one)."""
    if "trial" not in runs:  # runs no sweep made
        return len(runs)
    return int(runs["trial"].nunique(dropna=True) + runs["trial"].isna().sum())


def is_continuous(rt: RunTable, keys: list[str]) -> bool:
    """Whether the rows are trials of a continuous search (a float or int range in Optuna's
    study; without the study, a float among the swept params), not the cells of a grid."""
    done = rt.complete
    if not keys or keys == ["variant"] or "trial" not in done or done["trial"].isna().all():
        return False  # a grid, or runs no sweep made (no trial to name a row by)
    if rt.study is not None:
        import optuna

        done = rt.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        cat = optuna.distributions.CategoricalDistribution
        return any(not isinstance(d, cat) for t in done for d in t.distributions.values())
    return any(pd.api.types.is_float_dtype(done[k]) for k in keys if k in done)


def _maximise(rt: RunTable) -> bool:
    return rt.study is None or rt.study.direction.name != "MINIMIZE"


def short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key shares (mim, occ, train.lr)."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(o == tail or o.endswith("." + tail) for o in keys) == 1:
                out[k] = tail
                break
        else:
            out[k] = k
    return out


def _trial_labels(out: pd.DataFrame, keys: list[str]) -> list[str]:
    """``trial 7: mim=0.52, occ=1.3``: the trial number and short params at 2 significant digits."""
    short = short_names(keys)
    labels = []
    for _, row in out.iterrows():
        trial = "?" if pd.isna(row["trial"]) else str(int(row["trial"]))
        params = ", ".join(f"{short[k]}={short_value(row[k])}" for k in sorted(keys))
        labels.append(f"trial {trial}: {params}")
    return labels


def short_value(v: object) -> str:
    """A param value at 2 significant digits (floats) for a short row label."""
    if isinstance(v, float):
        return f"{v:.2g}"
    return _fmt_param(v)


def _by_seed(runs: pd.DataFrame) -> dict[int, float]:
    """{seed: TARGET} of one configuration; repeated seeds averaged, runs without a seed kept
    under keys of their own (negative: they never pair)."""
    seeds = runs["seed"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    values = runs[TARGET].to_numpy(dtype=float)
    out: dict[int, list[float]] = {}
    for i, (seed, v) in enumerate(zip(seeds, values, strict=True)):
        out.setdefault(int(seed) if np.isfinite(seed) else -1 - i, []).append(v)
    return {s: float(np.mean(v)) for s, v in out.items()}


def reference_index(out: pd.DataFrame, keys: list[str], reference: str | None) -> int:
    """The row named ``reference`` (its label or variant); by default the method's full
    configuration (variant ``cmcr``) when present, else the row with the best mean TARGET."""
    if reference is not None:
        for col in ("config", "variant"):
            if col in out:
                hits = np.flatnonzero(out[col].astype(str).to_numpy() == reference)
                if hits.size:
                    return int(hits[0])
        shown = ", ".join(f"'{c}'" for c in out["config"][:12])
        raise ReportError(f"--reference '{reference}' names no row of the table (rows: {shown}"
                          f"{', ...' if len(out) > 12 else ''})")  # fmt: skip
    if keys == ["variant"]:
        hits = np.flatnonzero(out["variant"].to_numpy() == "cmcr")
        if hits.size:
            return int(hits[0])
    return int(np.nanargmax(out[f"{TARGET}_mean"].to_numpy(dtype=float)))


def _is_best_pick(out: pd.DataFrame, keys: list[str]) -> bool:
    """Whether the default reference fell back to the best row (no cmcr variant)."""
    return not (keys == ["variant"] and (out["variant"] == "cmcr").any())


def _with_comparisons(
    out: pd.DataFrame, per_seed: list[dict[int, float]], ref: int
) -> pd.DataFrame:
    """Add the csv columns of each row against row ``ref``: difference, interval, p, Holm p,
    whether it holds, the test used, shared seeds, seeds needed (NaN where not asked)."""
    rows = []
    for i, values in enumerate(per_seed):
        if i == ref:
            rows.append(S.Comparison(S.REFERENCE, len(values), 0.0, *[np.nan] * 4))
        else:
            rows.append(S.compare(values, per_seed[ref]))
    adjusted = S.holm([c.p for c in rows])
    holds = np.nan_to_num(adjusted, nan=1.0) < S.ALPHA
    # at Holm's strictest level (Bonferroni's α/m): that many seeds earn the marker after the
    # correction too, whatever the other rows do
    alpha = S.ALPHA / max(1, int(np.isfinite(adjusted).sum()))
    needed = [None if h else S.seeds_needed(c.diff, c.sd, alpha=alpha)
              for c, h in zip(rows, holds, strict=True)]  # fmt: skip
    out = out.copy()
    out[CI] = [S.mean_halfwidth(list(v.values())) for v in per_seed]
    at = out.columns.get_loc(f"delta_{TARGET}") + 1
    cols = {DIFF: [c.diff for c in rows], LO: [c.lo for c in rows], HI: [c.hi for c in rows],
            P: [c.p for c in rows], P_HOLM: adjusted, HOLDS: holds,
            TEST: [c.test for c in rows], N_PAIRED: [c.n if c.test == S.PAIRED else 0 for c in rows],
            SEEDS_NEEDED: pd.array([pd.NA if n is None else n for n in needed], "Int64")}  # fmt: skip
    for j, (name, values) in enumerate(cols.items()):
        out.insert(at + j, name, values)
    return out


def summary(ab: Ablation) -> Ablation:
    """The same table with only the summary metrics (mIoU with its Δ, fwIoU): README-sized."""
    return dataclasses.replace(ab, metrics=[m for m in ab.metrics if m in SUMMARY])


def _row_keys(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """One hashable string per configuration (NaN and lists included)."""
    if not keys:
        return pd.Series("all runs", index=df.index)
    return df[keys].astype(str).agg(" | ".join, axis=1)


def _order(out: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if keys == ["variant"]:
        rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
        order = sorted(out.index, key=lambda k: (rank.get(out.at[k, "variant"], 99), str(k)))
        return out.loc[order]
    if keys:
        try:
            return out.sort_values(keys, kind="stable")
        except TypeError:  # mixed types in a column: keep first-seen order
            return out
    return out


def _label(row: pd.Series, keys: list[str]) -> str:
    if keys == ["variant"]:
        return variant_label(str(row["variant"]))
    if not keys:
        return "all runs"
    return ", ".join(f"{k}={_fmt_param(row[k])}" for k in keys)


def _fmt_param(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple | list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def _baseline_index(out: pd.DataFrame, keys: list[str]) -> int:
    """Random init when present, else the first row."""
    if keys == ["variant"]:
        hits = np.flatnonzero(out["variant"].to_numpy() == "random")
        if hits.size:
            return int(hits[0])
    return 0
