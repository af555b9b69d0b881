"""Sweep orchestration: validate → storage → study + parent run + trial queue → workers.

Order matters: everything that can be wrong with the input (study file, space bounds, config
overrides, storage URL and reachability) is checked before the storage is written, so bad
input leaves no study behind. Setup runs under a study lock, so several processes started
at once (on one machine with SQLite, or several with PostgreSQL) create one study, one parent
run and exactly ``n_trials`` queued trials. The workers' loop is cmcr.sweep.worker; the
options are declared in cmcr.sweep.options.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from cmcr.configs import Config, load_config, parse_override
from cmcr.errors import CMCRError
from cmcr.names import Attr, Kind, Metric, Tag, is_local_key
from cmcr.sweep.options import OBJECTIVES, PRUNERS, SweepOptions
from cmcr.sweep.space import StudyError, StudySpec, check_space, load_study, searched_keys
from cmcr.sweep.storage import open_storage, study_lock
from cmcr.sweep.trials import RetryKeepingRun, enqueue_slots, fail_dead_running
from cmcr.uris import redact

log = logging.getLogger("cmcr.sweep")


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
        fixed = {k: v for k, v in self.fixed.items() if not is_local_key(k)}
        return {
            Attr.DEFINITION: self.spec.to_dict(),
            Attr.PRESET: self.base.preset,
            Attr.OBJECTIVE: self.opts.objective,
            Attr.SEEDS: self.opts.seeds,
            Attr.OVERRIDES: {k: fixed[k] for k in sorted(fixed)},
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
            Attr.N_TRIALS, max(plan.n_trials, study.user_attrs.get(Attr.N_TRIALS, 0))
        )
    if added:
        log.info(f"queued {added} trial(s) of study '{plan.study_name}'")
    return study, parent


def check_compatible(plan: Plan, study: Any) -> None:
    """A stored study may be continued only with the same definition and settings."""
    stored = study.user_attrs
    if Attr.DEFINITION not in stored:
        raise StudyError(
            f"study '{plan.study_name}' in {redact(plan.opts.storage)} was not made by "
            "sweeps/run.py; choose another --name"
        )
    for key, value in plan.compat_attrs().items():
        if _jsonish(stored.get(key)) != _jsonish(value):
            raise StudyError(
                f"study '{plan.study_name}' in {redact(plan.opts.storage)} was created with a "
                f"different {key.split('.')[-1]} ({stored.get(key)!r}, now {value!r}); "
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
    from cmcr.engine.tracking import (
        RunLogger,
        client_for,
        get_or_create_experiment,
        reopen,
        resolve_tracking_uri,
    )

    cfg = _tracking_cfg(plan)
    uri = resolve_tracking_uri(cfg)
    tags = {
        Tag.STUDY: plan.study_name,
        Tag.STORAGE: redact(plan.opts.storage),
        Tag.DIRECTION: plan.spec.direction,
        Tag.SAMPLER: plan.spec.sampler,
        Tag.N_TRIALS: str(plan.n_trials),
    }
    parent = study.user_attrs.get(Attr.PARENT_RUN) or _find_parent(client_for(uri), cfg, uri, tags)
    if parent is None:
        logger = RunLogger.start(cfg, kind=Kind.STUDY, tags=tags, run_name=plan.study_name)
        logger.log_text(_yaml(plan.spec.to_dict()), "study.yaml")
        parent = logger.run_id
    else:
        get_or_create_experiment(client_for(uri), cfg.tracking.experiment, uri)
        reopen(uri, parent, {Tag.N_TRIALS: str(plan.n_trials)})
    study.set_user_attr(Attr.PARENT_RUN, parent)
    return parent


def _find_parent(client: Any, cfg: Config, uri: str, tags: dict[str, str]) -> str | None:
    from cmcr.engine.tracking import get_or_create_experiment, search_value

    exp = get_or_create_experiment(client, cfg.tracking.experiment, uri)
    query = (
        f"tags.`{Tag.KIND}` = '{Kind.STUDY}' "
        f"and tags.`{Tag.STUDY}` = {search_value(tags[Tag.STUDY])} "
        f"and tags.`{Tag.STORAGE}` = {search_value(tags[Tag.STORAGE])}"
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


def finish(plan: Plan, study: Any, parent: str) -> dict[str, Any]:
    """Summarise; end the parent run FINISHED once no trial is queued or running anywhere."""
    from optuna.trial import TrialState

    from cmcr.engine.tracking import (
        RunLogger,
        client_for,
        end_run,
        resolve_tracking_uri,
        set_tag_shared,
    )
    from cmcr.sweep.trials import count_states

    trials = study.get_trials(deepcopy=False)
    counts = count_states(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": plan.study_name, "parent_run_id": parent, **counts}
    uri = resolve_tracking_uri(plan.base)
    if complete:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params)
        RunLogger(client_for(uri), parent, uri).log_metrics(
            {Metric.STUDY_BEST_VALUE: best.value}, step=len(complete)
        )
        set_tag_shared(uri, parent, Tag.BEST_TRIAL, str(best.number))
        set_tag_shared(uri, parent, Tag.BEST_RUN_ID, str(best.user_attrs.get(Attr.RUN_ID)))
    pending = counts.get("WAITING", 0) + counts.get("RUNNING", 0)
    summary["done"] = pending == 0
    if pending == 0:
        end_run(uri, parent, "FINISHED")
    return summary


def ensure_error(exc: BaseException) -> CMCRError:
    """Optuna/SQLAlchemy errors during setup as one clear line."""
    if isinstance(exc, CMCRError):
        return exc
    text = str(exc).strip()
    first = text.splitlines()[0] if text else "(no message)"
    return StudyError(redact(f"{type(exc).__name__}: {first}"))
