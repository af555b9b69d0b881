"""Report figures: Optuna's standard study figures, and the run views Optuna cannot draw.

The history, importance, parallel-coordinate, slice and contour figures come from
``optuna.visualization`` on the study itself (log axes follow each distribution's log flag).
Drawn here by hand only what needs the MLflow runs: the ablation bars (95 % intervals of the
means), the forest plot of the paired differences to the reference row, the per-class IoU and
the loss curves, and the representation probe's mIoU during pre-training of every trial run
(pruned ones apart). Each builder returns a Figure, or a string saying why there is none.

mIoU is drawn in % (MLflow and Optuna store fractions): Optuna's figures are drawn from the
trial values times 100. No axis of mIoU spans less than ``sensible_range`` allows (a few seed
SDs, a share of the value, half a point): a 6e-6 gap must not fill the plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cmcr.names import Metric
from cmcr.results import ablation as A
from cmcr.results import stats as S
from cmcr.results.ablation import CLASSES, IOU, TARGET, Ablation
from cmcr.results.ablation_formats import needed_cell
from cmcr.results.axes import PERCENT, flat_reason, percent_y, sensible_range, widen_y
from cmcr.results.collect import RunTable, metric_histories
from cmcr.results.tables import run_labels, shown_configs

Figure = go.Figure | str  # a figure, or the reason it could not be drawn
LAYOUT = {"template": "plotly_white", "height": 420, "margin": {"l": 60, "r": 30, "t": 60, "b": 60}}
STUDY_TARGET = f"mIoU (%) ({TARGET}, trial value: mean over seeds)"  # what a trial returns
MAX_SLICES = 8  # more subplots than this are unreadable on one page
FANOVA_SEEDS = range(5)  # the forest's seed moves importances; the spread over seeds shows how much
# Below this many complete trials the importance and contour figures say they are unreliable
# (in their titles; docs/architecture.md, Report): PED-ANOVA's
# top 10 % quantile then holds at most one trial, and fANOVA's forest fits fewer points than
# a 2–4-param study has corners to tell apart.
MIN_RELIABLE_TRIALS = 20
# fANOVA costs about 8 s per 64-tree forest at 1,000 trials: past this many trials each seed
# grows 16 trees, so five seeds cost about what one default forest did.
LARGE_STUDY, SMALL_FOREST = 200, 16
# probe curves: one history request per run, so at most this many runs (the pruned ones first)
MAX_PROBE_RUNS = 150
PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692",
           "#b6e880", "#ff97ff"]  # fmt: skip
PRUNED_LINE = {"color": "#9e9e9e", "dash": "dash", "width": 1.5}
OTHER_LINE = {"color": "#c8c8c8", "dash": "dot", "width": 1.5}  # running, failed, killed
STUDY_FIGURES = (("history", "Optimisation history"), ("importance", "Parameter importances"),
                 ("parallel", "Parallel coordinates"), ("slice", "Slices"),
                 ("contour", "Contour"))  # fmt: skip


class _Computed(optuna.importance.BaseImportanceEvaluator):
    """Hands Optuna importances computed once: they draw the bars and pick the contour's axes."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def evaluate(self, study: Any, params: Any = None, *, target: Any = None) -> dict[str, float]:
        """The precomputed importances."""
        return dict(self.scores)


@dataclass
class Importances:
    """fANOVA importances (mean and std over FANOVA_SEEDS) and PED-ANOVA's, or why not."""

    mean: dict[str, float]  # most important first; each seed's importances sum to 1
    std: dict[str, float]
    ped: dict[str, float] | str
    n_trials: int
    n_trees: int  # per fANOVA forest


def study_figures(
    study: optuna.Study, seed_sd: float = float("nan")
) -> list[tuple[str, str, Figure]]:
    """(id, heading, figure or reason) of Optuna's standard figures, in page order; mIoU in %,
    its axes at least ``sensible_range`` wide (``seed_sd``: the seed SD in points)."""
    vis = optuna.visualization
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = sorted({p for t in done for p in t.params})
    if not done:
        reason = f"the Optuna study '{study.study_name}' has no complete trial yet"
        return [(fid, title, reason) for fid, title in STUDY_FIGURES]
    scores = _importances(study, len(done), params)
    ranked = list(scores.mean) if isinstance(scores, Importances) else params
    few = f"≥ 2 complete trials (the study has {len(done)})" if len(done) < 2 else ""
    figs: dict[str, Figure] = {
        "history": percent_y(vis.plot_optimization_history(study, target_name=STUDY_TARGET)),
        "importance": scores if isinstance(scores, str) else _importance_figure(study, scores),
        "parallel": f"parallel coordinates need {few}" if few else
        vis.plot_parallel_coordinate(study, target=_percent, target_name=STUDY_TARGET),
        "slice": percent_y(vis.plot_slice(study, params=ranked[:MAX_SLICES],
                                           target_name=STUDY_TARGET)),
        "contour": _contour(study, ranked, len(done)),
    }  # fmt: skip
    if len(ranked) > MAX_SLICES:
        figs["slice"].update_layout(title=f"Slice plot (the {MAX_SLICES} most important of "
                                          f"{len(ranked)} params)")  # fmt: skip
    for fid in ("history", "slice"):
        widen_y(figs[fid], seed_sd)
    flat = flat_reason([t.value for t in done], seed_sd)
    if flat:  # their colour and axis scales stretch any span to full height
        figs["parallel"] = figs["contour"] = flat
    return [(fid, title, _styled(figs[fid])) for fid, title in STUDY_FIGURES]


def _percent(trial: optuna.trial.FrozenTrial) -> float:
    """A trial's value (an mIoU fraction) in %."""
    return trial.value * PERCENT


def _importances(study: optuna.Study, n_done: int, params: list[str]) -> Importances | str:
    """Optuna's fANOVA over FANOVA_SEEDS and PED-ANOVA; the reason when there are none."""
    if n_done < 2 or not params:
        return (f"parameter importances need ≥ 2 complete trials and ≥ 1 param "
                f"(the study has {n_done} trial(s), {len(params)} param(s))")  # fmt: skip
    imp = optuna.importance
    try:
        trees = 64 if n_done <= LARGE_STUDY else SMALL_FOREST  # 64: Optuna's default
        runs = [imp.get_param_importances(
                    study, evaluator=imp.FanovaImportanceEvaluator(n_trees=trees, seed=s))
                for s in FANOVA_SEEDS]  # fmt: skip
    except (ValueError, RuntimeError) as exc:  # e.g. every trial has the same params
        return f"Optuna could not compute importances: {exc}"
    keys = list(runs[0])
    values = np.array([[r.get(k, 0.0) for k in keys] for r in runs])  # (seeds, params)
    order = np.argsort(-values.mean(axis=0), kind="stable")
    mean = {keys[i]: float(values[:, i].mean()) for i in order}
    std = {keys[i]: float(values[:, i].std(ddof=1)) for i in order}
    try:
        ped: dict[str, float] | str = dict(imp.get_param_importances(
            study, evaluator=imp.PedAnovaImportanceEvaluator()))  # fmt: skip
    except Exception as exc:  # experimental in Optuna: any failure only drops its bars
        ped = f"PED-ANOVA failed: {type(exc).__name__}: {exc}"
    return Importances(mean, std, ped, n_done, trees)


def _importance_figure(study: optuna.Study, imp: Importances) -> go.Figure:
    """Optuna's importance bars (fANOVA mean) with the spread over seeds as error bars, and
    PED-ANOVA's bars beside them when it worked."""
    vis = optuna.visualization
    fig = vis.plot_param_importances(study, evaluator=_Computed(imp.mean),
                                     target_name=STUDY_TARGET)  # fmt: skip
    bars = fig.data[0]
    bars.update(name=f"fANOVA (mean ± std, seeds {FANOVA_SEEDS[0]}–{FANOVA_SEEDS[-1]}, "
                     f"{imp.n_trees} trees each)",
                error_x={"type": "data", "array": [imp.std[p] for p in bars.y]},
                showlegend=True)  # fmt: skip
    notes = []
    if isinstance(imp.ped, dict):
        ped = vis.plot_param_importances(study, evaluator=_Computed(imp.ped),
                                         target_name=STUDY_TARGET).data[0]  # fmt: skip
        ped.update(name="PED-ANOVA", marker={"color": "#ff7f0e"}, showlegend=True)
        fig.add_trace(ped)
        fig.update_layout(barmode="group")
    else:
        notes.append(imp.ped)
    if imp.n_trials < MIN_RELIABLE_TRIALS:
        notes.append(f"unreliable: {imp.n_trials} complete trials < {MIN_RELIABLE_TRIALS}")
    fig.update_layout(title="Parameter importances" + (f" — {'; '.join(notes)}" if notes else ""),
                      legend={"orientation": "h", "y": -0.25})  # fmt: skip
    fig.update_yaxes(categoryorder="array", categoryarray=list(bars.y))
    return fig


def _contour(study: optuna.Study, ranked: list[str], n_done: int) -> Figure:
    """Optuna's contour of the two most important params."""
    if len(ranked) < 2 or n_done < 3:
        return (f"a contour needs ≥ 2 params and ≥ 3 complete trials (the study has "
                f"{len(ranked)} param(s), {n_done} trial(s))")  # fmt: skip
    a, b = ranked[:2]
    fig = optuna.visualization.plot_contour(study, params=[a, b], target_name=STUDY_TARGET)
    # an interpolated surface over a handful of points looks like knowledge it is not
    few = (f" — unreliable: {n_done} complete trials < {MIN_RELIABLE_TRIALS}"
           if n_done < MIN_RELIABLE_TRIALS else "")  # fmt: skip
    fig.update_layout(title=f"Contour: {a} × {b} (the two most important params){few}")
    return fig


def _styled(fig: Figure) -> Figure:
    """The page's look on Optuna's figures; an empty one becomes a reason."""
    if isinstance(fig, str):
        return fig
    if not fig.data:  # Optuna draws an empty figure (and logs a warning) when it has nothing
        return "Optuna had nothing to draw"
    fig.update_layout(template=LAYOUT["template"], margin=LAYOUT["margin"])
    return fig


def per_class(ab: Ablation, max_configs: int = 8) -> Figure:
    """Per-class IoU bars (mean ± std over seeds) of the baseline and the best configurations."""
    t = ab.table
    cols = [c for c in CLASSES if f"{IOU}{c}_mean" in t]
    if not cols:
        return f"no per-class IoU metrics ({IOU}<class>) were logged"
    rows = shown_configs(ab, max_configs)
    fig = go.Figure()
    for i in rows:
        fig.add_bar(name=t.at[i, "config"], x=cols,
                    y=[t.at[i, f"{IOU}{c}_mean"] * 100 for c in cols],
                    error_y={"type": "data",
                             "array": [np.nan_to_num(t.at[i, f"{IOU}{c}_std"]) * 100
                                       for c in cols]})  # fmt: skip
    more = f" (baseline and best {len(rows) - 1} of {len(t)})" if len(t) > len(rows) else ""
    fig.update_layout(title=f"Per-class IoU{more}", yaxis_title="IoU (%)", barmode="group",
                      **{**LAYOUT, "height": 480, "legend": {"orientation": "h", "y": -0.35}})  # fmt: skip
    return fig


def summary_bars(ab: Ablation, max_configs: int = 20) -> Figure:
    """mIoU per configuration with the 95 % t-interval of its mean as error bars."""
    t = ab.table
    if len(t) > max_configs:
        return (f"{len(t)} configurations (more than {max_configs}): the optimisation history "
                "and the table show them")  # fmt: skip
    fig = go.Figure(go.Bar(x=t["config"], y=t[f"{TARGET}_mean"] * 100,
                           error_y={"type": "data", "array": np.nan_to_num(t[A.CI]) * 100},
                           text=[f"n={n}" for n in t["n_runs"]]))  # fmt: skip
    fig.update_layout(title="mIoU per configuration (mean, 95 % t-interval of the mean over "
                            "seeds; none where n = 1)", yaxis_title="mIoU (%)", **LAYOUT)  # fmt: skip
    return fig


def forest(ab: Ablation, max_rows: int = 40) -> Figure:
    """Each row's mIoU difference to the reference with its 95 % interval; held ones marked."""
    t = ab.table
    rows = t[np.isfinite(t[A.LO].to_numpy(dtype=float))]
    if rows.empty:
        return (f"no row has an interval against '{ab.reference}' (each needs ≥ 2 seeds, "
                "paired or not)")  # fmt: skip
    more = ""
    if len(rows) > max_rows:  # the most significant first: the rest are ties anyway
        rows = rows.sort_values(A.P, kind="stable").head(max_rows)
        more = f" ({max_rows} smallest p of {len(t) - 1})"
    d, lo, hi = (rows[c].to_numpy(dtype=float) * 100 for c in (A.DIFF, A.LO, A.HI))
    labels = [f"{c}{' (unpaired)' if k == S.WELCH else ''}" for c, k in
              zip(rows["config"], rows[A.TEST], strict=True)]  # fmt: skip
    held = rows[A.HOLDS].to_numpy(dtype=bool)
    hover = np.array([f"p (Holm) {r[A.P_HOLM]:.3g}; seeds needed {needed_cell(r, '—') or '—'}"
                      for _, r in rows.iterrows()])  # fmt: skip
    fig = go.Figure()
    for mask, name, color in ((held, f"holds after Holm ({A.MARK})", "#d62728"),
                              (~held, "within noise", "#7f7f7f")):  # fmt: skip
        fig.add_scatter(x=d[mask], y=np.array(labels)[mask], mode="markers", name=name,
                        marker={"color": color, "size": 9}, text=hover[mask],
                        error_x={"type": "data", "symmetric": False, "array": (hi - d)[mask],
                                 "arrayminus": (d - lo)[mask]})  # fmt: skip
    fig.add_vline(x=0, line={"color": "black", "width": 1})
    fig.update_layout(title=f"mIoU − '{ab.reference}' per row, 95 % interval{more}",
                      xaxis_title="difference (mIoU points)",
                      **{**LAYOUT, "height": max(300, 60 + 28 * len(rows))})  # fmt: skip
    fig.update_yaxes(autorange="reversed")  # table order, top to bottom
    seed_sd = ab.noise.seed_sd * PERCENT if ab.noise is not None else float("nan")
    rng = sensible_range([*lo, *hi, 0.0], seed_sd)
    if rng is not None:  # centred on 0: a tiny difference stays tiny
        half = max((rng[1] - rng[0]) / 2, 1.1 * float(np.nanmax(np.abs([*lo, *hi]))))
        fig.update_xaxes(range=[-half, half])
    return fig


def loss_curves(rt: RunTable, seed_sd: float = float("nan")) -> Figure:
    """Training losses and val/miou (in %) per epoch of the best and the worst finished trial."""
    done = rt.complete
    if done.empty:
        return "no finished trial to draw loss curves for"
    best = done.loc[done[TARGET].idxmax()]
    worst = done.loc[done[TARGET].idxmin()]
    picks = [("best", best)] + ([("worst", worst)] if worst["run_id"] != best["run_id"] else [])
    keys = [k for k in rt.metrics if k.startswith(Metric.TRAIN_LOSS)] + [TARGET]
    # Only these two runs: get_metric_history is one request per run and key.
    hist = metric_histories(rt.tracking_uri, [r["run_id"] for _, r in picks], keys)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("train losses", "mIoU (%) per epoch"))
    palette = PALETTE
    terms = sorted((k for k in keys if k != TARGET), key=lambda k: (k != Metric.TRAIN_LOSS, k))
    for (tag, run), dash in zip(picks, ("solid", "dot"), strict=False):
        h = hist[hist["run_id"] == run["run_id"]]
        for j, key in enumerate(terms):  # one legend entry per term; dash tells best/worst
            s = h[h["key"] == key]
            color = "#222" if key == Metric.TRAIN_LOSS else palette[j % len(palette)]
            fig.add_scatter(x=s["step"], y=s["value"], mode="lines", name=key, legendgroup=key,
                            showlegend=tag == "best", row=1, col=1,
                            line={"dash": dash, "color": color,
                                  "width": 3 if key == Metric.TRAIN_LOSS else 1.5})  # fmt: skip
        s = h[h["key"] == TARGET]
        fig.add_scatter(x=s["step"], y=s["value"] * PERCENT, mode="lines+markers",
                        name=f"mIoU % ({tag})",
                        line={"dash": dash, "color": "black"}, row=1, col=2)  # fmt: skip
    names = " and ".join(f"{t} = trial {r['trial']} ({r[TARGET] * PERCENT:.2f} %)"
                         for t, r in picks)  # fmt: skip
    tied = done[np.round(done[TARGET] * PERCENT, 2) == round(best[TARGET] * PERCENT, 2)]
    if len(tied) > 1:  # never a silent pick among equals
        others = ", ".join(str(t) for t in tied["trial"] if t != best["trial"])
        names += f" (tied with trial(s) {others})"
    fig.update_xaxes(title_text="optimiser step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    fig.update_yaxes(title_text="mIoU (%)", row=1, col=2)
    widen_y(fig, seed_sd, axes=("y2",))
    fig.update_layout(title=f"Loss curves — solid: {names.replace(' and ', ', dotted: ')}",
                      **{**LAYOUT, "height": 520, "legend": {"font": {"size": 10}}})  # fmt: skip
    return fig


def has_probe(rt: RunTable) -> bool:
    """Whether some run logged the pre-training probe (the report draws its figure then)."""
    return Metric.PROBE_MIOU in rt.runs and bool(rt.runs[Metric.PROBE_MIOU].notna().any())


def probe_curves(rt: RunTable, max_runs: int = MAX_PROBE_RUNS) -> Figure:
    """``rep/probe_miou`` against the pre-training step, one line per trial run: finished runs in
    colour, pruned ones grey and dashed with a red × where the pruner stopped them, the others
    (running, failed, killed) dotted; hover: trial, seed, params, step, value."""
    key = Metric.PROBE_MIOU
    if not has_probe(rt):
        return f"no run logged {key} (no probe during pre-training: sweep.eval_every = 0)"
    runs, more = _probe_runs(rt, max_runs)
    hist = metric_histories(rt.tracking_uri, list(runs["run_id"]), [key])
    labels = run_labels(rt, runs)
    legend = len(runs) <= 20  # one entry per run; more only by kind
    seen: set[str] = set()
    marks: list[tuple[float, float, str]] = []
    fig = go.Figure()
    for n, (i, r) in enumerate(runs.iterrows()):
        h = hist[hist["run_id"] == r["run_id"]]
        steps, values = h["step"].to_numpy(), h["value"].to_numpy(dtype=float) * 100
        trial = "?" if pd.isna(r["trial"]) else str(int(r["trial"]))
        seed = "" if pd.isna(r["seed"]) else f", seed {int(r['seed'])}"
        kind = {"COMPLETE": "finished", "PRUNED": "pruned"}.get(r["state"], "unfinished / failed")
        head = f"trial {trial}{seed} ({kind})<br>{labels[i]}"
        text = [
            f"{head}<br>step {s}: representation probe {v:.2f} %"
            for s, v in zip(steps, values, strict=True)
        ]
        line = ({"color": PALETTE[n % len(PALETTE)], "width": 2} if kind == "finished" else
                PRUNED_LINE if kind == "pruned" else OTHER_LINE)  # fmt: skip
        name = f"trial {trial}{seed}" + ("" if kind == "finished" else f" ({kind})")
        fig.add_scatter(x=steps, y=values, mode="lines+markers", name=name if legend else kind,
                        legendgroup=name if legend else kind, line=line, marker={"size": 4},
                        showlegend=legend or kind not in seen, text=text,
                        hovertemplate="%{text}<extra></extra>")  # fmt: skip
        seen.add(kind)
        if kind == "pruned" and len(steps):
            marks.append(_pruned_mark(r, steps, values, head))
    if marks:
        x, y, text = zip(*marks, strict=True)
        fig.add_scatter(x=list(x), y=list(y), mode="markers", name="pruned here",
                        marker={"symbol": "x", "size": 11, "color": "#d62728"}, text=list(text),
                        hovertemplate="%{text}<extra></extra>")  # fmt: skip
    n_pruned = int((runs["state"] == "PRUNED").sum())
    cost = ""
    if Metric.PROBE_TIME_SHARE in runs and runs[Metric.PROBE_TIME_SHARE].notna().any():
        cost = (f"; the probe took {100 * runs[Metric.PROBE_TIME_SHARE].median():.1f} % of "
                "pre-training time (median)")  # fmt: skip
    fig.update_layout(title=f"Representation probe (rep/probe_miou) during pre-training — {len(runs)} runs, {n_pruned} "
                            f"pruned (dashed, × where stopped){more}{cost}",
                      xaxis_title="pre-training optimiser step", yaxis_title="representation probe mIoU (%)",
                      **{**LAYOUT, "height": 480})  # fmt: skip
    fig.update_xaxes(rangemode="tozero")
    widen_y(fig)
    return fig


def _probe_runs(rt: RunTable, max_runs: int) -> tuple[pd.DataFrame, str]:
    """The runs with a probe curve, at most ``max_runs`` (the pruned first, then the best
    finished, then the rest), and the title's note when some were left out."""
    key = Metric.PROBE_MIOU
    runs = rt.runs[rt.runs[key].notna()]
    if len(runs) <= max_runs:
        return runs, ""
    rank = runs.assign(_p=runs["state"] != "PRUNED", _c=runs["state"] != "COMPLETE",
                       _v=-runs[TARGET] if TARGET in runs else 0.0)  # fmt: skip
    keep = set(rank.sort_values(["_p", "_c", "_v"], kind="stable").index[:max_runs])
    runs = runs.loc[[i for i in runs.index if i in keep]]
    return (
        runs,
        f" ({max_runs} of {int(rt.runs[key].notna().sum())} runs: the pruned, then the best)",
    )


def _pruned_mark(
    r: pd.Series, steps: np.ndarray, values: np.ndarray, head: str
) -> tuple[float, float, str]:
    """(x, y, hover) of the × where the pruner stopped run ``r``: its tagged pre-training step,
    else its last probe (a run pruned in the downstream phase)."""
    at, phase = r["pruned_at_step"], r["pruned_phase"]
    where = (f"pruned at pre-training step {int(at)}" if phase == "pretrain"
             and pd.notna(at) else f"pruned at downstream epoch {int(at)}"
             if pd.notna(at) else "pruned after this probe")  # fmt: skip
    x = int(at) if phase == "pretrain" and pd.notna(at) else int(steps[-1])
    before = values[steps <= x]
    return x, float(before[-1] if len(before) else values[-1]), f"{head}<br>{where}"
