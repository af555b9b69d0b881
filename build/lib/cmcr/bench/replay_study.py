"""A study's curves for the replay audit (``cmcr.bench.replay``, issue 27), and one trial order
of them replayed through Optuna's own pruners.

The unpruned study logged, for every trial, its early-signal curves (a value per probe step) and
its final objective (``Curves``; ``curves_from_rows`` from the pruning benchmark's trials or
their JSON, ``load_input`` from ``--trials-json`` or a stored study: ``--study NAME --storage
URL --tracking-uri URL``, its curves each run's ``rep/probe_miou*`` histories in MLflow). Replaying
a pruner needs nothing else: a fresh in-memory Optuna study receives the trials one at a time
in an order (``replay_order``; one sequential worker), each reporting its logged curve through
``trial.report`` / ``should_prune`` as the live worker did, with the project's own pruners
(``cmcr.sweep.runner.pruner_for``, reduction factor 3; median). Two rung schemes, as the live
studies had them: studies from before rungs became fractions of the budget (the 2026-12-02
JSON, no ``first_rung``) reported every probe step, the resource the step, ASHA and Hyperband
from the first probe step; a study with ``first_rung`` (``sweep.first_rung``: written by the
pruning benchmark into its JSON, or resolved from a stored study's preset and overrides,
``stored_config`` / ``first_rung_of``) reports only at its rungs, the resource permille of each
trial's budget (``cmcr.engine.probe.rungs``), each rung's value the curve's at the first logged
step at or past the rung's step (the rung's own step when the unpruned study ran with the same
``first_rung``: the probe measures at every rung step), as ``cmcr.sweep.runner.make_pruner``
(``Curves.rung_grid``, ``pruner_of``). Optuna's code decides; this module only feeds it. The
live pruned studies, replayed in their trial-number order, must come out the same trial for
trial (``live_check``): that is the replay's proof.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from cmcr.bench import pruning
from cmcr.configs import load_config
from cmcr.names import Attr
from cmcr.sweep.runner import pruner_for

STUDY_NAME = pruning.STUDY  # the shipped benchmark's study


@dataclass
class Curves:
    """An unpruned study's logged trials: what a replay needs."""

    numbers: list[int]  # trial numbers (row i of every array)
    steps: np.ndarray  # (S,) probe steps, ascending
    final: np.ndarray  # (N,) the objective
    budget: np.ndarray  # (N,) pre-training steps of each trial run to the end
    signals: dict[str, np.ndarray]  # name -> (N, S), NaN where a step was not logged
    params: list[dict] = field(default_factory=list)
    study: str = STUDY_NAME  # Hyperband's brackets hash it with the trial number
    # sweep.first_rung of the studies replayed: rungs in permille of the budget; None: every
    # probe step reported, the resource the step (studies before rungs were fractions)
    first_rung: float | None = None

    @property
    def n(self) -> int:
        return len(self.numbers)

    def rung_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(resources (K,), columns (N, K), stop steps (N, K)) of what each trial reports: the
        permille rungs of ``first_rung``, the curve's column that gives each trial's value at
        each (-1: nothing logged at or past its step) and the rung's step (where a trial
        pruned there stops). Without ``first_rung``: every probe step, itself."""
        from cmcr.engine.probe import rungs  # lazy: the probe module imports torch

        if self.first_rung is None:
            cols = np.tile(np.arange(len(self.steps)), (self.n, 1))
            return self.steps, cols, np.tile(self.steps, (self.n, 1))
        resources = np.asarray([r for r, _ in rungs(self.first_rung, 1000)], dtype=int)
        cols = np.full((self.n, len(resources)), -1, dtype=int)
        stop = np.zeros((self.n, len(resources)), dtype=int)
        for i, total in enumerate(self.budget):
            for k, (_, step) in enumerate(rungs(self.first_rung, int(total))):
                later = np.nonzero(self.steps >= step)[0]
                cols[i, k] = int(later[0]) if len(later) else -1
                stop[i, k] = step
        return resources, cols, stop


def at_rungs(curve: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, K): ``curve`` (N, S) read at each trial's rung columns ``cols`` (``rung_grid``; NaN
    where nothing was logged)."""
    out = np.take_along_axis(curve, np.maximum(cols, 0), axis=1)
    return np.where(cols >= 0, out, np.nan)


def curves_from_rows(rows: list[dict[str, Any]]) -> Curves:
    """``Curves`` of the COMPLETE rows of ``pruning.collect_trials`` (or its JSON)."""
    done = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["number"])
    if len(done) < 3:
        raise ValueError(f"a replay needs >= 3 finished trials, got {len(done)}")
    names = sorted({k for r in done for k in r["probe"]})
    steps = sorted({int(s) for r in done for c in r["probe"].values() for s in c})
    signals = {}
    for name in names:
        grid = np.full((len(done), len(steps)), np.nan)
        for i, r in enumerate(done):
            for s, v in r["probe"].get(name, {}).items():
                grid[i, steps.index(int(s))] = float(v)
        if not np.isnan(grid).all():
            signals[name] = grid
    return Curves(
        numbers=[int(r["number"]) for r in done],
        steps=np.asarray(steps, dtype=int),
        final=np.asarray([float(r["value"]) for r in done]),
        budget=np.asarray([int(r["steps"]) for r in done]),
        signals=signals,
        params=[r.get("params", {}) for r in done],
    )


def new_pruner(kind: str, first_step: int) -> Any:
    """The sweep's own pruner ``kind`` for probe steps every ``first_step`` (fresh: Hyperband
    keeps state per study): the step rungs the audited studies ran with (before rungs became
    fractions of the budget, sweep.first_rung)."""
    return pruner_for(kind, int(first_step), "auto")


def pruner_of(kind: str, curves: Curves) -> Any:
    """A fresh pruner ``kind`` as the live studies of ``curves`` had it: step rungs from the
    first probe step (no ``first_rung``), else ``make_pruner``'s permille rungs."""
    from cmcr.engine.probe import RESOURCE  # lazy: the probe module imports torch

    if curves.first_rung is None:
        return new_pruner(kind, int(curves.steps[0]))
    return pruner_for(kind, max(1, round(curves.first_rung * RESOURCE)), RESOURCE)


def replay_order(
    curve: np.ndarray,
    final: np.ndarray,
    steps: np.ndarray,
    order: np.ndarray,
    pruner: Any,
    sampler: Any = None,
    study_name: str = STUDY_NAME,
    stop_steps: np.ndarray | None = None,
) -> np.ndarray:
    """(N,): the step at which each trial was pruned (0: completed), adding the trials in
    ``order`` to a fresh in-memory study that uses ``pruner``; ``steps``: the resource each
    column is reported at. ``stop_steps`` (N, S): the pre-training step where a trial pruned
    at each column stops (default: ``steps``; differs for permille rungs). ``sampler``: never
    asked (no search space); pass one to share, as a new one seeds its generator (ms per
    study)."""
    study = optuna.create_study(
        direction="maximize",
        pruner=pruner,
        study_name=study_name,
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
    )
    stopped = np.zeros(len(final), dtype=int)
    for i in order:
        trial = study.ask()
        for col, (step, value) in enumerate(zip(steps, curve[i], strict=True)):
            if np.isnan(value):  # not logged at this step (e.g. a coarser probe)
                continue
            trial.report(float(value), int(step))
            if trial.should_prune():
                stopped[i] = int(step if stop_steps is None else stop_steps[i, col])
                break
        if stopped[i]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(final[i]))
    return stopped


def live_check(curves: Curves, rows: list[dict], signal: str, kind: str) -> dict[str, Any]:
    """Replay a live pruned study in its trial-number order: the same trials pruned at the
    same steps? (A live trial is matched to the unpruned one of the same number and params.)"""
    index = {n: i for i, n in enumerate(curves.numbers)}
    rows = sorted(rows, key=lambda r: r["number"])
    order = np.asarray([index[r["number"]] for r in rows])
    resources, cols, stop = curves.rung_grid()
    curve = at_rungs(curves.signals[signal], cols)
    replayed = replay_order(
        curve, curves.final, resources, order, pruner_of(kind, curves), None, curves.study, stop
    )
    trials = []
    for r in rows:
        i = index[r["number"]]
        live = int(r["steps"]) if r["state"] == "PRUNED" else 0
        same_params = not r.get("params") or r["params"] == curves.params[i]
        trials.append({"number": r["number"], "live": live, "replay": int(replayed[i]),
                       "same_params": same_params})  # fmt: skip
    same = all(t["live"] == t["replay"] and t["same_params"] for t in trials)
    return {"signal": signal, "pruner": kind, "same": same, "trials": trials}


def live_variants(data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{variant: (pruner, signal)} of the pruning benchmark's live pruned studies in ``data``
    (read from ``pruning.VARIANTS``: ``--pruner KIND --set sweep.probe_features=SIGNAL``)."""
    out = {}
    for variant, how in pruning.VARIANTS.items():
        kind = how[how.index("--pruner") + 1] if "--pruner" in how else "none"
        feats = [h.split("=", 1)[1] for h in how if h.startswith("sweep.probe_features=")]
        if kind != "none" and feats and isinstance(data.get(variant), list):
            out[variant] = (kind, feats[0])
    return out


def load_input(args: argparse.Namespace) -> tuple[Curves, float | None, dict[str, Any]]:
    """The curves, the seed SD and the live checks of ``--trials-json`` or ``--study``."""
    if getattr(args, "trials_json", ""):
        data = json.loads(Path(args.trials_json).read_text())
        curves = curves_from_rows(data["none"])
        curves.first_rung = data.get("first_rung")  # None: the step rungs of older benchmarks
        live = {v: live_check(curves, data[v], sig, kind)
                for v, (kind, sig) in live_variants(data).items()}  # fmt: skip
        sd = data.get("seed_sd")
        return curves, (None if sd is None or math.isnan(sd) else float(sd)), live
    if not (getattr(args, "study", "") and getattr(args, "storage", "")):
        raise SystemExit("replay: give --trials-json FILE, or --study NAME --storage URL")
    uri = args.tracking_uri or None
    curves = curves_from_rows(pruning.collect_trials(args.storage, uri, args.study, None))
    curves.study = args.live_study or args.study  # the live study's brackets, if one is checked
    cfg = stored_config(args.storage, args.live_study or args.study)
    curves.first_rung = first_rung_of(cfg)
    live = {}
    if args.live_study:
        rows = pruning.collect_trials(args.storage, uri, args.live_study, None)
        # the signal the live pruner saw: its sweep.probe_features (rep/probe_miou of old studies)
        signal = "miou" if cfg is None else cfg.sweep.probe_features
        live[args.live_study] = live_check(curves, rows, signal, args.live_pruner)
    return curves, None, live


def stored_config(storage: str, study_name: str) -> Any:
    """The config a study's trials ran with (the preset and overrides the sweep stored), or
    None for a study that stored none."""
    attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    if Attr.PRESET not in attrs:
        return None
    return load_config(attrs[Attr.PRESET], dict(attrs.get(Attr.OVERRIDES) or {}))


def first_rung_of(cfg: Any) -> float | None:
    """``sweep.first_rung`` of ``cfg`` when its pruner saw the probe's permille rungs; None
    without a config (the step rungs of studies before them) or without the probe."""
    from cmcr.engine.probe import enabled  # lazy: the probe module imports torch

    return float(cfg.sweep.first_rung) if cfg is not None and enabled(cfg) else None
