"""Ablation tables: one row per configuration, mean ± std over seeds, Δ to the baseline.

The csv keeps raw values (IoU as the fractions MLflow stores); markdown, LaTeX and HTML show
IoU in percent with the best value of each column in bold.
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
from cmcr.results.collect import RunTable

CLASSES = CHALLENGE_CLASSES[1:]
# The paper's row order for the components study; other variants follow, sorted.
VARIANT_ORDER = ("random", "ppkt", "cmcr") + tuple(f"cmcr-{c}" for c in COMPONENTS)
TARGET = Metric.VAL_MIOU
IOU = Metric.VAL_IOU_PREFIX
SUMMARY = (TARGET, Metric.VAL_FWIOU)


@dataclass
class Ablation:
    """The aggregated table and how it was grouped."""

    table: pd.DataFrame  # one row per configuration; csv columns
    group_by: list[str]  # "variant" or the swept params
    baseline: str  # label of the Δ reference row
    metrics: list[str]  # aggregated metric keys, summary first then per class


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


def ablation(rt: RunTable) -> Ablation:
    """Mean ± std over seeds per configuration, run count, Δ to the baseline row."""
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
    out = _order(out, keys)
    out.insert(0, "config", [_label(row, keys) for _, row in out.iterrows()])
    base = _baseline_index(out, keys)
    out.insert(out.columns.get_loc(f"{TARGET}_mean") + 2, f"delta_{TARGET}",
               out[f"{TARGET}_mean"] - out[f"{TARGET}_mean"].iloc[base])  # fmt: skip
    out = out.reset_index(drop=True)
    for k in keys:  # tuples (list params) read badly in a csv
        out[k] = out[k].map(lambda v: list(v) if isinstance(v, tuple) else v)
    return Ablation(out, keys, str(out["config"].iloc[base]), metrics)


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


def _cells(ab: Ablation, bold: callable, pm: str, dash: str) -> list[list[str]]:
    """Formatted cells (percent, mean ± std, best bold) for every row."""
    t = ab.table
    columns: list[list[str]] = [[str(n) for n in t["n_runs"]]]
    is_base = (t["config"] == ab.baseline).to_numpy()
    for m, _ in _headers(ab):
        mean, std = t[f"{m}_mean"].to_numpy() * 100, t[f"{m}_std"].to_numpy() * 100
        best = np.nanmax(mean) if len(t) > 1 and np.isfinite(mean).any() else np.nan
        is_best = np.isclose(mean, best, atol=5e-5)
        col = []
        for mu, sd, b in zip(mean.tolist(), std.tolist(), is_best.tolist(), strict=True):
            text = dash if mu != mu else f"{mu:.2f}"  # NaN != NaN
            text += f"{pm}{sd:.2f}" if sd == sd else ""
            col.append(bold(text) if b else text)
        columns.append(col)
        if m == TARGET:
            delta = (t[f"delta_{TARGET}"].to_numpy() * 100).tolist()
            columns.append(
                [dash if b else f"{d:+.2f}" for d, b in zip(delta, is_base, strict=True)]
            )
    return [list(row) for row in zip(*columns, strict=True)]


def _header_row(ab: Ablation) -> list[str]:
    cols = ["runs"]
    for m, h in _headers(ab):
        cols.append(h)
        if m == TARGET:
            cols.append("Δ mIoU")
    return cols


def to_markdown(ab: Ablation) -> str:
    """GitHub markdown table; IoU in %, mean ± std over seeds, best in bold."""
    head = ["configuration"] + _header_row(ab)
    cells = _cells(ab, lambda s: f"**{s}**", " ± ", "—")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in zip(ab.table["config"], cells, strict=True):
        lines.append("| " + " | ".join([label.replace("|", "\\|")] + row) + " |")
    note = (f"IoU in %, mean ± std over seeds; Δ to '{ab.baseline}'; "
            f"grouped by {', '.join(ab.group_by) or 'nothing (one configuration)'}.")  # fmt: skip
    return "\n".join(lines) + "\n\n" + note + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"),
                 ("#", "\\#"), ("$", "\\$"), ("−", "$-$"), ("Δ", "$\\Delta$")):  # fmt: skip
        text = text.replace(a, b)
    return text


def to_latex(ab: Ablation) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); best in \\textbf."""
    head = ["configuration"] + _header_row(ab)
    cells = _cells(ab, lambda s: f"\\textbf{{{s}}}", " $\\pm$ ", "--")
    lines = [
        "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    for label, row in zip(ab.table["config"], cells, strict=True):
        lines.append(" & ".join([_tex(label)] + [_tex_cell(c) for c in row]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _tex_cell(cell: str) -> str:
    """Escape a formatted cell but keep the macros we put there ourselves."""
    return cell.replace("%", "\\%")


def to_html(ab: Ablation, max_rows: int | None = None) -> str:
    """An HTML table (best in <b>); the first ``max_rows`` rows by mIoU when given."""
    head = ["configuration"] + _header_row(ab)
    cells = _cells(ab, lambda s: f"<b>{s}</b>", " ± ", "—")
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
    """Runs left out of the averages, with why (state, status reason) and their last mIoU."""
    df = rt.incomplete
    cols = ["run_id", "trial", "variant", "seed", "state", "status", "status_reason"]
    out = df[[c for c in cols if c in df]].copy()
    out[f"last {TARGET}"] = df.get(TARGET, np.nan)
    if "status_reason" in out:
        out["status_reason"] = out["status_reason"].fillna("")
    return out.reset_index(drop=True)
