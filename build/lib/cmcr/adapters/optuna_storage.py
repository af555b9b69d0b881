"""Optuna: a study's storage and its trials' storage ids, which ``optuna.Study`` keeps private.

Why the public API is not enough: the sweep runs a queue of exactly N enqueued trials shared by
workers on several machines (cmcr.sweep.trials). A worker must claim a WAITING trial atomically
and must never create one: ``Study.ask()`` pops a waiting trial but creates a new one when none
is left (N is overshot), and ``Study.optimize()`` counts trials per process. The claim
(``set_trial_state_values(id, RUNNING)`` returns False when another worker won), failing a dead
worker's trial, reading a retry's system attrs before ``optuna.Trial`` exists and the heartbeat
thread all need the study's storage and a trial's id: public ``BaseStorage`` methods, reached
only through ``Study._storage`` and ``Study._study_id``. Finding the trials whose heartbeat went
stale uses ``_get_stale_trial_ids``: the public ``fail_stale_trials`` fails them without saying
which, so the sweep could not record why (a lost worker spends no retry) nor end their MLflow
runs. Those reads live here and nowhere else; tests/test_adapters_optuna.py pins them.
"""

from __future__ import annotations

from typing import Any


def storage_of(study: Any) -> Any:
    """The ``BaseStorage`` the study reads and writes (the one it was created or loaded with)."""
    return study._storage


def trial_id(study: Any, number: int) -> int:
    """The storage id of the study's trial ``number`` (what ``optuna.Trial`` and storage take)."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def stale_trial_ids(study: Any) -> list[int]:
    """Storage ids of RUNNING trials whose heartbeat is older than the grace period ([] when
    the storage records no heartbeat)."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        return []
    return list(storage._get_stale_trial_ids(study._study_id))
