"""The ablation table as a reader sees it: markdown, LaTeX and HTML with its caption and a
one-sentence verdict on what the seeds support, and the per-class IoU in a table of its own
(classes down, configurations across: the ablation table stays narrow).

IoU in percent (the csv and MLflow keep the fractions the metrics are stored as) with the best
value of each column in bold, † on the differences to the
reference that hold after the Holm correction and ≈ on the rows indistinguishable from the best
at these seeds, with a sentence on the seed noise beside the spread between configurations (the
csv keeps the raw fractions).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmcr.names import Metric
from cmcr.results import stats as S
from cmcr.results.ablation import (
    DIFF,
    HI,
    HOLDS,
    IS_BEST,
    LO,
    MARK,
    P_HOLM,
    SEEDS_NEEDED,
    SHOWN_DECIMALS,
    SUMMARY,
    TARGET,
    TEST,
    TIED,
    TIED_MARK,
    Ablation,
    P,
    best_rows,
)

MAX_NAMED = 8  # rows the noise sentence names before "and N more"


def _headers(ab: Ablation) -> list[tuple[str, str]]:
    """(csv metric key, display header) of the displayed metric columns."""
    short = {TARGET: "mIoU", Metric.VAL_FWIOU: "fwIoU"}
    return [(m, short[m]) for m in ab.metrics if m in SUMMARY]  # per class: per_class_*


@dataclass(frozen=True)
class _Style:
    """How one output format writes bold, ±, a dash and the markers, and escapes our text."""

    bold: callable
    pm: str
    dash: str
    mark: str
    esc: callable = str  # HTML: "<0.001" and ">100" must not reach the page as markup
    tied: str = TIED_MARK


MD = _Style(lambda s: f"**{s}**", " ± ", "—", MARK)
TEX = _Style(lambda s: f"\\textbf{{{s}}}", " $\\pm$ ", "--", "$^\\dagger$", tied="$\\approx$")
HTML = _Style(lambda s: f"<b>{s}</b>", " ± ", "—", MARK, html.escape)


def _cells(ab: Ablation, st: _Style) -> list[list[str]]:
    """Formatted cells (percent, mean ± std, best bold, the reference comparison) per row."""
    t = ab.table
    columns: list[list[str]] = [[str(n) for n in t["n_runs"]]]
    is_base = (t["config"] == ab.baseline).to_numpy()
    for m, _ in _headers(ab):
        mean, std = t[f"{m}_mean"].to_numpy() * 100, t[f"{m}_std"].to_numpy() * 100
        is_best = _bold(mean) if len(t) > 1 else np.zeros(len(t), dtype=bool)
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
            columns.append(_tied_cells(ab, st))
    return [list(row) for row in zip(*columns, strict=True)]


def _bold(values: np.ndarray) -> np.ndarray:
    """The cells that read the same as the column's best at the shown decimals (ties too)."""
    shown = np.round(values, SHOWN_DECIMALS)
    if not np.isfinite(shown).any():
        return np.zeros(len(shown), dtype=bool)
    return shown == np.nanmax(shown)


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


def _tied_cells(ab: Ablation, st: _Style) -> list[str]:
    """'best', ≈ (indistinguishable from it at these seeds) or blank; a dash while the seed
    noise is unknown."""
    known = ab.noise is not None and ab.noise.known
    best_text = "best (tie)" if ab.table[IS_BEST].sum() > 1 else "best"
    out = []
    for best, tied in zip(ab.table[IS_BEST], ab.table[TIED], strict=True):
        out.append(best_text if best else st.tied if tied else "" if known else st.dash)
    return out


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
            cols += ["Δ mIoU", f"vs {ab.reference} [95 % CI]", "p (Holm)", "seeds needed",
                     f"{TIED_MARK} best"]  # fmt: skip
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
        f"{TIED_MARK} best: {S.NOISE_RULE}. "
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
    """One sentence on what the seeds support, from the table itself; a plain one when nothing
    can be tested or every difference is within the seed noise."""
    t = ab.table
    if len(t) == 1:
        return f"One configuration ('{ab.reference}'): nothing to compare."
    tested = t[np.isfinite(t[P].to_numpy(dtype=float))]
    untested = int((t[TEST] == S.SINGLE).sum())
    if tested.empty:
        why = (f"{untested} row(s) have one run (n = 1)" if untested
               else "no row shares a test with it")  # fmt: skip
        return (f"No difference to '{ab.reference}' can be tested: {why}, so there is no "
                f"interval; run more seeds ({S.ADD_SEEDS_HINT}) to compare.")  # fmt: skip
    held = tested[tested[HOLDS]]
    rest = tested[~tested[HOLDS]]
    span = _seeds_span(rest)
    if held.empty:
        text = (f"All {len(tested)} differences to '{ab.reference}' are within the seed noise: "
                f"the seeds support none of them{span}")  # fmt: skip
        return text + (f"; {untested} row(s) have one run: no interval." if untested else ".")
    parts = [f"Against '{ab.reference}', the seeds support {len(held)} of {len(tested)} "
             "differences: " + ", ".join(f"{r['config']} ({r[DIFF] * 100:+.2f})"
                                         for _, r in held.iterrows())]  # fmt: skip
    if len(rest):
        parts.append(f"the other {len(rest)} are within the seed noise{span}")
    if untested:
        parts.append(f"{untested} row(s) have one run: no interval")
    return "; ".join(parts) + "."


def _seeds_span(rest: pd.DataFrame) -> str:
    """'; detecting them would take 4–>100 seeds per row' for the rows that do not hold."""
    need = rest[SEEDS_NEEDED].dropna().astype(int)
    if not len(need):
        return ""
    hi = f">{S.MAX_SEEDS}" if need.max() > S.MAX_SEEDS else str(need.max())
    if need.min() != need.max():
        return f"; detecting them would take {need.min()}–{hi} seeds per row"
    return f"; detecting them would take {hi} seeds per row"


def best_phrase(ab: Ablation) -> str:
    """``the best 'CMCR'``, or ``the best 'a' and 'b' (tied at 7.62 %)`` when rows tie."""
    best = best_rows(ab)
    if len(best) < 2:
        return f"the best '{best[0]}'" if best else "the best"
    mean = ab.table.loc[ab.table[IS_BEST].to_numpy(dtype=bool), f"{TARGET}_mean"].iloc[0]
    named = ", ".join(f"'{c}'" for c in best[:MAX_NAMED])
    more = f" and {len(best) - MAX_NAMED} more" if len(best) > MAX_NAMED else ""
    return f"the best {named}{more} (tied at {mean * 100:.{SHOWN_DECIMALS}f} %)"


def noise_verdict(ab: Ablation) -> str:
    """One sentence on the seed noise beside the spread between configurations, and which rows
    it cannot tell from the best (ties named); empty with fewer than two configurations."""
    noise = ab.noise
    if noise is None or noise.n_configs < 2 or noise.best < 0:
        return ""
    t = ab.table
    best = best_phrase(ab)
    if not noise.known:
        where = f"the sweep of study '{ab.study}'" if ab.study else "the sweep (sweeps/run.py)"
        return (f"Seed noise unknown: no configuration has ≥ 2 seeds, so no row can be told "
                f"apart from {best} or not; measure it by running {where} again "
                f"with {S.ADD_SEEDS_HINT}.")  # fmt: skip
    text = f"Seed noise: {S.noise_sentence(noise)}"
    tied = list(t["config"][t[TIED].to_numpy(dtype=bool)])
    n_best = len(best_rows(ab))
    if tied and len(tied) + n_best == len(t):
        return (f"All {len(t)} configurations are within the seed noise of each other: this "
                f"study cannot rank them at these seeds ({text[0].lower()}{text[1:]}).")  # fmt: skip
    if noise.cannot_rank:
        text += ": the configurations are within the seed noise: this study cannot rank them"
    if tied:
        named = ", ".join(f"'{c}'" for c in tied[:MAX_NAMED])
        more = f" and {len(tied) - MAX_NAMED} more" if len(tied) > MAX_NAMED else ""
        text += (f". {len(tied)} row(s) are indistinguishable from {best} at these "
                 f"seeds ({TIED_MARK}): {named}{more}")  # fmt: skip
    elif n_best == len(t):
        text += f". Every row reads the same: {best}"
    elif n_best > 1:
        text += f". Rows tie for {best}; no other row is within the seed noise"
    else:
        text += f". No row is within the seed noise of {best}"
    return text + "."


def to_markdown(ab: Ablation) -> str:
    """GitHub markdown table; IoU in %, mean ± std over seeds, best in bold."""
    head = ["configuration"] + _header_row(ab)
    cells = _cells(ab, MD)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in zip(ab.table["config"], cells, strict=True):
        lines.append("| " + " | ".join([label.replace("|", "\\|")] + row) + " |")
    noise = noise_verdict(ab)
    noise = f"\n\n{noise}" if noise else ""
    return "\n".join(lines) + "\n\n" + verdict(ab) + noise + "\n\n" + caption(ab) + "\n"


def tex_text(text: str) -> str:
    """Our text in LaTeX: special characters escaped, symbols in math mode."""
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"),
                 ("#", "\\#"), ("$", "\\$"), ("−", "$-$"), ("Δ", "$\\Delta$"),
                 ("α", "$\\alpha$"), ("≈", "$\\approx$"), ("≥", "$\\geq$"), ("≤", "$\\leq$"),
                 ("√", "$\\surd$"), ("·", "$\\cdot$"), ("±", "$\\pm$"), ("–", "--"), ("<", "$<$"), (">", "$>$"),
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
        " & ".join(tex_text(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    for label, row in zip(ab.table["config"], cells, strict=True):
        lines.append(" & ".join([tex_text(label)] + [_tex_cell(c) for c in row]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}",
              "\\par\\smallskip{\\footnotesize " + tex_text(caption(ab)) + " " + tex_text(verdict(ab))
              + " " + tex_text(noise_verdict(ab)) + "}"]  # fmt: skip
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
