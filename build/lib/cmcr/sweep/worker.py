"""The sweep worker loop: claim a queued trial, run it, record its outcome, repeat.

Split from cmcr.sweep.runner (setup and summary): this is what every worker process runs,
spawned (``--workers K``), on another machine, or rank 0 of a launch. Optuna's record of a
trial comes first; its MLflow runs are then tagged and ended through the tracking facade
(cmcr.tracking.runs), best effort. Each failure is recorded with its kind and the retry it
is owed comes from ``runner.heal`` (cmcr.sweep.recovery), before the next claim.

A worker whose queue is empty does not leave while another trial is RUNNING: it waits out the
heartbeat grace period, so a trial whose worker died (its heartbeat goes stale) is failed and
retried here rather than left RUNNING until someone starts the sweep again.
"""

from __future__ import annotations

import errno
import logging
import math
import sys
import time
from typing import Any

from cmcr import fence
from cmcr.adapters import optuna_storage
from cmcr.engine import stop
from cmcr.errors import CMCRError, Unavailable, first_line
from cmcr.names import Attr, Tag
from cmcr.progress import fmt_pct
from cmcr.sweep import parent as parent_runs
from cmcr.sweep import recovery, runner
from cmcr.sweep.group import GroupBroken
from cmcr.sweep.launcher import Launcher, LocalLauncher
from cmcr.sweep.objective import TrialContext, TrialFn, run_objective
from cmcr.sweep.trials import (
    NO_RETRY_SPENT,
    Heartbeat,
    claim_next,
    is_storage_error,
    queued,
    retried_trial,
    stored,
    worker_id,
)
from cmcr.uris import redact

log = logging.getLogger("cmcr.sweep")
# errors that say the machine, not the trial, is broken: retrying at once would burn retries
_ENV_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_ENV_TEXT = (
    "database or disk is full",
    "no space left on device",
    "connection refused",
    "database is locked",  # SQLite busy past its timeout: another process, not the trial
    "server closed the connection",
    "could not connect to server",
)


class WorkerStopped(Unavailable):
    """The environment broke under a trial (disk full, tracking server down): stop, re-queued
    (exit UNAVAILABLE_EXIT)."""


def work(
    plan: Any,
    study: Any,
    parent: str,
    trial_fn: TrialFn | None = None,
    group: Any = None,
    launcher: Launcher | None = None,
) -> int:
    """The worker loop: claim queued trials until none is left; returns trials finished here.

    ``plan``: a ``cmcr.sweep.runner.Plan``. ``group``: rank 0's view of a multi-process launch
    (``cmcr.sweep.group``); the other ranks run each trial with this process and only this one
    talks to Optuna and MLflow. ``launcher``: who started this worker (cmcr.sweep.launcher;
    default local, a SLURM job's is cmcr.sweep.slurm_job.worker_launcher's).
    """
    import optuna  # lazy: optuna takes ~0.3 s, not needed by --help

    launcher = launcher or LocalLauncher()
    ctx = TrialContext(
        plan.spec, plan.study_name, plan.base, plan.opts.seeds, parent, trial_fn, group
    )
    finished, idle_since = 0, None
    while True:
        launcher.before_claim(plan, study)
        runner.heal(plan, study)  # a dead worker's trial is failed and its retry queued here
        trial_id = claim_next(study)
        if trial_id is None:
            idle_since = idle_since or time.monotonic()
            if not _wait_for_lost(study, plan.opts.heartbeat_s, idle_since):
                launcher.finished(plan, study, parent)
                return finished
            continue
        idle_since = None
        try:
            trial = optuna.Trial(study, trial_id)
            trial.set_user_attr(Attr.WORKER, worker_id())
            launcher.claimed(trial)
            retry_of = retried_trial(study, trial_id)
            with Heartbeat(study, trial_id) as beat, fence.hold(trial.number, beat.owned):
                heal = lambda: runner.heal(plan, study)  # noqa: E731 - the retry, after a failure
                _run_and_tell(study, trial, ctx, heal, retry_of, launcher)
        except KeyboardInterrupt:  # also between the claim and the trial's own handler
            _release(plan, study, trial_id)
            raise
        finished += 1


_IDLE_POLL_S = 1.0


def _release(plan: Any, study: Any, trial_id: int) -> None:
    """After Ctrl-C/SIGTERM: the claimed trial, if still RUNNING (interrupted before its own
    handler ran), is failed as interrupted and its retry queued (no retry spent)."""
    number = optuna_storage.storage_of(study).get_trial(trial_id).number
    if recovery.fail_running(
        study, number, recovery.INTERRUPTED, "interrupted (KeyboardInterrupt)"
    ):
        runner.heal(plan, study)


def _wait_for_lost(study: Any, heartbeat_s: int, idle_since: float) -> bool:
    """With an empty queue: wait a moment and return True while some trial is RUNNING and the
    grace period (3 heartbeats, plus one to see it) has not passed since we idled.

    Polls every second, not every heartbeat: a trial re-queued by another process (the parent
    of --workers, a --resume) is claimed at once instead of after up to a heartbeat of sleep."""
    from optuna.trial import TrialState  # lazy: as in work

    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return False
    if time.monotonic() - idle_since > 4 * heartbeat_s + 1:
        return False  # whoever holds them is alive: its heartbeat is fresh
    time.sleep(min(heartbeat_s, _IDLE_POLL_S))
    return True


def _run_and_tell(
    study: Any,
    trial: Any,
    ctx: TrialContext,
    requeue: Any,
    retry_of: int | None,
    launcher: Launcher,
) -> None:
    """Run one trial and record its outcome with the kind of failure; ``requeue`` heals."""
    import optuna  # lazy: as in work

    try:
        value = run_objective(trial, ctx, retry_of)
    except fence.Fenced as exc:
        _fenced(trial, ctx, exc)
        return
    except optuna.TrialPruned as exc:
        _pruned(study, trial, ctx, exc)
        return
    except stop.Stopped as exc:  # the scheduler's warning: checkpointed, retry, requeue
        if not _still_owned(trial, ctx):
            raise launcher.leave(f"trial {trial.number} {exc}") from None
        if ctx.group is not None:
            ctx.group.broken = True
        _fail(study, trial, ctx, recovery.INTERRUPTED, f"preempted: {exc}", requeue)
        raise launcher.leave(f"trial {trial.number} {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the CLI's handler
        if ctx.group is not None:
            ctx.group.broken = True
        _fail(study, trial, ctx, recovery.INTERRUPTED, "interrupted (KeyboardInterrupt)", requeue)
        raise
    except Exception as exc:
        _raised(study, trial, ctx, exc, requeue)
        return
    if not _still_owned(trial, ctx):
        return
    if not math.isfinite(value):
        _fail(study, trial, ctx, recovery.DETERMINISTIC, f"objective is {value}", requeue)
        return
    parent_runs.runs_complete(ctx.base, trial)
    stored(lambda: _tell_complete(study, trial, value), f"trial {trial.number}'s value")
    log.info(f"trial {trial.number} complete: val mIoU {fmt_pct(value)} %")


def _tell_complete(study: Any, trial: Any, value: float) -> None:
    """Tell Optuna the value, once: a try whose commit went through before it failed has
    made the trial COMPLETE already."""
    from optuna.trial import TrialState  # lazy: as in work

    storage = optuna_storage.storage_of(study)
    if storage.get_trial(optuna_storage.trial_id(study, trial.number)).state == TrialState.COMPLETE:
        return
    study.tell(trial, value)


def _pruned(study: Any, trial: Any, ctx: TrialContext, exc: BaseException) -> None:
    """The pruner stopped the trial: its runs are tagged with where, the trial PRUNED."""
    from optuna.trial import TrialState  # lazy: as in work

    if not _still_owned(trial, ctx):
        return
    reason = f"pruned by optuna: {_first_line(exc)}"
    where = {}
    if hasattr(exc, "step"):  # cmcr.sweep.objective.pruned_at: the step and the phase
        where = {Tag.PRUNED_AT_STEP: str(exc.step), Tag.PRUNED_PHASE: str(exc.phase)}
    parent_runs.runs_pruned(ctx.base, trial, reason, where)
    study.tell(trial, state=TrialState.PRUNED)
    log.info(f"trial {trial.number} pruned: {_first_line(exc)}")


def _raised(study: Any, trial: Any, ctx: TrialContext, exc: Exception, requeue: Any) -> None:
    """The trial raised: fail it with the kind of the failure (its retry is queued); the
    environment's failures stop this worker, rank 0's end a multi-process launch."""
    if not _still_owned(trial, ctx):
        return  # what broke is an attempt that lost its trial to a retry: not a failure
    kind = fault_kind(exc)
    reason = f"{type(exc).__name__}: {_first_line(exc)}"
    if kind == recovery.DETERMINISTIC and _is_diverged(exc):
        reason = f"diverged: {_first_line(exc)}"
    _fail(study, trial, ctx, kind, reason, requeue)
    if kind == recovery.ENVIRONMENT:
        if ctx.group is not None:
            ctx.group.broken = True
        raise WorkerStopped(
            f"trial {trial.number} stopped by its environment ({reason}); it is queued "
            "again without spending a retry: fix the cause and start the sweep again"
        ) from None
    if ctx.group is not None and not _is_diverged(exc):
        # the other ranks may be inside a collective: end the launch
        ctx.group.broken = True
        raise GroupBroken(
            f"trial {trial.number} failed on rank 0 ({reason}); its retry is queued. "
            "Ending this launch so that no rank waits forever; start it again to resume"
        ) from exc


def _still_owned(trial: Any, ctx: TrialContext) -> bool:
    """Whether this attempt still owns its trial (cmcr.fence); if not, says so and records
    nothing: the trial, its runs and its retry belong to the attempt that took over."""
    try:
        fence.check(f"the outcome of trial {trial.number}")
    except fence.Fenced as exc:
        _fenced(trial, ctx, exc)
        return False
    return True


def _fenced(trial: Any, ctx: TrialContext, exc: fence.Fenced) -> None:
    """The attempt lost its trial while it was paused (failed as lost, retried elsewhere)."""
    log.warning(f"trial {trial.number}: {exc}; its retry carries on, this worker moves on")
    if ctx.group is not None:  # the other ranks wait in this attempt's collectives
        ctx.group.broken = True
        raise GroupBroken(f"trial {trial.number} was taken over by its retry ({exc})")


def fault_kind(exc: BaseException) -> str:
    """Whose fault an exception of a trial is: ``environment`` (disk full, tracking server
    unreachable), ``deterministic`` (divergence, bad input: a retry fails the same way) or
    ``own`` (anything else: worth a retry)."""
    if _is_environment(exc):
        return recovery.ENVIRONMENT
    if _is_diverged(exc) or isinstance(exc, CMCRError):
        return recovery.DETERMINISTIC
    return recovery.OWN


def _is_environment(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT or a refused/failed connection anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ENV_ERRNOS:
            return True
        if isinstance(current, ConnectionError) or _is_connection_error(current):
            return True
        if any(text in str(current).lower() for text in _ENV_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_connection_error(exc: BaseException) -> bool:
    """requests' ConnectionError/Timeout (what MLflow's REST client raises), SQLAlchemy's
    OperationalError/DisconnectionError and Optuna's StorageInternalError (the database lost,
    busy or locked), or MLflow's wrapper of them ("API request to ... failed with exception"),
    without importing any of them."""
    requests = sys.modules.get("requests")
    if requests is not None and isinstance(
        exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    ):
        return True
    if is_storage_error(exc):  # a lost, busy or locked database
        return True
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    return (
        mlflow_exceptions is not None
        and isinstance(exc, mlflow_exceptions.MlflowException)
        and "API request to" in str(exc)
        and ("failed with exception" in str(exc) or "failed with timeout" in str(exc))
    )


def _is_diverged(exc: BaseException) -> bool:
    """The trainer's TrainingDiverged (looked up only if the trainer was imported: importing
    it here would load torch in workers that never train)."""
    train = sys.modules.get("cmcr.engine.train")
    return train is not None and isinstance(exc, train.TrainingDiverged)


def _first_line(exc: BaseException) -> str:
    """The exception's first line, redacted: it becomes a stored reason, a tag and a log line."""
    return redact(first_line(exc, empty="(no message)"))


def _fail(study: Any, trial: Any, ctx: TrialContext, kind: str, reason: str, requeue: Any) -> None:
    """Record the kind and reason, end the trial FAIL and its runs FAILED, heal (the retry).

    Best effort past the kind: with the disk full or the storage gone, the trial stays
    RUNNING under this (soon dead) process and the next start fails it as lost.
    """
    from optuna.trial import TrialState  # lazy: as in work

    if fence.token() == trial.number and not _still_owned(trial, ctx):
        return  # e.g. Ctrl-C after a pause: the trial and its runs are the retry's
    try:
        trial.set_user_attr(Attr.FAIL_KIND, kind)
        trial.set_user_attr(Attr.FAIL_REASON, redact(reason))
        parent_runs.runs_failed(ctx.base, trial, reason)
        study.tell(trial, state=TrialState.FAIL)
        before = queued(study)
        requeue()
        retried = queued(study) > before
    except Exception as exc:
        log.warning(redact(f"trial {trial.number}: could not record the failure: {exc}"))
        return
    if kind in NO_RETRY_SPENT:  # not the trial's failure: no retry is spent
        again = "; queued again (no retry spent)" if retried else ""
        log.warning(f"trial {trial.number} interrupted ({reason}){again}")
    else:
        log.warning(f"trial {trial.number} failed ({reason}){'; retrying' if retried else ''}")
