"""The sweep worker loop: claim a queued trial, run it, record its outcome, repeat.

Split from cmcr.sweep.runner (setup and summary): this is what every worker process runs,
spawned (``--workers K``), on another machine, or rank 0 of a launch. Optuna's record of a
trial comes first; its MLflow runs are then tagged and ended through the tracking facade
(cmcr.engine.tracking), best effort.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from cmcr.names import Attr
from cmcr.sweep.objective import TrialContext, TrialFn, run_objective
from cmcr.sweep.storage import quiet_experimental
from cmcr.sweep.trials import (
    Heartbeat,
    RetryKeepingRun,
    claim_next,
    retried_trial,
    worker_id,
)
from cmcr.uris import redact

log = logging.getLogger("cmcr.sweep")


def work(
    plan: Any, study: Any, parent: str, trial_fn: TrialFn | None = None, group: Any = None
) -> int:
    """The worker loop: claim queued trials until none is left; returns trials finished here.

    ``plan``: a ``cmcr.sweep.runner.Plan``. ``group``: rank 0's view of a multi-process launch
    (``cmcr.sweep.group``); the other ranks run each trial with this process and only this one
    talks to Optuna and MLflow.
    """
    import optuna

    ctx = TrialContext(
        plan.spec, plan.study_name, plan.base, plan.opts.seeds, parent, trial_fn, group
    )
    retry = RetryKeepingRun(plan.opts.max_retries)
    finished = 0
    while True:
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial is retried here
        trial_id = claim_next(study)
        if trial_id is None:
            return finished
        trial = optuna.Trial(study, trial_id)
        trial.set_user_attr(Attr.WORKER, worker_id())
        retry_of = retried_trial(study, trial_id)
        with Heartbeat(study, trial_id):
            _run_and_tell(study, trial, ctx, retry, retry_of)
        finished += 1


def _run_and_tell(
    study: Any, trial: Any, ctx: TrialContext, retry: RetryKeepingRun, retry_of: int | None
) -> None:
    """Run one trial and record its outcome; failures are retried, divergence is not."""
    import optuna
    from optuna.trial import TrialState

    try:
        value = run_objective(trial, ctx, retry_of)
    except optuna.TrialPruned as exc:
        reason = f"pruned by optuna: {_first_line(exc)}"
        _mark_runs(trial, ctx, "KILLED", reason, "PRUNED")
        study.tell(trial, state=TrialState.PRUNED)
        log.info(f"trial {trial.number} pruned: {_first_line(exc)}")
        return
    except KeyboardInterrupt:
        if ctx.group is not None:
            ctx.group.broken = True
        _fail(study, trial, ctx, "interrupted (KeyboardInterrupt)", retry)
        raise
    except Exception as exc:
        if _is_diverged(exc):  # deterministic: a retry would diverge too
            _fail(study, trial, ctx, f"diverged: {_first_line(exc)}", None)
            return
        # anything else is retried up to --max-retries
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        _fail(study, trial, ctx, reason, retry)
        if ctx.group is not None:  # the other ranks may be inside a collective: end the launch
            from cmcr.sweep.group import GroupBroken

            ctx.group.broken = True
            raise GroupBroken(
                f"trial {trial.number} failed on rank 0 ({reason}); its retry is queued. "
                "Ending this launch so that no rank waits forever; start it again to resume"
            ) from exc
        return
    if not math.isfinite(value):
        _fail(study, trial, ctx, f"objective is {value}", None)
        return
    _mark_runs(trial, ctx, None, None, "COMPLETE")
    study.tell(trial, value)
    log.info(f"trial {trial.number} complete: val mIoU {value:.4f}")


def _is_diverged(exc: BaseException) -> bool:
    """The trainer's TrainingDiverged (looked up only if the trainer was imported: importing
    it here would load torch in workers that never train)."""
    train = sys.modules.get("cmcr.engine.train")
    return train is not None and isinstance(exc, train.TrainingDiverged)


def _first_line(exc: BaseException) -> str:
    """The exception's first line, redacted: it becomes a stored reason, a tag and a log line."""
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else "(no message)"


def _fail(
    study: Any, trial: Any, ctx: TrialContext, reason: str, retry: RetryKeepingRun | None
) -> None:
    """Record ``fail_reason``, end the trial FAIL, end its runs FAILED, maybe enqueue a retry."""
    from optuna.trial import TrialState

    trial.set_user_attr(Attr.FAIL_REASON, redact(reason))
    _mark_runs(trial, ctx, "FAILED", reason, "FAIL")
    frozen = study.tell(trial, state=TrialState.FAIL)
    retried = retry is not None and retry(study, frozen, reason=reason)
    log.warning(f"trial {trial.number} failed ({reason}){'; retrying' if retried else ''}")


def _mark_runs(*args: Any) -> None:
    """Best effort: Optuna's record of the trial must not depend on MLflow being reachable."""
    try:
        _mark_runs_now(*args)
    except Exception as exc:
        log.warning(
            redact(f"could not update the trial's MLflow runs: {type(exc).__name__}: {exc}")
        )


def _mark_runs_now(
    trial: Any, ctx: TrialContext, status: str | None, reason: str | None, state: str
) -> None:
    """Tag the trial's child runs with the Optuna state; end any the trainer left RUNNING."""
    from cmcr.engine.tracking import mark_state, resolve_tracking_uri

    uri = resolve_tracking_uri(ctx.base)
    for run_id in trial.user_attrs.get(Attr.RUN_IDS, {}).values():
        mark_state(uri, run_id, state, status, reason)
