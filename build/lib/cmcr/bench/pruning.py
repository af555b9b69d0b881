"""Pruning benchmark: the same study with and without pruning in pre-training (issue 17).

``python -m cmcr.bench pruning [--quick] [--pruning-trials N] [--pruning-world DIR]
[--pruning-variants none,asha,...] [--pruning-configs tpe|sobol] [--pruning-workers W]``

The study is ``loss_weights`` with a fixed sampler seed on the demo world at the ``demo`` preset
(42 pre-training steps, the representation probe every 7, the 10-epoch linear probe as the
objective). ``--pruning-configs``: ``tpe`` (the default; its first 10 trials are its seeded
random start-up, so the studies sample the SAME configurations only when N <= 10 and one worker
runs each) or ``sobol``: N configurations drawn once from a scrambled Sobol sequence (seed 7) over
the study's space, written as a grid study of N cells, so trial slot k is configuration k in
every study, whatever N, the number of workers and the pruning (issue 27). The variants
(``VARIANTS``; by default none, asha and asha_raw) run side by side, ``--pruning-workers`` worker processes each with
one thread (so the wall times see the same machine): without pruning, and with a pruner on one
probe signal. Every probe step logs every signal (both fits, RankMe, alpha-ReQ), so the
unpruned study alone (``--pruning-variants none``) is the input of ``cmcr.bench replay``; a
study already in the ``--pruning-keep`` folder is read back, not run again (run the unpruned
study, replay it, then the live pruned study beside it). Then, with ``--pruning-seeds`` > 1,
the unpruned study's best configuration is trained again with more seeds, for the seed standard
deviation of its final probe mIoU. ``pruning.json`` in the folder holds every trial (every
signal's curve) and the figures: the replay's ``--trials-json``.

Figures:
- ``steps_unpruned`` / ``<variant>_steps`` / ``<variant>_step_ratio``: pre-training optimiser steps of the
  whole study (each run's last ``train/loss`` step), target ratio >= 2.5;
- ``wall_unpruned_s`` / ``wall_pruned_s``: the studies' wall times;
- ``best_unpruned`` / ``best_pruned``: the best trial's final probe mIoU (the objective);
  ``seed_sd``: the standard deviation over ``--pruning-seeds`` seeds of the unpruned best
  configuration; ``best_within_one_sd``: best_pruned >= best_unpruned - seed_sd;
- ``spearman_at_step_S``: rank correlation, over the unpruned trials, between ``rep/probe_miou`` at
  step S (about a third of the budget) and the final probe mIoU; ``spearman_by_step`` for every
  probe step;
- ``probe_time_share``: the probe's mean share of pre-training time (``rep/probe_time_share``);
- ``pruned_trials``, ``same_configurations`` (both studies sampled the same params).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cmcr.configs import load_config, parse_override
from cmcr.names import Attr, Metric
from cmcr.sweep.space import load_study
from cmcr.synth import generate_world

ROOT = Path(__file__).resolve().parents[2]
STUDY = "loss_weights"
SAMPLER_SEED = 7
# the studies, side by side: no pruning, ASHA on rep/probe_miou of standardised features (the
# default), ASHA on the fit of raw features
VARIANTS = {
    "none": ["--pruner", "none"],
    "asha": ["--pruner", "asha", "--set", "sweep.probe_features=standardised"],
    "asha_raw": ["--pruner", "asha", "--set", "sweep.probe_features=raw"],
    "asha_rankme": ["--pruner", "asha", "--set", "sweep.probe_features=rankme"],
    "hyperband_raw": ["--pruner", "hyperband", "--set", "sweep.probe_features=raw"],
    "median_raw": ["--pruner", "median", "--set", "sweep.probe_features=raw"],
}
DEFAULT_VARIANTS = ("none", "asha", "asha_raw")  # the 2026-12-02 benchmark's three studies


def add_arguments(parser: Any) -> None:
    parser.add_argument("--pruning-trials", type=int, default=10, help="trials per study")
    parser.add_argument("--pruning-seeds", type=int, default=3, help="seeds of the best config")
    parser.add_argument("--pruning-world", default="", help="a demo world (default: made here)")
    parser.add_argument("--pruning-keep", default="", help="keep the stores in this folder")
    parser.add_argument(
        "--pruning-set", action="append", default=[], metavar="KEY=VALUE",
        help="config override for every run of the benchmark (e.g. train.epochs=10), repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--pruning-variants", default=",".join(DEFAULT_VARIANTS),
        help=f"studies to run, comma-separated, 'none' first (of {', '.join(VARIANTS)})",
    )  # fmt: skip
    parser.add_argument(
        "--pruning-configs", default="tpe", choices=("tpe", "sobol"),
        help="tpe: the study's seeded TPE (same configurations only up to 10 trials, one "
        "worker); sobol: N fixed Sobol configurations, slot k the same in every study",
    )  # fmt: skip
    parser.add_argument("--pruning-workers", type=int, default=1, help="workers per study")


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    keep = getattr(args, "pruning_keep", "")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return measure(Path(keep), args, quick)
    with tempfile.TemporaryDirectory(prefix="cmcr-bench-pruning-") as tmp:
        return measure(Path(tmp), args, quick)


def measure(tmp: Path, args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    preset = "smoke" if quick else "demo"
    n_trials = 4 if quick else int(getattr(args, "pruning_trials", 10))
    n_seeds = 2 if quick else int(getattr(args, "pruning_seeds", 3))
    world = Path(getattr(args, "pruning_world", "") or tmp / "world")
    if not (world / "v1.0-mini").is_dir():
        generate_world(world, preset=preset, seed=0)
    variants = parse_variants(str(getattr(args, "pruning_variants", ",".join(DEFAULT_VARIANTS))))
    configs = str(getattr(args, "pruning_configs", "tpe"))
    workers = max(1, int(getattr(args, "pruning_workers", 1)))
    studies = _study_dir(tmp, configs, n_trials)
    extra = _overrides(args, quick)
    commands = {
        kind: _sweep_command(tmp / kind, kind, preset, n_trials, workers, world, extra)
        for kind in variants
    }
    wall = _run_studies(tmp, commands, studies)
    trials = {kind: _trials(tmp / kind, studies) for kind in variants}
    none = trials["none"]
    best = max((t for t in none if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    seeds = _seed_values(tmp, world, preset, best, n_seeds, extra, studies)
    out: dict[str, Any] = _figures(trials, seeds, wall)
    cfg = _resolved(preset, extra)
    out.update(
        trials=n_trials, preset=preset, load_avg_1m=round(os.getloadavg()[0], 2),
        configs=configs, workers=workers, overrides=extra[1::2],
        eval_every=cfg.sweep.eval_every, first_rung=cfg.sweep.first_rung,
    )  # fmt: skip
    (tmp / "pruning.json").write_text(json.dumps({**trials, **out}, indent=1, default=str))
    return out


def _overrides(args: argparse.Namespace, quick: bool) -> list[str]:
    """The ``--set`` arguments every study and seed run gets: ``--pruning-set``'s, after
    ``sweep.eval_every=1`` with ``--quick``."""
    extra = ["--set", "sweep.eval_every=1"] if quick else []
    for item in getattr(args, "pruning_set", None) or []:
        extra += ["--set", item]
    return extra


def _sweep_command(
    out: Path, kind: str, preset: str, n_trials: int, workers: int, world: Path, extra: list[str]
) -> list[str]:
    """The ``sweeps/run.py`` command of variant ``kind``'s study, its storage in ``out``."""
    return [
        sys.executable, str(ROOT / "sweeps" / "run.py"), "--study", STUDY,
        "--preset", preset, "--n-trials", str(n_trials), *VARIANTS[kind],
        "--workers", str(workers),
        "--storage", f"sqlite:///{out / 'optuna.db'}",
        "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}",
        "--set", f"data.dataroot={world}", "--set", f"tracking.output_dir={out / 'runs'}",
        *extra,
    ]  # fmt: skip


def _run_studies(tmp: Path, commands: dict[str, list[str]], studies: Path) -> dict[str, float]:
    """{variant: wall seconds}: the studies of ``commands`` side by side, each in ``tmp/<variant>``;
    a study that finished in an earlier run (``--pruning-keep``) is read back, not run again."""
    procs = {}
    t0 = {}
    wall: dict[str, float] = {}
    for kind, cmd in commands.items():
        out = tmp / kind
        if (out / "wall_s").is_file():  # finished in an earlier run: read back (--pruning-keep)
            wall[kind] = float((out / "wall_s").read_text())
            continue
        if (out / "optuna.db").is_file():
            raise SystemExit(f"{out}: a study that did not finish; remove the folder to rerun it")
        out.mkdir(exist_ok=True)
        log = (out / "sweep.log").open("w")
        t0[kind] = time.perf_counter()
        procs[kind] = subprocess.Popen(
            cmd, cwd=out, stdout=log, stderr=subprocess.STDOUT, env=_env(studies)
        )
    while len(wall) < len(commands):  # each study's own end time
        for kind, proc in procs.items():
            if kind in wall or proc.poll() is None:
                continue
            if proc.returncode != 0:
                tail = (tmp / kind / "sweep.log").read_text()[-3000:]
                raise RuntimeError(f"the {kind} study failed (exit {proc.returncode}):\n{tail}")
            wall[kind] = time.perf_counter() - t0[kind]
            (tmp / kind / "wall_s").write_text(f"{wall[kind]:.1f}")
        time.sleep(0.5)
    return wall


def parse_variants(text: str) -> list[str]:
    """The ``--pruning-variants`` list: known names, no repeats, ``none`` (the reference) first."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names or names[0] != "none" or len(set(names)) != len(names):
        raise SystemExit(
            f"--pruning-variants: 'none' first, then any of {', '.join(VARIANTS)} once each; "
            f"got {text!r}"
        )
    return names


def _resolved(preset: str, extra: list[str]) -> Any:
    """The config every study's trials share (the preset and the --pruning-set overrides)."""
    return load_config(preset, dict(parse_override(o) for o in extra[1::2]))


def _env(studies: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CMCR_STUDY_DIR=str(studies), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _study_dir(tmp: Path, configs: str = "tpe", n_trials: int = 10) -> Path:
    """``loss_weights`` with a fixed sampler seed, in a folder of its own; ``configs="sobol"``:
    as a grid of ``n_trials`` fixed configurations (``sobol_study``). A folder kept from an
    earlier run keeps its study file (the kept studies' configurations)."""
    out = tmp / "studies"
    path = out / f"{STUDY}.yaml"
    if path.is_file():
        return out
    spec = yaml.safe_load((ROOT / "sweeps" / "studies" / f"{STUDY}.yaml").read_text())
    spec["seed"] = SAMPLER_SEED
    if configs == "sobol":
        spec = sobol_study(spec, n_trials, SAMPLER_SEED)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def sobol_study(spec: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """``spec`` (float params only) as a grid study of ``n`` configurations: one grid param
    ``config`` whose choice ``c00``, ``c01``, ... sets every param to the k-th point of a
    scrambled Sobol sequence (``seed``) over the space (log-uniform where ``log``). A grid
    study gives slot k its cell, so every study of the benchmark trains the same configuration
    in slot k, whatever its workers' order and its pruning."""
    from scipy.stats import qmc

    params = spec["params"]
    names = list(params)
    if any(params[k].get("type") != "float" for k in names):
        raise ValueError(f"sobol configurations need float params, got {params}")
    # Sobol points come in powers of two; the first n of 2^m keep its balance best
    points = qmc.Sobol(len(names), scramble=True, seed=seed).random(2 ** math.ceil(math.log2(n)))
    choices = {}
    for k, u in enumerate(points[:n]):
        cell = {}
        for name, x in zip(names, u, strict=True):
            p = params[name]
            lo, hi = float(p["low"]), float(p["high"])
            v = (
                math.exp(math.log(lo) + x * math.log(hi / lo))
                if p.get("log")
                else lo + x * (hi - lo)
            )
            cell[name] = float(f"{v:.4g}")
        choices[f"c{k:02d}"] = cell
    out = {k: v for k, v in spec.items() if k not in ("params", "sampler", "n_trials")}
    return {**out, "sampler": "grid", "params": {"config": {"type": "grid", "choices": choices}}}


def config_overrides(studies: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The dotted overrides of a trial's ``params`` in the benchmark's study (a sobol cell's
    label maps to its values)."""
    return load_study(str(studies / f"{STUDY}.yaml")).overrides_for(params)


def _trials(out: Path, studies: Path | None = None) -> list[dict[str, Any]]:
    """Each trial of the study in ``out``, every signal's curve: see ``collect_trials``; with
    ``studies``, each row's ``overrides`` (the config values its params mean)."""
    optuna_db, mlflow_db = f"sqlite:///{out / 'optuna.db'}", f"sqlite:///{out / 'mlflow.db'}"
    rows = collect_trials(optuna_db, mlflow_db, STUDY, None)
    for row in rows if studies is not None else []:
        row["overrides"] = config_overrides(studies, row["params"])
    return rows


def collect_trials(
    storage: str, tracking_uri: str | None, study_name: str,
    fits: tuple[str, ...] | None = ("standardised", "raw"),
) -> list[dict[str, Any]]:  # fmt: skip
    """Each trial: number, state, params, value, last pre-training step, probe curves.

    ``fits``: the ``rep/probe_miou_<fit>`` curves to read; None: every early signal the run logged,
    as the replay audit reads them (higher = better): every ``rep/probe_miou*`` metric
    (``rep/probe_miou`` itself as ``miou``), ``rep/rankme`` as ``rankme`` and ``rep/alpha_req``
    as ``alpha_req_near_1`` = -|alpha - 1| (Agrawal et al. find the best representations near 1).
    """
    # lazy: mlflow takes seconds to import and only the collection needs it
    import optuna
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    study = optuna.load_study(study_name=study_name, storage=storage)
    rows = []
    for t in study.get_trials(deepcopy=False):
        run_id = t.user_attrs.get(Attr.RUN_ID)
        hist = client.get_metric_history(run_id, Metric.TRAIN_LOSS) if run_id else []
        logged = client.get_run(run_id).data.metrics if run_id else {}
        curves = {
            name: {int(m.step): how(m.value) for m in client.get_metric_history(run_id, key)}
            for key, (name, how) in _signal_keys(logged, fits).items()
            if run_id
        }
        share = logged.get(Metric.PROBE_TIME_SHARE)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "value": t.value,
                "steps": max((m.step for m in hist), default=0),
                "probe": curves,
                "probe_time_share": share,
            }
        )
    return rows


def _signal_keys(logged: dict[str, float], fits: tuple[str, ...] | None) -> dict[str, Any]:
    """{metric key: (signal name, value transform)} of the curves ``collect_trials`` reads."""
    same = float
    if fits is not None:
        return {f"{Metric.PROBE_MIOU}_{f}": (f, same) for f in fits}
    out: dict[str, Any] = {
        k: (k.removeprefix(f"{Metric.PROBE_MIOU}_") if k != Metric.PROBE_MIOU else "miou", same)
        for k in logged
        if k.startswith(Metric.PROBE_MIOU)
    }
    if Metric.PROBE_RANKME in logged:
        out[Metric.PROBE_RANKME] = ("rankme", same)
    if Metric.PROBE_ALPHA_REQ in logged:
        out[Metric.PROBE_ALPHA_REQ] = ("alpha_req_near_1", lambda v: -abs(float(v) - 1.0))
    return out


def _seed_values(tmp, world, preset, best, n_seeds, extra, studies) -> list[float]:
    """The final probe mIoU of the best configuration at seeds 0..n-1 (seed 0: the study's)."""
    values = [float(best["value"])]
    procs = []
    for seed in range(1, n_seeds):
        out = tmp / f"seed{seed}"
        out.mkdir(exist_ok=True)
        cell = config_overrides(studies, best["params"])
        sets = [*extra[1::2], *(f"{k}={v}" for k, v in cell.items())]
        sets += [f"train.seed={seed}", f"data.dataroot={world}", f"tracking.output_dir={out}"]
        sets += [f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}", "sweep.eval_every=0"]
        code = (
            "import json, sys; from cmcr.configs import load_config; "
            "from cmcr.engine.pipeline import run_trial; "
            f"r = run_trial(load_config({preset!r}, json.loads(sys.argv[1]))); "
            "print('VALUE', r.miou)"
        )
        log = (out / "trial.log").open("w")
        cmd = [sys.executable, "-c", code, json.dumps(sets)]
        procs.append((subprocess.Popen(cmd, cwd=out, stdout=log, stderr=subprocess.STDOUT,
                                       env=_env(studies)), out))  # fmt: skip
    for proc, out in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"seed run failed:\n{(out / 'trial.log').read_text()[-3000:]}")
        line = [x for x in (out / "trial.log").read_text().splitlines() if x.startswith("VALUE")]
        values.append(float(line[-1].split()[1]))
    return values


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    import pandas as pd

    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if len(ra) < 3 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _figures(trials: dict[str, list], seeds: list[float], wall: dict[str, float]) -> dict:
    none = trials["none"]
    done = [t for t in none if t["state"] == "COMPLETE"]
    total = max(t["steps"] for t in done)
    best_none = max(t["value"] for t in done)
    sd = float(np.std(seeds, ddof=1)) if len(seeds) > 1 else float("nan")
    steps_none = sum(t["steps"] for t in none)
    shares = [t["probe_time_share"] for t in done if t["probe_time_share"] is not None]
    out: dict[str, Any] = {
        "steps_unpruned": steps_none,
        "wall_unpruned_s": round(wall["none"], 1),
        "best_unpruned": round(best_none, 4),
        "seed_values": [round(v, 4) for v in seeds],
        "seed_sd": round(sd, 4),
        "probe_time_share": round(float(np.mean(shares)), 4) if shares else None,
    }
    for fit in ("standardised", "raw"):  # the unpruned trials' curves: both fits
        steps = sorted({s for t in done for s in t["probe"].get(fit, {})})
        third = min(steps, key=lambda s: abs(s - total / 3)) if steps else 0
        by_step = {}
        for s in steps:
            pairs = [(t["probe"][fit][s], t["value"]) for t in done if s in t["probe"][fit]]
            by_step[s] = round(spearman([p for p, _ in pairs], [v for _, v in pairs]), 3)
        out[f"spearman_{fit}_at_step_{third}"] = by_step.get(third)
        out[f"spearman_{fit}_by_step"] = by_step
    for kind in trials:
        if kind == "none":
            continue
        pruned = trials[kind]
        steps = sum(t["steps"] for t in pruned)
        best = max((t["value"] for t in pruned if t["state"] == "COMPLETE"), default=float("nan"))
        same = sum(1 for a, b in zip(none, pruned, strict=False) if a["params"] == b["params"])
        out.update(
            {
                f"{kind}_steps": steps,
                f"{kind}_step_ratio": round(steps_none / max(steps, 1), 2),
                f"{kind}_wall_s": round(wall[kind], 1),
                f"{kind}_wall_ratio": round(wall["none"] / max(wall[kind], 1e-9), 2),
                f"{kind}_pruned_trials": sum(1 for t in pruned if t["state"] == "PRUNED"),
                f"{kind}_pruned_at": sorted(t["steps"] for t in pruned if t["state"] == "PRUNED"),
                f"{kind}_same_configurations": same,
                f"{kind}_best": round(best, 4),
                f"{kind}_best_within_one_sd": bool(best >= best_none - sd),
            }
        )
    return out
