"""Pruned trials in the report: listed apart with the step they reached, out of the means, and
the representation probe's curves (``rep/probe_miou`` per pre-training step) of every trial run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cmcr.configs import load_config
from cmcr.names import Metric
from cmcr.results import fake_runs
from cmcr.results import figures as F
from cmcr.results.collect import Selection, collect
from cmcr.results.report import build
from cmcr.results.tables import pruned_table

STEPS, EVERY = 32, 8
PRUNED = {1: EVERY, 3: 2 * EVERY}  # trial → the pre-training step the pruner stopped it at


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A probe sweep (6 trials, 2 pruned during pre-training, in Optuna too) plus a trial pruned
    during the downstream evaluation after logging a high val/miou, and a failed run."""
    root = tmp_path_factory.mktemp("pruned")
    uri, storage = f"sqlite:///{root / 'mlflow.db'}", f"sqlite:///{root / 'optuna.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(root / "art"))
    info = fake_runs.log_probe_sweep(client, study="probe", n_trials=6, steps=STEPS,
                                     eval_every=EVERY, pruned=PRUNED, storage=storage)  # fmt: skip
    rng = np.random.default_rng(1)
    cfg = load_config("smoke", {"loss.weights.mim": 0.7, "train.lr": 1e-3})
    late = fake_runs.log_run(client, info["experiment_id"], cfg, study="probe", trial=6,
                             parent_run_id=info["parent_run_id"], miou=0.99, rng=rng, epochs=3,
                             steps=STEPS, probe_every=EVERY, probe_level=0.3, pruned_at=1,
                             pruned_phase="downstream")  # fmt: skip
    failed = fake_runs.log_run(client, info["experiment_id"], cfg, study="probe", trial=7,
                               parent_run_id=info["parent_run_id"], miou=0.99, rng=rng,
                               status="FAILED")  # fmt: skip
    out = root / "rep"
    build(Selection(tracking_uri=uri, study="probe", storage=storage), out, log=False)
    return {**info, "uri": uri, "storage": storage, "out": out, "late": late, "failed": failed}


def test_pruned_trials_listed_apart_with_their_step(sweep: dict) -> None:
    """pruned.csv: every pruned run with its phase, step (the tag) and last probe mIoU;
    incomplete.csv keeps the failed run only; the page and pruned.md show them too."""
    pruned = pd.read_csv(sweep["out"] / "pruned.csv")
    assert list(pruned["trial"]) == [1, 3, 6]
    assert list(pruned["phase"]) == ["pretrain", "pretrain", "downstream"]
    assert list(pruned["step"]) == [EVERY, 2 * EVERY, 1]
    assert set(pruned["step_from"]) == {"tag"}
    for trial, step in PRUNED.items():
        expected = fake_runs.probe_value(sweep["levels"][trial], step, STEPS)
        got = pruned.loc[pruned["trial"] == trial, "last rep/probe_miou"].item()
        assert got == pytest.approx(expected, abs=1e-9)
    assert pruned["status_reason"].str.startswith("pruned by optuna: pruned at").all()
    inc = pd.read_csv(sweep["out"] / "incomplete.csv")
    assert list(inc["run_id"]) == [sweep["failed"]] and list(inc["state"]) == ["FAILED"]
    md = (sweep["out"] / "pruned.md").read_text()
    assert "| 3 | " in md and "pre-training step 16" in md and "downstream epoch 1" in md
    page = (sweep["out"] / "index.html").read_text()
    section = page.split('<h2 id="pruned">', 1)[1].split("<h2>", 1)[0]
    assert "pre-training step 8" in section and "pre-training step 16" in section
    assert "3 trial(s) stopped early" in section and sweep["failed"] not in section


def test_pruned_trials_left_out_of_the_means(sweep: dict) -> None:
    """The ablation averages the 4 complete trials only (not the pruned run's val/miou of 0.99);
    its caption in md and tex says how many were pruned, once."""
    csv = pd.read_csv(sweep["out"] / "ablation.csv")
    done = sorted(set(range(6)) - set(PRUNED))
    assert sorted(csv["trial"]) == done and csv["n_runs"].sum() == len(done)
    assert csv["val/miou_mean"].max() < 0.9
    md = (sweep["out"] / "ablation.md").read_text()
    note = "3 trial(s) stopped early by Optuna's pruner are left out of the means"
    assert md.count(note) == 1
    assert (
        "stopped early by Optuna's pruner are left out of the means"
        in (sweep["out"] / "ablation.tex").read_text()
    )


def test_pruned_without_study_or_step_tag(tmp_path: Path) -> None:
    """Without the Optuna study the runs' optuna.state tag marks them pruned; without the step
    tag the step is the last one logged, and the table says where it came from."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    fake_runs.log_probe_sweep(client, study="old", n_trials=4, steps=STEPS, eval_every=EVERY,
                              pruned={2: 3 * EVERY}, tag_pruned_step=False)  # fmt: skip
    rt = collect(Selection(tracking_uri=uri, study="old", storage="sqlite:////nonexistent/o.db"))
    assert rt.study is None and list(rt.pruned["trial"]) == [2]
    table = pruned_table(rt)
    assert list(table["step"]) == [3 * EVERY] and list(table["phase"]) == ["pretrain"]
    assert table.at[0, "step_from"] in (f"last {Metric.TRAIN_LOSS}", f"last {Metric.PROBE_MIOU}")


def test_probe_figure_one_trace_per_run(sweep: dict) -> None:
    """One line per trial run that logged the probe, at the probe's steps; pruned ones dashed,
    a × at each pruning step; hover names the trial and its params."""
    rt = collect(Selection(tracking_uri=sweep["uri"], study="probe", storage=sweep["storage"]))
    fig = F.probe_curves(rt)
    lines = [t for t in fig.data if t.name != "pruned here"]
    assert len(lines) == 7  # 6 sweep trials + the one pruned downstream; not the failed run
    by_trial = {int(t.name.split()[1].rstrip(",")): t for t in lines}
    for trial in range(7):
        last = PRUNED.get(trial, STEPS)
        assert list(by_trial[trial].x) == list(range(EVERY, last + 1, EVERY)), trial
        dashed = by_trial[trial].line.dash == "dash"
        assert dashed == (trial in PRUNED or trial == 6), trial
    expected = [100 * fake_runs.probe_value(sweep["levels"][3], s, STEPS) for s in (8, 16)]
    assert list(by_trial[3].y) == pytest.approx(expected)
    assert "trial 3, seed 0 (pruned)" in by_trial[3].text[0] and "mim=" in by_trial[3].text[0]
    (marks,) = [t for t in fig.data if t.name == "pruned here"]
    assert sorted(zip(marks.x, ["pre-training" in s for s in marks.text], strict=True)) == [
        (EVERY, True), (2 * EVERY, True), (STEPS, False)]  # fmt: skip
    page = (sweep["out"] / "index.html").read_text()
    assert 'id="fig-probe"' in page


def test_no_probe_no_figure(tmp_path: Path) -> None:
    """Runs without rep/probe_miou: no probe figure on the page, and the builder says why."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    fake_runs.log_random_sweep(client, "cmcr", study="plain", n_runs=3)
    sel = Selection(tracking_uri=uri, study="plain", storage="sqlite:////nonexistent/o.db")
    build(sel, tmp_path / "rep", log=False)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert 'id="fig-loss"' in page and 'id="fig-probe"' not in page
    assert "Representation probe" not in page and 'id="pruned"' not in page
    assert not (tmp_path / "rep" / "pruned.csv").exists()
    assert isinstance(F.probe_curves(collect(sel)), str)
