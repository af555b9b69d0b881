"""The sweep objective: a trial's params → configs → ``run_trial`` per seed → mean val mIoU.

MLflow layout (docs/architecture.md): one child run per (trial, seed) under the study's
parent run, tagged ``optuna.study``, ``optuna.trial`` and ``cmcr.seed``; with ``--seeds 1``
that is exactly one child run per trial. The child run is created here before training
starts, so its id is a trial user attr (``mlflow_run_id``; all seeds in ``mlflow_run_ids``)
even if the worker is killed, and a retry continues the SAME run from its last checkpoint.
Seeds already finished by an earlier attempt (``seed_results``) are not run again.

Multi-process trials (``accelerate launch``/``torchrun``): rank 0 runs this and announces each
seed to the other ranks just before calling the trial function (``cmcr.sweep.group``).

Pruning: ``report(step, value)`` of the first seed becomes ``trial.report`` /
``should_prune`` → ``TrialPruned``. With ``sweep.eval_every`` > 0 the values are the
representation probe's at its rungs during pre-training (resource = permille of the trial's
pre-training steps, cmcr.engine.probe), else the
downstream evaluation's epochs. Later seeds do not report: they follow the first seed's decision
(a pruned first seed ends the trial; their steps would repeat the first's, which the pruners
compare across trials).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cmcr import fence, progress
from cmcr.configs import Config
from cmcr.names import Attr, Kind, Tag
from cmcr.progress import fmt_pct
from cmcr.sweep import seeds
from cmcr.sweep.estimate import TrialClock, trial_clock
from cmcr.sweep.space import StudySpec
from cmcr.sweep.trials import stored
from cmcr.tracking.inputs import RunSpec, config_params, run_spec
from cmcr.tracking.runs import RunLogger, find_child_run
from cmcr.tracking.store import client_for, resolve_tracking_uri

TrialFn = Callable[..., Any]
_LEAKY_ENV = ("MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID")


def default_trial_fn() -> TrialFn:
    """The real objective: ``cmcr.engine.pipeline.run_trial`` (pre-train + downstream)."""
    from cmcr.engine.pipeline import run_trial  # lazy: torch and spconv load on the first trial

    return run_trial


@dataclass
class TrialContext:
    """What every trial of one sweep shares."""

    spec: StudySpec
    study_name: str
    base: Config
    seeds: int
    parent_run_id: str
    trial_fn: TrialFn | None = None  # None: the real run_trial, imported when first needed
    group: Any = None  # cmcr.sweep.group.Group on rank 0 of a multi-process launch


def suggest(trial: Any, spec: StudySpec) -> dict[str, Any]:
    """Ask the trial for every param of the space (queued/retried params come back as stored)."""
    out: dict[str, Any] = {}
    for p in spec.params:
        if p.type == "float":
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return out


def trial_config(ctx: TrialContext, params: dict[str, Any]) -> Config:
    """The base config with this trial's params applied (same dotted keys as ``--set``)."""
    return ctx.spec.config_for(ctx.base, params)


def run_objective(trial: Any, ctx: TrialContext, retry_of: int | None = None) -> float:
    """One Optuna trial: every requested seed in its own child run; returns the mean mIoU
    (an --add-seeds trial: over its configuration's every seed, cmcr.sweep.seeds).

    ``retry_of``: the number of the failed trial this one retries (tagged on its runs).
    """
    cfg = trial_config(ctx, suggest(trial, ctx.spec))
    results: dict[str, float] = dict(trial.user_attrs.get(Attr.SEED_RESULTS, {}))
    # seeds added to a finished configuration (--add-seeds) are never pruned: it is complete
    prunable = not seeds.is_added(trial)
    todo = [s for s in seeds.trial_seeds(trial, ctx.seeds) if str(s) not in results]
    clock = trial_clock(cfg, len(todo))  # the trial's ETA over every phase and seed left
    for index, seed in enumerate(seeds.trial_seeds(trial, ctx.seeds)):
        if str(seed) in results:
            continue  # finished by an earlier attempt of this trial
        seed_cfg = copy.deepcopy(cfg)
        seed_cfg.train.seed = seed
        run_id = _child_run(trial, ctx, seed_cfg, seed, retry_of)
        report = _pruning_report(trial) if index == 0 and prunable else None
        if ctx.trial_fn is None:
            ctx.trial_fn = default_trial_fn()
        kwargs = {"run_id": run_id, "parent_run_id": ctx.parent_run_id}
        kwargs["tags"] = _tags(trial, ctx, retry_of)
        if ctx.group is not None:  # the other ranks of the launch run this seed with us
            ctx.group.announce(seed_cfg, kwargs)
        with _isolated_env(), progress.listen(_progress_sink(trial, seed, clock)):
            out = ctx.trial_fn(seed_cfg, report=report, **kwargs)
        clock.next_seed()
        results[str(seed)] = float(out.miou)
        fence.check(f"seed {seed}'s result")
        what = f"trial {trial.number} seed {seed}'s result"
        stored(lambda: trial.set_user_attr(Attr.SEED_RESULTS, results), what)
    return seeds.objective_value(trial, results)


def _progress_sink(
    trial: Any, seed: int, clock: TrialClock | None = None
) -> Callable[[dict[str, Any]], None]:
    """The trial's progress record in the storage, where every machine's sweep view reads it
    (with the whole trial's ETA from ``clock``)."""

    def sink(record: dict[str, Any]) -> None:
        fence.check("progress")
        if clock is not None:
            record = clock.annotate(record)
        trial.set_user_attr(Attr.PROGRESS, {**record, "seed": seed})

    return sink


def _tags(trial: Any, ctx: TrialContext, retry_of: int | None) -> dict[str, str]:
    # optuna.state says RUNNING again while a retry continues a run an earlier attempt ended
    tags = {Tag.STUDY: ctx.study_name, Tag.TRIAL: str(trial.number), Tag.STATE: "RUNNING"}
    slot = trial.user_attrs.get(Attr.SLOT)
    if slot is not None:
        tags[Tag.SLOT] = str(slot)
    if retry_of is not None:
        tags[Tag.RETRY_OF] = str(retry_of)
    return tags


def _child_run(trial: Any, ctx: TrialContext, cfg: Config, seed: int, retry_of: int | None) -> str:
    """The seed's MLflow run: the one an earlier attempt made (retagged), else a new one.

    A new run is created with the seed's full config as params, so it is complete even if the
    worker dies before training starts; ``run_trial`` then takes it over and logs nothing new.
    Idempotent: a run of this (study, slot, seed) under the parent that a killed attempt made
    but never linked to its trial is found by its tags and reused, not duplicated.
    """
    run_ids: dict[str, str] = dict(trial.user_attrs.get(Attr.RUN_IDS, {}))
    tags = _tags(trial, ctx, retry_of)
    uri = resolve_tracking_uri(cfg)
    if str(seed) not in run_ids and Tag.SLOT in tags:
        key = {Tag.STUDY: ctx.study_name, Tag.SLOT: tags[Tag.SLOT], Tag.SEED: str(seed)}
        found = find_child_run(uri, cfg.tracking.experiment, ctx.parent_run_id, key)
        if found is not None:
            _link_run(trial, run_ids, seed, found)
            # a run killed before its params were written gets them now (checked equal)
            RunLogger.start(_trial_spec(cfg, ctx, tags), run_id=found)
    if str(seed) in run_ids:
        run_id = run_ids[str(seed)]
        tags[Tag.RESUMED_FROM_STEP] = str(checkpoint_step(cfg, run_id))
        RunLogger(client_for(uri), run_id, uri).set_tags(tags)
        return run_id
    logger = RunLogger.start(
        _trial_spec(cfg, ctx, tags, name=f"{ctx.study_name}-t{trial.number}-s{seed}")
    )
    _link_run(trial, run_ids, seed, logger.run_id)
    return logger.run_id


def _trial_spec(
    cfg: Config, ctx: TrialContext, tags: dict[str, str], name: str | None = None
) -> RunSpec:
    """The spec of a seed's run: params = the config run_trial will see (its monitor setting
    too); no system metrics here (run_trial starts the monitor when it takes over)."""
    quiet = copy.deepcopy(cfg)
    quiet.tracking.system_metrics = False
    return run_spec(quiet, kind=Kind.TRIAL, parent=ctx.parent_run_id, tags=tags, name=name,
                    params=config_params(cfg))  # fmt: skip


def _link_run(trial: Any, run_ids: dict[str, str], seed: int, run_id: str) -> None:
    """Store the seed's run id on the trial (``mlflow_run_ids``; seed 0 also ``mlflow_run_id``)."""
    run_ids[str(seed)] = run_id
    trial.set_user_attr(Attr.RUN_IDS, run_ids)
    if seed == 0 or Attr.RUN_ID not in trial.user_attrs:
        trial.set_user_attr(Attr.RUN_ID, run_id)


def checkpoint_step(cfg: Config, run_id: str) -> int:
    """The optimiser step of the run's newest checkpoint (0 when there is none)."""
    from cmcr.engine.checkpoint import latest_step  # lazy: the checkpoint module imports torch

    return latest_step(cfg, run_id)


def _pruning_report(trial: Any) -> Callable[..., None]:
    """``report(step, value, phase=...)`` → ``trial.report``; raise ``pruned_at(...)`` (a
    ``TrialPruned``) when the pruner says so. ``phase``: "pretrain" (step = optimiser step,
    value = rep/probe_miou) or "downstream" (step = epoch, value = val mIoU). ``resource``: what
    Optuna is told instead of ``step`` (the probe's rungs: permille of the trial's pre-training,
    so trials of different lengths compare at equal fractions); ``step`` still names where the
    run stopped. ``report.reported()``: the resources the trial holds, so a resumed probe
    reports the logged rungs it lacks."""

    def report(step: int, value: float, phase: str = "downstream", resource: int | None = None):
        trial.report(float(value), int(step if resource is None else resource))
        if trial.should_prune():
            raise pruned_at(step, value, phase)

    report.reported = lambda: set(_intermediate_values(trial))  # type: ignore[attr-defined]
    return report


def _intermediate_values(trial: Any) -> dict[int, float]:
    """The values ``trial`` has reported (a live ``Trial`` has no public getter: its record)."""
    values = getattr(trial, "intermediate_values", None)  # a FrozenTrial has them
    if values is not None:
        return dict(values)
    mine = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
    return dict(mine[0].intermediate_values) if mine else {}


def pruned_at(step: int, value: float, phase: str) -> BaseException:
    """The ``optuna.TrialPruned`` of a trial stopped at ``step`` of ``phase``; it carries
    ``step`` and ``phase`` for the trial's runs (tags cmcr.pruned_at_step / cmcr.pruned_phase)."""
    import optuna

    if phase == "pretrain":  # the representation probe (rep/probe_miou), not the objective
        where = f"pre-training step {step} (representation probe {fmt_pct(value)} %)"
    else:
        where = f"downstream epoch {step} (val mIoU {fmt_pct(value)} %)"
    exc = optuna.TrialPruned(f"pruned at {where}")
    exc.step, exc.phase = int(step), phase  # type: ignore[attr-defined]
    return exc


class _isolated_env:
    """Nothing a trial leaves in the process (MLFLOW_RUN_ID, an active fluent run, env vars
    it set) reaches the next trial: remove before, restore the environment after."""

    def __enter__(self) -> None:
        _end_fluent_runs()
        for key in _LEAKY_ENV:
            os.environ.pop(key, None)
        self._env = dict(os.environ)

    def __exit__(self, *exc: Any) -> None:
        _end_fluent_runs()
        for key in set(os.environ) - set(self._env):
            del os.environ[key]
        for key, value in self._env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _end_fluent_runs() -> None:
    """End any run the fluent mlflow API left active (only if mlflow is already imported)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()
