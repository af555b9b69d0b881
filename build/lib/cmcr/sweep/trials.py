"""The trial queue: slots enqueued up front, atomic claims, retries that keep their MLflow run.

Why a queue of slots instead of ``study.optimize(n_trials=N)``: with several workers (or
several machines) each optimize loop counts its own trials, so N is overshot or a trial is
lost when a worker dies. Here setup enqueues exactly N WAITING trials (grid cells with their
params, or empty slots the sampler fills when a worker claims them); workers claim WAITING
trials atomically (WAITING → RUNNING is a row-locked update) and never create trials of their
own. A retry is a new WAITING trial with the failed trial's params and user attrs (so the same
slot and the same ``mlflow_run_id``): grid cells are never skipped or doubled. Who gets a
retry, and why, is cmcr.sweep.recovery.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from cmcr.adapters.optuna_storage import storage_of, trial_id
from cmcr.errors import first_line
from cmcr.names import Attr

log = logging.getLogger("cmcr.sweep")
# a finished result is written again after these pauses while the storage is busy, locked or
# unreachable (about two minutes in all): re-running a finished evaluation is no recovery
STORE_RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0, 30.0)


def worker_id() -> str:
    """``host:pid:start`` of this process (start time tells a reused pid from ours)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return "gone"


def is_dead_local_worker(worker: str | None) -> bool:
    """True when ``worker`` ran on this host and that process no longer exists."""
    if not worker or worker.count(":") < 2:
        return False
    host, pid, start = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return False
    try:
        return _start_time(int(pid)) != start
    except ValueError:
        return False


def same_local_process(worker: str | None, pid: int) -> bool:
    """True when ``worker`` (``host:pid:start``) names process ``pid`` of this host."""
    if not worker or worker.count(":") < 2:
        return False
    host, wpid, _ = worker.rsplit(":", 2)
    return host == socket.gethostname() and wpid == str(pid)


def enqueue_slots(study: Any, cells: list[dict[str, Any]] | None, n_trials: int) -> int:
    """Enqueue the slots ``0..n_trials-1`` the study does not have yet; returns how many.

    ``cells`` (grid studies) gives each slot its params; otherwise the sampler fills a slot
    when it is claimed. Callers hold the study lock.
    """
    have = {t.user_attrs.get(Attr.SLOT) for t in study.get_trials(deepcopy=False)}
    added = 0
    for slot in range(n_trials):
        if slot in have:
            continue
        params = dict(cells[slot]) if cells is not None else {}
        study.enqueue_trial(params, user_attrs={Attr.SLOT: slot})
        added += 1
    return added


def queued(study: Any) -> int:
    """How many trials of ``study`` wait to be claimed."""
    from optuna.trial import TrialState  # lazy: optuna takes ~0.3 s, not needed by --help

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def claim_next(study: Any) -> int | None:
    """Atomically move one WAITING trial to RUNNING; retries first, then by number."""
    import optuna
    from optuna.trial import TrialState

    storage = storage_of(study)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    waiting.sort(key=lambda t: (Attr.FAILED_TRIAL not in t.system_attrs, t.number))
    for t in waiting:
        tid = trial_id(study, t.number)
        try:
            if storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                return tid
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class Heartbeat:
    """Record the trial's heartbeat every ``interval`` s in a thread (what optimize() does),
    while the trial is RUNNING: a worker that comes back from a pause after its trial was
    failed as lost stops beating for it (``owned``, the attempt's fence: cmcr.fence)."""

    def __init__(self, study: Any, trial_id: int) -> None:
        storage = storage_of(study)
        self.storage = storage
        self.trial_id = trial_id
        self.interval = (
            storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")
            self._thread.start()
        return self

    def owned(self) -> bool:
        """Whether the trial is still RUNNING, i.e. still this attempt's (a retry is another
        trial; a failed one never runs again)."""
        from optuna.trial import TrialState  # lazy: optuna takes ~0.3 s, not needed by --help

        return self.storage.get_trial(self.trial_id).state == TrialState.RUNNING

    def _beat(self) -> None:
        while True:
            # a transient storage error must not kill the trial
            with contextlib.suppress(Exception):
                if not self.owned():
                    return  # failed as lost (we were paused) or ended: not ours to keep alive
                self.storage.record_heartbeat(self.trial_id)
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# failure kinds that spend no retry (cmcr.sweep.recovery): an interruption, a lost worker, the
# environment (disk full, database busy); shown as "interrupted", never as the trial's failure
NO_RETRY_SPENT = ("interrupted", "lost", "environment")


def count_states(trials: Iterable[Any]) -> dict[str, int]:
    """Trials per state name, plus ``retried`` (FAIL trials that have a retry) and
    ``interrupted`` (FAIL trials of a kind that spends no retry: not the trial's own failure)."""
    counts: dict[str, int] = {}
    retried_numbers = set()
    trials = list(trials)
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
        origin = t.system_attrs.get(Attr.RETRY_HISTORY)
        if origin:
            retried_numbers.update(origin)
    counts["retried"] = sum(
        1 for t in trials if t.state.name == "FAIL" and t.number in retried_numbers
    )
    counts["interrupted"] = sum(1 for t in trials if t.state.name == "FAIL"
                                and t.user_attrs.get(Attr.FAIL_KIND) in NO_RETRY_SPENT)  # fmt: skip
    return counts


def retried_trial(study: Any, trial_id_: int) -> int | None:
    """The number of the failed trial that the trial with storage id ``trial_id_`` retries."""
    return storage_of(study).get_trial_system_attrs(trial_id_).get(Attr.FAILED_TRIAL)


def is_storage_error(exc: BaseException) -> bool:
    """A database that is busy, locked or lost: Optuna's StorageInternalError, SQLAlchemy's
    OperationalError/DisconnectionError (looked up only if imported), SQLite's "locked"."""
    optuna_exceptions = sys.modules.get("optuna.exceptions")
    if optuna_exceptions is not None and isinstance(exc, optuna_exceptions.StorageInternalError):
        return True
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(
        exc, (sqlalchemy_exc.OperationalError, sqlalchemy_exc.DisconnectionError)
    ):
        return True
    return "database is locked" in str(exc).lower()


def stored(write: Callable[[], Any], what: str) -> Any:
    """``write()`` of a finished result, tried again with backoff (``STORE_RETRY_S``) while the
    storage fails as busy, locked or lost; any other error, or the last one, is raised."""
    for delay in (*STORE_RETRY_S, None):
        try:
            return write()
        except Exception as exc:
            if delay is None or not is_storage_error(exc):
                raise
            log.warning(f"{what}: storage unavailable ({first_line(exc, limit=120)}); "
                        f"writing it again in {delay:.0f} s")  # fmt: skip
            time.sleep(delay)
    return None  # not reached: the last try returns or raises
