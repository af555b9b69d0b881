"""Ablation tables: one row per configuration, mean ± std over seeds, Δ to the baseline, and
what the seeds support against a reference row (``stats.py``: paired t-interval, Holm, seeds
needed).

The csv keeps raw values (IoU as the fractions MLflow stores); markdown, LaTeX and HTML show
IoU in percent with the best value of each column in bold and † on the differences to the
reference that hold after the Holm correction.
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmcr.configs import COMPONENTS
from cmcr.data.classes import CHALLENGE_CLASSES
from cmcr.names import Metric
from cmcr.results import stats as S
from cmcr.results.collect import (
    NOT_SWEPT_PREFIXES,
    PRUNED,
    ReportError,
    RunTable,
    metric_histories,
)

CLASSES = CHALLENGE_CLASSES[1:]
# The paper's row order for the components study; other variants follow, sorted.
VARIANT_ORDER = ("random", "ppkt", "cmcr") + tuple(f"cmcr-{c}" for c in COMPONENTS)
TARGET = Metric.VAL_MIOU
IOU = Metric.VAL_IOU_PREFIX
SUMMARY = (TARGET, Metric.VAL_FWIOU)
MARK = "†"  # a difference to the reference that holds after the Holm correction
# csv columns of the comparison with the reference row (TARGET only; differences as fractions)
DIFF, LO, HI = f"diff_{TARGET}", f"diff_lo_{TARGET}", f"diff_hi_{TARGET}"
P, P_HOLM, HOLDS = f"p_{TARGET}", f"p_holm_{TARGET}", "holds"
TEST, N_PAIRED, SEEDS_NEEDED = "test", "n_paired", "seeds_needed"
CI = f"{TARGET}_ci95"  # half-width of the 95 % t-interval of the row's mean


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
    for k in keys:  # tuples (list params) read badly in a csv
        out[k] = out[k].map(lambda v: list(v) if isinstance(v, tuple) else v)
    return Ablation(out, keys, str(out["config"].iloc[base]), metrics,
                    reference=str(out["config"].iloc[ref]),
                    picked_best=reference is None and _is_best_pick(out, keys),
                    ranked=ranked, pruned_trials=_n_trials(rt.pruned),
                    pruned_runs=len(rt.pruned))  # fmt: skip


def _n_trials(runs: pd.DataFrame) -> int:
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
        params = ", ".join(f"{short[k]}={_short_value(row[k])}" for k in sorted(keys))
        labels.append(f"trial {trial}: {params}")
    return labels


def _short_value(v: object) -> str:
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


# ---- rendering -------------------------------------------------------------------------------


def _headers(ab: Ablation) -> list[tuple[str, str]]:
    """(csv metric key, display header) of the displayed metric columns."""
    short = {TARGET: "mIoU", Metric.VAL_FWIOU: "fwIoU"}
    return [(m, short.get(m, m.removeprefix(IOU))) for m in ab.metrics]


@dataclass(frozen=True)
class _Style:
    """How one output format writes bold, ±, a dash and the marker, and escapes our text."""

    bold: callable
    pm: str
    dash: str
    mark: str
    esc: callable = str  # HTML: "<0.001" and ">100" must not reach the page as markup


MD = _Style(lambda s: f"**{s}**", " ± ", "—", MARK)
TEX = _Style(lambda s: f"\\textbf{{{s}}}", " $\\pm$ ", "--", "$^\\dagger$")
HTML = _Style(lambda s: f"<b>{s}</b>", " ± ", "—", MARK, html.escape)


def _cells(ab: Ablation, st: _Style) -> list[list[str]]:
    """Formatted cells (percent, mean ± std, best bold, the reference comparison) per row."""
    t = ab.table
    columns: list[list[str]] = [[str(n) for n in t["n_runs"]]]
    is_base = (t["config"] == ab.baseline).to_numpy()
    for m, _ in _headers(ab):
        mean, std = t[f"{m}_mean"].to_numpy() * 100, t[f"{m}_std"].to_numpy() * 100
        best = np.nanmax(mean) if len(t) > 1 and np.isfinite(mean).any() else np.nan
        is_best = np.isclose(mean, best, atol=5e-5)
        col = []
        for mu, sd, b in zip(mean.tolist(), std.tolist(), is_best.tolist(), strict=True):
            text = st.dash if mu != mu else f"{mu:.2f}"  # NaN != NaN
            text += f"{st.pm}{sd:.2f}" if sd == sd else " (n = 1)" if mu == mu else ""
            col.append(st.bold(text) if b else text)
        columns.append(col)
        if m == TARGET:
            delta = (t[f"delta_{TARGET}"].to_numpy() * 100).tolist()
            columns.append(
                [st.dash if b else f"{d:+.2f}" for d, b in zip(delta, is_base, strict=True)]
            )
            columns += _comparison_cells(t, st)
    return [list(row) for row in zip(*columns, strict=True)]


def _comparison_cells(t: pd.DataFrame, st: _Style) -> list[list[str]]:
    """The difference to the reference with its interval and marker, Holm p, seeds needed."""
    diff, p, needed = [], [], []
    for _, r in t.iterrows():
        if r[TEST] == S.REFERENCE:
            diff.append("reference")
            p.append(st.dash)
            needed.append(st.dash)
            continue
        d, lo, hi = r[DIFF] * 100, r[LO] * 100, r[HI] * 100
        if r[TEST] == S.SINGLE:
            diff.append(f"{d:+.2f} (n = 1, no interval)" if d == d else st.dash)
        else:
            unpaired = " unpaired" if r[TEST] == S.WELCH else ""
            diff.append(f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]{st.mark if r[HOLDS] else ''}{unpaired}")
        p.append(_fmt_p(r[P_HOLM], st.dash))
        needed.append(needed_cell(r, st.dash))
    return [[st.esc(c) for c in col] for col in (diff, p, needed)]


def _fmt_p(p: float, dash: str) -> str:
    if p != p:
        return dash
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def needed_cell(r: pd.Series, dash: str) -> str:
    """Seeds per row a paired test would need; blank when the difference already holds."""
    if r[HOLDS]:
        return ""
    n = r[SEEDS_NEEDED]
    if n is pd.NA or n != n:  # no difference, or one run: no spread to estimate from
        return dash
    return f">{S.MAX_SEEDS}" if n > S.MAX_SEEDS else str(int(n))


def _header_row(ab: Ablation) -> list[str]:
    cols = ["runs"]
    for m, h in _headers(ab):
        cols.append(h)
        if m == TARGET:
            cols += ["Δ mIoU", f"vs {ab.reference} [95 % CI]", "p (Holm)", "seeds needed"]
    return cols


def _spread_note(ab: Ablation) -> str:
    """What ± means here; rows of one run say n = 1 instead (no std from one value)."""
    single = int((ab.table["n_runs"] == 1).sum())
    if single == len(ab.table):
        return "one run per row (n = 1): no std"
    if single:
        return f"mean ± std over seeds; {single} row(s) with one run show n = 1 instead"
    return "mean ± std over seeds"


def caption(ab: Ablation) -> str:
    """What the table's numbers are: units, the Δ row, the reference, interval, test, marker."""
    n_tests = int(np.isfinite(ab.table[P]).sum())
    rank = ""
    if ab.ranked:
        rank = ("Rows ranked by mIoU, best first, labelled by Optuna trial with short parameter "
                "names (full keys and values in ablation.csv); ")  # fmt: skip
    delta = f"Δ mIoU to the best row '{ab.baseline}'" if ab.ranked else f"Δ mIoU to '{ab.baseline}'"
    return (
        f"{rank}IoU in %, {_spread_note(ab)}; {delta}. "
        f"'vs {ab.reference}'{_pick_note(ab)}: mIoU of the row − '{ab.reference}', paired by "
        f"seed (mean of the per-seed differences, 95 % paired t-interval); 'unpaired' rows "
        f"share < 2 seeds with "
        f"it and use Welch's interval and test. p: two-sided paired t-test, Holm-corrected "
        f"across the {n_tests} compared rows; {MARK} = holds after correction (p < {S.ALPHA}). "
        f"Seeds needed: seeds per row for a paired t-test to detect the observed difference with "
        f"the observed spread at power {S.POWER} and α = {S.ALPHA}/{max(n_tests, 1)} (Holm's "
        f"strictest step, so the marker follows); >{S.MAX_SEEDS}: a tie in practice. "
        + (f"One row per trial of a continuous search over {', '.join(ab.group_by)}."
           if ab.ranked else
           f"Grouped by {', '.join(ab.group_by) or 'nothing (one configuration)'}.")
        + _pruned_note(ab)
    )  # fmt: skip


def _pruned_note(ab: Ablation) -> str:
    """How many trials the pruner stopped: they are not in the means (listed apart)."""
    if not ab.pruned_trials:
        return ""
    runs = "" if ab.pruned_runs == ab.pruned_trials else f" ({ab.pruned_runs} runs)"
    return (f" {ab.pruned_trials} trial(s){runs} stopped early by Optuna's pruner are left out "
            "of the means (listed apart as pruned trials).")  # fmt: skip


def _pick_note(ab: Ablation) -> str:
    """Say when the reference is the best mean: differences to a winner lean large."""
    if not ab.picked_best:
        return ""
    return (" (the best mean mIoU, picked after seeing the results, so the differences to it "
            "lean large; --reference names another)")  # fmt: skip


def verdict(ab: Ablation) -> str:
    """One sentence on what the seeds support, from the table itself."""
    t = ab.table
    if len(t) == 1:
        return f"One configuration ('{ab.reference}'): nothing to compare."
    tested = t[np.isfinite(t[P].to_numpy(dtype=float))]
    untested = int((t[TEST] == S.SINGLE).sum())
    held = tested[tested[HOLDS]]
    parts = [f"Against '{ab.reference}', the seeds support {len(held)} of {len(tested)} "
             f"differences"]  # fmt: skip
    if len(held):
        parts[0] += ": " + ", ".join(f"{r['config']} ({r[DIFF] * 100:+.2f})"
                                     for _, r in held.iterrows())  # fmt: skip
    rest = tested[~tested[HOLDS]]
    if len(rest):
        need = rest[SEEDS_NEEDED].dropna().astype(int)
        span = ""
        if len(need):
            hi = f">{S.MAX_SEEDS}" if need.max() > S.MAX_SEEDS else str(need.max())
            span = (
                f"; detecting them would take {need.min()}–{hi} seeds per row"
                if need.min() != need.max()
                else f"; detecting them would take {hi} seeds per row"
            )
        parts.append(f"the other {len(rest)} are within the seed noise{span}")
    if untested:
        parts.append(f"{untested} row(s) have one run: no interval")
    return "; ".join(parts) + "."


def to_markdown(ab: Ablation) -> str:
    """GitHub markdown table; IoU in %, mean ± std over seeds, best in bold."""
    head = ["configuration"] + _header_row(ab)
    cells = _cells(ab, MD)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in zip(ab.table["config"], cells, strict=True):
        lines.append("| " + " | ".join([label.replace("|", "\\|")] + row) + " |")
    return "\n".join(lines) + "\n\n" + verdict(ab) + "\n\n" + caption(ab) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"),
                 ("#", "\\#"), ("$", "\\$"), ("−", "$-$"), ("Δ", "$\\Delta$"),
                 ("α", "$\\alpha$"), ("±", "$\\pm$"), ("–", "--"), ("<", "$<$"), (">", "$>$"),
                 (MARK, TEX.mark)):  # fmt: skip
        text = text.replace(a, b)
    return text


def to_latex(ab: Ablation) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); best in \\textbf."""
    head = ["configuration"] + _header_row(ab)
    cells = _cells(ab, TEX)
    lines = [
        "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    for label, row in zip(ab.table["config"], cells, strict=True):
        lines.append(" & ".join([_tex(label)] + [_tex_cell(c) for c in row]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}",
              "\\par\\smallskip{\\footnotesize " + _tex(caption(ab)) + " " + _tex(verdict(ab))
              + "}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _tex_cell(cell: str) -> str:
    """Escape a formatted cell but keep the macros we put there ourselves."""
    return cell.replace("%", "\\%").replace("<", "$<$").replace(">", "$>$")


def to_html(ab: Ablation, max_rows: int | None = None) -> str:
    """An HTML table (best in <b>); the first ``max_rows`` rows by mIoU when given."""
    head = ["configuration"] + _header_row(ab)
    cells = _cells(ab, HTML)
    labels = list(ab.table["config"])
    idx = list(range(len(labels)))
    if max_rows is not None and len(idx) > max_rows:
        idx = list(np.argsort(-ab.table[f"{TARGET}_mean"].to_numpy(), kind="stable")[:max_rows])
    body = "".join(
        "<tr><td>" + html.escape(labels[i]) + "</td>" + "".join(f"<td>{c}</td>" for c in cells[i])
        + "</tr>"
        for i in idx
    )  # fmt: skip
    thead = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table class="ablation"><thead><tr>{thead}</tr></thead><tbody>{body}</tbody></table>'


def incomplete_table(rt: RunTable) -> pd.DataFrame:
    """Runs left out of the averages, with why (state, status reason) and their last mIoU:
    running, failed, killed; pruned trials have their own table (``pruned_table``)."""
    df = rt.incomplete
    df = df[df["state"] != PRUNED]
    cols = ["run_id", "trial", "variant", "seed", "state", "status", "status_reason"]
    out = df[[c for c in cols if c in df]].copy()
    out[f"last {TARGET}"] = df.get(TARGET, np.nan)
    if "status_reason" in out:
        out["status_reason"] = out["status_reason"].fillna("")
    return out.reset_index(drop=True)


PRUNED_COLUMNS = ["trial", "run_id", "configuration", "seed", "phase", "step", "step_from",
                  f"last {Metric.PROBE_MIOU}", "status_reason"]  # fmt: skip
PHASE_STEP = {"pretrain": "pre-training step", "downstream": "downstream epoch"}


def varying_params(rt: RunTable) -> list[str]:
    """Params whose value differs across all the runs, pruned and unfinished ones included
    (``RunTable.swept`` looks at the complete runs only); seeds and tracking excluded."""
    df = rt.runs
    return [p for p in rt.params
            if not p.startswith(NOT_SWEPT_PREFIXES) and p in df
            and df[p].astype(str).nunique(dropna=False) > 1]  # fmt: skip


def run_labels(rt: RunTable, runs: pd.DataFrame) -> pd.Series:
    """A short configuration label per run: its variant when the variant varies, else the
    varying params by their short names (``mim=0.52, lr=0.001``)."""
    if "variant" in rt.runs and rt.runs["variant"].nunique(dropna=True) > 1:
        return runs["variant"].map(lambda v: variant_label(str(v)) if isinstance(v, str) else "—")
    keys = sorted(varying_params(rt))
    if not keys:
        return pd.Series("—", index=runs.index)
    short = short_names(keys)
    return runs.apply(lambda r: ", ".join(f"{short[k]}={_short_value(r[k])}" for k in keys), axis=1)


def pruned_table(rt: RunTable) -> pd.DataFrame:
    """One row per run of a pruned trial: the phase and step it reached (the sweep's tag, else
    the last logged step: ``step_from`` says which), its last probe mIoU and the reason."""
    df = rt.pruned
    if df.empty:
        return pd.DataFrame(columns=PRUNED_COLUMNS)
    phase = df["pruned_phase"].astype(object).where(df["pruned_phase"].notna(), None)
    step = df["pruned_at_step"].astype("Int64").copy()
    source = pd.Series(np.where(step.notna(), "tag", ""), index=df.index, dtype=object)
    untagged = df[step.isna()]
    if len(untagged):  # runs logged before the tags: the last step of their histories
        keys = [TARGET, Metric.TRAIN_LOSS, Metric.PROBE_MIOU]
        hist = metric_histories(rt.tracking_uri, list(untagged["run_id"]), keys)
        last = hist.groupby(["run_id", "key"])["step"].max()
        for i, run_id in zip(untagged.index, untagged["run_id"], strict=True):
            if (run_id, TARGET) in last:  # it reached the downstream evaluation
                phase[i], step[i], source[i] = "downstream", last[run_id, TARGET], f"last {TARGET}"
                continue
            found = [(int(last[run_id, k]), k) for k in keys[1:] if (run_id, k) in last]
            if found:
                at, key = max(found, key=lambda f: f[0])
                phase[i], step[i], source[i] = "pretrain", at, f"last {key}"
    out = pd.DataFrame({
        "trial": df["trial"], "run_id": df["run_id"], "configuration": run_labels(rt, df),
        "seed": df["seed"], "phase": phase, "step": step, "step_from": source,
        f"last {Metric.PROBE_MIOU}": df.get(Metric.PROBE_MIOU, np.nan),
        "status_reason": df["status_reason"].fillna(""),
    })  # fmt: skip
    return out.sort_values(["trial", "seed"], kind="stable").reset_index(drop=True)


def pruned_display(table: pd.DataFrame) -> pd.DataFrame:
    """The pruned runs as a reader sees them: where each stopped in words, probe mIoU in %."""

    def reached(r: pd.Series) -> str:
        if r["step"] is pd.NA or pd.isna(r["step"]):
            return "—"
        text = f"{PHASE_STEP.get(r['phase'], 'step')} {int(r['step'])}"
        return text if r["step_from"] == "tag" else f"{text} ({r['step_from']} step)"

    probe = table[f"last {Metric.PROBE_MIOU}"].astype(float) * 100
    return pd.DataFrame({
        "trial": [("—" if pd.isna(t) else str(int(t))) for t in table["trial"]],
        "configuration": table["configuration"],
        "seed": [("—" if pd.isna(s) else str(int(s))) for s in table["seed"]],
        "stopped at": [reached(r) for _, r in table.iterrows()],
        "last probe mIoU (%)": ["—" if v != v else f"{v:.2f}" for v in probe.tolist()],
        "reason": table["status_reason"],
    })  # fmt: skip


def pruned_note(table: pd.DataFrame) -> str:
    """What the pruned table is, in one sentence."""
    trials = _n_trials(table)
    runs = "" if len(table) == trials else f" ({len(table)} runs)"
    return (f"{trials} trial(s){runs} stopped early by Optuna's pruner: not in the means of the "
            "ablation table. 'Stopped at': the step the sweep tagged, else the last logged step "
            "(named); probe mIoU: the last representation probe during pre-training.")  # fmt: skip


def pruned_markdown(table: pd.DataFrame) -> str:
    """The pruned runs as a GitHub markdown table ('' when there are none)."""
    if table.empty:
        return ""
    shown = pruned_display(table)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n\n" + pruned_note(table) + "\n"


def evaluations_table(rt: RunTable) -> pd.DataFrame:
    """Configurations × downstream evaluations (nuScenes LP, nuScenes 1 % FT, SemanticKITTI
    1 % FT, ...): mIoU in % as 'mean ± std (runs)' over seeds, the paper's side-by-side layout."""
    from cmcr.registry import DATASETS
    from cmcr.results.collect import evaluations

    long = evaluations(rt)
    if long.empty:
        return pd.DataFrame()
    long = long.assign(configuration=long["variant"].fillna("").map(variant_label))
    stats = long.groupby(["configuration", "evaluation"], sort=False)["miou"].agg(
        ["mean", "std", "count"]
    )
    cell = stats.apply(
        lambda r: (
            f"{100 * r['mean']:.2f} ± {100 * (r['std'] if r['count'] > 1 else 0):.2f} "
            f"({int(r['count'])})"
        ),
        axis=1,
    )
    # the paper's column order: dataset, then linear probing before fine-tuning
    rank = long.assign(m=long["mode"].map({"probe": 0, "finetune": 1}),
                       d=long["dataset"].map(DATASETS.names().index))  # fmt: skip
    order = list(dict.fromkeys(rank.sort_values(["d", "m"], kind="stable")["evaluation"]))
    table = cell.unstack("evaluation").reindex(columns=order)
    return table.reindex(list(dict.fromkeys(long["configuration"]))).fillna("—")


def evaluations_markdown(rt: RunTable) -> str:
    """The side-by-side table as markdown ('' when the runs hold no downstream evaluation)."""
    table = evaluations_table(rt)
    if table.empty:
        return ""
    head = ["configuration", *table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(i), *row]) + " |" for i, row in table.iterrows()]
    note = "mIoU in %, mean ± std over seeds (runs); each column is one downstream evaluation."
    return "\n".join(lines) + "\n\n" + note + "\n"
