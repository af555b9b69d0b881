"""The replay audit's outputs (``cmcr.bench.replay``): a paste-ready markdown table, the JSON of
every figure, and a plotly figure (HTML; PNG too when kaleido is installed).

Values of the objective are shown in percent (mIoU x 100), as docs/results.md writes them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(ci: list[float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def result_rows(out: dict[str, Any]) -> list[str]:
    """One markdown row per signal and method, after the no-pruning row."""
    ref = out["unpruned"]
    rows = [
        "| signal | method | steps (ratio) | pruned | E[best kept] % [95 % CI] | spread over "
        "orders | minus random [95 % CI] | minus shuffled [95 % CI] | p (deal) | within 1 SD | P(best kept) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| (none) | no pruning | {ref['steps']} (1.00x) | 0 | {_pct(ref['best'])} | | | | | yes "
        "| 1 |",
    ]
    for name, methods in out["results"].items():
        for method, r in methods.items():
            within = {None: "n/a", True: "yes", False: "no"}[r["within_one_sd"]]
            rows.append(
                f"| {name} | {method} | {r['steps_mean']:.0f} ({r['step_ratio']:.2f}x) | "
                f"{r['pruned_mean']:.1f} | {_pct(r['best_kept'])} {_ci(r['best_kept_ci'])} | "
                f"{_ci(r['best_kept_spread'])} | {_pct(r['diff_random'])} "
                f"{_ci(r['diff_random_ci'])} | {_pct(r['diff_shuffled'])} "
                f"{_ci(r['diff_shuffled_ci'])} | {_p(r['p_deal'])} | {within} | {r['p_best_trial_kept']:.2f} |"
            )
    return rows


def spearman_rows(out: dict[str, Any]) -> list[str]:
    """Spearman's rho (permutation p) of each signal against the objective, per probe step."""
    steps = out["steps"]
    rows = [
        "| signal | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for name, by_step in out["spearman"].items():
        cells = [
            "ties" if c["rho"] is None else f"{c['rho']:+.2f} (p {_p(c['p'])})" for c in by_step
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def live_rows(out: dict[str, Any]) -> list[str]:
    """One line per live pruned study: replay = live?"""
    rows = []
    for variant, c in out["live"].items():
        pruned = [f"{t['number']}@{t['live']}" for t in c["trials"] if t["live"]]
        verdict = "same trials pruned at the same steps" if c["same"] else "DIFFERS"
        rows.append(
            f"- live `{variant}` ({c['pruner']} on {c['signal']}): replay in trial-number order "
            f"gives {verdict} (live pruned: {', '.join(pruned) or 'none'})"
        )
    return rows


def markdown_table(out: dict[str, Any]) -> str:
    """The whole printed report (markdown)."""
    ref = out["unpruned"]
    sd = out.get("seed_sd")
    head = (
        f"Replay audit: {out['trials']} unpruned trials, {out['orders']} random orders "
        f"(seed {out['seed']}); no pruning's best {_pct(ref['best'])} %, seed SD "
        f"{_pct(sd)} points; replay {out['replay_wall_s']} s."
    )
    return "\n".join([head, "", *result_rows(out), "", *spearman_rows(out), "", *live_rows(out)])


def figure(out: dict[str, Any]) -> go.Figure:
    """Expected best kept against pre-training steps (per signal, one point per method, 95 %
    interval bars), and each signal's Spearman by step."""
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.6, 0.4],
        subplot_titles=("expected best kept vs pre-training steps", "Spearman vs final, by step"),
    )  # fmt: skip
    for name, methods in out["results"].items():
        items = sorted(methods.items(), key=lambda kv: kv[1]["steps_mean"])
        y = [100 * r["best_kept"] for _, r in items]
        hi = [100 * r["best_kept_ci"][1] - v for (_, r), v in zip(items, y, strict=True)]
        lo = [v - 100 * r["best_kept_ci"][0] for (_, r), v in zip(items, y, strict=True)]
        fig.add_trace(
            go.Scatter(
                x=[r["steps_mean"] for _, r in items], y=y, name=name, legendgroup=name,
                mode="markers+lines", text=[m for m, _ in items],
                hovertemplate="%{text}: %{y:.2f} % at %{x:.0f} steps",
                error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
            ),
            row=1, col=1,
        )  # fmt: skip
    ref = out["unpruned"]
    fig.add_trace(
        go.Scatter(x=[ref["steps"]], y=[100 * ref["best"]], name="no pruning",
                   mode="markers", marker={"symbol": "star", "size": 12}),
        row=1, col=1,
    )  # fmt: skip
    if out.get("seed_sd"):
        fig.add_hline(y=100 * (ref["best"] - out["seed_sd"]), line_dash="dot", row=1, col=1,
                      annotation_text="no pruning's best - 1 seed SD")  # fmt: skip
    for name, by_step in out["spearman"].items():
        fig.add_trace(
            go.Scatter(x=[c["step"] for c in by_step], y=[c["rho"] for c in by_step],
                       name=f"{name} rho", legendgroup=name, mode="markers+lines",
                       text=[c["p"] for c in by_step], hovertemplate="rho %{y:.2f}, p %{text}"),
            row=1, col=2,
        )  # fmt: skip
    fig.update_xaxes(title_text="pre-training steps of the study (mean over orders)", row=1, col=1)
    fig.update_yaxes(title_text="best kept trial's final probe mIoU (%)", row=1, col=1)
    fig.update_xaxes(title_text="probe step", row=1, col=2)
    fig.update_yaxes(title_text="Spearman rho", range=[-1.05, 1.05], row=1, col=2)
    fig.update_layout(width=1300, height=550, template="plotly_white")
    return fig


def write_outputs(out: dict[str, Any], folder: Path) -> dict[str, str]:
    """replay.json, replay.md, replay.html (and replay.png with kaleido) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "replay.json", "table": folder / "replay.md"}
    paths["json"].write_text(json.dumps(out, indent=1))
    paths["table"].write_text(markdown_table(out) + "\n")
    fig = figure(out)
    paths["html"] = folder / "replay.html"
    fig.write_html(str(paths["html"]), include_plotlyjs="cdn")
    if importlib.util.find_spec("kaleido") is not None:
        paths["png"] = folder / "replay.png"
        fig.write_image(str(paths["png"]))
    return {f"out_{k}": str(p) for k, p in paths.items()}


def headline(out: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """Flat figures for the bench table: per signal, ASHA's best kept, the intervals of its
    differences to the two nulls, its p (deal), step ratio; the live checks; where the rest
    went."""
    flat: dict[str, Any] = {"orders": out["orders"], "replay_wall_s": out["replay_wall_s"]}
    for name, methods in out["results"].items():
        a = methods.get("asha")
        if a:
            flat[f"{name}_asha_best_kept"] = round(a["best_kept"], 4)
            flat[f"{name}_asha_diff_random_ci"] = [round(x, 4) for x in a["diff_random_ci"]]
            flat[f"{name}_asha_diff_shuffled_ci"] = [round(x, 4) for x in a["diff_shuffled_ci"]]
            flat[f"{name}_asha_p_deal"] = round(a["p_deal"], 3)
            flat[f"{name}_asha_step_ratio"] = round(a["step_ratio"], 2)
    for variant, check in out["live"].items():
        flat[f"live_{variant}_same"] = check["same"]
    return {**flat, **paths}
