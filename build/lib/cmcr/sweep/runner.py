"""Sweep orchestration: validate → storage → study + parent run + trial queue → workers.

Order matters: everything that can be wrong with the input (study file, space bounds, config
overrides, storage URL and reachability) is checked before the storage is written, so bad
input leaves no study behind. Setup runs under a study lock, so several processes started
at once (on one machine with SQLite, or several with PostgreSQL) create one study, one parent
run and exactly ``n_trials`` queued trials. Every start (and every worker, after each trial)
also heals the study (``heal``): trials of dead workers are failed without spending a retry
and every slot gets the retry it is owed (cmcr.sweep.recovery). The workers' loop is
cmcr.sweep.worker; the options are declared in cmcr.sweep.options; the study's MLflow
parent run and the end of its trials' runs are cmcr.sweep.parent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any

from cmcr.adapters.optuna_storage import storage_of
from cmcr.configs import Config, load_config, parse_override
from cmcr.errors import CMCRError, StudyError
from cmcr.guard import check_name
from cmcr.names import Attr, is_local_key, objective_name
from cmcr.sweep import parent as parent_runs
from cmcr.sweep import recovery, seeds, space
from cmcr.sweep.options import (
    MAX_RETRIES,
    MAX_SEEDS,
    MAX_WORKERS,
    OBJECTIVES,
    SweepOptions,
    audit_notice,
)
from cmcr.sweep.space import StudySpec, check_space, load_study, searched_keys
from cmcr.sweep.trials import count_states, enqueue_slots
from cmcr.tracking.optuna_store import open_storage, study_lock
from cmcr.tracking.study import study_experiment
from cmcr.uris import redact, redact_tree

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

    @property
    def pruner(self) -> str:
        """--pruner, else the study's ``pruner``, else the default: none when the probe is on
        (``default_pruner``: the last audit's best signal saved too little), else median (the
        downstream epochs)."""
        return self.opts.pruner or self.spec.pruner or default_pruner(self.base)

    def pruning_notice(self) -> str | None:
        """The one line on the pruner's audited record, when it prunes in pre-training."""
        from cmcr.engine.probe import enabled as probe_enabled  # lazy: the probe imports torch

        if not probe_enabled(self.base):
            return None
        return audit_notice(self.pruner, self.base.sweep.probe_features)

    def compat_attrs(self) -> dict[str, Any]:
        """What a re-run (or another worker) must agree on to share the stored study."""
        fixed = {k: v for k, v in self.fixed.items() if not is_local_key(k)}
        return {  # redacted as stored (issue 28): a `fixed:` URI or a `--set tracking={...}`
            Attr.DEFINITION: redact_tree(self.spec.to_dict()),
            Attr.PRESET: self.base.preset,
            Attr.OBJECTIVE: self.opts.objective,
            Attr.SEEDS: self.opts.seeds,
            Attr.OVERRIDES: redact_tree({k: fixed[k] for k in sorted(fixed)}),
        }


def _count_bounds(opts: SweepOptions) -> tuple[tuple[str, int | None, int, int], ...]:
    """The count flags with their ranges (issue 28: every count bounded, before any store)."""
    return (
        ("--seeds", opts.seeds, 1, MAX_SEEDS),
        ("--workers", opts.workers, 1, MAX_WORKERS),
        ("--max-retries", opts.max_retries, 0, MAX_RETRIES),
        ("--add-seeds", opts.add_seeds, 1, MAX_SEEDS),
    )


def _in_range(flag: str, value: int | None, low: int, high: int) -> None:
    """StudyError naming ``flag`` unless ``value`` (None: not given) is in [low, high]."""
    if value is not None and not low <= value <= high:
        raise StudyError(f"{flag}: expected an integer in [{low}, {high}], got {value}")


def plan_sweep(opts: SweepOptions) -> Plan:
    """Check every input without touching storage; raises CMCRError with one clear line."""
    if opts.name is not None:
        check_name(opts.name, "--name")  # before any store, folder or script is made
    for name, value, low, high in _count_bounds(opts):
        _in_range(name, value, low, high)
    if opts.add_seeds is not None and opts.n_trials is not None:
        raise StudyError(
            "--add-seeds: adds seeds to the trials a study has; grow it with --n-trials in a "
            "run of its own"
        )
    seeds.check_top(opts.top, opts.add_seeds)
    if opts.retry_failed and not opts.resume:
        raise StudyError("--retry-failed: re-opens a stored study's failed slots; add --resume")
    space.check_pruner(opts.pruner, "--pruner")
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
    if "tracking.experiment" not in fixed:  # one MLflow experiment per study (issue 16)
        base.tracking.experiment = study_experiment(base, opts.name or spec.name)
    check_space(spec, base)
    n_trials = opts.n_trials if opts.n_trials is not None else spec.default_n_trials()
    _in_range("--n-trials", n_trials, 1, space.MAX_TRIALS)  # before a trial is queued
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


def default_pruner(base: Config) -> str:
    """The pruner when neither --pruner nor the study names one: none in pre-training (the
    representation probe on: in the last audit, docs/bench/replay_2026-12-06.json, ASHA on the
    raw fit beat chance but saved 1.78x, short of the 2.5x asked before pruning by default),
    median on the downstream epochs."""
    from cmcr.engine.probe import enabled as probe_enabled  # lazy: the probe imports torch

    return "none" if probe_enabled(base) else "median"


def make_pruner(kind: str, base: Config) -> Any:
    """median, asha (successive halving), hyperband or none.

    The resource is what the trials report (``cmcr.sweep.objective``): with the representation
    probe on (``sweep.eval_every`` > 0), permille of each trial's own pre-training steps, the
    first rung at ``sweep.first_rung`` of it and Hyperband's largest the whole budget
    (``cmcr.engine.probe.rungs``); else the downstream epochs. Reduction factor 3 (ASHA's and
    Hyperband's default: a third goes on).
    """
    # lazy: the probe imports torch
    from cmcr.engine.probe import RESOURCE
    from cmcr.engine.probe import enabled as probe_enabled

    if probe_enabled(base):
        first, largest = max(1, round(base.sweep.first_rung * RESOURCE)), RESOURCE
    else:
        d = base.downstream
        first, largest = 1, max(d.probe_epochs if d.mode == "probe" else d.finetune_epochs, 1)
    return pruner_for(kind, first, largest)


def pruner_for(kind: str, first: int, largest: int | str) -> Any:
    """Pruner ``kind`` with its first rung at resource ``first`` and Hyperband's largest at
    ``largest`` ("auto": the last a finished trial reported); reduction factor 3."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if kind == "asha":
        return recovery.successive_halving(min_resource=first, reduction_factor=3)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=largest, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def connect(plan: Plan, *, create: bool = True, read_only: bool = False) -> Any:
    """The storage with heartbeat (StorageError if unreachable); ``read_only`` for a reader
    (``--status``): never creates, migrates or writes the store."""
    return open_storage(
        plan.opts.storage, heartbeat_s=plan.opts.heartbeat_s, create=create, read_only=read_only
    )


def load(plan: Plan, storage: Any) -> Any:
    """The existing study, with this process's sampler and pruner."""
    import optuna

    try:
        return optuna.load_study(
            study_name=plan.study_name,
            storage=storage,
            sampler=make_sampler(plan.spec),
            pruner=make_pruner(plan.pruner, plan.base),
        )
    except KeyError:
        raise StudyError(f"no study '{plan.study_name}' in {redact(plan.opts.storage)}") from None


def setup(plan: Plan, storage: Any, lost: list[Any] | None = None) -> tuple[Any, str]:
    """Create or load the study, its parent run and the trial queue, and heal it.

    Returns (study, parent run id); ``lost`` receives the trials failed because their worker
    was lost (their retries are queued).
    """
    import optuna

    with study_lock(storage, plan.opts.storage, plan.study_name):
        names = {
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        }
        if plan.study_name in names:
            study = load(plan, storage)
            if Attr.DEFINITION not in study.user_attrs and not study.get_trials(deepcopy=False):
                _define(plan, study)  # created by a start killed before it wrote the definition
            check_compatible(plan, study)
        else:
            study = optuna.create_study(
                study_name=plan.study_name,
                storage=storage,
                sampler=make_sampler(plan.spec),
                pruner=make_pruner(plan.pruner, plan.base),
                direction=plan.spec.direction,
            )
            _define(plan, study)
        if study.metric_names is None:  # optuna-dashboard names the objective from the start
            with warnings.catch_warnings():  # set_metric_names is experimental in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([objective_name(plan.opts.objective)])
        parent = _parent_run(plan, study)
        cells = plan.spec.grid_cells() if plan.spec.is_grid else None
        added = enqueue_slots(study, cells, plan.n_trials)
        study.set_user_attr(Attr.N_TRIALS, n_slots(plan, study))
        if plan.opts.add_seeds and not seeds.request(
            study, plan.opts.add_seeds, plan.opts.seeds, plan.opts.top
        ):
            log.info(f"--add-seeds {plan.opts.add_seeds}: already asked for; finishing those seeds")
        added_seeds = seeds.enqueue_added(study)  # also what a killed --add-seeds left owed
        if plan.opts.retry_failed:
            reopened = recovery.reopen_failed(study, n_slots(plan, study), plan.opts.max_retries)
            if reopened:
                log.info(f"--retry-failed: slot(s) {reopened} re-opened")
        failed = _heal_locked(plan, study)
    if added:
        log.info(f"queued {added} trial(s) of study '{plan.study_name}'")
    if added_seeds:
        log.info(f"queued {added_seeds} trial(s) adding seeds to finished configurations")
    _mark_lost(plan, failed)
    if lost is not None:
        lost.extend(failed)
    return study, parent


def _define(plan: Plan, study: Any) -> None:
    """Write the study's definition attrs; ``Attr.DEFINITION`` last, so it marks them all."""
    attrs = plan.compat_attrs()
    for key, value in sorted(attrs.items(), key=lambda kv: kv[0] == Attr.DEFINITION):
        study.set_user_attr(key, value)


def n_slots(plan: Plan, study: Any) -> int:
    """How many slots the study has (the largest ``--n-trials`` any start asked for)."""
    return max(plan.n_trials, int(study.user_attrs.get(Attr.N_TRIALS, 0)))


def n_units(plan: Plan, study: Any) -> int:
    """The slots plus the --add-seeds units: the trials a finished sweep has ended."""
    return n_slots(plan, study) + len(seeds.requested(study))


def check_add_seeds(plan: Plan) -> Plan:
    """``--add-seeds K [--top N]``: the study must exist, match and have finished trials;
    read-only (``--top``'s own value was checked by ``plan_sweep``).

    Returns the plan sized to the stored study (no new slots are queued with new seeds).
    """
    k, top = plan.opts.add_seeds, plan.opts.top
    try:
        storage = connect(plan, create=False)
        study = load(plan, storage)
        check_compatible(plan, study)
    except CMCRError as exc:
        raise StudyError(f"--add-seeds {k}: {exc}") from None
    n = seeds.check_request(study, k, plan.study_name)
    pending = seeds.unfinished(study)
    if pending:
        log.warning(f"--add-seeds: trial(s) {pending} are not finished; they get no added seeds")
    if top is not None:
        best = [f"#{first.number}" for _, first, _ in seeds.ranked(study)[:top]]
        log.info(f"--add-seeds {k} --top {top}: the {len(best)} best of {n} "
                    f"configuration(s) by mean val mIoU: {', '.join(best)}")  # fmt: skip
    return _stored_size(plan, study)


def stored_attrs(plan: Plan) -> dict[str, Any] | None:
    """The stored study's user attrs (its preset, seeds, objective, overrides...), read-only;
    None when no such study is stored."""
    try:
        return dict(load(plan, connect(plan, create=False, read_only=True)).user_attrs)
    except CMCRError:
        return None


def resume_size(plan: Plan) -> Plan:
    """``--resume`` without ``--n-trials``: the stored study's number of slots (not the study
    file's default, which would queue new trials into a study started smaller); read-only."""
    try:
        study = load(plan, connect(plan, create=False))
    except CMCRError:
        return plan  # nothing stored yet: the sweep starts as without --resume
    return _stored_size(plan, study)


def finished_size(plan: Plan) -> int | None:
    """The stored study's number of slots when every one of them is done (complete, pruned or
    failed for good) and nothing is queued or running; None otherwise (or when none is stored).
    Read-only."""
    try:
        study = load(plan, connect(plan, create=False))
    except CMCRError:
        return None
    check_compatible(plan, study)  # a different study of the same name is refused first
    stored = int(study.user_attrs.get(Attr.N_TRIALS, 0))
    c = count_states(study.get_trials(deepcopy=False))
    if stored < 1 or c.get("WAITING", 0) or c.get("RUNNING", 0):
        return None
    done = c.get("COMPLETE", 0) + c.get("PRUNED", 0) + c.get("FAIL", 0) - c.get("retried", 0)
    return stored if done >= stored + len(seeds.requested(study)) else None


def _stored_size(plan: Plan, study: Any) -> Plan:
    stored = int(study.user_attrs.get(Attr.N_TRIALS, 0))
    return dataclasses.replace(plan, n_trials=stored) if stored >= 1 else plan


def heal(plan: Plan, study: Any, *, pid: int | None = None) -> list[Any]:
    """Fail the trials of lost workers and enqueue every owed retry, under the study lock.

    ``pid``: also fail the RUNNING trials of that local process now (the parent of
    ``--workers`` saw it die). Returns the trials failed here; their MLflow runs are ended.
    """
    with study_lock(storage_of(study), plan.opts.storage, plan.study_name):
        lost = _heal_locked(plan, study, pid=pid)
    _mark_lost(plan, lost)
    return lost


def _heal_locked(plan: Plan, study: Any, *, pid: int | None = None) -> list[Any]:
    grace = 3 * plan.opts.heartbeat_s
    lost = recovery.fail_stale(study) + recovery.fail_dead_local(study, grace)
    if pid is not None:
        lost += recovery.fail_dead_local(study, grace, pid=pid)
    recovery.reconcile(study, n_slots(plan, study), plan.opts.max_retries)
    return lost


def _mark_lost(plan: Plan, trials: list[Any]) -> None:
    for t in trials:
        reason = t.user_attrs.get(Attr.FAIL_REASON, recovery.STALE_REASON)
        parent_runs.runs_lost(plan.base, t, f"trial {t.number}: {reason}")


def check_compatible(plan: Plan, study: Any) -> None:
    """A stored study may be continued only with the same definition and settings."""
    stored = study.user_attrs
    if Attr.DEFINITION not in stored:
        raise StudyError(
            f"study '{plan.study_name}' in {redact(plan.opts.storage)} was not made by "
            "sweeps/run.py; choose another --name"
        )
    for key, value in plan.compat_attrs().items():
        # redacted as compared: a study stored before redaction parsed URLs (issue 28) holds a
        # secret in its definition, and its error line must not print it
        was = redact_tree(stored.get(key))
        if _jsonish(was) != _jsonish(value):
            raise StudyError(
                f"study '{plan.study_name}' in {redact(plan.opts.storage)} was created with a "
                f"different {key.split('.')[-1]} ({was!r}, now {value!r}); "
                "re-run with the same settings or choose another --name"
            )


def _jsonish(value: Any) -> Any:
    """Compare as stored (JSON round trip: tuples become lists, int keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _parent_run(plan: Plan, study: Any) -> str:
    """The study's MLflow parent run (cmcr.sweep.parent), RUNNING while workers run."""
    return parent_runs.open_parent(plan.base, study, name=plan.study_name,
                                   storage=plan.opts.storage, definition=plan.spec.to_dict(),
                                   n_trials=plan.n_trials, params=sorted(searched_keys(plan.spec)))  # fmt: skip


def finish(plan: Plan, study: Any, parent: str) -> dict[str, Any]:
    """Summarise, and end the parent run with the study: FINISHED when every slot is done,
    FAILED (with the reason) when slots failed for good; RUNNING while trials are queued or
    running elsewhere. MLflow being unreachable leaves one line in ``tracking_error``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = count_states(trials)
    failed = recovery.failed_slots(study, n_slots(plan, study), plan.opts.max_retries)
    summary: dict[str, Any] = {"study": plan.study_name, "parent_run_id": parent, **counts}
    summary["failed_slots"] = failed
    if any(t.state == TrialState.COMPLETE for t in trials):
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params)
        summary["best_run_id"] = best.user_attrs.get(Attr.RUN_ID)
    summary["done"] = counts.get("WAITING", 0) + counts.get("RUNNING", 0) == 0
    try:
        parent_runs.finish_parent(plan.base, study, parent, summary, plan.opts.max_retries)
    except Exception as exc:
        summary["tracking_error"] = parent_runs.one_line(
            "MLflow could not be updated (Optuna's record is complete; the next start "
            "finishes the parent run)",
            exc,
        )
    return summary
