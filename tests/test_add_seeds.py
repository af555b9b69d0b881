"""``sweeps/run.py --add-seeds K`` with the trial function injected (fast): a 2-configuration,
1-seed study grows to 3 seeds per configuration under the same parent run, nothing finished runs
again, a kill mid-way resumes with ``--resume``, and bad input fails before any store is touched.

The same growth with the real ``run_trial`` on the smoke world is in test_sweep_e2e.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_sweep_runner import STAND_IN, Recorder, SimulatedKill, children, load, run_sweep

from cmcr.errors import DataError
from cmcr.names import Attr, Metric, Tag
from cmcr.sweep import cli, seeds

ARGV = ("--study", "mask_ratio", "--pruner", "none")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow sqlite store for the module (its schema takes seconds to create)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def by_seed(cfg, n) -> float:  # noqa: ANN001
    """A known val mIoU per (configuration, seed): the mean over seeds 0..2 is ratio + 0.1."""
    return cfg.data.mask_ratio + 0.1 * cfg.train.seed


def _sweep(tmp_path: Path, store: str, name: str, *argv: str, rec: Recorder | None = None) -> int:
    return run_sweep(tmp_path, store, *ARGV, "--name", name, *argv, trial_fn=rec or Recorder())


def _seed_runs(store: str, study: optuna.Study) -> dict[str, dict[int, str]]:
    """{params key: {seed: run id}} of every child run of the study's parent run."""
    trials = {str(t.number): t for t in study.trials}
    out: dict[str, dict[int, str]] = {}
    for run in children(store, study.user_attrs[Attr.PARENT_RUN]):
        trial = trials[run.data.tags[Tag.TRIAL]]
        seed = int(run.data.tags[Tag.SEED])
        key = seeds.params_key(trial.params)
        assert seed not in out.setdefault(key, {}), f"seed {seed} ran twice for {key}"
        out[key][seed] = run.info.run_id
    return out


def test_two_configurations_grow_from_one_seed_to_three(tmp_path, store):
    first = Recorder(value=by_seed)
    assert _sweep(tmp_path, store, "grow", "--n-trials", "2", rec=first) == 0
    before = load(tmp_path, "grow")
    old = {
        t.number: (t.value, t.user_attrs[Attr.RUN_IDS], t.datetime_complete) for t in before.trials
    }
    old_runs = _seed_runs(store, before)
    assert len(old_runs) == 2 and all(list(s) == [0] for s in old_runs.values())

    more = Recorder(value=by_seed)
    assert _sweep(tmp_path, store, "grow", "--add-seeds", "2", rec=more) == 0
    study = load(tmp_path, "grow")
    # only the new seeds ran, once each: 2 configurations × seeds 1, 2
    assert sorted(c["seed"] for c in more.calls) == [1, 1, 2, 2]
    assert {c["parent"] for c in more.calls} == {study.user_attrs[Attr.PARENT_RUN]}
    # the finished trials are untouched (value, runs, end time) and no slot was added
    assert len(study.trials) == 4 and study.user_attrs[Attr.N_TRIALS] == 2
    for t in study.trials[:2]:
        assert (t.value, t.user_attrs[Attr.RUN_IDS], t.datetime_complete) == old[t.number]
    runs = _seed_runs(store, study)
    assert set(runs) == set(old_runs)
    for key, by in runs.items():
        assert sorted(by) == [0, 1, 2] and by[0] == old_runs[key][0]
    for t in study.trials[2:]:
        assert t.state == TrialState.COMPLETE and t.user_attrs[Attr.TRIAL_SEEDS] == [1, 2]
        origin = study.trials[t.user_attrs[Attr.SEEDS_OF]]
        assert t.params == origin.params
        # the value is the configuration's mean over all three seeds
        assert t.value == pytest.approx(t.params["data.mask_ratio"] + 0.1)
    assert study.best_trial.number in (2, 3)  # the best now reflects every seed


class Logging(Recorder):
    """A Recorder that logs its val mIoU to the run, as run_trial does (the tables read it)."""

    def __init__(self, store: str) -> None:
        super().__init__(value=by_seed)
        self.store = store

    def __call__(self, cfg, **kw):  # noqa: ANN001, ANN003, ANN204
        from mlflow.tracking import MlflowClient

        out = super().__call__(cfg, **kw)
        MlflowClient(self.store).log_metric(kw["run_id"], Metric.VAL_MIOU, out.miou)
        return out


def test_tables_see_three_seeds_per_row_under_the_parent(tmp_path, store):
    from cmcr.results.ablation import ablation
    from cmcr.results.collect import Selection, collect

    assert _sweep(tmp_path, store, "tab", "--n-trials", "2", rec=Logging(store)) == 0
    sel = Selection(tracking_uri=store, study="tab", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    one = ablation(collect(sel)).table
    assert one["n_runs"].tolist() == [1, 1] and one["val/miou_std"].isna().all()
    assert _sweep(tmp_path, store, "tab", "--add-seeds", "2", rec=Logging(store)) == 0
    rt = collect(sel)
    assert rt.runs["optuna_state"].tolist() == ["COMPLETE"] * 6 and not rt.notes
    three = ablation(rt).table
    assert three["n_runs"].tolist() == [3, 3] and three["seeds"].tolist() == ["0,1,2"] * 2
    assert three["val/miou_std"].to_numpy() == pytest.approx([0.1, 0.1])


def test_adding_again_continues_after_the_last_seed(tmp_path, store):
    assert _sweep(tmp_path, store, "again", "--n-trials", "1", "--seeds", "2") == 0
    assert _sweep(tmp_path, store, "again", "--seeds", "2", "--add-seeds", "1") == 0
    rec = Recorder()
    assert _sweep(tmp_path, store, "again", "--seeds", "2", "--add-seeds", "2", rec=rec) == 0
    assert [c["seed"] for c in rec.calls] == [3, 4]
    study = load(tmp_path, "again")
    assert [t.user_attrs.get(Attr.TRIAL_SEEDS) for t in study.trials] == [None, [2], [3, 4]]
    assert sorted(_seed_runs(store, study).popitem()[1]) == [0, 1, 2, 3, 4]


def test_a_kill_mid_seed_resumes_the_same_run_and_skips_the_finished_seed(tmp_path, store):
    assert _sweep(tmp_path, store, "kill", "--n-trials", "1") == 0
    # seed 1 finishes, seed 2 is killed (SIGKILL: nothing is recorded, the trial stays RUNNING)
    rec = Recorder(fail_on={1: SimulatedKill()})
    with pytest.raises(SimulatedKill):
        _sweep(tmp_path, store, "kill", "--add-seeds", "2", rec=rec)
    study = load(tmp_path, "kill")
    unit = study.trials[1]
    assert unit.state == TrialState.RUNNING and set(unit.user_attrs[Attr.SEED_RESULTS]) == {"1"}
    dead = f"{socket.gethostname()}:999999999:123.00"
    study._storage.set_trial_user_attr(unit._trial_id, Attr.WORKER, dead)

    again = Recorder()
    assert _sweep(tmp_path, store, "kill", "--resume", rec=again) == 0
    assert [c["seed"] for c in again.calls] == [2]  # seed 1 is not run again
    assert again.calls[0]["run_id"] == rec.calls[1]["run_id"]  # seed 2 continues its run
    trials = load(tmp_path, "kill").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].user_attrs[Attr.SLOT] == trials[1].user_attrs[Attr.SLOT] == "0:s1-2"
    assert sorted(_seed_runs(store, load(tmp_path, "kill")).popitem()[1]) == [0, 1, 2]


def test_a_kill_between_the_request_and_the_queue_loses_nothing(tmp_path, store, monkeypatch):
    assert _sweep(tmp_path, store, "half", "--n-trials", "2") == 0

    def killed(study):  # noqa: ANN001, ANN202
        raise SimulatedKill()

    monkeypatch.setattr(seeds, "enqueue_added", killed)
    with pytest.raises(SimulatedKill):
        _sweep(tmp_path, store, "half", "--add-seeds", "1")
    monkeypatch.undo()
    study = load(tmp_path, "half")
    assert len(study.trials) == 2 and len(study.user_attrs[Attr.ADDED_SEEDS]) == 2
    rec = Recorder()  # --resume alone: the stored 2 slots, not the study file's default
    assert _sweep(tmp_path, store, "half", "--resume", rec=rec) == 0
    assert [c["seed"] for c in rec.calls] == [1, 1]
    assert [t.state for t in load(tmp_path, "half").trials] == [TrialState.COMPLETE] * 4


def test_a_failed_unit_is_reported_and_reopened_like_a_slot(tmp_path, store, capsys):
    from cmcr.sweep import recovery

    assert _sweep(tmp_path, store, "reopen", "--n-trials", "1") == 0
    rec = Recorder(fail_on={0: DataError("bad seed")})  # deterministic: not retried
    assert _sweep(tmp_path, store, "reopen", "--add-seeds", "1", rec=rec) == 1
    assert (
        "trial 1 (slot 0:s1-1) failed: not retried: DataError: bad seed" in capsys.readouterr().err
    )
    argv = ("--n-trials", "1", "--resume", "--retry-failed")
    assert _sweep(tmp_path, store, "reopen", *argv) == 0
    study = load(tmp_path, "reopen")
    assert recovery.reopened(study) == {"0:s1-1": 2}
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE
    ]  # fmt: skip
    assert sorted(_seed_runs(store, study).popitem()[1]) == [0, 1]


def test_status_counts_the_added_seeds_under_their_configuration(tmp_path, store, capsys):
    assert _sweep(tmp_path, store, "stat", "--n-trials", "1") == 0
    assert _sweep(tmp_path, store, "stat", "--add-seeds", "2") == 0
    capsys.readouterr()
    assert _sweep(tmp_path, store, "stat", "--n-trials", "1", "--status") == 0
    out = capsys.readouterr().out
    assert "adds seeds 1,2 to #0" in out
    assert "#0 seeds 0,1,2 of 0,1,2 (added 1,2)" in out


def _main(tmp_path: Path, store: str, *argv: str) -> int:
    return cli.main(
        [
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
            "--tracking-uri", store,
            "--preset", "smoke",
            "--set", f"tracking.output_dir={tmp_path / 'runs'}",
            *ARGV, *argv,
        ],
        trial_fn=Recorder(),
        extras=STAND_IN,
    )  # fmt: skip


def _one_error(capsys: pytest.CaptureFixture[str], expected: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeps/run.py: error: --add-seeds")
    assert expected in lines[0], lines[0]


def test_bad_k_and_a_missing_study_fail_before_any_store_exists(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for k, expected in (("0", "expected an integer in [1, 100], got 0"), ("-1", "got -1")):
        assert _main(tmp_path, store, "--add-seeds", k) == 2
        _one_error(capsys, expected)
    assert _main(tmp_path, store, "--add-seeds", "2") == 2
    _one_error(capsys, "no such database file")
    assert _main(tmp_path, store, "--add-seeds", "2", "--n-trials", "3") == 2
    _one_error(capsys, "--n-trials")
    assert _main(tmp_path, store, "--add-seeds", "2", "--status") == 2
    _one_error(capsys, "not with --status")
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_unknown_study_or_one_without_complete_trials_is_refused_untouched(
    tmp_path, store, capsys
):
    rec = Recorder(fail_on={0: DataError("bad input")})  # deterministic: failed for good
    assert _sweep(tmp_path, store, "none", "--n-trials", "1", rec=rec) == 1
    capsys.readouterr()
    db = tmp_path / "optuna.db"
    before = load(tmp_path, "none")
    parent = before.user_attrs[Attr.PARENT_RUN]
    n_runs = len(children(store, parent))
    assert _main(tmp_path, store, "--name", "nope", "--add-seeds", "1") == 2
    _one_error(capsys, "no study 'nope'")
    assert _main(tmp_path, store, "--name", "none", "--add-seeds", "1") == 2
    _one_error(capsys, "no COMPLETE trial")
    after = load(tmp_path, "none")
    assert [t.state for t in after.trials] == [t.state for t in before.trials]
    assert after.user_attrs == before.user_attrs and len(children(store, parent)) == n_runs
    names = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")}
    assert names == {"none"}


def test_a_trial_still_queued_is_named_and_gets_no_added_seed(tmp_path, store, caplog):
    rec = Recorder(fail_on={1: KeyboardInterrupt()})  # slot 1 is interrupted and re-queued
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, store, "queued", "--n-trials", "2", rec=rec)
    rec = Recorder()
    with caplog.at_level("WARNING", logger="cmcr.sweep"):
        assert _sweep(tmp_path, store, "queued", "--add-seeds", "1", rec=rec) == 0
    assert "trial(s) [2] are not finished; they get no added seeds" in caplog.text
    # the queued retry ran its seed 0 (slot 1), the added trial seed 1 of slot 0 only
    assert sorted((c["tags"]["cmcr.slot"], c["seed"]) for c in rec.calls) == [
        ("0:s1-1", 1),
        ("1", 0),
    ]


def test_add_seeds_interrupted_and_repeated_adds_exactly_one_seed(tmp_path, store):
    """Issue 29: Ctrl-C says "run it again to continue"; running the same --add-seeds 1 again
    tops each configuration up to one added seed instead of asking for one more."""
    assert _sweep(tmp_path, store, "twice", "--n-trials", "2") == 0
    stopped = Recorder(fail_on={0: KeyboardInterrupt()})  # Ctrl-C in the first added seed
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, store, "twice", "--add-seeds", "1", rec=stopped)
    again = Recorder()
    assert _sweep(tmp_path, store, "twice", "--add-seeds", "1", rec=again) == 0
    assert sorted(c["seed"] for c in again.calls) == [1, 1]  # the interrupted one and the other
    study = load(tmp_path, "twice")
    assert len(seeds.requested(study)) == 2  # one unit per configuration, not two
    assert all(sorted(by) == [0, 1] for by in _seed_runs(store, study).values())
    assert _sweep(tmp_path, store, "twice", "--add-seeds", "1", rec=Recorder()) == 0  # done: +1
    assert all(
        sorted(by) == [0, 1, 2] for by in _seed_runs(store, load(tmp_path, "twice")).values()
    )
