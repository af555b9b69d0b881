"""What a sweep records: every seed's run linked to its trial in the report's table, runs
created with their params, names with quotes, no password in any stored reason (issues 14, 15).

The trial function is a fast stand-in that logs ``val/miou`` and ends its run through the
tracking facade, as ``run_trial`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cmcr.engine.downstream import DownstreamResult
from cmcr.errors import TrackingError
from cmcr.names import Attr, Tag
from cmcr.results.collect import Selection, collect, trial_runs
from cmcr.sweep import cli, options
from cmcr.sweep.options import SweepOptions, add_option_arguments, from_args, worker_argv
from cmcr.tracking.runs import RunLogger
from cmcr.tracking.store import client_for, search_value

# the stand-in trial functions here read no data and make no real runs
STAND_IN = cli.Extras(check_data=False, estimate=False, build_report=False)

SECRET = "s3cret"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow sqlite store for the module (its schema takes seconds to create)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def logging_trial(cfg, *, run_id=None, parent_run_id=None, tags=None, report=None):
    """Stand-in for run_trial: logs val/miou (depends on the seed) and ends the run."""
    value = 0.3 + 0.1 * cfg.train.seed
    uri = cfg.tracking.tracking_uri
    logger = RunLogger(client_for(uri), run_id, uri)
    logger.log_metrics({"val/miou": value}, step=0)
    if report is not None:
        report(0, value)
    logger.end("FINISHED")
    return DownstreamResult(run_id, value, value, {})


def leaking_failure(cfg, **_):
    """A trial that fails with a URL and its password in the message."""
    raise RuntimeError(f"cannot reach postgresql://bob:{SECRET}@db:5432/x?password={SECRET}")


def sweep(tmp_path: Path, store: str, *argv: str, trial_fn=logging_trial) -> int:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    args = parser.parse_args(
        [
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", store,
            "--preset", "smoke", "--pruner", "none",
            "--set", f"tracking.output_dir={tmp_path / 'runs'}", *argv,
        ]
    )  # fmt: skip
    return cli.run(args, trial_fn=trial_fn, extras=STAND_IN)


def test_report_links_every_seed_run_to_its_trial(tmp_path, store):
    """--seeds 3: all three runs of each trial carry its number and Optuna state in the table
    (before, only seed 0's run was linked, through mlflow_run_id)."""
    assert sweep(tmp_path, store, "--study", "mask_ratio", "--n-trials", "2", "--seeds", "3",
                 "--name", "three-seeds") == 0  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="three-seeds", storage=storage)
    rt = collect(Selection(tracking_uri=store, study="three-seeds", storage=storage))
    assert len(rt.runs) == 6
    assert sorted(rt.runs["seed"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert rt.runs["optuna_state"].tolist() == ["COMPLETE"] * 6
    assert rt.runs["trial"].notna().all()
    for t in study.trials:
        ids = set(t.user_attrs[Attr.RUN_IDS].values())
        rows = rt.runs[rt.runs["run_id"].isin(ids)]
        assert len(rows) == 3 and set(rows["trial"]) == {t.number}
    assert not any("no Optuna trial" in n for n in rt.notes)


def test_trial_runs_falls_back_to_seed_zero_for_old_studies():
    old = optuna.trial.create_trial(value=1.0, user_attrs={Attr.RUN_ID: "a"})
    new = optuna.trial.create_trial(
        value=1.0, user_attrs={Attr.RUN_ID: "a", Attr.RUN_IDS: {"0": "a", "1": "b", "2": "c"}}
    )
    assert trial_runs(old) == {"a": 0}
    assert trial_runs(new) == {"a": 0, "b": 1, "c": 2}
    assert trial_runs(optuna.trial.create_trial(value=1.0)) == {}


def test_trial_run_is_created_with_the_full_config(tmp_path, store):
    """The run holds every config param before the trainer starts (a worker killed at once
    leaves a complete record); the trainer's take-over adds nothing new."""
    seen: dict[str, dict] = {}

    def peek(cfg, *, run_id=None, **kw):
        seen[run_id] = dict(MlflowClient(store).get_run(run_id).data.params)
        return logging_trial(cfg, run_id=run_id, **kw)

    assert sweep(tmp_path, store, "--study", "mask_ratio", "--n-trials", "1", "--name", "params",
                 trial_fn=peek) == 0  # fmt: skip
    ((run_id, params),) = seen.items()
    assert params["data.mask_ratio"] and params["train.seed"] == "0"
    assert params["tracking.system_metrics"] in ("true", "false")
    assert MlflowClient(store).get_run(run_id).data.params == params


def test_a_study_named_with_a_quote_sweeps_and_reports(tmp_path, store):
    for _ in range(2):  # the second run looks its parent run up by name
        assert sweep(tmp_path, store, "--study", "mask_ratio", "--n-trials", "1",
                     "--name", "it's") == 0  # fmt: skip
        (tmp_path / "optuna.db").unlink()  # forget the link: _find_parent searches by tag
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("it's").experiment_id  # one per study
    parents = client.search_runs([exp], f"tags.`{Tag.STUDY}` = {search_value(chr(39).join(['it', 's']))}"
                                 f" and tags.`{Tag.KIND}` = 'study'")  # fmt: skip
    assert len(parents) == 1  # found again, not created twice
    rt = collect(Selection(tracking_uri=store, study="it's", storage="sqlite:///nowhere.db"))
    assert len(rt.runs) == 2


def test_search_value_quotes_names_mlflow_can_match(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("x")
    names = ["it's", 'say "hi"', "back\\slash", "plain"]
    for name in names:
        client.set_tag(client.create_run(exp).info.run_id, Tag.STUDY, name)
    for name in names:
        found = client.search_runs([exp], f"tags.`{Tag.STUDY}` = {search_value(name)}")
        assert [r.data.tags[Tag.STUDY] for r in found] == [name]
    with pytest.raises(TrackingError, match="both"):
        search_value('it\'s "x"')


def test_no_password_reaches_a_stored_reason(tmp_path, store):
    assert sweep(tmp_path, store, "--study", "mask_ratio", "--n-trials", "1", "--max-retries",
                 "1", "--name", "leak", trial_fn=leaking_failure) == 1  # fmt: skip
    # issue 14: the slot failed for good, so the sweep exits 1 (its reason redacted too)
    study = optuna.load_study(study_name="leak", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    stored = repr([(t.user_attrs, t.system_attrs) for t in study.trials])
    assert "bob:***@db" in stored and SECRET not in stored
    client = MlflowClient(store)
    for t in study.trials:
        for run_id in trial_runs(t):
            run = client.get_run(run_id)
            assert run.info.status == "FAILED"
            assert "bob:***@db" in run.data.tags[Tag.STATUS_REASON]
            assert SECRET not in repr(run.data.tags) + repr(run.data.params)


def test_worker_argv_round_trips_every_option():
    """A spawned worker parses back the options it was started with (one declaration)."""
    opts = SweepOptions(study="s", storage="sqlite:///o.db", n_trials=3, workers=4, preset="smoke",
                        seeds=2, resume=True, max_retries=1, pruner="none", objective="finetune",
                        overrides=["a=1", "b=2"], tracking_uri="sqlite:///m.db", name="n",
                        heartbeat_s=5)  # fmt: skip
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    args = parser.parse_args(worker_argv(opts))
    assert args.worker
    back = from_args(args)
    assert back == SweepOptions(**{**vars(opts), "workers": 1, "resume": False})
    defaults = argparse.ArgumentParser()
    add_option_arguments(defaults)
    assert from_args(defaults.parse_args(["--study", "s"])) == SweepOptions(study="s")
