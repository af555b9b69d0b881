"""Pins the private Optuna behaviour cmcr.adapters.optuna_storage relies on (see its docstring)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from cmcr.adapters.optuna_storage import storage_of, trial_id


@pytest.fixture
def study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    return optuna.create_study(study_name="pin", storage=storage)


def test_storage_of_reads_and_writes_the_studys_records(study):
    """Optuna may wrap the RDBStorage (a cache): what we need is a BaseStorage on the same rows."""
    storage = storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    study.enqueue_trial({})
    tid = trial_id(study, 0)
    storage.set_trial_system_attr(tid, "failed_trial", 3)
    assert storage.get_trial_system_attrs(tid) == {"failed_trial": 3, "fixed_params": {}}
    assert study.get_trials(deepcopy=False)[0].system_attrs["failed_trial"] == 3


def test_trial_id_maps_numbers_to_the_storage_rows(study):
    for _ in range(3):
        study.enqueue_trial({})
    storage = storage_of(study)
    for t in study.get_trials(deepcopy=False):
        tid = trial_id(study, t.number)
        assert storage.get_trial(tid).number == t.number
        assert storage.get_trial(tid).state == TrialState.WAITING


def test_claim_is_atomic_waiting_to_running_once(study):
    """The queue's claim: the first WAITING → RUNNING succeeds, a second claim reports False."""
    study.enqueue_trial({})
    storage = storage_of(study)
    tid = trial_id(study, 0)
    assert storage.set_trial_state_values(tid, state=TrialState.RUNNING) is True
    assert storage.set_trial_state_values(tid, state=TrialState.RUNNING) is False
    storage.set_trial_state_values(tid, state=TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(tid, state=TrialState.RUNNING)


def test_heartbeat_interval_is_read_from_the_storage(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=7, grace_period=21
        )
    study = optuna.create_study(study_name="hb", storage=storage)
    assert hasattr(storage_of(study), "get_heartbeat_interval")
    assert storage_of(study).get_heartbeat_interval() == 7


def test_stale_trial_ids_lists_running_trials_whose_heartbeat_is_old(tmp_path):
    """cmcr.sweep.recovery fails these itself (recording why) instead of fail_stale_trials."""
    import sqlite3

    from cmcr.adapters.optuna_storage import stale_trial_ids

    url = f"sqlite:///{tmp_path / 'hb.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="hb", storage=storage)
    assert stale_trial_ids(optuna.create_study(storage=f"sqlite:///{tmp_path / 'no.db'}")) == []
    for _ in range(2):
        study.enqueue_trial({})
    live, dead = (trial_id(study, n) for n in (0, 1))
    for tid in (live, dead):
        storage_of(study).set_trial_state_values(tid, state=TrialState.RUNNING)
        storage_of(study).record_heartbeat(tid)
    assert stale_trial_ids(study) == []
    with sqlite3.connect(tmp_path / "hb.db") as db:
        db.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-10 seconds') "
            "WHERE trial_id = ?",
            (dead,),
        )
    assert stale_trial_ids(study) == [dead]
