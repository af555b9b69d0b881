"""Plotly figures of a study: each builder returns a Figure, or a string saying why there is none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cmcr.results.collect import TARGET, RunTable, metric_histories
from cmcr.results.tables import CLASSES, Ablation

Figure = go.Figure | str  # a figure, or the reason it could not be drawn
LAYOUT = {"template": "plotly_white", "height": 420, "margin": {"l": 60, "r": 30, "t": 60, "b": 60}}


def _x_order(done: pd.DataFrame) -> pd.Series:
    """Trial number, else the start order."""
    if "trial" in done and done["trial"].notna().all():
        return done["trial"].astype(int)
    return pd.Series(np.arange(len(done)), index=done.index)


def history(rt: RunTable) -> Figure:
    """Optimisation history: the target per trial and the best so far."""
    done = rt.complete.assign(_x=lambda d: _x_order(d)).sort_values("_x")
    if done.empty:
        return "no finished trial with val/miou yet"
    fig = go.Figure()
    fig.add_scatter(x=done["_x"], y=done[TARGET], mode="markers", name="val/miou",
                    text=done["variant"], hovertemplate="trial %{x}<br>%{y:.4f}<br>%{text}")  # fmt: skip
    fig.add_scatter(x=done["_x"], y=done[TARGET].cummax(), mode="lines", name="best so far",
                    line={"shape": "hv"})  # fmt: skip
    fig.update_layout(title="Optimisation history", xaxis_title="trial", yaxis_title="val/miou",
                      **LAYOUT)  # fmt: skip
    return fig


def _codes(s: pd.Series) -> tuple[np.ndarray, list | None, list | None]:
    """Numeric values of a param column; categoricals (str, bool, lists) become codes."""
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.astype(float).to_numpy(), None, None
    text = s.astype(str)
    cats = sorted(text.unique())
    return (
        text.map({c: i for i, c in enumerate(cats)}).to_numpy(float),
        list(range(len(cats))),
        cats,
    )


def importances(rt: RunTable, swept: list[str]) -> tuple[Figure, str]:
    """Parameter importances: Optuna's fANOVA on the study, else the correlation ratio η²."""
    done = rt.complete
    if len(swept) < 2 or len(done) < 2:
        return (f"parameter importances need ≥ 2 swept params and ≥ 2 finished trials "
                f"(here {len(swept)} param(s), {len(done)} trial(s))"), ""  # fmt: skip
    scores, method = _fanova(rt, swept)
    if scores is None:
        scores, method = _eta_squared(done, swept), "correlation ratio η² (normalised)"
    names = sorted(scores, key=scores.get)
    fig = go.Figure(go.Bar(x=[scores[n] for n in names], y=names, orientation="h"))
    fig.update_layout(title=f"Parameter importances — {method}", xaxis_title="importance",
                      **{**LAYOUT, "height": max(300, 40 * len(names) + 120)})  # fmt: skip
    return fig, method


def _fanova(rt: RunTable, swept: list[str]) -> tuple[dict | None, str]:
    """fANOVA over the Optuna study's complete trials, when a study with ≥ 2 params exists."""
    if rt.study is None:
        return None, ""
    import optuna

    try:
        scores = optuna.importance.get_param_importances(
            rt.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (ValueError, RuntimeError):  # too few complete trials or a single-valued space
        return None, ""
    if len(scores) < 2:
        return None, ""
    return dict(scores), "Optuna fANOVA"


def _eta_squared(done: pd.DataFrame, swept: list[str]) -> dict[str, float]:
    """Share of the target's variance explained by each param alone (numeric: 10 quantile bins)."""
    y = done[TARGET].to_numpy(float)
    total = ((y - y.mean()) ** 2).sum()
    out = {}
    for p in swept:
        x, _, _ = _codes(done[p])
        if len(np.unique(x)) > 10:
            x = pd.qcut(x, 10, labels=False, duplicates="drop")
        means = pd.Series(y).groupby(np.asarray(x)).transform("mean").to_numpy()
        out[p] = float(((means - y.mean()) ** 2).sum() / total) if total > 0 else 0.0
    s = sum(out.values())
    return {k: v / s if s > 0 else 0.0 for k, v in out.items()}


def parallel(rt: RunTable, swept: list[str]) -> Figure:
    """Parallel coordinates of the swept params and the target, coloured by the target."""
    done = rt.complete
    if not swept or len(done) < 2:
        return "parallel coordinates need ≥ 1 swept param and ≥ 2 finished trials"
    dims = []
    for p in swept:
        x, tv, tt = _codes(done[p])
        d = {"label": p, "values": x}
        if tv is None and _is_numeric(done[p]) and is_log(done[p]):  # lr-like: spread the lines
            d = {"label": f"log10 {p}", "values": np.log10(x)}
        if tv is not None:
            d |= {"tickvals": tv, "ticktext": tt}
        dims.append(d)
    y = done[TARGET].to_numpy(float)
    dims.append({"label": "val/miou", "values": y})
    fig = go.Figure(go.Parcoords(dimensions=dims, line={"color": y, "colorscale": "Viridis",
                                                        "showscale": True}))  # fmt: skip
    fig.update_layout(title="Parallel coordinates", **{**LAYOUT, "margin": {"l": 80, "r": 80,
                                                                            "t": 90, "b": 40}})  # fmt: skip
    return fig


def slices(rt: RunTable, swept: list[str]) -> Figure:
    """One scatter per swept param: its value against the target."""
    done = rt.complete
    if not swept or done.empty:
        return "slice plots need ≥ 1 swept param"
    shown = swept[:8]
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=shown, shared_yaxes=True)
    for i, p in enumerate(shown):
        x = done[p]
        x = x.astype(str) if not pd.api.types.is_numeric_dtype(x) or x.dtype == bool else x
        fig.add_scatter(x=x, y=done[TARGET], mode="markers", showlegend=False,
                        marker={"color": _x_order(done), "colorscale": "Blues", "size": 7},
                        row=i // cols + 1, col=i % cols + 1)  # fmt: skip
    for i, p in enumerate(shown):
        if _is_numeric(done[p]) and is_log(done[p]):
            fig.update_xaxes(type="log", row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(title_text="val/miou", col=1)
    note = f" (first 8 of {len(swept)})" if len(swept) > 8 else ""
    fig.update_layout(title=f"Slice plots{note}", **{**LAYOUT, "height": 320 * rows + 80})
    return fig


def contour(rt: RunTable, swept: list[str], ranked: list[str]) -> Figure:
    """Mean target over the two most important numeric params (binned 2-D average)."""
    done = rt.complete
    numeric = [p for p in ranked + swept if p in swept and _is_numeric(done[p])]
    numeric = list(dict.fromkeys(numeric))
    if len(numeric) < 2 or len(done) < 3:
        return "a contour needs ≥ 2 numeric swept params and ≥ 3 finished trials"
    a, b = numeric[:2]
    (xc, xlog), (yc, ylog) = _bins(done[a]), _bins(done[b])
    grid = _binned_mean(done, a, b, xc, yc, xlog, ylog)  # (len(yc), len(xc)), NaN where empty
    fig = go.Figure()
    fig.add_trace(go.Contour(x=xc, y=yc, z=grid, connectgaps=True, colorscale="Viridis",
                             colorbar={"title": {"text": "val/miou"}}))  # fmt: skip
    fig.add_scatter(x=done[a], y=done[b], mode="markers", showlegend=False,
                    marker={"color": "white", "size": 5, "line": {"color": "black", "width": 1}})  # fmt: skip
    fig.update_xaxes(type="log" if xlog else "linear")
    fig.update_yaxes(type="log" if ylog else "linear")
    fig.update_layout(title=f"Contour: {a} × {b} (mean val/miou per cell, gaps interpolated)",
                      xaxis_title=a, yaxis_title=b, **LAYOUT)  # fmt: skip
    return fig


def is_log(s: pd.Series) -> bool:
    """A log axis suits values spanning > 50× with most of them in the bottom fifth (lr-like)."""
    lo, hi, med = float(s.min()), float(s.max()), float(s.median())
    return lo > 0 and hi / lo > 50 and med < lo + 0.2 * (hi - lo)


def _bins(s: pd.Series, n: int = 8) -> tuple[np.ndarray, bool]:
    """Cell centres over the param's range; log-spaced when it spans > 50×."""
    lo, hi = float(s.min()), float(s.max())
    log = is_log(s)
    edges = np.geomspace(lo, hi, n + 1) if log else np.linspace(lo, hi, n + 1)
    return (np.sqrt(edges[:-1] * edges[1:]) if log else (edges[:-1] + edges[1:]) / 2), log


def _binned_mean(done: pd.DataFrame, a: str, b: str, xc: np.ndarray, yc: np.ndarray,
                 xlog: bool, ylog: bool) -> np.ndarray:  # fmt: skip
    """Mean target of the runs in each (y, x) cell: nearest centre on each axis."""

    def idx(v: pd.Series, centres: np.ndarray, log: bool) -> np.ndarray:
        f = np.log if log else (lambda t: t)
        return np.abs(f(v.to_numpy(float))[:, None] - f(centres)[None, :]).argmin(1)  # (R,)

    ix, iy = idx(done[a], xc, xlog), idx(done[b], yc, ylog)
    total = np.zeros((len(yc), len(xc)))
    count = np.zeros_like(total)
    np.add.at(total, (iy, ix), done[TARGET].to_numpy(float))
    np.add.at(count, (iy, ix), 1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and s.dtype != bool and s.nunique() > 1


def per_class(ab: Ablation, max_configs: int = 8) -> Figure:
    """Per-class IoU bars (mean ± std over seeds) of the baseline and the best configurations."""
    t = ab.table
    cols = [c for c in CLASSES if f"val/iou_{c}_mean" in t]
    if not cols:
        return "no per-class IoU metrics (val/iou_<class>) were logged"
    base = int(np.flatnonzero(t["config"].to_numpy() == ab.baseline)[0])
    rows = list(range(len(t)))
    if len(rows) > max_configs:
        best = np.argsort(-t[f"{TARGET}_mean"].to_numpy(), kind="stable")
        rows = sorted({base, *[int(i) for i in best[: max_configs - 1]]})
    fig = go.Figure()
    for i in rows:
        fig.add_bar(name=t.at[i, "config"], x=cols,
                    y=[t.at[i, f"val/iou_{c}_mean"] * 100 for c in cols],
                    error_y={"type": "data",
                             "array": [np.nan_to_num(t.at[i, f"val/iou_{c}_std"]) * 100
                                       for c in cols]})  # fmt: skip
    more = f" (baseline and best {len(rows) - 1} of {len(t)})" if len(t) > len(rows) else ""
    fig.update_layout(title=f"Per-class IoU{more}", yaxis_title="IoU (%)", barmode="group",
                      **{**LAYOUT, "height": 480, "legend": {"orientation": "h", "y": -0.35}})  # fmt: skip
    return fig


def summary_bars(ab: Ablation, max_configs: int = 20) -> Figure:
    """mIoU ± std per configuration."""
    t = ab.table
    if len(t) > max_configs:
        return (f"{len(t)} configurations (more than {max_configs}): the optimisation history "
                "and the table show them")  # fmt: skip
    fig = go.Figure(go.Bar(x=t["config"], y=t[f"{TARGET}_mean"] * 100,
                           error_y={"type": "data",
                                    "array": np.nan_to_num(t[f"{TARGET}_std"]) * 100},
                           text=[f"n={n}" for n in t["n_runs"]]))  # fmt: skip
    fig.update_layout(title="mIoU per configuration (mean ± std over seeds)",
                      yaxis_title="mIoU (%)", **LAYOUT)  # fmt: skip
    return fig


def loss_curves(rt: RunTable) -> Figure:
    """Training losses and val/miou per epoch of the best and the worst finished trial."""
    done = rt.complete
    if done.empty:
        return "no finished trial to draw loss curves for"
    best = done.loc[done[TARGET].idxmax()]
    worst = done.loc[done[TARGET].idxmin()]
    picks = [("best", best)] + ([("worst", worst)] if worst["run_id"] != best["run_id"] else [])
    keys = [k for k in rt.metrics if k.startswith("train/loss")] + [TARGET]
    # Only these two runs: get_metric_history is one request per run and key.
    hist = metric_histories(rt.tracking_uri, [r["run_id"] for _, r in picks], keys)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("train losses", "val/miou per epoch"))
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692",
               "#b6e880", "#ff97ff"]  # fmt: skip
    terms = sorted((k for k in keys if k != TARGET), key=lambda k: (k != "train/loss", k))
    for (tag, run), dash in zip(picks, ("solid", "dot"), strict=False):
        h = hist[hist["run_id"] == run["run_id"]]
        for j, key in enumerate(terms):  # one legend entry per term; dash tells best/worst
            s = h[h["key"] == key]
            color = "#222" if key == "train/loss" else palette[j % len(palette)]
            fig.add_scatter(x=s["step"], y=s["value"], mode="lines", name=key, legendgroup=key,
                            showlegend=tag == "best", row=1, col=1,
                            line={"dash": dash, "color": color,
                                  "width": 3 if key == "train/loss" else 1.5})  # fmt: skip
        s = h[h["key"] == TARGET]
        fig.add_scatter(x=s["step"], y=s["value"], mode="lines+markers", name=f"val/miou ({tag})",
                        line={"dash": dash, "color": "black"}, row=1, col=2)  # fmt: skip
    names = " and ".join(f"{t} = trial {r['trial']} ({r[TARGET]:.3f})" for t, r in picks)
    fig.update_xaxes(title_text="optimiser step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    fig.update_layout(title=f"Loss curves — solid: {names.replace(' and ', ', dotted: ')}",
                      **{**LAYOUT, "height": 520, "legend": {"font": {"size": 10}}})  # fmt: skip
    return fig
