"""Tables of the runs left out of the ablation's means (pruned trials, running and failed
runs) and the side-by-side table of downstream evaluations."""

from __future__ import annotations

import html
from collections.abc import Callable

import numpy as np
import pandas as pd

from cmcr.names import Metric
from cmcr.registry import DATASETS
from cmcr.results.ablation import (
    IOU,
    SHOWN_DECIMALS,
    TARGET,
    Ablation,
    n_trials,
    short_names,
    short_value,
    variant_label,
)
from cmcr.results.ablation_formats import tex_text
from cmcr.results.collect import (
    NOT_SWEPT_PREFIXES,
    PRUNED,
    RunTable,
    evaluations,
    metric_histories,
)


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
    return runs.apply(lambda r: ", ".join(f"{short[k]}={short_value(r[k])}" for k in keys), axis=1)


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
        "last representation probe mIoU (%)": ["—" if v != v else f"{v:.2f}" for v in probe.tolist()],
        "reason": table["status_reason"],
    })  # fmt: skip


def pruned_note(table: pd.DataFrame) -> str:
    """What the pruned table is, in one sentence."""
    trials = n_trials(table)
    runs = "" if len(table) == trials else f" ({len(table)} runs)"
    return (f"{trials} trial(s){runs} stopped early by Optuna's pruner: not in the means of the "
            "ablation table. 'Stopped at': the step the sweep tagged, else the last logged step "
            "(named); the representation probe: the in-training score (rep/probe_miou), not the objective.")  # fmt: skip


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


MAX_CLASS_COLUMNS = 8  # configurations across the per-class table: it must fit the page


def shown_configs(ab: Ablation, max_configs: int = MAX_CLASS_COLUMNS) -> list[int]:
    """Rows of ``ab.table`` a per-class view shows: all, or the baseline and the best ones."""
    t = ab.table
    base = int(np.flatnonzero(t["config"].to_numpy() == ab.baseline)[0])
    rows = list(range(len(t)))
    if len(rows) > max_configs:
        best = np.argsort(-t[f"{TARGET}_mean"].to_numpy(), kind="stable")
        rows = sorted({base, *[int(i) for i in best[: max_configs - 1]]})
    return rows


def class_metrics(ab: Ablation) -> list[str]:
    """The per-class IoU metrics of the table (``val/iou_<class>``), in class order."""
    return [m for m in ab.metrics if m.startswith(IOU)]


def per_class_cells(ab: Ablation, bold: Callable[[str], str]) -> list[list[str]]:
    """One row per class: IoU in % as 'mean ± std' per shown configuration, best in bold."""
    t, rows = ab.table, shown_configs(ab)
    out = []
    for m in class_metrics(ab):
        mean = t[f"{m}_mean"].to_numpy(dtype=float)[rows] * 100
        std = t[f"{m}_std"].to_numpy(dtype=float)[rows] * 100
        shown = np.round(mean, SHOWN_DECIMALS)
        top = np.nanmax(shown) if np.isfinite(shown).any() and len(rows) > 1 else np.nan
        cells = []
        for mu, sd, s in zip(mean.tolist(), std.tolist(), shown.tolist(), strict=True):
            text = "—" if mu != mu else f"{mu:.2f}" + (f" ± {sd:.2f}" if sd == sd else "")
            cells.append(bold(text) if s == top else text)
        out.append([m.removeprefix(IOU), *cells])
    return out


def per_class_note(ab: Ablation) -> str:
    """What the per-class table shows, in one sentence."""
    rows = shown_configs(ab)
    which = (f"the baseline '{ab.baseline}' and the best {len(rows) - 1} of {len(ab.table)} "
             "configurations (all in ablation.csv)" if len(rows) < len(ab.table)
             else "every configuration")  # fmt: skip
    return (f"Per-class IoU in %, mean ± std over seeds, for {which}; the best of each class "
            "in bold.")  # fmt: skip


def per_class_markdown(ab: Ablation) -> str:
    """The per-class table as GitHub markdown ('' when no per-class IoU was logged)."""
    if not class_metrics(ab):
        return ""
    head = ["class", *(ab.table["config"].iloc[i] for i in shown_configs(ab))]
    lines = ["| " + " | ".join(str(h).replace("|", "\\|") for h in head) + " |",
             "|" + "---|" * len(head)]  # fmt: skip
    lines += ["| " + " | ".join(r) + " |" for r in per_class_cells(ab, lambda s: f"**{s}**")]
    return "\n".join(lines) + "\n\n" + per_class_note(ab) + "\n"


def per_class_html(ab: Ablation) -> str:
    """The per-class table as HTML ('' when no per-class IoU was logged)."""
    if not class_metrics(ab):
        return ""
    head = ["class", *(ab.table["config"].iloc[i] for i in shown_configs(ab))]
    thead = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in per_class_cells(ab, lambda s: f"<b>{s}</b>"))  # fmt: skip
    return f'<table class="per-class"><thead><tr>{thead}</tr></thead><tbody>{body}</tbody></table>'


def per_class_latex(ab: Ablation) -> str:
    """The per-class table as booktabs LaTeX ('' when no per-class IoU was logged)."""
    if not class_metrics(ab):
        return ""
    head = ["class", *(ab.table["config"].iloc[i] for i in shown_configs(ab))]
    rows = per_class_cells(ab, lambda s: f"\\textbf{{{s}}}")
    lines = ["\\begin{tabular}{l" + "r" * (len(head) - 1) + "}", "\\toprule",
             " & ".join(tex_text(str(h)) for h in head) + " \\\\", "\\midrule"]  # fmt: skip
    lines += [" & ".join([tex_text(r[0]), *(c.replace("±", "$\\pm$") for c in r[1:])]) + " \\\\"
              for r in rows]  # fmt: skip
    lines += ["\\bottomrule", "\\end{tabular}",
              "\\par\\smallskip{\\footnotesize " + tex_text(per_class_note(ab)) + "}"]  # fmt: skip
    return "\n".join(lines) + "\n"
