"""Pruning benchmark: the same study with and without pruning in pre-training (issue 17).

``python -m cmcr.bench pruning [--quick] [--pruning-trials N] [--pruning-world DIR]``

The study is ``loss_weights`` with a fixed sampler seed (TPE: its first 10 trials are its seeded
random start-up, so both studies sample the SAME configurations when N <= 10) on the demo world
at the ``demo`` preset (42 pre-training steps, the representation probe every 7, the 10-epoch
linear probe as the objective). One study runs with ``--pruner none``, one with ``--pruner
asha``, side by side with one thread each (so the wall times see the same machine). Then the
unpruned study's best configuration is trained again with more seeds, for the seed standard
deviation of its final probe mIoU.

Figures:
- ``steps_unpruned`` / ``<variant>_steps`` / ``<variant>_step_ratio``: pre-training optimiser steps of the
  whole study (each run's last ``train/loss`` step), target ratio >= 2.5;
- ``wall_unpruned_s`` / ``wall_pruned_s``: the studies' wall times;
- ``best_unpruned`` / ``best_pruned``: the best trial's final probe mIoU (the objective);
  ``seed_sd``: the standard deviation over ``--pruning-seeds`` seeds of the unpruned best
  configuration; ``best_within_one_sd``: best_pruned >= best_unpruned - seed_sd;
- ``spearman_at_step_S``: rank correlation, over the unpruned trials, between ``probe/miou`` at
  step S (about a third of the budget) and the final probe mIoU; ``spearman_by_step`` for every
  probe step;
- ``probe_time_share``: the probe's mean share of pre-training time (``probe/time_share``);
- ``pruned_trials``, ``same_configurations`` (both studies sampled the same params).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cmcr.names import Attr, Metric
from cmcr.synth import generate_world

ROOT = Path(__file__).resolve().parents[2]
STUDY = "loss_weights"
SAMPLER_SEED = 7
# the studies, side by side: no pruning, ASHA on probe/miou of standardised features (the
# default), ASHA on the fit of raw features
VARIANTS = {
    "none": ["--pruner", "none"],
    "asha": ["--pruner", "asha", "--set", "sweep.probe_features=standardised"],
    "asha_raw": ["--pruner", "asha", "--set", "sweep.probe_features=raw"],
}


def add_arguments(parser: Any) -> None:
    parser.add_argument("--pruning-trials", type=int, default=10, help="trials per study")
    parser.add_argument("--pruning-seeds", type=int, default=3, help="seeds of the best config")
    parser.add_argument("--pruning-world", default="", help="a demo world (default: made here)")
    parser.add_argument("--pruning-keep", default="", help="keep the stores in this folder")
    parser.add_argument(
        "--pruning-set", action="append", default=[], metavar="KEY=VALUE",
        help="config override for every run of the benchmark (e.g. train.epochs=10), repeatable",
    )  # fmt: skip


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
    studies = _study_dir(tmp)
    extra = ["--set", "sweep.eval_every=1"] if quick else []
    for item in getattr(args, "pruning_set", None) or []:
        extra += ["--set", item]
    procs = {}
    t0 = {}
    for kind, how in VARIANTS.items():
        out = tmp / kind
        out.mkdir(exist_ok=True)
        cmd = [
            sys.executable, str(ROOT / "sweeps" / "run.py"), "--study", STUDY,
            "--preset", preset, "--n-trials", str(n_trials), *how,
            "--storage", f"sqlite:///{out / 'optuna.db'}",
            "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}",
            "--set", f"data.dataroot={world}", "--set", f"tracking.output_dir={out / 'runs'}",
            *extra,
        ]  # fmt: skip
        log = (out / "sweep.log").open("w")
        t0[kind] = time.perf_counter()
        procs[kind] = subprocess.Popen(
            cmd, cwd=out, stdout=log, stderr=subprocess.STDOUT, env=_env(studies)
        )
    wall: dict[str, float] = {}
    while len(wall) < len(procs):  # each study's own end time
        for kind, proc in procs.items():
            if kind in wall or proc.poll() is None:
                continue
            if proc.returncode != 0:
                tail = (tmp / kind / "sweep.log").read_text()[-3000:]
                raise RuntimeError(f"the {kind} study failed (exit {proc.returncode}):\n{tail}")
            wall[kind] = time.perf_counter() - t0[kind]
        time.sleep(0.5)
    trials = {kind: _trials(tmp / kind) for kind in VARIANTS}
    none = trials["none"]
    best = max((t for t in none if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    seeds = _seed_values(tmp, world, preset, best, n_seeds, extra, studies)
    out: dict[str, Any] = _figures(trials, seeds, wall)
    out.update(trials=n_trials, preset=preset, load_avg_1m=round(os.getloadavg()[0], 2))
    (tmp / "pruning.json").write_text(json.dumps({**trials, **out}, indent=1, default=str))
    return out


def _env(studies: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CMCR_STUDY_DIR=str(studies), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _study_dir(tmp: Path) -> Path:
    """``loss_weights`` with a fixed sampler seed, in a folder of its own."""
    spec = yaml.safe_load((ROOT / "sweeps" / "studies" / f"{STUDY}.yaml").read_text())
    spec["seed"] = SAMPLER_SEED
    out = tmp / "studies"
    out.mkdir(exist_ok=True)
    (out / f"{STUDY}.yaml").write_text(yaml.safe_dump(spec))
    return out


def _trials(out: Path) -> list[dict[str, Any]]:
    """Each trial of the study in ``out``: see ``collect_trials``."""
    optuna_db, mlflow_db = f"sqlite:///{out / 'optuna.db'}", f"sqlite:///{out / 'mlflow.db'}"
    return collect_trials(optuna_db, mlflow_db, STUDY)


def collect_trials(
    storage: str, tracking_uri: str | None, study_name: str,
    fits: tuple[str, ...] | None = ("standardised", "raw"),
) -> list[dict[str, Any]]:  # fmt: skip
    """Each trial: number, state, params, value, last pre-training step, probe curves.

    ``fits``: the ``probe/miou_<fit>`` curves to read; None: every early signal the run logged,
    as the replay audit reads them (higher = better): every ``probe/miou*`` metric
    (``probe/miou`` itself as ``miou``), ``probe/rankme`` as ``rankme`` and ``probe/alpha_req``
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
        sets = [*extra[1::2], *(f"{k}={v}" for k, v in best["params"].items())]
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
    for kind in VARIANTS:
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
