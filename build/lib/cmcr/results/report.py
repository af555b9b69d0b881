"""Build a study report: ablation tables (md, csv, tex) and a static plotly page.

``python dashboards/build.py --study NAME`` → ``reports/NAME/``: ablation.{md,csv,tex},
per_class.{md,tex} (per-class IoU, its own table),
incomplete.csv (running, failed, killed runs), pruned.{csv,md} (trials Optuna's pruner stopped,
with the step each reached; when there are some) and index.html (plotly.js inlined once: the page works offline). Every table
tests each row against a reference row (``--reference``; ``stats.py``: paired t-interval, Holm,
seeds needed), says in words what the seeds support, and sets the objective's seed SD beside
the spread between configurations, marking the rows indistinguishable from the best. The files are
also logged as artifacts (``report/``) on the study's parent run when there is one. The page is
rendered from ``templates/report.html.j2`` (Jinja2, autoescaped); figures come from
``figures.py``. Every mIoU a person reads (tables, sentences, figures) is in %; the csv files
keep the fractions MLflow stores.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from cmcr.errors import CMCRError
from cmcr.guard import OUT_MARKER, check_out_dir, path_slug
from cmcr.names import DEFAULT_EXPERIMENT, DEFAULT_STORAGE, Metric
from cmcr.results import figures as F
from cmcr.results.ablation import Ablation, ablation, summary, tied_best
from cmcr.results.ablation_formats import (
    caption,
    noise_verdict,
    to_html,
    to_latex,
    to_markdown,
    verdict,
)
from cmcr.results.collect import ReportError, RunTable, Selection, collect, redact
from cmcr.results.tables import (
    evaluations_markdown,
    evaluations_table,
    incomplete_table,
    per_class_html,
    per_class_latex,
    per_class_markdown,
    per_class_note,
    pruned_display,
    pruned_markdown,
    pruned_note,
    pruned_table,
)
from cmcr.tracking.store import client_for
from cmcr.tracking.study import describe_study, study_note

HTML_MAX_ROWS = 50  # the page shows the best rows; the csv has them all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dashboards/build.py``."""
    parser.add_argument("--study", help="Optuna study name (runs tagged optuna.study=NAME)")
    parser.add_argument("--experiment", default=None,
                        help=f"MLflow experiment (default: the study's own and "
                             f"'{DEFAULT_EXPERIMENT}', else '{DEFAULT_EXPERIMENT}')")  # fmt: skip
    parser.add_argument("--filter", default="", dest="filter_string",
                        help="extra MLflow filter, e.g. \"params.`train.lr` = '0.001'\"")  # fmt: skip
    parser.add_argument("--tracking-uri", default="",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")  # fmt: skip
    parser.add_argument("--storage", default=None,
                        help=f"Optuna storage of the study (default: {DEFAULT_STORAGE} if present)")  # fmt: skip
    parser.add_argument("--reference", default=None, metavar="ROW",
                        help="the row every other row is tested against, by label or variant "
                             "(e.g. CMCR, ppkt); default: the cmcr variant when present, else "
                             "the row with the best mean mIoU")  # fmt: skip
    parser.add_argument("--out", default=None, help="output folder (default: reports/<name>/); "
                        "a non-empty folder a report was not built in is refused")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out folder a report was not built in")  # fmt: skip
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the report as artifacts on the study's parent run")  # fmt: skip
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help="also write the summary table (mIoU, Δ, fwIoU) into FILE between the "
                             "lines '<!-- cmcr-report:NAME -->' and '<!-- /cmcr-report:NAME -->'")  # fmt: skip


def build(
    sel: Selection, out: str | Path | None = None, log: bool = True, reference: str | None = None
) -> dict:
    """Collect, tabulate (against ``reference``), plot, write; return where and how long.
    ReportError on bad input, before anything is written."""
    t0 = time.perf_counter()
    rt = collect(sel)  # raises before anything is written
    t_collect = time.perf_counter() - t0
    out = Path(out) if out else Path("reports") / _slug(sel)
    ab = ablation(rt, reference) if not rt.complete.empty else None
    pruned = pruned_table(rt)
    page = render_page(rt, ab, sel, pruned)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_MARKER).write_text("a cmcr report folder: dashboards/build.py rewrites it\n")
    if ab is not None:
        (out / "ablation.md").write_text(to_markdown(ab))
        (out / "ablation_summary.md").write_text(to_markdown(summary(ab)))
        (out / "ablation.tex").write_text(to_latex(ab))
        for name, text in (("per_class.md", per_class_markdown(ab)),
                           ("per_class.tex", per_class_latex(ab))):  # fmt: skip
            (out / name).unlink(missing_ok=True)  # a rebuild of runs without per-class IoU
            if text:
                (out / name).write_text(text)
        ab.table.to_csv(out / "ablation.csv", index=False)
    if evaluations_table(rt).shape[1] > 1:  # runs of several downstream evaluations (issue 20)
        (out / "evaluations.md").write_text(evaluations_markdown(rt))
    incomplete_table(rt).to_csv(out / "incomplete.csv", index=False)
    for stale in ("pruned.csv", "pruned.md"):  # a rebuild into the same folder
        (out / stale).unlink(missing_ok=True)
    if len(pruned):
        pruned.to_csv(out / "pruned.csv", index=False)
        (out / "pruned.md").write_text(pruned_markdown(pruned))
    rt.runs.drop(columns=["start_time", "end_time"]).to_csv(out / "runs.csv", index=False)
    (out / "index.html").write_text(page)
    logged = _log_artifacts(rt, out) if log else None
    if log:
        _describe(rt, sel, out)
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
    name = sel.study or sel.experiment or DEFAULT_EXPERIMENT
    if sel.filter_string:
        name += "-filtered"
    return path_slug(name)


def _log_artifacts(rt: RunTable, out: Path) -> str | None:
    """Log the report on the study's parent run (artifact path ``report``)."""
    if rt.parent_run_id is None:
        return None
    client_for(rt.tracking_uri).log_artifacts(rt.parent_run_id, str(out), artifact_path="report")
    return rt.parent_run_id


def _describe(rt: RunTable, sel: Selection, out: Path) -> None:
    """The study's experiment and parent run descriptions: the report's path, the best run."""
    if rt.parent_run_id is None or not sel.study or rt.complete.empty:
        return
    done = rt.complete
    maximise = rt.study is None or rt.study.direction.name == "MAXIMIZE"
    best = done.loc[done[F.TARGET].idxmax() if maximise else done[F.TARGET].idxmin()]
    values = done[F.TARGET].to_numpy(dtype=float)
    tied = done["trial"][tied_best(values, int(np.flatnonzero(values == best[F.TARGET])[0]))]
    trial = best["trial"]
    if len(tied) > 1:  # a tie is said, not settled by the row order
        trial = " = ".join(str(t) for t in dict.fromkeys(tied)) + " (tied; the run of the first)"
    exp_id = _run_experiment(rt, best["run_id"])
    params = rt.swept()
    note = study_note(sel.study, objective=Metric.VAL_MIOU,
                      direction="maximize" if maximise else "minimize", params=params,
                      best={"trial": trial, "value": best[F.TARGET],
                            "run_id": best["run_id"], "experiment_id": exp_id},
                      report=(out / "index.html").resolve().as_uri())  # fmt: skip
    describe_study(rt.tracking_uri, _run_experiment(rt, rt.parent_run_id), rt.parent_run_id, note)


def _run_experiment(rt: RunTable, run_id: str) -> str:
    return client_for(rt.tracking_uri).get_run(run_id).info.experiment_id


def _study_note(rt: RunTable, sel: Selection) -> str:
    """Why Optuna's standard figures are missing; empty when the study was found."""
    if rt.study is not None:
        return ""
    if rt.study_error:
        return rt.study_error
    if not sel.study:
        return "the runs were selected without a study (--study), so there is no Optuna study"
    storage = redact(sel.storage or DEFAULT_STORAGE)
    return f"the Optuna study '{sel.study}' is not in the storage {storage} (see --storage)"


def _figures(rt: RunTable, ab: Ablation | None) -> tuple[list[dict], list[dict]]:
    """Optuna's study figures and the run figures, as the template's dicts, in page order."""
    sd = ab.noise.seed_sd * F.PERCENT if ab is not None and ab.noise is not None else np.nan
    study = F.study_figures(rt.study, sd) if rt.study is not None else []
    runs = [("summary", "mIoU per configuration", F.summary_bars(ab)),
            ("forest", f"Paired differences to '{ab.reference}'", F.forest(ab)),
            ("per_class", "Per-class IoU", F.per_class(ab))] if ab is not None else []  # fmt: skip
    runs.append(("loss", "Loss curves", F.loss_curves(rt, sd)))
    if F.has_probe(rt):  # sweeps with sweep.eval_every > 0 (the pruner's signal)
        runs.append(("probe", "Representation probe during pre-training", F.probe_curves(rt)))
    return [_for_template(*f) for f in study], [_for_template(*f) for f in runs]


def _for_template(fid: str, title: str, fig: F.Figure) -> dict:
    """One figure as the template reads it: the plotly div (trusted markup) or the reason."""
    if isinstance(fig, str):
        return {"id": fid, "title": title, "reason": fig, "div": None}
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{fid}",
                      config={"displaylogo": False})  # fmt: skip
    return {"id": fid, "title": title, "reason": None, "div": Markup(div)}


@functools.cache
def _template() -> jinja2.Template:
    """The page template, shipped as package data; autoescaping on for every value."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("cmcr.results", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    return env.get_template("report.html.j2")


def render_page(
    rt: RunTable, ab: Ablation | None, sel: Selection, pruned: pd.DataFrame | None = None
) -> str:
    """The whole static page: one inline plotly.js, every figure, the tables (``pruned``:
    ``pruned_table(rt)`` when the caller has it already)."""
    from plotly.offline import get_plotlyjs

    study_figs, run_figs = _figures(rt, ab)
    inc = incomplete_table(rt)
    pruned = pruned_table(rt) if pruned is None else pruned
    table = None
    if ab is not None:
        table = {"table": Markup(to_html(ab, HTML_MAX_ROWS)), "baseline": ab.baseline,
                 "shown": min(HTML_MAX_ROWS, len(ab.table)), "total": len(ab.table),
                 "verdict": verdict(ab), "noise": noise_verdict(ab),
                 "caption": caption(ab), "per_class": Markup(per_class_html(ab)),
                 "per_class_note": per_class_note(ab)}  # fmt: skip
    return _template().render(
        name=sel.study or sel.experiment or DEFAULT_EXPERIMENT, study=sel.study,
        experiments=rt.experiments or [sel.experiment or DEFAULT_EXPERIMENT],
        filter_string=sel.filter_string, tracking_uri=redact(rt.tracking_uri),
        n_complete=len(rt.complete), n_runs=len(rt.runs), study_found=rt.study is not None,
        built=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), notes=rt.notes,
        target=F.TARGET, ablation=table, study_note=_study_note(rt, sel),
        study_figures=study_figs, run_figures=run_figs,
        incomplete=Markup(_in_percent(inc).to_html(index=False, na_rep="—", border=0,
                                                   float_format=lambda v: f"{v:.2f}"))
        if len(inc) else "",
        n_pruned=len(pruned),
        pruned=Markup(pruned_display(pruned).to_html(index=False, border=0, classes="pruned"))
        if len(pruned) else "",
        pruned_note=pruned_note(pruned) if len(pruned) else "",
        plotlyjs=Markup(get_plotlyjs()),
    )  # fmt: skip


def _in_percent(inc: pd.DataFrame) -> pd.DataFrame:
    """The unfinished runs as the page shows them: their last mIoU in % (the csv: fractions)."""
    last = f"last {F.TARGET}"
    return inc.assign(**{last: inc[last] * F.PERCENT}).rename(columns={last: "last mIoU (%)"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of dashboards/build.py: one line and exit code 2 on bad input."""
    parser = argparse.ArgumentParser(prog="dashboards/build.py", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    sel = Selection(tracking_uri=args.tracking_uri, experiment=args.experiment,
                    study=args.study, filter_string=args.filter_string, storage=args.storage)  # fmt: skip
    name = args.study or args.experiment or DEFAULT_EXPERIMENT
    try:
        if args.out:  # before anything is read or written (issue 28)
            check_out_dir(Path(args.out), "--out", args.overwrite)
        if args.readme:
            check_readme(args.readme, name)  # a wrong file fails before the report is built
        info = build(sel, args.out, log=not args.no_log, reference=args.reference)
        if args.readme:
            if info["n_complete"] == 0:
                raise ReportError(f"--readme: no finished runs to tabulate for '{name}'")
            table = (Path(info["out"]) / "ablation_summary.md").read_text()
            evals = Path(info["out"]) / "evaluations.md"
            if evals.is_file():  # nuScenes LP / FT and SemanticKITTI FT side by side
                table += "\n" + evals.read_text()
            write_readme(args.readme, name, table, info["n_complete"])
            print(f"summary table written into {args.readme}")
    except CMCRError as exc:
        print(f"dashboards/build.py: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(f"report: {info['out']}/index.html ({info['n_complete']} finished of {info['n_runs']} "
          f"runs, {info['total_s']:.1f} s)")  # fmt: skip
    if info["logged_to"]:
        print(f"logged as artifacts 'report/' on parent run {info['logged_to']}")
    return 0
