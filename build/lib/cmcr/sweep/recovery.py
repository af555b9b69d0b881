"""Fault accounting: why each attempt of a slot failed, and whether the slot gets another.

A slot (``cmcr.slot``) is one of the study's N trials; each attempt at it is an Optuna trial.
Every failed attempt records its kind (``cmcr.fail_kind``), and only a failure of the trial
itself spends one of ``--max-retries``:

- ``own``: the trial raised (a bug, a flaky read): retried up to ``--max-retries`` times;
- ``deterministic``: divergence, a non-finite objective, bad config/data/checkpoint input
  (a ``CMCRError``): a retry would fail the same way, so the slot fails for good;
- ``interrupted`` (SIGINT/SIGTERM), ``lost`` (the worker died: stale heartbeat, dead local
  process), ``environment`` (disk full, tracking server down): not the trial's fault, re-queued
  without spending a retry, up to ``MAX_INTERRUPTIONS`` times so a crash loop still ends.

A FAIL attempt without a kind was failed by someone who could not say why (a heartbeat check
of an older version): counted as ``lost``.

Retries are not enqueued by whoever sees a failure but by ``reconcile``, run under the study
lock at every start of a sweep or worker and after every trial: for each slot with no live
attempt (COMPLETE, PRUNED, RUNNING or WAITING) it decides from the recorded kinds, so a kill
between "trial failed" and "retry enqueued" is healed by the next start, and two processes
cannot both enqueue the same retry.

A retry carries the failed attempt's system attrs, Optuna's successive-halving marks
``completed_rung_*`` among them, so it resumes at the rung its configuration reached (its
resumed run does not report the steps it already logged). Optuna's pruner counts those marks on
every trial, FAIL included, and a finished trial's attrs cannot be removed, so
``successive_halving`` hides an attempt that a retry superseded from the pruner: each slot
counts once at each rung.
"""

from __future__ import annotations

import collections
import datetime
import functools
from collections.abc import Iterable
from typing import Any

from cmcr.adapters.optuna_storage import stale_trial_ids, storage_of, trial_id
from cmcr.names import Attr
from cmcr.sweep.options import MAX_INTERRUPTIONS
from cmcr.sweep.trials import NO_RETRY_SPENT, is_dead_local_worker, same_local_process
from cmcr.uris import redact

OWN, DETERMINISTIC = "own", "deterministic"
INTERRUPTED, LOST, ENVIRONMENT = NO_RETRY_SPENT
KINDS = (OWN, DETERMINISTIC, INTERRUPTED, LOST, ENVIRONMENT)
# failures that are not the trial's own are capped generously (declared with --max-retries,
# whose help states it), so a slot whose worker is killed again and again, or a disk that
# stays full, still ends instead of looping forever
STALE_REASON = "worker lost (stale heartbeat)"
# user attrs that belong to one attempt and must not be copied onto its retry
ATTEMPT_ATTRS = (
    Attr.FAIL_REASON,
    Attr.RETRY_REASON,
    Attr.WORKER,
    Attr.FAIL_KIND,
    Attr.SLURM_JOB,
    Attr.PROGRESS,
)


def kind_of(trial: Any) -> str:
    """The recorded kind of a FAIL attempt (``lost`` when none was recorded)."""
    kind = trial.user_attrs.get(Attr.FAIL_KIND)
    return kind if kind in KINDS else LOST


def fail_running(study: Any, number: int, kind: str, reason: str) -> Any | None:
    """Fail RUNNING trial ``number`` as ``kind``; its frozen trial, or None if it had ended.

    A kind recorded earlier (the worker classified its exception, then was killed before it
    could tell Optuna) is kept: it knew better.
    """
    import optuna
    from optuna.trial import TrialState

    storage = storage_of(study)
    tid = trial_id(study, number)
    try:
        attrs = storage.get_trial(tid).user_attrs
        storage.set_trial_user_attr(tid, Attr.FAIL_KIND, attrs.get(Attr.FAIL_KIND, kind))
        storage.set_trial_user_attr(tid, Attr.FAIL_REASON, attrs.get(Attr.FAIL_REASON, reason))
        if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None  # another process got there first
    return storage.get_trial(tid)


def fail_stale(study: Any) -> list[Any]:
    """Fail the RUNNING trials whose heartbeat went stale (their worker is gone)."""
    storage = storage_of(study)
    failed = []
    for tid in stale_trial_ids(study):
        number = storage.get_trial(tid).number
        frozen = fail_running(study, number, LOST, STALE_REASON)
        if frozen is not None:
            failed.append(frozen)
    return failed


def fail_dead_local(study: Any, grace_s: float, *, pid: int | None = None) -> list[Any]:
    """Fail RUNNING trials whose worker was a process on this host that no longer exists.

    ``pid``: only that process's trials (the parent of ``--workers`` saw it die). A trial with
    no worker recorded (killed between its claim and the next write) is failed once it is
    older than ``grace_s``: a live worker records itself within milliseconds.
    """
    from optuna.trial import TrialState

    failed = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(Attr.WORKER)
        if pid is not None:
            dead = same_local_process(worker, pid)
        elif worker is None:
            started = t.datetime_start or now
            dead = (now - started).total_seconds() > grace_s
        else:
            dead = is_dead_local_worker(worker)
        if not dead:
            continue
        reason = f"worker {worker or '(unknown)'} died"
        frozen = fail_running(study, t.number, LOST, reason)
        if frozen is not None:
            failed.append(frozen)
    return failed


Slot = int | str  # an int: one of the study's N slots; a str: an --add-seeds unit


def by_slot(trials: Iterable[Any]) -> dict[Slot, list[Any]]:
    """The sweep's attempts grouped by slot, in trial-number order (foreign trials skipped).

    --add-seeds trials are units of their own (string slots, cmcr.sweep.seeds), so their
    failures are counted and retried apart from the finished slot whose seeds they add.
    """
    slots: dict[Slot, list[Any]] = collections.defaultdict(list)
    for t in sorted(trials, key=lambda t: t.number):
        slot = t.user_attrs.get(Attr.SLOT)
        if isinstance(slot, int | str):
            slots[slot].append(t)
    return slots


def in_scope(slot: Slot, n_slots: int) -> bool:
    """Whether ``slot`` is one the sweep runs: the first ``n_slots`` slots and every unit."""
    return isinstance(slot, str) or slot < n_slots


def slot_of_tag(value: str | None) -> Slot | None:
    """A slot as the ``cmcr.slot`` run tag writes it, back to its stored form."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _order(item: tuple[Slot, Any]) -> tuple[bool, str | int]:
    """Slots in number order, then --add-seeds units by name."""
    slot = item[0]
    return (isinstance(slot, str), slot if isinstance(slot, str) else f"{slot:012d}")


def verdict(attempts: list[Any], first: int, max_retries: int) -> tuple[str, str]:
    """("done" | "active" | "retry" | "failed", reason) of one slot's attempts.

    ``first``: attempts numbered below it are not counted (the slot was re-opened there).
    """
    from optuna.trial import TrialState

    states = {t.state for t in attempts}
    if states & {TrialState.COMPLETE, TrialState.PRUNED}:
        return "done", ""
    if states & {TrialState.RUNNING, TrialState.WAITING}:
        return "active", ""
    failed = [t for t in attempts if t.state == TrialState.FAIL and t.number >= first]
    if not failed:
        return "retry", "re-opened by --retry-failed"
    kinds = collections.Counter(kind_of(t) for t in failed)
    last = failed[-1]
    reason = last.user_attrs.get(Attr.FAIL_REASON) or STALE_REASON
    if kinds[DETERMINISTIC]:
        cause = next(t for t in failed if kind_of(t) == DETERMINISTIC)
        return "failed", f"not retried: {cause.user_attrs.get(Attr.FAIL_REASON, 'deterministic')}"
    if kinds[OWN] > max_retries:
        return "failed", f"{reason} (failed {kinds[OWN]} times; --max-retries {max_retries})"
    interruptions = sum(kinds[k] for k in (INTERRUPTED, LOST, ENVIRONMENT))
    if interruptions > MAX_INTERRUPTIONS:
        return "failed", f"{reason} (interrupted {interruptions} times)"
    return "retry", reason


def reconcile(study: Any, n_slots: int, max_retries: int) -> list[Slot]:
    """Enqueue the retry every slot without a live attempt is owed; returns those slots.

    Callers hold the study lock (cmcr.tracking.optuna_store.study_lock).
    """
    first = reopened(study)
    enqueued = []
    for slot, attempts in by_slot(study.get_trials(deepcopy=False)).items():
        if not in_scope(slot, n_slots):
            continue
        state, reason = verdict(attempts, first.get(slot, 0), max_retries)
        if state == "retry":
            enqueue_retry(study, attempts[-1], reason)
            enqueued.append(slot)
    return enqueued


def failed_slots(study: Any, n_slots: int, max_retries: int) -> list[tuple[Slot, int, str]]:
    """(slot, last trial number, reason) of every slot that failed for good."""
    first = reopened(study)
    out = []
    for slot, attempts in sorted(by_slot(study.get_trials(deepcopy=False)).items(), key=_order):
        state, reason = verdict(attempts, first.get(slot, 0), max_retries)
        if in_scope(slot, n_slots) and state == "failed":
            out.append((slot, attempts[-1].number, reason))
    return out


def reopen_failed(study: Any, n_slots: int, max_retries: int) -> list[Slot]:
    """``--retry-failed``: count the failed-for-good slots' attempts afresh from now on."""
    first = reopened(study)
    slots = failed_slots(study, n_slots, max_retries)
    for slot, last, _ in slots:
        first[slot] = last + 1
    if slots:
        study.set_user_attr(Attr.REOPENED, {str(k): v for k, v in first.items()})
    return [slot for slot, _, _ in slots]


def reopened(study: Any) -> dict[Slot, int]:
    """{slot: first attempt number counted} of slots re-opened by --retry-failed."""
    stored = study.user_attrs.get(Attr.REOPENED) or {}
    return {slot_of_tag(k): int(v) for k, v in stored.items()}


def enqueue_retry(study: Any, trial: Any, reason: str) -> None:
    """A new WAITING attempt with ``trial``'s params, slot, MLflow run ids and seed results.

    System attrs as Optuna's ``RetryFailedTrialCallback`` writes them (``failed_trial`` = the
    slot's first attempt, ``retry_history``), so its ``retried_trial_number`` works.
    """
    import optuna

    history = Attr.RETRY_HISTORY
    system_attrs = {Attr.FAILED_TRIAL: trial.number, history: [], **trial.system_attrs}
    system_attrs[history] = [*system_attrs[history], trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
    user_attrs[Attr.RETRY_REASON] = redact(reason)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )


class _RetriesSupersede:
    """The study as a pruner should see it: attempts named in a retry's history left out."""

    def __init__(self, study: Any) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, *args: Any, **kwargs: Any) -> list[Any]:
        trials = self._study.get_trials(*args, **kwargs)
        gone = {n for t in trials for n in t.system_attrs.get(Attr.RETRY_HISTORY, ())}
        return [t for t in trials if t.number not in gone] if gone else trials


@functools.cache
def _retry_aware_halving() -> type:
    import optuna

    class RetryAwareSuccessiveHalving(optuna.pruners.SuccessiveHalvingPruner):
        """Optuna's ASHA, with an attempt that a retry superseded not counted at any rung."""

        def prune(self, study: Any, trial: Any) -> bool:
            return super().prune(_RetriesSupersede(study), trial)

    return RetryAwareSuccessiveHalving


def successive_halving(min_resource: int, reduction_factor: int) -> Any:
    """Optuna's ``SuccessiveHalvingPruner`` that counts each slot once at each rung.

    The retry holds the failed attempt's ``completed_rung_*`` marks (see the module's
    docstring); the failed attempt's own copy would count the configuration a second time.
    """
    return _retry_aware_halving()(min_resource=min_resource, reduction_factor=reduction_factor)
