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
from cmcr.names import Attr, Kind, Tag
from cmcr.names import Metric as M  # mlflow.entities.Metric is the logged record

CLASSES = CHALLENGE_CLASSES[1:]
VAL = M.VAL_MIOU.split("/")[0] + "/"  # every val/* metric is per epoch
LOSS_TERMS = ("nce", "mim", "occ", "intensity", "orth", "commit", "cmcm")
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
        out.append(Metric(M.VAL_FWIOU, float(min(1.0, per_class.mean() + 0.2)), now, e))
    for s in range(steps):
        terms = np.exp(-s / max(steps, 1)) * rng.uniform(0.5, 2.0, len(LOSS_TERMS))
        out += [
            Metric(f"{M.TRAIN_LOSS_PREFIX}{n}", float(v), now, s)
            for n, v in zip(LOSS_TERMS, terms, strict=True)
        ]
        out.append(Metric(M.TRAIN_LOSS, float(terms.sum()), now, s))
    return out


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
) -> str:
    """Log one trial run (tags, flattened params, val/train metrics) and return its id."""
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
    run = client.create_run(experiment_id, tags=tags, run_name=f"{study}-{trial}")
    params = [Param(k, str(v)) for k, v in flatten_config(cfg).items()]
    metrics = [] if status == "SCHEDULED" else _metrics(rng, miou, epochs, steps)
    if status == "RUNNING":  # interrupted mid-way: only the first epoch was evaluated
        metrics = [m for m in metrics if not m.key.startswith(VAL) or m.step == 0]
    _batch(client, run.info.run_id, metrics, params, [])
    if status in ("FINISHED", "FAILED", "KILLED"):
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def start_study(client: MlflowClient, experiment: str, study: str) -> tuple[str, str]:
    """Create (or reuse) the experiment and the study's parent run; return their ids."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    parent = client.create_run(
        exp_id, tags={Tag.KIND: Kind.STUDY, Tag.STUDY: study}, run_name=study
    )
    return exp_id, parent.info.run_id


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
    client.set_terminated(parent, "FINISHED")
    return {"experiment_id": exp_id, "parent_run_id": parent, "n_trials": trial}


def _optuna_study(storage: str, name: str, trials: list, dists: dict[str, Any]) -> None:
    """Add complete trials ``(params, {seed: (run id, mIoU)})`` to a new maximising study."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for params, runs in trials:
        first = min(runs)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params},
            value=float(np.mean([m for _, m in runs.values()])),
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
    client.set_terminated(parent, "FINISHED")
    return {"experiment_id": exp_id, "parent_run_id": parent, "n_trials": n_runs}


def _copy(cfg: Config) -> Config:
    import copy

    return copy.deepcopy(cfg)
