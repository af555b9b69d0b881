"""One MLflow experiment per study, marked for MLflow 3's runs view, with its saved runs view,
descriptions and dataset inputs; the report finds runs in it and in the old shared experiment.

The pin tests read the UI bundle MLflow ships: the experiment-kind tag and value, the workflow
switch's URL parameter and the saved-view tag and its state keys are the UI's, not a documented
API (cmcr/adapters/mlflow_views.py), so an MLflow upgrade that renames them fails here first.
The screenshots themselves: dashboards/mlflow_screenshots.py (slow test below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cmcr.adapters import mlflow_views
from cmcr.configs import load_config
from cmcr.names import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_KIND_TRAINING,
    UI_WORKFLOW_QUERY,
    ExpTag,
    Kind,
    Metric,
)
from cmcr.results import fake_runs
from cmcr.results.collect import Selection, collect
from cmcr.tracking.inputs import dataset_fingerprint, run_spec
from cmcr.tracking.runs import RunLogger
from cmcr.tracking.store import get_or_create_experiment, resolve_tracking_uri
from cmcr.tracking.study import (
    describe_study,
    prepare_study_experiment,
    study_experiment,
    study_note,
    ui_urls,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module, created as the sweep creates it (schema built once)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    resolve_tracking_uri(load_config("smoke", {"tracking.tracking_uri": uri}))
    return uri


def _ui_bundle() -> str:
    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    return "".join(p.read_text(errors="ignore") for p in js.glob("*.js"))


def test_ui_bundle_still_reads_what_we_write() -> None:
    """MLflow's UI knows the kind tag and value, the workflow switch, saved views and the state
    keys a view carries (the names our adapter writes)."""
    js = _ui_bundle()
    assert f'"{ExpTag.KIND}"' in js and f'"{EXPERIMENT_KIND_TRAINING}"' in js
    key, value = UI_WORKFLOW_QUERY.split("=")
    assert f'"{key}"' in js and f'"{value}"' in js
    assert f'"{ExpTag.VIEW_PREFIX}"' in js and '"viewStateShareKey"' in js
    state = json.loads(
        json.loads(mlflow_views.runs_view("v", ["m"], ["p"], order_by="m")[1])["state"]
    )
    for k in state:
        assert f"{k}:" in js, f"the runs page state has no key {k!r} any more"
    assert '"attributes.start_time"' in js and '"Active"' in js and '"All Runs"' in js


def test_study_experiment_kind_view_and_description(store: str) -> None:
    """A study's experiment is model-training, its saved view shows the objective then the swept
    params (sorted by the objective, trials only), and its description names both."""
    params = ["loss.weights.occ", "loss.weights.mim"]
    exp_id = prepare_study_experiment(store, "sw1", study="sw1", objective=Metric.VAL_MIOU,
                                        direction="maximize", params=params)  # fmt: skip
    note = study_note("sw1", objective=Metric.VAL_MIOU, direction="maximize", params=params)
    describe_study(store, exp_id, None, note)
    tags = MlflowClient(store).get_experiment(exp_id).tags
    assert tags[ExpTag.KIND] == EXPERIMENT_KIND_TRAINING
    assert "`loss.weights.mim`, `loss.weights.occ`" in tags[ExpTag.NOTE]
    view = json.loads(tags[ExpTag.VIEW_PREFIX + mlflow_views.VIEW_KEY])
    state = json.loads(view["state"])
    # the objective's column is its rounded twin in % (MLflow's table prints stored digits)
    assert state["selectedColumns"][:3] == ["metrics.`val/miou_pct`", "params.`loss.weights.mim`",
                                            "params.`loss.weights.occ`"]  # fmt: skip
    assert state["orderByKey"] == "metrics.`val/miou_pct`" and state["orderByAsc"] is False
    assert state["searchFilter"] == "tags.`cmcr.kind` = 'trial' and tags.`optuna.study` = 'sw1'"
    # the links the sweep and the notes give open that view, on the model-training side
    urls = ui_urls("http://127.0.0.1:5000", exp_id, {"best": "abc"})
    assert urls["runs"].endswith(f"/runs?viewStateShareKey=cmcr-study&{UI_WORKFLOW_QUERY}")
    assert (
        urls["best"] == f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/abc?{UI_WORKFLOW_QUERY}"
    )


def test_an_older_experiment_is_marked_when_used(store: str) -> None:
    """An experiment made before the kind tag existed gets it the next time a run uses it."""
    client = MlflowClient(store)
    exp_id = client.create_experiment("made-before")
    assert ExpTag.KIND not in client.get_experiment(exp_id).tags
    assert get_or_create_experiment(client, "made-before", store) == exp_id
    assert client.get_experiment(exp_id).tags[ExpTag.KIND] == EXPERIMENT_KIND_TRAINING


def test_runs_log_their_dataset_splits(store: str, smoke_world: Path) -> None:
    """A trial run records the world's train and val splits (digest = the fingerprint); a
    pre-training run the train split; the study's parent run none."""
    cfg = load_config("smoke", {"tracking.tracking_uri": store, "tracking.experiment": "ds",
                                "tracking.system_metrics": False,
                                "data.dataroot": str(smoke_world)})  # fmt: skip
    found = {}
    for kind in (Kind.TRIAL, Kind.PRETRAIN, Kind.STUDY):
        with RunLogger.start(run_spec(cfg, kind=kind, log_params=False)) as run:
            inputs = MlflowClient(store).get_run(run.run_id).inputs.dataset_inputs
            found[kind] = {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in inputs}
    digest = dataset_fingerprint(cfg)
    world = smoke_world.resolve().name
    assert found[Kind.TRIAL] == {(f"{world}/{cfg.data.train_split}", digest, "train"),
                                 (f"{world}/{cfg.data.val_split}", digest, "validation")}  # fmt: skip
    assert found[Kind.PRETRAIN] == {(f"{world}/{cfg.data.train_split}", digest, "train")}
    assert found[Kind.STUDY] == set()


def test_sweeps_get_an_experiment_named_after_the_study(store: str) -> None:
    """The study's name by default; an explicit tracking.experiment wins; a study whose parent
    run already lives in the shared default experiment stays there."""
    cfg = load_config("smoke", {"tracking.tracking_uri": store})
    assert cfg.tracking.experiment == DEFAULT_EXPERIMENT
    assert study_experiment(cfg, "fresh") == "fresh"
    mine = load_config("smoke", {"tracking.tracking_uri": store, "tracking.experiment": "mine"})
    assert study_experiment(mine, "fresh") == "mine"
    client = MlflowClient(store)
    get_or_create_experiment(client, DEFAULT_EXPERIMENT, store)  # artifacts beside the store
    fake_runs.start_study(client, DEFAULT_EXPERIMENT, "old-study")
    assert study_experiment(cfg, "old-study") == DEFAULT_EXPERIMENT
    missing = load_config("smoke", {"tracking.tracking_uri": f"{store}-none"})
    assert study_experiment(missing, "old-study") == "old-study"  # no store: nothing to read


def test_report_finds_runs_in_the_study_experiment_and_the_old_one(store: str) -> None:
    """collect() without --experiment reads the study's own experiment and the default one;
    with --experiment only that one."""
    client = MlflowClient(store)
    for name in ("split", DEFAULT_EXPERIMENT):  # artifacts beside the store (tmp), not ./mlruns
        get_or_create_experiment(client, name, store)
    fake_runs.log_random_sweep(client, "split", study="split", n_runs=3)
    fake_runs.log_random_sweep(client, DEFAULT_EXPERIMENT, study="split", n_runs=2, rng_seed=1)
    assert len(collect(Selection(tracking_uri=store, study="split")).runs) == 5
    only = collect(Selection(tracking_uri=store, study="split", experiment="split"))
    assert len(only.runs) == 3
    assert set(only.runs["kind"]) == {Kind.TRIAL}  # the parent runs are not rows


@pytest.mark.slow
def test_screenshots_show_the_study_view(tmp_path: Path) -> None:
    """dashboards/mlflow_screenshots.py makes its three PNGs (~3 min on 2 busy cores; what they
    show is described in docs/figures/README.md)."""
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("chromium missing: dashboards/ensure_chromium.sh")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "dashboards" / "mlflow_screenshots.py"),
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for page in ("landing", "runs", "parent"):
        assert (tmp_path / f"mlflow_{page}.png").stat().st_size > 10_000


def test_report_build_describes_the_study(store: str, tmp_path: Path) -> None:
    """Building the report writes the experiment's and the parent run's descriptions: the best
    trial's run (the highest val/miou) and the report's file:// link."""
    from cmcr.names import ExpTag as E
    from cmcr.results.report import build

    client = MlflowClient(store)
    get_or_create_experiment(client, "described", store)  # artifacts beside the store (tmp)
    info = fake_runs.log_random_sweep(client, "described", study="described", n_runs=4)
    build(Selection(tracking_uri=store, study="described"), tmp_path / "rep")
    runs = client.search_runs([info["experiment_id"]], "tags.`cmcr.kind` = 'trial'",
                              order_by=[f"metrics.`{Metric.VAL_MIOU}` DESC"])  # fmt: skip
    best = runs[0]
    exp_note = client.get_experiment(info["experiment_id"]).tags[E.NOTE]
    run_note = client.get_run(info["parent_run_id"]).data.tags["mlflow.note.content"]
    assert exp_note == run_note
    assert f"trial {best.data.tags['optuna.trial']}," in run_note and best.info.run_id in run_note
    assert (tmp_path / "rep" / "index.html").resolve().as_uri() in run_note
