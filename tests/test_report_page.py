"""The report page: Optuna's standard figures, the template (escaping, package data), notes."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from cmcr.results import fake_runs
from cmcr.results import figures as F
from cmcr.results.ablation import ablation
from cmcr.results.collect import Selection, collect
from cmcr.results.report import build, render_page

REPO = Path(__file__).resolve().parents[1]
NO_STORAGE = "sqlite:////nonexistent/optuna.db"  # never the cwd's runs/optuna.db


def _study(n: int, log_lr: bool = True) -> optuna.Study:
    """In memory: the value depends mostly on ``w``, a little on ``lr``, not on ``k``."""
    study = optuna.create_study(direction="maximize")
    dists = {"w": optuna.distributions.FloatDistribution(0.0, 2.0),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=log_lr),
             "k": optuna.distributions.CategoricalDistribution(["a", "b"])}  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(n):
        p = {"w": float(rng.uniform(0, 2)), "lr": float(10 ** rng.uniform(-4, -2)),
             "k": "ab"[i % 2]}  # fmt: skip
        value = p["w"] - 0.5 * abs(np.log10(p["lr"]) + 3)
        study.add_trial(optuna.trial.create_trial(params=p, distributions=dists, value=value))
    return study


def test_standard_figures_come_from_optuna() -> None:
    """Five figures in page order; the contour is over the two most important params."""
    figs = F.study_figures(_study(30))
    assert [f[0] for f in figs] == ["history", "importance", "parallel", "slice", "contour"]
    assert all(not isinstance(fig, str) and fig.data for _, _, fig in figs)
    by_id = {fid: fig for fid, _, fig in figs}
    imp = by_id["importance"].data[0]
    assert list(imp.y)[-1] == "w"  # Optuna draws the most important bar last (on top)
    assert "w × lr" in by_id["contour"].layout.title.text
    assert "Optimization History" in by_id["history"].layout.title.text  # Optuna's own figure


@pytest.mark.parametrize("log_lr", [True, False])
def test_lr_axis_follows_the_distribution(log_lr: bool) -> None:
    """The slice plot puts lr on a log axis exactly when its distribution says log=True."""
    fig = dict((fid, f) for fid, _, f in F.study_figures(_study(12, log_lr)))["slice"]
    axes = [fig.layout[k] for k in fig.layout if k.startswith("xaxis")]
    lr_axes = [a for a in axes if a.title.text == "lr"]
    assert len(lr_axes) == 1
    assert (lr_axes[0].type == "log") is log_lr


def test_too_few_trials_give_reasons() -> None:
    """No complete trial: every figure is a reason; two trials: no contour, with why."""
    empty = F.study_figures(optuna.create_study())
    assert all(isinstance(fig, str) and "no complete trial" in fig for _, _, fig in empty)
    two = dict((fid, f) for fid, _, f in F.study_figures(_study(2)))
    assert isinstance(two["contour"], str) and "≥ 3 complete trials" in two["contour"]
    assert not isinstance(two["history"], str)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small random sweep in MLflow only (no Optuna study)."""
    root = tmp_path_factory.mktemp("page")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(root / "art"))
    fake_runs.log_random_sweep(client, "cmcr", study="weights", n_runs=4)
    return uri


def test_runs_without_study_say_so(runs: str, tmp_path: Path) -> None:
    """Runs selected by experiment: a note replaces Optuna's figures; run figures remain."""
    build(Selection(tracking_uri=runs), tmp_path / "rep", log=False)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert 'id="note-study"' in page and "selected without a study" in page
    assert 'id="fig-history"' not in page and 'id="fig-loss"' in page


def test_unreachable_storage_is_a_note_not_an_error(runs: str, tmp_path: Path) -> None:
    """Optuna's storage down: the runs are still reported; the page says why figures are missing."""
    down = "postgresql://postgres:pw14@127.0.0.1:1/x"
    build(Selection(tracking_uri=runs, study="weights", storage=down), tmp_path / "rep", log=False)
    page = (tmp_path / "rep" / "index.html").read_text()
    note = re.search(r'<p class="note" id="note-study">(.*?)</p>', page, re.S)
    assert note and "study figures unavailable" in note.group(1), page[:2000]
    assert "unreachable" in note.group(1) and "postgres:***@" in note.group(1)
    assert "pw14" not in page and 'id="fig-loss"' in page


def test_page_escapes_what_it_is_given(runs: str) -> None:
    """Autoescaping: a filter or note with markup shows as text, never as an element."""
    sel = Selection(tracking_uri=runs, study="weights", storage=NO_STORAGE)
    rt = collect(sel)
    rt.notes.append("<b>note</b>")
    evil = dataclasses.replace(sel, filter_string="params.x = '<script>alert(1)</script>'")
    page = render_page(rt, ablation(rt), evil)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "&lt;b&gt;note&lt;/b&gt;" in page
    assert '<table class="ablation">' in page  # trusted markup is not escaped
    assert "Optuna's figures show every trial" not in page  # no study: nothing to explain


def test_filtered_page_says_study_figures_cover_every_trial(runs: str) -> None:
    """With a study and --filter, the page says the filter does not reach Optuna's figures."""
    sel = Selection(tracking_uri=runs, study="weights", storage=NO_STORAGE)
    rt = collect(sel)
    rt.study = _study(5)
    filtered = dataclasses.replace(sel, filter_string="params.`train.seed` != '9'")
    page = render_page(rt, ablation(rt), filtered)
    assert 'id="fig-history"' in page and 'id="note-study"' not in page
    assert "Optuna's figures show every trial" in page
    assert "Optuna's figures show every trial" not in render_page(rt, ablation(rt), sel)


def test_template_ships_as_package_data() -> None:
    """pyproject's package-data globs cover every template file."""
    # tomllib is 3.11+, the project supports 3.10: read the one line of the section
    section = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    globs = re.findall(r'"([^"]+)"', re.search(r"^cmcr = \[(.*)\]$", section, re.M).group(1))
    templates = sorted((REPO / "cmcr").glob("results/templates/*"))
    assert [t.name for t in templates] == ["report.html.j2"]
    for t in templates:
        rel = t.relative_to(REPO / "cmcr").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel


def test_importances_show_spread_over_seeds_and_ped_anova() -> None:
    """Optuna's bars: fANOVA mean with its std over FANOVA_SEEDS, PED-ANOVA beside; w on top."""
    fig = dict((fid, f) for fid, _, f in F.study_figures(_study(30)))["importance"]
    fanova, ped = fig.data
    assert fanova.name.startswith("fANOVA (mean ± std, seeds 0–4") and ped.name == "PED-ANOVA"
    assert len(fanova.error_x.array) == 3 and all(s >= 0 for s in fanova.error_x.array)
    assert sum(fanova.x) == pytest.approx(1.0, abs=1e-6)  # each seed's importances sum to 1
    for bars in (fanova, ped):  # both evaluators find w, the param the value depends on
        assert dict(zip(bars.y, bars.x, strict=True))["w"] > 0.5
    assert "unreliable" not in fig.layout.title.text


def test_importances_from_few_trials_say_unreliable() -> None:
    """Below MIN_RELIABLE_TRIALS complete trials the title says the figure is unreliable."""
    fig = dict((fid, f) for fid, _, f in F.study_figures(_study(12)))["importance"]
    assert f"unreliable: 12 complete trials < {F.MIN_RELIABLE_TRIALS}" in fig.layout.title.text


def test_forest_and_interval_bars(tmp_path: Path) -> None:
    """Components with 3 seeds: a forest point per compared row, red where it holds; the
    mIoU bars' error bars are the 95 % t-intervals of the means."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    fake_runs.log_components_sweep(client, "cmcr", study="components", seeds=(0, 1, 2),
                                   rng_seed=7, extra_unfinished=False)  # fmt: skip
    ab = ablation(collect(Selection(tracking_uri=uri, study="components", storage=NO_STORAGE)))
    fig = F.forest(ab)
    held = ab.table[ab.table["holds"]]
    # with 3 seeds and 7 rows Holm is strict: this draw keeps three (random init, PPKT, − orth)
    assert {"random init", "PPKT"} <= set(held["config"])
    assert sum(len(tr.x) for tr in fig.data) == len(ab.table) - 1  # every row but the reference
    assert sorted(fig.data[0].y) == sorted(held["config"])  # the "holds" trace
    assert "'CMCR'" in fig.layout.title.text
    bars = F.summary_bars(ab).data[0]
    assert list(bars.error_y.array) == pytest.approx(list(ab.table["val/miou_ci95"] * 100))
    page = render_page(collect(Selection(tracking_uri=uri, study="components",
                                         storage=NO_STORAGE)), ab, Selection(tracking_uri=uri))  # fmt: skip
    assert 'id="fig-forest"' in page and "the seeds support" in page


def test_reference_flag_and_unknown_reference(tmp_path: Path, capsys) -> None:
    """--reference PPKT tests every row against PPKT; an unknown row: one line, exit 2."""
    from cmcr.results.report import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    fake_runs.log_components_sweep(client, "cmcr", study="components", extra_unfinished=False)
    argv = ["--study", "components", "--tracking-uri", uri, "--storage", NO_STORAGE, "--no-log"]
    assert main([*argv, "--out", str(tmp_path / "rep"), "--reference", "PPKT"]) == 0
    md = (tmp_path / "rep" / "ablation.md").read_text()
    assert "| vs PPKT [95 % CI] |" in md and "| PPKT | 2 |" in md
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "bad"), "--reference", "SLidR"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--reference 'SLidR' names no row" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()
