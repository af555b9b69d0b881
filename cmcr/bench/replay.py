"""Replay audit of pruning (issue 27): would a pruner on this signal have kept the best trial?

``python -m cmcr.bench replay --trials-json FILE`` (the pruning benchmark's logged trials, e.g.
docs/bench/pruning_2026-12-02_trials.json) or ``--study NAME --storage URL --tracking-uri URL``
(a finished, unpruned study; its curves are each run's ``probe/miou*`` histories in MLflow).

The unpruned study logged, for every trial, its early-signal curves (a value per probe step) and
its final objective. Replaying a pruner needs nothing else: for each of ``--replay-orders``
random trial orders, a fresh in-memory Optuna study receives the trials one at a time in that
order (one sequential worker), each reporting its logged curve through ``trial.report`` /
``should_prune`` as the live worker did, with the project's own pruners
(``cmcr.sweep.runner.pruner_for``, reduction factor 3; median). Two rung schemes, as the live
studies had them: studies from before rungs became fractions of the budget (the 2026-12-02
JSON, no ``first_rung``) reported every probe step, the resource the step, ASHA and Hyperband
from the first probe step; a study with ``first_rung`` (``sweep.first_rung``: written by the
pruning benchmark into its JSON, or resolved from a stored study's preset and overrides)
reports only at its rungs, the resource permille of each trial's budget
(``cmcr.engine.probe.rungs``), each rung's value the curve's at the first logged step at or
past the rung's step (the rung's own step when the unpruned study ran with the same
``first_rung``: the probe measures at every rung step), as ``cmcr.sweep.runner.make_pruner``. Optuna's code decides; this module only feeds it and counts. The live pruned
studies, replayed in their trial-number order, must come out the same trial for trial
(``live_check``): that is the replay's proof.

Baselines, on the same orders: ``random`` (a fresh random curve per order, same steps), ``oracle``
(the final value at every step), and ``top_third@f`` for every signal: run every trial to the
probe step nearest a fraction ``f`` of its budget, then only the top third by the signal there
to the end (ties: the earlier trial in the order wins).

Figures per signal and method (``summarise``): pre-training steps used (mean over orders, and
the ratio of no pruning's to it); expected best kept (mean over orders) with a bootstrap 95 %
interval of that mean and the 2.5-97.5 % spread over orders; the paired differences, on the
same orders, with their bootstrap 95 % intervals, to two nulls: ``random`` (the random signal
with the same method) and ``shuffled`` (the same pruning decisions with the final values dealt
to the trials at random: the signal's own budget, curve shapes and ties, without its
information; ``shuffled_best``). The two differ: an i.i.d. random curve is re-drawn at every
rung, so ASHA prunes more at later rungs than with any curve that is steady across steps, and
"beats random" can be "spends more steps". ``minus shuffled`` asks only whether the signal
knows which trial is better. Those intervals are over trial orders for THESE trials: they say
how sure the replay is, not how another draw of configurations would fare. ``p_deal``
(``deal_p``) is a trial-level permutation p-value of the expected best kept: would the final
values dealt to the trials at random have done as well with the same decisions? Also: whether
the expected best kept is within one seed SD of no pruning's best. Per signal and probe step:
Spearman's rho against the final objective with a two-sided permutation p-value
(``spearman_by_step``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from scipy.stats import rankdata

from cmcr.bench import pruning
from cmcr.bench.replay_report import headline, markdown_table, write_outputs
from cmcr.sweep.runner import pruner_for

PRUNERS = ("asha", "hyperband", "median")
FRACTIONS = (1 / 6, 1 / 3, 1 / 2)
RANDOM, ORACLE, SHUFFLED = "random", "oracle", "shuffled"
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


def random_orders(n: int, n_orders: int, rng: np.random.Generator) -> np.ndarray:
    """(R, N): ``n_orders`` random permutations of the trials."""
    return rng.permuted(np.tile(np.arange(n), (n_orders, 1)), axis=1)


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


def replay_pruner(curves: Curves, curve_of: Any, orders: np.ndarray, kind: str) -> np.ndarray:
    """(R, N) stop steps of pruner ``kind`` over ``orders``; ``curve_of(r)`` gives order r's
    (N, S) signal (a fixed array for a logged signal, a fresh one for the random signal)."""
    resources, cols, stop = curves.rung_grid()
    out = np.zeros(orders.shape, dtype=int)
    sampler = optuna.samplers.RandomSampler(seed=0)
    for r, order in enumerate(orders):
        pruner, curve = pruner_of(kind, curves), at_rungs(curve_of(r), cols)
        out[r] = replay_order(
            curve, curves.final, resources, order, pruner, sampler, curves.study, stop
        )
    return out


def top_third(values: np.ndarray, orders: np.ndarray, step: int, keep: int) -> np.ndarray:
    """(R, N) stop steps of "run every trial to ``step``, then the ``keep`` best by ``values``
    (R, N: each order's signal at that step) to the end". Ties: the trial earlier in the order."""
    n_orders, n = orders.shape
    position = np.empty_like(orders)
    position[np.arange(n_orders)[:, None], orders] = np.arange(n)[None, :]
    value = np.nan_to_num(values, nan=-np.inf)
    # np.lexsort sorts by its last key first: value descending, then position ascending
    ranked = np.stack([np.lexsort((position[r], -value[r])) for r in range(n_orders)])
    stopped = np.full(orders.shape, step, dtype=int)
    np.put_along_axis(stopped, ranked[:, :keep], 0, axis=1)
    return stopped


def fraction_step(curves: Curves, fraction: float) -> tuple[int, int]:
    """The probe step nearest ``fraction`` of the budget, and its column."""
    col = int(np.argmin(np.abs(curves.steps - fraction * float(np.max(curves.budget)))))
    return int(curves.steps[col]), col


def best_kept(stopped: np.ndarray, final: np.ndarray) -> np.ndarray:
    """(R,): the best final value among the trials that ran to the end (NaN if none did)."""
    return best_kept_of(stopped, np.broadcast_to(final, stopped.shape))


def steps_used(stopped: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """(R,): pre-training steps the whole study spent."""
    return np.where(stopped == 0, budget[None, :], stopped).sum(axis=1)


def mean_ci(x: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> list[float]:
    """Bootstrap 95 % interval (percentile) of the mean of ``x``."""
    x = x[~np.isnan(x)]
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def shuffled_best(stopped: np.ndarray, final: np.ndarray, rng: Any) -> np.ndarray:
    """(R,): best kept of the SAME pruning decisions with the final values dealt to the trials
    at random in each order: the signal's curves, its budget and its ties, without its
    information. (Dealing a signal's curves to the trials at random and replaying is the same
    as replaying the signal in another random order, so this costs no replay.)"""
    deal = rng.permuted(np.tile(np.arange(len(final)), (len(stopped), 1)), axis=1)
    return best_kept_of(stopped, final[deal])


def deal_p(stopped: np.ndarray, final: np.ndarray, rng: Any, n_deals: int = 1000) -> float:
    """Trial-level permutation p-value of the expected best kept: the share of random deals of
    the final values to the trials (one deal for all orders, the decisions kept) whose mean best
    kept over the orders is at least the signal's. The order intervals are conditional on these
    trials; this asks whether an uninformative signal with the same pruning pattern would have
    done as well on them, which is what a handful of trials can and cannot show."""
    observed = float(np.nanmean(best_kept(stopped, final)))
    kept = stopped == 0  # (R, N)
    hits = 0
    for start in range(0, n_deals, 100):  # chunks: (100, R, N) at most
        deals = rng.permuted(np.tile(final, (min(100, n_deals - start), 1)), axis=1)  # (D, N)
        best = np.where(kept[None], deals[:, None, :], -np.inf).max(axis=2)  # (D, R)
        best = np.where(np.isfinite(best), best, np.nan)
        hits += int(np.sum(np.nanmean(best, axis=1) >= observed - 1e-12))
    return (hits + 1) / (n_deals + 1)


def best_kept_of(stopped: np.ndarray, finals: np.ndarray) -> np.ndarray:
    """``best_kept`` with a final value per order and trial (R, N)."""
    kept = np.where(stopped == 0, finals, -np.inf).max(axis=1)
    return np.where(np.isfinite(kept), kept, np.nan)


def summarise(
    stopped: np.ndarray, curves: Curves, nulls: dict[str, np.ndarray], ref: dict, rng: Any
) -> dict[str, Any]:
    """The figures of one (signal, method): see the module docstring. ``nulls``: the best kept
    per order of each baseline compared with (``random``, ``shuffled``); ``ref``: the unpruned
    study's ``best`` and ``steps`` and the ``seed_sd``."""
    best = best_kept(stopped, curves.final)
    steps = steps_used(stopped, curves.budget)
    expected = float(np.nanmean(best))
    sd = ref.get("seed_sd")
    out = {
        "steps_mean": float(steps.mean()),
        "step_ratio": float(ref["steps"] / steps.mean()),
        "best_kept": expected,
        "best_kept_ci": mean_ci(best, rng),
        "best_kept_spread": [float(np.nanpercentile(best, q)) for q in (2.5, 97.5)],
        "p_best_trial_kept": float(np.mean(best >= ref["best"])),
        "within_one_sd": None if sd is None else bool(expected >= ref["best"] - sd),
        "p_within_one_sd": None if sd is None else float(np.mean(best >= ref["best"] - sd)),
        "pruned_mean": float((stopped > 0).sum(axis=1).mean()),
        "p_deal": deal_p(stopped, curves.final, rng),
    }
    for name, null in nulls.items():  # paired: the same orders
        out[f"diff_{name}"] = float(np.nanmean(best - null))
        out[f"diff_{name}_ci"] = mean_ci(best - null, rng)
    return out


def spearman_by_step(
    curve: np.ndarray, final: np.ndarray, steps: np.ndarray, rng: Any, n_perm: int = 10000
) -> list[dict[str, Any]]:
    """Per step: Spearman's rho of the signal against the final objective, two-sided
    permutation p-value over ``n_perm`` shuffles of the final values ((k + 1) / (n_perm + 1))."""
    rf = rankdata(final)
    perm = rng.permuted(np.tile(rf, (n_perm, 1)), axis=1)  # (P, N)
    out = []
    for col, step in enumerate(steps):
        ok = ~np.isnan(curve[:, col])
        rs = rankdata(curve[ok, col])
        if ok.sum() < 3 or np.ptp(rs) == 0:
            out.append({"step": int(step), "rho": None, "p": None})
            continue
        rank_final = rankdata(final[ok])
        rho = _corr(rs, rank_final)
        shuffled = perm if ok.all() else rng.permuted(np.tile(rank_final, (n_perm, 1)), axis=1)
        null = _corr_rows(rs, shuffled)
        p = (np.sum(np.abs(null) >= abs(rho) - 1e-12) + 1) / (n_perm + 1)
        out.append({"step": int(step), "rho": round(rho, 4), "p": float(p)})
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _corr_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``a`` (N,) with every row of ``rows`` (P, N)."""
    a = (a - a.mean()) / a.std()
    rows = rows - rows.mean(axis=1, keepdims=True)
    return (rows @ a) / (len(a) * rows.std(axis=1))


def stop_steps(curves: Curves, orders: np.ndarray, noise: np.ndarray, pruners: tuple) -> dict:
    """{signal: {method: (R, N) stop steps}} for every logged signal and the two baselines."""
    oracle = np.repeat(curves.final[:, None], len(curves.steps), axis=1)
    fixed = {**curves.signals, ORACLE: oracle}
    keep = max(1, curves.n // 3)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in [RANDOM, *fixed]:
        curve_of = (lambda r: noise[r]) if name == RANDOM else (lambda r, c=fixed[name]: c)
        methods = {kind: replay_pruner(curves, curve_of, orders, kind) for kind in pruners}
        for fraction in FRACTIONS:
            step, col = fraction_step(curves, fraction)
            if name == RANDOM:
                values = noise[:, :, col]
            else:
                values = np.broadcast_to(fixed[name][:, col], orders.shape)
            methods[f"top_third@{step}"] = top_third(values, orders, step, keep)
        out[name] = methods
    return out


def audit(
    curves: Curves, seed_sd: float | None, n_orders: int = 1000, seed: int = 0,
    pruners: tuple = PRUNERS,
) -> dict[str, Any]:  # fmt: skip
    """Every figure of the replay audit (JSON-ready)."""
    rng = np.random.default_rng(seed)
    orders = random_orders(curves.n, n_orders, rng)
    noise = rng.random((n_orders, curves.n, len(curves.steps)))  # the random signal's curves
    t0 = time.perf_counter()
    stopped = stop_steps(curves, orders, noise, pruners)
    replay_s = time.perf_counter() - t0
    ref = {"best": float(curves.final.max()), "steps": int(curves.budget.sum()), "seed_sd": seed_sd}
    results: dict[str, Any] = {}
    for name, methods in stopped.items():
        results[name] = {}
        for method, s in methods.items():
            nulls = {
                RANDOM: best_kept(stopped[RANDOM][method], curves.final),
                SHUFFLED: shuffled_best(s, curves.final, rng),
            }
            results[name][method] = summarise(s, curves, nulls, ref, rng)
    oracle = np.repeat(curves.final[:, None], len(curves.steps), axis=1)
    rho = {
        n: spearman_by_step(c, curves.final, curves.steps, rng) for n, c in curves.signals.items()
    }
    rho[ORACLE] = spearman_by_step(oracle, curves.final, curves.steps, rng)
    return {
        "trials": curves.n,
        "orders": n_orders,
        "seed": seed,
        "steps": curves.steps.tolist(),
        "unpruned": {**ref, "final": curves.final.tolist(), "numbers": curves.numbers},
        "fractions": {f"{f:.3f}": fraction_step(curves, f)[0] for f in FRACTIONS},
        "results": results,
        "spearman": rho,
        "replay_wall_s": round(replay_s, 2),
    }


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


# -- the command ----------------------------------------------------------------------------
def add_arguments(parser: Any) -> None:
    parser.add_argument("--trials-json", default="", help="replay: the pruning benchmark's JSON")
    parser.add_argument("--study", default="", help="replay: a finished, unpruned study's name")
    parser.add_argument("--storage", default="", help="replay: the study's Optuna storage URL")
    parser.add_argument("--tracking-uri", default="", help="replay: its MLflow tracking URI")
    parser.add_argument("--live-study", default="", help="replay: a live pruned study to check")
    parser.add_argument("--live-pruner", default="asha", help="replay: the live study's pruner")
    parser.add_argument("--replay-orders", type=int, default=1000, help="random trial orders")
    parser.add_argument("--replay-seed", type=int, default=0, help="seed of the orders")
    parser.add_argument("--replay-out", default="bench_results/replay", help="figure folder")


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
        # the signal the live pruner saw: its sweep.probe_features (probe/miou of old studies)
        signal = "miou" if cfg is None else cfg.sweep.probe_features
        live[args.live_study] = live_check(curves, rows, signal, args.live_pruner)
    return curves, None, live


def stored_config(storage: str, study_name: str) -> Any:
    """The config a study's trials ran with (the preset and overrides the sweep stored), or
    None for a study that stored none."""
    from cmcr.configs import load_config
    from cmcr.names import Attr

    attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    if Attr.PRESET not in attrs:
        return None
    return load_config(attrs[Attr.PRESET], dict(attrs.get(Attr.OVERRIDES) or {}))


def first_rung_of(cfg: Any) -> float | None:
    """``sweep.first_rung`` of ``cfg`` when its pruner saw the probe's permille rungs; None
    without a config (the step rungs of studies before them) or without the probe."""
    from cmcr.engine.probe import enabled  # lazy: the probe module imports torch

    return float(cfg.sweep.first_rung) if cfg is not None and enabled(cfg) else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``python -m cmcr.bench replay``: the audit, its table, JSON and figure."""
    t0 = time.perf_counter()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a study per order: no INFO lines
    try:
        curves, seed_sd, live = load_input(args)
        out = audit(curves, seed_sd, int(args.replay_orders), int(args.replay_seed))
    finally:
        optuna.logging.set_verbosity(level)
    out["seed_sd"] = seed_sd
    out["live"] = live
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    print(markdown_table(out), flush=True)
    paths = write_outputs(out, Path(getattr(args, "replay_out", "bench_results/replay")))
    return headline(out, paths)
