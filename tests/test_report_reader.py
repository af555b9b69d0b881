"""What a reader of the report sees (issue 32): the study's real experiment in the header, the
per-class IoU in a table of its own, ties said as ties, a plain sentence when nothing can be
told apart, mIoU in % wherever a person reads it, axes that do not blow a 6e-6 gap up, and an
unknown study answered with the studies there are."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cmcr.results import fake_runs
from cmcr.results import figures as F
from cmcr.results.ablation import CLASSES, IS_BEST, ablation
from cmcr.results.ablation_formats import noise_verdict, to_markdown, verdict
from cmcr.results.collect import ReportError, RunTable, Selection
from cmcr.results.report import build
from cmcr.results.tables import per_class_markdown

MIOU = "val/miou"
NO_STORAGE = "sqlite:////nonexistent/optuna.db"  # never the cwd's runs/optuna.db
SOME = CLASSES[:3]


def _runs(values: dict[str, dict[int, float]]) -> RunTable:
    """Finished runs {variant: {seed: mIoU}}, each class's IoU the mIoU ± 5 points."""
    rows = [{"run_id": f"{v}-{s}", "variant": v, "seed": s, "state": "COMPLETE", MIOU: m,
             "val/fwiou": m + 0.2, **{f"val/iou_{c}": m + 0.05 * (i - 1) for i, c in
                                      enumerate(SOME)}}
            for v, by_seed in values.items() for s, m in by_seed.items()]  # fmt: skip
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return RunTable(df, [], [MIOU, "val/fwiou"], "0", "sqlite:///unused.db")


def test_two_tied_rows_are_both_best_and_named() -> None:
    """Equal means (to the shown 0.01 %): both rows are 'best (tie)', and the sentence names
    both with their value; nothing picks one of them silently."""
    ab = ablation(_runs({"cmcr": {0: 0.40, 1: 0.42}, "ppkt": {0: 0.40, 1: 0.42},
                         "random": {0: 0.10, 1: 0.12}}))  # fmt: skip
    assert ab.table[IS_BEST].sum() == 2
    md = to_markdown(ab)
    assert md.count("best (tie)") == 2 and md.count("**41.00 ± 1.41**") == 2
    assert "'PPKT', 'CMCR' (tied at 41.00 %)" in noise_verdict(ab)


def test_nothing_testable_or_nothing_held_is_one_plain_sentence() -> None:
    """One run per row: no '0 of 0 differences' but why nothing can be tested; rows that all
    stay within the noise: one sentence saying so."""
    single = verdict(ablation(_runs({"cmcr": {0: 0.40}, "ppkt": {0: 0.41}})))
    assert "0 of 0" not in single
    assert single.startswith("No difference to 'CMCR' can be tested: 1 row(s) have one run")
    noisy = verdict(ablation(_runs({"cmcr": {0: 0.40, 1: 0.44, 2: 0.36},
                                    "ppkt": {0: 0.41, 1: 0.43, 2: 0.37}})))  # fmt: skip
    assert noisy.startswith("All 1 differences to 'CMCR' are within the seed noise")


def test_per_class_iou_has_its_own_table() -> None:
    """The ablation table keeps mIoU and fwIoU only; the classes go down a table of their own,
    one column per configuration, in %."""
    ab = ablation(_runs({"cmcr": {0: 0.40, 1: 0.42}, "random": {0: 0.10, 1: 0.12}}))
    head = [ln for ln in to_markdown(ab).splitlines() if ln.startswith("| ")][0]
    assert not any(c in head for c in SOME) and head.count("|") <= 11
    pc = [ln for ln in per_class_markdown(ab).splitlines() if ln.startswith("| ")]
    assert pc[0] == "| class | random init | CMCR |"
    assert pc[1].split(" | ")[0] == f"| {SOME[0]}" and "**36.00 ± 1.41**" in pc[1]


def test_axes_of_a_tiny_gap_span_a_sensible_range() -> None:
    """Issue 32: a smoke study's values 0.003196 and 0.003202 drew an axis 6e-6 wide. The
    history is in % and its axis spans at least half a point (or 4 seed SDs)."""
    study = optuna.create_study(direction="maximize")
    dist = {"w": optuna.distributions.FloatDistribution(0, 1)}
    for i, v in enumerate((0.003196, 0.003202, 0.0031985)):
        study.add_trial(optuna.trial.create_trial(params={"w": i / 3}, distributions=dist,
                                                  value=v))  # fmt: skip
    figs = {fid: fig for fid, _, fig in F.study_figures(study, seed_sd=0.3)}
    hist = figs["history"]
    assert max(hist.data[0].y) == pytest.approx(0.3202)  # in %
    lo, hi = hist.layout.yaxis.range
    assert hi - lo == pytest.approx(4 * 0.3) and lo == 0.0  # 4 seed SDs, never below 0
    assert F.sensible_range([0.3196, 0.3202]) == pytest.approx([0.0699, 0.5699])  # centred
    assert F.sensible_range([60.0, 60.1]) == pytest.approx([59.449, 60.651])  # 2 % of 60.1
    assert F.sensible_range([30.0, 45.0]) is None  # a real spread: plotly's autorange


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A components sweep recorded in its own experiment, reported."""
    root = tmp_path_factory.mktemp("reader")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(root / "art"))
    client.create_experiment("components", artifact_location=str(root / "art"))
    fake_runs.log_components_sweep(client, "components", seeds=(0, 1))
    out = root / "rep"
    build(Selection(tracking_uri=uri, study="components", storage=NO_STORAGE), out, log=False)
    return out, uri


def test_header_names_the_experiment_the_runs_are_in(report: tuple[Path, str]) -> None:
    page = (report[0] / "index.html").read_text()
    assert '<b id="experiment">components</b>' in page


def test_a_grep_finds_the_objective_in_one_unit(report: tuple[Path, str]) -> None:
    """Every mIoU a person reads is in %: the tables and sentences hold no fraction like
    0.3912, the unfinished runs' last mIoU reads in % (97.48, not 0.9748); the csv keeps
    fractions (stored values, documented)."""
    out = report[0]
    csv = pd.read_csv(out / "ablation.csv")
    fraction = re.compile(r"(?<![\d.(])0\.\d{3,}")  # t(0.975, df) in the caption is no mIoU
    for name in ("ablation.md", "per_class.md"):
        text = (out / name).read_text()
        assert not fraction.findall(text), (name, fraction.findall(text)[:5])
        assert f"{csv[f'{MIOU}_mean'].max() * 100:.2f}" in (out / "ablation.md").read_text()
    page = (out / "index.html").read_text()
    body = re.sub(r"<script.*?</script>|<div class=\"fig\">.*?</div>\n", "", page, flags=re.S)
    assert not fraction.findall(body), fraction.findall(body)[:5]
    inc = pd.read_csv(out / "incomplete.csv")["last val/miou"].dropna()
    assert "<th>last mIoU (%)</th>" in body and len(inc)
    assert all(f"<td>{v * 100:.2f}</td>" in body for v in inc)
    assert 'id="per-class"' in body and 'class="per-class"' in body
    tex = (out / "per_class.tex").read_text()
    assert "\\toprule" in tex and "$\\pm$" in tex and "±" not in tex
    assert csv[f"{MIOU}_mean"].max() < 1  # fractions in the csv


def test_unknown_study_lists_the_studies_there_are(report: tuple[Path, str]) -> None:
    with pytest.raises(ReportError, match=r"unknown study 'nope'.*\(studies: components\)"):
        build(Selection(tracking_uri=report[1], study="nope", storage=NO_STORAGE),
              report[0].parent / "x", log=False)  # fmt: skip
    assert not (report[0].parent / "x").exists()


def test_loss_curves_read_in_percent(report: tuple[Path, str]) -> None:
    from cmcr.results.collect import collect

    rt = collect(Selection(tracking_uri=report[1], study="components", storage=NO_STORAGE))
    fig = F.loss_curves(rt)
    right = [t for t in fig.data if t.yaxis == "y2"]
    best = rt.complete[MIOU].max() * 100
    assert right and max(np.nanmax(np.asarray(t.y, dtype=float)) for t in right) > 1
    assert f"({best:.2f} %)" in fig.layout.title.text


def test_the_study_description_gives_the_best_in_percent() -> None:
    """The parent run's and experiment's description (written by the report) reads 7.62 %,
    not 0.0762."""
    from cmcr.tracking.study import study_note

    note = study_note("s", objective=MIOU, direction="maximize", params=[],
                      best={"trial": "3 = 5 (tied; the run of the first)", "value": 0.0762,
                            "run_id": "r", "experiment_id": "1"})  # fmt: skip
    assert "`val/miou` = 7.62 %" in note and "0.0762" not in note
    assert "trial 3 = 5 (tied" in note
