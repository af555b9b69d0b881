"""Sweep orchestration: validate → storage → study + parent run + trial queue → workers.

Order matters: everything that can be wrong with the input (study file, space bounds, config
overrides, storage URL and reachability) is checked before the storage is written, so bad
input leaves no study behind. Setup runs under a study lock, so several processes started
at once (on one machine with SQLite, or several with PostgreSQL) create one study, one parent
run and exactly ``n_trials`` queued trials.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cmcr.configs import Config, load_config, parse_override
from cmcr.errors import CMCRError
from cmcr.sweep.objective import RUN_IDS_ATTR, TrialContext, TrialFn, mlflow_client, run_objective
from cmcr.sweep.space import StudyError, StudySpec, check_space, load_study, searched_keys
from cmcr.sweep.storage import open_storage, quiet_experimental, redact, study_lock
from cmcr.sweep.trials import (
    FAIL_REASON_ATTR,
    WORKER_ATTR,
    Heartbeat,
    RetryKeepingRun,
    claim_next,
    enqueue_slots,
    fail_dead_running,
    worker_id,
)

log = logging.getLogger("cmcr.sweep")
PARENT_ATTR = "mlflow_parent_run_id"
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("probe", "finetune")
# overrides that describe the machine, not the experiment: may differ between workers/re-runs
_LOCAL_KEYS = ("tracking.", "data.dataroot", "data.num_workers")


@dataclass
class SweepOptions:
    """Everything the CLI decides (see ``python sweeps/run.py --help``)."""

    study: str
    storage: str
    n_trials: int | None = None
    workers: int = 1
    preset: str | None = None
    seeds: int = 1
    resume: bool = False
    max_retries: int = 2
    pruner: str = "median"
    objective: str = "probe"
    overrides: list[str] = field(default_factory=list)
    tracking_uri: str | None = None
    name: str | None = None
    heartbeat_s: int = 10


@dataclass
class Plan:
    """A validated sweep: the study, its base config and the numbers, ready to touch storage."""

    opts: SweepOptions
    spec: StudySpec
    base: Config
    study_name: str
    n_trials: int
    fixed: dict[str, Any]

    def compat_attrs(self) -> dict[str, Any]:
        """What a re-run (or another worker) must agree on to share the stored study."""
        fixed = {k: v for k, v in self.fixed.items() if not k.startswith(_LOCAL_KEYS)}
        return {
            "cmcr.definition": self.spec.to_dict(),
            "cmcr.preset": self.base.preset,
            "cmcr.objective": self.opts.objective,
            "cmcr.seeds": self.opts.seeds,
            "cmcr.overrides": {k: fixed[k] for k in sorted(fixed)},
        }


def plan_sweep(opts: SweepOptions) -> Plan:
    """Check every input without touching storage; raises CMCRError with one clear line."""
    for name, value, low in (("--seeds", opts.seeds, 1), ("--workers", opts.workers, 1)):
        if value < low:
            raise StudyError(f"{name}: expected an integer >= {low}, got {value}")
    if opts.max_retries < 0:
        raise StudyError(f"--max-retries: expected an integer >= 0, got {opts.max_retries}")
    if opts.pruner not in PRUNERS:
        raise StudyError(f"--pruner: expected one of {PRUNERS}, got {opts.pruner!r}")
    if opts.objective not in OBJECTIVES:
        raise StudyError(f"--objective: expected one of {OBJECTIVES}, got {opts.objective!r}")
    spec = load_study(opts.study)
    fixed = dict(spec.fixed)
    fixed.update(parse_override(o) for o in opts.overrides)
    clash = sorted(set(fixed) & searched_keys(spec))
    if clash:
        raise StudyError(
            f"--set/fixed {clash}: searched by study '{spec.name}'; drop them or edit the study"
        )
    fixed["downstream.mode"] = opts.objective
    if opts.tracking_uri:
        fixed["tracking.tracking_uri"] = opts.tracking_uri
    base = load_config(opts.preset or spec.preset or "demo", fixed)
    check_space(spec, base)
    n_trials = opts.n_trials if opts.n_trials is not None else spec.default_n_trials()
    if n_trials < 1:
        raise StudyError(f"--n-trials: expected an integer >= 1, got {n_trials}")
    if spec.is_grid and n_trials > len(spec.grid_cells()):
        raise StudyError(
            f"--n-trials {n_trials}: study '{spec.name}' is a grid of {len(spec.grid_cells())} cells"
        )
    return Plan(opts, spec, base, opts.name or spec.name, n_trials, fixed)


def make_sampler(spec: StudySpec) -> Any:
    """The study's sampler (TPE with constant liar, so parallel workers spread out)."""
    import optuna

    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid_space(), seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, constant_liar=True)


def make_pruner(kind: str, base: Config) -> Any:
    """median, hyperband (resource = downstream epochs) or none."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if kind == "hyperband":
        d = base.downstream
        epochs = d.probe_epochs if d.mode == "probe" else d.finetune_epochs
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def connect(plan: Plan, *, create: bool = True) -> Any:
    """The storage with heartbeat and the retry callback (StorageError if unreachable)."""
    retry = RetryKeepingRun(plan.opts.max_retries)
    return open_storage(
        plan.opts.storage, heartbeat_s=plan.opts.heartbeat_s, retry_callback=retry, create=create
    )


def load(plan: Plan, storage: Any) -> Any:
    """The existing study, with this process's sampler and pruner."""
    import optuna

    try:
        return optuna.load_study(
            study_name=plan.study_name,
            storage=storage,
            sampler=make_sampler(plan.spec),
            pruner=make_pruner(plan.opts.pruner, plan.base),
        )
    except KeyError:
        raise StudyError(f"no study '{plan.study_name}' in {redact(plan.opts.storage)}") from None


def setup(plan: Plan, storage: Any) -> tuple[Any, str]:
    """Create or load the study, its parent run and the trial queue; returns (study, parent)."""
    import optuna

    with study_lock(storage, plan.opts.storage, plan.study_name):
        names = {
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        }
        if plan.study_name in names:
            study = load(plan, storage)
            check_compatible(plan, study)
        else:
            study = optuna.create_study(
                study_name=plan.study_name,
                storage=storage,
                sampler=make_sampler(plan.spec),
                pruner=make_pruner(plan.opts.pruner, plan.base),
                direction=plan.spec.direction,
            )
            for key, value in plan.compat_attrs().items():
                study.set_user_attr(key, value)
        parent = _parent_run(plan, study)
        cells = plan.spec.grid_cells() if plan.spec.is_grid else None
        added = enqueue_slots(study, cells, plan.n_trials)
        study.set_user_attr(
            "cmcr.n_trials", max(plan.n_trials, study.user_attrs.get("cmcr.n_trials", 0))
        )
    if added:
        log.info(f"queued {added} trial(s) of study '{plan.study_name}'")
    return study, parent


def check_compatible(plan: Plan, study: Any) -> None:
    """A stored study may be continued only with the same definition and settings."""
    stored = study.user_attrs
    if "cmcr.definition" not in stored:
        raise StudyError(
            f"study '{plan.study_name}' in {redact(plan.opts.storage)} was not made by "
            "sweeps/run.py; choose another --name"
        )
    for key, value in plan.compat_attrs().items():
        if _jsonish(stored.get(key)) != _jsonish(value):
            raise StudyError(
                f"study '{plan.study_name}' in {redact(plan.opts.storage)} was created with a "
                f"different {key.removeprefix('cmcr.')} ({stored.get(key)!r}, now {value!r}); "
                "re-run with the same settings or choose another --name"
            )


def _jsonish(value: Any) -> Any:
    """Compare as stored (JSON round trip: tuples become lists, int keys strings)."""
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _tracking_cfg(plan: Plan) -> Config:
    cfg = copy.deepcopy(plan.base)
    cfg.tracking.system_metrics = False  # the parent run does no work worth monitoring
    return cfg


def _parent_run(plan: Plan, study: Any) -> str:
    """The study's MLflow parent run: linked in the study's user attrs, else found by tag,
    else created. Marked RUNNING while workers run."""
    from cmcr.engine.tracking import RunLogger, get_or_create_experiment, resolve_tracking_uri

    cfg = _tracking_cfg(plan)
    uri = resolve_tracking_uri(cfg)
    client = mlflow_client(uri)
    tags = {
        "optuna.study": plan.study_name,
        "optuna.storage": redact(plan.opts.storage),
        "optuna.direction": plan.spec.direction,
        "optuna.sampler": plan.spec.sampler,
        "cmcr.n_trials": str(plan.n_trials),
    }
    parent = study.user_attrs.get(PARENT_ATTR) or _find_parent(client, cfg, uri, tags)
    if parent is None:
        logger = RunLogger.start(cfg, kind="study", tags=tags, run_name=plan.study_name)
        logger.log_text(_yaml(plan.spec.to_dict()), "study.yaml")
        parent = logger.run_id
    else:
        get_or_create_experiment(client, cfg.tracking.experiment, uri)
        client.update_run(parent, status="RUNNING")
        RunLogger(client, parent, uri).set_tags({"cmcr.n_trials": str(plan.n_trials)})
    study.set_user_attr(PARENT_ATTR, parent)
    return parent


def _find_parent(client: Any, cfg: Config, uri: str, tags: dict[str, str]) -> str | None:
    from cmcr.engine.tracking import get_or_create_experiment

    exp = get_or_create_experiment(client, cfg.tracking.experiment, uri)
    query = (
        f"tags.`cmcr.kind` = 'study' and tags.`optuna.study` = '{tags['optuna.study']}' "
        f"and tags.`optuna.storage` = '{tags['optuna.storage']}'"
    )
    runs = client.search_runs(
        [exp], filter_string=query, max_results=1, order_by=["start_time ASC"]
    )
    return runs[0].info.run_id if runs else None


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def resume(plan: Plan, study: Any) -> list[int]:
    """``--resume``: fail and retry the RUNNING trials whose worker died on this host."""
    return fail_dead_running(study, RetryKeepingRun(plan.opts.max_retries))


def work(
    plan: Plan, study: Any, parent: str, trial_fn: TrialFn | None = None, group: Any = None
) -> int:
    """The worker loop: claim queued trials until none is left; returns trials finished here.

    ``group``: rank 0's view of a multi-process launch (``cmcr.sweep.group``); the other ranks
    run each trial with this process and only this one talks to Optuna and MLflow.
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
        trial.set_user_attr(WORKER_ATTR, worker_id())
        retry_of = study._storage.get_trial_system_attrs(trial_id).get("failed_trial")
        with Heartbeat(study._storage, trial_id):
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
        _mark_runs(trial, ctx, "KILLED", f"pruned by optuna: {exc}", "PRUNED")
        study.tell(trial, state=TrialState.PRUNED)
        log.info(f"trial {trial.number} pruned: {exc}")
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
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _fail(
    study: Any, trial: Any, ctx: TrialContext, reason: str, retry: RetryKeepingRun | None
) -> None:
    """Record ``fail_reason``, end the trial FAIL, end its runs FAILED, maybe enqueue a retry."""
    from optuna.trial import TrialState

    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    _mark_runs(trial, ctx, "FAILED", reason, "FAIL")
    frozen = study.tell(trial, state=TrialState.FAIL)
    retried = retry is not None and retry(study, frozen, reason=reason)
    log.warning(f"trial {trial.number} failed ({reason}){'; retrying' if retried else ''}")


def _mark_runs(*args: Any) -> None:
    """Best effort: Optuna's record of the trial must not depend on MLflow being reachable."""
    try:
        _mark_runs_now(*args)
    except Exception as exc:
        log.warning(f"could not update the trial's MLflow runs: {type(exc).__name__}: {exc}")


def _mark_runs_now(
    trial: Any, ctx: TrialContext, status: str | None, reason: str | None, state: str
) -> None:
    """Tag the trial's child runs with the Optuna state; end any the trainer left RUNNING."""
    from cmcr.engine.tracking import resolve_tracking_uri

    run_ids = trial.user_attrs.get(RUN_IDS_ATTR, {})
    if not run_ids:
        return
    client = mlflow_client(resolve_tracking_uri(ctx.base))
    for run_id in run_ids.values():
        client.set_tag(run_id, "optuna.state", state)
        if status is None:
            continue
        if reason:
            client.set_tag(run_id, "cmcr.status_reason", redact(reason)[:5000])
        current = client.get_run(run_id).info.status
        # a finished seed stays FINISHED; the failing/pruned one is ended with the right status
        if current == "RUNNING" or (current == "FAILED" and status != "FAILED"):
            client.set_terminated(run_id, status=status)


def _set_tag_shared(client: Any, run_id: str, key: str, value: str, attempts: int = 5) -> None:
    """Set a tag that several workers may write at the same moment.

    MLflow's SQL store upserts a tag as select-then-insert, so two workers finishing together
    can both insert and one gets a unique-key violation; the retry finds the row and updates it.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_tag(run_id, key, value)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def finish(plan: Plan, study: Any, parent: str) -> dict[str, Any]:
    """Summarise; end the parent run FINISHED once no trial is queued or running anywhere."""
    from optuna.trial import TrialState

    from cmcr.engine.tracking import resolve_tracking_uri
    from cmcr.sweep.trials import count_states

    trials = study.get_trials(deepcopy=False)
    counts = count_states(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": plan.study_name, "parent_run_id": parent, **counts}
    client = mlflow_client(resolve_tracking_uri(plan.base))
    if complete:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params)
        client.log_metric(parent, "study/best_value", best.value, step=len(complete))
        _set_tag_shared(client, parent, "optuna.best_trial", str(best.number))
        _set_tag_shared(
            client, parent, "optuna.best_run_id", str(best.user_attrs.get("mlflow_run_id"))
        )
    pending = counts.get("WAITING", 0) + counts.get("RUNNING", 0)
    summary["done"] = pending == 0
    if pending == 0:
        client.set_terminated(parent, status="FINISHED")
    return summary


def ensure_error(exc: BaseException) -> CMCRError:
    """Optuna/SQLAlchemy errors during setup as one clear line."""
    if isinstance(exc, CMCRError):
        return exc
    return StudyError(f"{type(exc).__name__}: {_first_line(exc)}")
