"""Build a study report: ablation tables (md, csv, tex) and a static plotly page.

``python dashboards/build.py --study NAME`` → ``reports/NAME/``: ablation.{md,csv,tex},
incomplete.csv and index.html (plotly.js inlined once: the page works offline). The files are
also logged as artifacts (``report/``) on the study's parent run when there is one.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import time
from pathlib import Path

import pandas as pd

from cmcr.errors import CMCRError
from cmcr.results import figures as F
from cmcr.results.collect import (
    DEFAULT_STORAGE,
    ReportError,
    RunTable,
    Selection,
    collect,
    redact,
)
from cmcr.results.tables import (
    Ablation,
    ablation,
    incomplete_table,
    summary,
    to_html,
    to_latex,
    to_markdown,
)

HTML_MAX_ROWS = 50  # the page shows the best rows; the csv has them all
CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1300px;color:#222}
h1{margin-bottom:4px} .meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:8px 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left} thead th{background:#f3f3f3}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:8px 0;font-size:13px}
.fig{border:1px solid #eee;margin:14px 0}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dashboards/build.py``."""
    parser.add_argument("--study", help="Optuna study name (runs tagged optuna.study=NAME)")
    parser.add_argument("--experiment", default="cmcr", help="MLflow experiment (default: cmcr)")
    parser.add_argument("--filter", default="", dest="filter_string",
                        help="extra MLflow filter, e.g. \"params.`train.lr` = '0.001'\"")  # fmt: skip
    parser.add_argument("--tracking-uri", default="",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")  # fmt: skip
    parser.add_argument("--storage", default=None,
                        help=f"Optuna storage of the study (default: {DEFAULT_STORAGE} if present)")  # fmt: skip
    parser.add_argument("--out", default=None, help="output folder (default: reports/<name>/)")
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the report as artifacts on the study's parent run")  # fmt: skip
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help="also write the summary table (mIoU, Δ, fwIoU) into FILE between the "
                             "lines '<!-- cmcr-report:NAME -->' and '<!-- /cmcr-report:NAME -->'")  # fmt: skip


def build(sel: Selection, out: str | Path | None = None, log: bool = True) -> dict:
    """Collect, tabulate, plot, write; return where and how long. ReportError on bad input."""
    t0 = time.perf_counter()
    rt = collect(sel)  # raises before anything is written
    t_collect = time.perf_counter() - t0
    out = Path(out) if out else Path("reports") / _slug(sel)
    ab = ablation(rt) if not rt.complete.empty else None
    page = render_page(rt, ab, sel)
    out.mkdir(parents=True, exist_ok=True)
    if ab is not None:
        (out / "ablation.md").write_text(to_markdown(ab))
        (out / "ablation_summary.md").write_text(to_markdown(summary(ab)))
        (out / "ablation.tex").write_text(to_latex(ab))
        ab.table.to_csv(out / "ablation.csv", index=False)
    incomplete_table(rt).to_csv(out / "incomplete.csv", index=False)
    rt.runs.drop(columns=["start_time", "end_time"]).to_csv(out / "runs.csv", index=False)
    (out / "index.html").write_text(page)
    logged = _log_artifacts(rt, out) if log else None
    return {"out": str(out), "n_runs": len(rt.runs), "n_complete": len(rt.complete),
            "collect_s": round(t_collect, 3), "total_s": round(time.perf_counter() - t0, 3),
            "logged_to": logged}  # fmt: skip


def readme_markers(name: str) -> tuple[str, str]:
    """The lines that delimit a generated block in a markdown file."""
    return f"<!-- cmcr-report:{name} -->", f"<!-- /cmcr-report:{name} -->"


def check_readme(path: str | Path, name: str) -> str:
    """The file's text; ReportError naming the file and the missing marker, before any work."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"--readme: '{path}' does not exist")
    text = path.read_text()
    for marker in readme_markers(name):
        if text.count(marker) != 1:
            raise ReportError(
                f"--readme: '{path}' must contain the line '{marker}' exactly once "
                f"(found {text.count(marker)})"
            )
    start, end = readme_markers(name)
    if text.index(start) > text.index(end):
        raise ReportError(f"--readme: in '{path}' '{start}' must come before '{end}'")
    return text


def write_readme(path: str | Path, name: str, table_md: str, n_runs: int) -> None:
    """Replace the block between the markers with the table and how it was made."""
    text = check_readme(path, name)
    start, end = readme_markers(name)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = f"python dashboards/build.py --study {name} --readme {Path(path).name}"
    block = (
        f"{start}\n{table_md.rstrip()}\n\n"
        f"<sub>Generated {made} from the {n_runs} finished runs of study '{name}' by "
        f"`{cmd}`; do not edit by hand.</sub>\n{end}"
    )
    Path(path).write_text(head + block + tail)


def _slug(sel: Selection) -> str:
    name = sel.study or sel.experiment
    if sel.filter_string:
        name += "-filtered"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _log_artifacts(rt: RunTable, out: Path) -> str | None:
    """Log the report on the study's parent run (artifact path ``report``)."""
    if rt.parent_run_id is None:
        return None
    from mlflow.tracking import MlflowClient

    MlflowClient(rt.tracking_uri).log_artifacts(rt.parent_run_id, str(out), artifact_path="report")
    return rt.parent_run_id


def _figures(rt: RunTable, ab: Ablation | None) -> list[tuple[str, str, F.Figure]]:
    """(id, heading, figure or reason) in page order."""
    swept = rt.swept()
    imp, method = F.importances(rt, swept)
    ranked = list(reversed(imp.data[0].y)) if not isinstance(imp, str) else []
    out = [("history", "Optimisation history", F.history(rt)),
           ("importance", "Parameter importances", imp),
           ("parallel", "Parallel coordinates", F.parallel(rt, swept)),
           ("slice", "Slices", F.slices(rt, swept)),
           ("contour", "Contour", F.contour(rt, swept, ranked))]  # fmt: skip
    if ab is not None:
        out += [("summary", "mIoU per configuration", F.summary_bars(ab)),
                ("per_class", "Per-class IoU", F.per_class(ab))]  # fmt: skip
    out.append(("loss", "Loss curves", F.loss_curves(rt)))
    return out


def render_page(rt: RunTable, ab: Ablation | None, sel: Selection) -> str:
    """The whole static page: one inline plotly.js, every figure, the tables."""
    from plotly.offline import get_plotlyjs

    parts = [_header(rt, sel)]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in rt.notes]
    parts.append("<h2>Ablation</h2>")
    if ab is None:
        parts.append('<p class="note">No finished run has val/miou yet: nothing to average.</p>')
    else:
        more = len(ab.table) > HTML_MAX_ROWS
        parts.append(to_html(ab, HTML_MAX_ROWS))
        parts.append(f'<p class="meta">IoU in %, mean ± std over seeds; Δ to '
                     f"'{html.escape(ab.baseline)}'; best in bold"
                     + (f"; best {HTML_MAX_ROWS} of {len(ab.table)} rows shown, all in "
                        "ablation.csv" if more else "") + ".</p>")  # fmt: skip
    for fid, title, fig in _figures(rt, ab):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(fig, str):
            parts.append(f'<p class="note" id="note-{fid}">Not drawn: {html.escape(fig)}.</p>')
        else:
            div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{fid}",
                              config={"displaylogo": False})  # fmt: skip
            parts.append(f'<div class="fig">{div}</div>')
    parts.append("<h2>Unfinished, failed and pruned runs (not averaged)</h2>")
    parts.append(_plain_table(incomplete_table(rt)))
    body = "\n".join(parts)
    title = html.escape(f"CMCR report — {sel.study or sel.experiment}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{CSS}</style><script type=\"text/javascript\">{get_plotlyjs()}</script>"
            f"</head><body>\n{body}\n</body></html>\n")  # fmt: skip


def _header(rt: RunTable, sel: Selection) -> str:
    what = f"study <b>{html.escape(sel.study)}</b>" if sel.study else "runs"
    filt = f", filter <code>{html.escape(sel.filter_string)}</code>" if sel.filter_string else ""
    optuna = "Optuna study found" if rt.study is not None else "no Optuna study"
    return (f"<h1>CMCR report</h1><p class=\"meta\">{what} in experiment "
            f"<b>{html.escape(sel.experiment)}</b>{filt} · {html.escape(redact(rt.tracking_uri))}"
            f" · {len(rt.complete)} finished of {len(rt.runs)} runs · {optuna} · built "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>")  # fmt: skip


def _plain_table(df: pd.DataFrame) -> str:
    if df.empty:
        return '<p class="meta">none</p>'
    return df.to_html(index=False, na_rep="—", float_format=lambda v: f"{v:.4f}", border=0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of dashboards/build.py: one line and exit code 2 on bad input."""
    parser = argparse.ArgumentParser(prog="dashboards/build.py", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    sel = Selection(tracking_uri=args.tracking_uri, experiment=args.experiment,
                    study=args.study, filter_string=args.filter_string, storage=args.storage)  # fmt: skip
    name = args.study or args.experiment
    try:
        if args.readme:
            check_readme(args.readme, name)  # a wrong file fails before the report is built
        info = build(sel, args.out, log=not args.no_log)
        if args.readme:
            if info["n_complete"] == 0:
                raise ReportError(f"--readme: no finished runs to tabulate for '{name}'")
            table = (Path(info["out"]) / "ablation_summary.md").read_text()
            write_readme(args.readme, name, table, info["n_complete"])
            print(f"summary table written into {args.readme}")
    except CMCRError as exc:
        print(f"dashboards/build.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {info['out']}/index.html ({info['n_complete']} finished of {info['n_runs']} "
          f"runs, {info['total_s']:.1f} s)")  # fmt: skip
    if info["logged_to"]:
        print(f"logged as artifacts 'report/' on parent run {info['logged_to']}")
    return 0
