"""Synthetic sweep runs logged straight into an MLflow store, with the documented names.

Used by the report tests and ``cmcr.bench.report``: the numbers come from a seeded RNG, the
layout (tags, params, metric names and steps) is what a real sweep writes
(docs/architecture.md, "MLflow names"). Logging goes through ``MlflowClient.log_batch`` so a
thousand runs take seconds, not minutes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from cmcr.configs import COMPONENTS, Config, apply_overrides, flatten_config, load_config
from cmcr.configs import variant_name as _variant_name
from cmcr.data.classes import CHALLENGE_CLASSES
from cmcr.losses.registry import BUILTIN
from cmcr.names import Attr, Kind, Tag
from cmcr.names import Metric as M  # mlflow.entities.Metric is the logged record
from cmcr.progress import fmt_pct, pct_value
from cmcr.tracking import runs as run_life

CLASSES = CHALLENGE_CLASSES[1:]
VAL = M.VAL_MIOU.split("/")[0] + "/"  # every val/* metric is per epoch
# how a run of each finished ``status`` ends (cmcr.tracking.runs' verbs)
_END = {
    "FINISHED": run_life.end_complete,
    "FAILED": run_life.end_failed,
    "KILLED": run_life.end_killed,
}
LOSS_TERMS = BUILTIN  # the built-in loss terms, named by cmcr.losses.registry
# A plausible mIoU per variant (fractions, as cmcr.eval.metrics logs them).
VARIANT_MIOU = {
    "random": 0.30,
    "ppkt": 0.36,
    "cmcr": 0.40,
    "cmcr-mim": 0.385,
    "cmcr-gemim": 0.39,
    "cmcr-occupancy": 0.38,
    "cmcr-codebook": 0.375,
    "cmcr-orth": 0.395,
}


def components_overrides() -> list[dict[str, Any]]:
    """The configurations of the ``components`` study: random, ppkt, cmcr, cmcr − each part."""
    # as sweeps/studies/components.yaml: the full method has GEMIM (official, and so smoke,
    # has none), every ablation switches one component off the full method
    full = {"method.gemim": True}
    out: list[dict[str, Any]] = [{"method.name": "random"}, {"method.name": "ppkt"}, full]
    out += [{**full, f"method.{c}": False} for c in COMPONENTS]
    return out


def _batch(client: MlflowClient, run_id: str, metrics: list, params: list, tags: list) -> None:
    """log_batch in chunks within MLflow's limits (1000 entities, 100 params per call)."""
    while metrics or params or tags:
        p, params = params[:100], params[100:]
        room = 1000 - len(p)
        t, tags = tags[:room], tags[room:]
        room -= len(t)
        m, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=m, params=p, tags=t)


def _metrics(rng: np.random.Generator, miou: float, epochs: int, steps: int) -> list[Metric]:
    """val/* per epoch converging to ``miou`` and train/loss* histories (step = optimiser step)."""
    now = int(time.time() * 1000)
    out: list[Metric] = []
    for e in range(epochs):
        frac = (e + 1) / epochs
        m = miou * (0.7 + 0.3 * frac)
        per_class = np.clip(m + rng.normal(0.0, 0.04, len(CLASSES)), 0.0, 1.0)
        out += [
            Metric(f"{M.VAL_IOU_PREFIX}{c}", float(v), now, e)
            for c, v in zip(CLASSES, per_class, strict=True)
        ]
        out.append(Metric(M.VAL_MIOU, float(per_class.mean()), now, e))
        out.append(Metric(M.VAL_MIOU_PCT, pct_value(float(per_class.mean())), now, e))
        out.append(Metric(M.VAL_FWIOU, float(min(1.0, per_class.mean() + 0.2)), now, e))
    for s in range(steps):
        terms = np.exp(-s / max(steps, 1)) * rng.uniform(0.5, 2.0, len(LOSS_TERMS))
        out += [
            Metric(f"{M.TRAIN_LOSS_PREFIX}{n}", float(v), now, s)
            for n, v in zip(LOSS_TERMS, terms, strict=True)
        ]
        out.append(Metric(M.TRAIN_LOSS, float(terms.sum()), now, s))
    return out


def probe_value(level: float, step: int, steps: int) -> float:
    """The representation probe's mIoU after ``step`` of ``steps`` pre-training steps: rising
    towards ``level`` (noise-free, so a test can recompute it)."""
    return float(level * (1.0 - 0.8 * np.exp(-3.0 * step / max(steps, 1))))


def _probe_metrics(level: float, every: int, steps: int, upto: int) -> list[Metric]:
    """rep/probe_miou, rep/probe_seconds and rep/probe_time_share every ``every`` optimiser steps up to
    ``upto`` (the probe runs after steps every, 2·every, ...; step = optimiser step)."""
    now = int(time.time() * 1000)
    out: list[Metric] = []
    for k, s in enumerate(range(every, min(upto, steps) + 1, every), start=1):
        out += [Metric(M.PROBE_MIOU, probe_value(level, s, steps), now, s),
                Metric(M.PROBE_SECONDS, 0.5 * k, now, s),
                Metric(M.PROBE_TIME_SHARE, 0.04, now, s)]  # fmt: skip
    return out


def pruned_reason(step: int, probe: float, phase: str = "pretrain") -> str:
    """The status reason the sweep writes on a pruned trial's run."""
    if phase == "pretrain":  # as cmcr.sweep.objective.pruned_at words it
        return (
            f"pruned by optuna: pruned at pre-training step {step} (representation probe "
            f"{fmt_pct(probe)} %)"
        )
    return f"pruned by optuna: pruned at downstream epoch {step} (val mIoU {fmt_pct(probe)} %)"


def log_run(
    client: MlflowClient,
    experiment_id: str,
    cfg: Config,
    *,
    study: str,
    trial: int,
    parent_run_id: str | None,
    miou: float,
    rng: np.random.Generator,
    status: str = "FINISHED",
    epochs: int = 3,
    steps: int = 8,
    probe_every: int = 0,
    probe_level: float = 0.0,
    pruned_at: int | None = None,
    pruned_phase: str = "pretrain",
    tag_pruned_step: bool = True,
) -> str:
    """Log one trial run (tags, flattened params, val/train metrics) and return its id.

    ``probe_every`` > 0 adds the pre-training probe (``rep/*`` every that many steps, towards
    ``probe_level``). ``pruned_at``: the trial was pruned at that pre-training step
    (``pruned_phase`` "pretrain": nothing after it, no val/*) or downstream epoch ("downstream"):
    the run ends KILLED with the sweep's pruned tags (without cmcr.pruned_at_step and
    cmcr.pruned_phase when ``tag_pruned_step`` is false, as a run logged before them)."""
    tags = _trial_tags(cfg, study, trial, parent_run_id)
    metrics = [] if status == "SCHEDULED" else _metrics(rng, miou, epochs, steps)
    if status == "RUNNING":  # interrupted mid-way: only the first epoch was evaluated
        metrics = [m for m in metrics if not m.key.startswith(VAL) or m.step == 0]
    if probe_every and status != "SCHEDULED":
        upto = pruned_at if pruned_at is not None and pruned_phase == "pretrain" else steps
        metrics += _probe_metrics(probe_level, probe_every, steps, upto)
    if pruned_at is not None:
        metrics = _pruned(metrics, tags, pruned_at, pruned_phase, tag_pruned_step)
        status = "KILLED"
    run_id = run_life.create_run(client, experiment_id, name=f"{study}-{trial}", tags=tags)
    params = [Param(k, str(v)) for k, v in flatten_config(cfg).items()]
    _batch(client, run_id, metrics, params, [])
    if status in _END:  # RUNNING and SCHEDULED runs stay open
        _END[status](client.tracking_uri, run_id, client=client)
    return run_id


def _trial_tags(cfg: Config, study: str, trial: int, parent_run_id: str | None) -> dict[str, str]:
    """The tags a sweep gives a trial's run."""
    tags = {
        Tag.KIND: Kind.TRIAL,
        Tag.VARIANT: _variant_name(cfg),
        Tag.PRESET: cfg.preset,
        Tag.SEED: str(cfg.train.seed),
        Tag.STUDY: study,
        Tag.TRIAL: str(trial),
    }
    if parent_run_id:
        tags[Tag.PARENT_RUN] = parent_run_id
    return tags


def _pruned(metrics: list, tags: dict, at: int, phase: str, tag_step: bool) -> list[Metric]:
    """The metrics of a run pruned at step/epoch ``at`` of ``phase``; adds the pruned tags."""
    if phase == "pretrain":  # stopped right after the probe at that step
        metrics = [m for m in metrics if not m.key.startswith(VAL) and m.step <= at]
    else:  # stopped after that downstream epoch
        metrics = [m for m in metrics if not m.key.startswith(VAL) or m.step <= at]
    probes = [m for m in metrics if m.key == M.PROBE_MIOU]
    last = max(probes, key=lambda m: m.step).value if probes else float("nan")
    tags |= {Tag.STATE: "PRUNED", Tag.STATUS_REASON: pruned_reason(at, last, phase)}
    if tag_step:
        tags |= {Tag.PRUNED_AT_STEP: str(at), Tag.PRUNED_PHASE: phase}
    return metrics


def start_study(client: MlflowClient, experiment: str, study: str) -> tuple[str, str]:
    """Create (or reuse) the experiment and the study's parent run; return their ids."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    parent = run_life.create_run(
        client, exp_id, name=study, tags={Tag.KIND: Kind.STUDY, Tag.STUDY: study}
    )
    return exp_id, parent


def end_study(client: MlflowClient, parent: str) -> None:
    """End the study's parent run, every slot done."""
    run_life.end_study(client.tracking_uri, parent, [], client=client)


def log_components_sweep(
    client: MlflowClient,
    experiment: str = "cmcr",
    *,
    study: str = "components",
    seeds: Sequence[int] = (0, 1),
    rng_seed: int = 0,
    extra_unfinished: bool = True,
    storage: str | None = None,
) -> dict[str, Any]:
    """A finished smoke-like ``components`` sweep (plus one running and one failed trial).

    With ``storage`` the Optuna study is written too, as the sweep's grid writes it: one trial
    per variant (param ``variant``), value = mean mIoU over seeds, linked to every seed's run.
    """
    rng = np.random.default_rng(rng_seed)
    exp_id, parent = start_study(client, experiment, study)
    trial = 0
    trials = []
    for over in components_overrides():
        runs = {}
        for seed in seeds:
            cfg = apply_overrides(load_config("smoke"), {**over, "train.seed": seed})
            miou = VARIANT_MIOU[_variant_name(cfg)] + rng.normal(0.0, 0.01)
            runs[seed] = (log_run(client, exp_id, cfg, study=study, trial=trial,
                                  parent_run_id=parent, miou=miou, rng=rng), miou)  # fmt: skip
            trial += 1
        trials.append(({"variant": _variant_name(cfg)}, runs))
    if storage:
        variants = optuna.distributions.CategoricalDistribution(list(VARIANT_MIOU))
        _optuna_study(storage, study, trials, {"variant": variants})
    if extra_unfinished:
        cfg = apply_overrides(load_config("smoke"), {"train.seed": 2})
        for status in ("RUNNING", "FAILED"):
            log_run(client, exp_id, cfg, study=study, trial=trial, parent_run_id=parent,
                    miou=0.99, rng=rng, status=status)  # fmt: skip
            trial += 1
    end_study(client, parent)
    return {"experiment_id": exp_id, "parent_run_id": parent, "n_trials": trial}


def _optuna_study(storage: str, name: str, trials: list, dists: dict[str, Any]) -> None:
    """Add trials ``(params, {seed: (run id, mIoU)})`` to a new maximising study: complete, or
    ``(params, runs, {step: probe mIoU}, pruned)`` with the probe as intermediate values."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for params, runs, *probe in trials:
        first = min(runs)
        steps, pruned = probe if probe else ({}, False)
        state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, state=state,
            value=None if pruned else float(np.mean([m for _, m in runs.values()])),
            intermediate_values=steps,
            user_attrs={Attr.RUN_ID: runs[first][0],
                        Attr.RUN_IDS: {str(s): r for s, (r, _) in runs.items()}}))  # fmt: skip


def log_random_sweep(
    client: MlflowClient,
    experiment: str = "cmcr",
    *,
    study: str = "loss_weights",
    n_runs: int = 1000,
    rng_seed: int = 0,
    epochs: int = 2,
    steps: int = 2,
    storage: str | None = None,
) -> dict[str, Any]:
    """``n_runs`` trials of a random search over three loss weights and the learning rate.

    With ``storage`` the Optuna study is written too: one trial per run, ``train.lr`` on a log
    scale as a sweep's search space declares it.
    """
    rng = np.random.default_rng(rng_seed)
    trials = []
    exp_id, parent = start_study(client, experiment, study)
    base = load_config("smoke")
    for trial in range(n_runs):
        w = rng.uniform(0.0, 2.0, 3)
        lr = float(10 ** rng.uniform(-4, -2))
        over = {
            "loss.weights.mim": round(float(w[0]), 4),
            "loss.weights.occ": round(float(w[1]), 4),
            "loss.weights.cmcm": round(float(w[2]), 4),
            "train.lr": lr,
            "train.seed": int(trial % 3),
        }
        cfg = apply_overrides(load_config("smoke") if trial == 0 else _copy(base), over)
        miou = 0.3 + 0.05 * w[0] - 0.02 * (w[1] - 1) ** 2 - 0.01 * abs(np.log10(lr) + 3)
        miou += rng.normal(0.0, 0.01)
        run_id = log_run(client, exp_id, cfg, study=study, trial=trial, parent_run_id=parent,
                         miou=float(miou), rng=rng, epochs=epochs, steps=steps)  # fmt: skip
        params = {k: v for k, v in over.items() if k != "train.seed"}
        trials.append((params, {over["train.seed"]: (run_id, float(miou))}))
    if storage:
        weight = optuna.distributions.FloatDistribution(0.0, 2.0)
        dists = {"loss.weights.mim": weight, "loss.weights.occ": weight,
                 "loss.weights.cmcm": weight,
                 "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}  # fmt: skip
        _optuna_study(storage, study, trials, dists)
    end_study(client, parent)
    return {"experiment_id": exp_id, "parent_run_id": parent, "n_trials": n_runs}


def log_probe_sweep(
    client: MlflowClient,
    experiment: str = "cmcr",
    *,
    study: str = "probe",
    n_trials: int = 6,
    steps: int = 32,
    eval_every: int = 8,
    pruned: dict[int, int] | None = None,
    tag_pruned_step: bool = True,
    storage: str | None = None,
    rng_seed: int = 0,
) -> dict[str, Any]:
    """A random search over ``loss.weights.mim`` and ``train.lr`` whose trials log the
    pre-training probe every ``eval_every`` of ``steps`` steps; ``pruned`` = {trial: step}
    (default: the two weakest probes, at the first and the second probe) were stopped there by
    the pruner. With ``storage`` the Optuna study is written too (PRUNED trials, the probe as
    intermediate values). Returns ids, the run id per trial and the probe level per trial."""
    rng = np.random.default_rng(rng_seed)
    exp_id, parent = start_study(client, experiment, study)
    weights = rng.uniform(0.0, 2.0, n_trials)
    lrs = 10 ** rng.uniform(-4, -2, n_trials)
    levels = 0.1 + 0.1 * weights
    if pruned is None:
        weakest = np.argsort(levels, kind="stable")[:2]
        pruned = {int(weakest[0]): eval_every, int(weakest[1]): 2 * eval_every}
    trials, run_ids = [], {}
    for trial in range(n_trials):
        over = {"loss.weights.mim": round(float(weights[trial]), 4),
                "train.lr": float(lrs[trial]), "train.seed": 0}  # fmt: skip
        cfg = apply_overrides(load_config("smoke"), over)
        miou = float(0.25 + 0.5 * levels[trial] + rng.normal(0.0, 0.005))
        at = pruned.get(trial)
        run_ids[trial] = log_run(
            client, exp_id, cfg, study=study, trial=trial, parent_run_id=parent, miou=miou,
            rng=rng, epochs=2, steps=steps, probe_every=eval_every,
            probe_level=float(levels[trial]), pruned_at=at, tag_pruned_step=tag_pruned_step)  # fmt: skip
        reported = {s: probe_value(levels[trial], s, steps)
                    for s in range(eval_every, (at or steps) + 1, eval_every)}  # fmt: skip
        params = {k: v for k, v in over.items() if k != "train.seed"}
        trials.append((params, {0: (run_ids[trial], miou)}, reported, at is not None))
    if storage:
        dists = {"loss.weights.mim": optuna.distributions.FloatDistribution(0.0, 2.0),
                 "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}  # fmt: skip
        _optuna_study(storage, study, trials, dists)
    end_study(client, parent)
    return {"experiment_id": exp_id, "parent_run_id": parent, "n_trials": n_trials,
            "run_ids": run_ids, "pruned": dict(pruned), "levels": levels.tolist()}  # fmt: skip


def _copy(cfg: Config) -> Config:
    import copy

    return copy.deepcopy(cfg)
