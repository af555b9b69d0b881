"""Replay audit of pruning (issue 27): would a pruner on this signal have kept the best trial?

``python -m cmcr.bench replay --trials-json FILE`` (the pruning benchmark's logged trials, e.g.
docs/bench/pruning_2026-12-02_trials.json) or ``--study NAME --storage URL --tracking-uri URL``
(a finished, unpruned study; its curves are each run's ``rep/probe_miou*`` histories in MLflow).

The unpruned study logged, for every trial, its early-signal curves (a value per probe step) and
its final objective: ``cmcr.bench.replay_study`` reads them (``Curves``, ``load_input``) and
replays one trial order through Optuna's own pruners (``replay_order``), at the rungs the live
studies had; its ``live_check`` replays the live pruned studies in their trial-number order,
which must come out the same trial for trial: that is the replay's proof. Here, for each of
``--replay-orders`` random trial orders, a fresh in-memory study receives the trials in that
order (``replay_pruner``; pruners ``PRUNERS``, reduction factor 3; median). Optuna's code
decides; this module only feeds it and counts.

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
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from scipy.stats import rankdata

from cmcr.bench.replay_report import headline, markdown_table, write_outputs
from cmcr.bench.replay_study import Curves, at_rungs, load_input, pruner_of, replay_order

PRUNERS = ("asha", "hyperband", "median")
FRACTIONS = (1 / 6, 1 / 3, 1 / 2)
RANDOM, ORACLE, SHUFFLED = "random", "oracle", "shuffled"


def random_orders(n: int, n_orders: int, rng: np.random.Generator) -> np.ndarray:
    """(R, N): ``n_orders`` random permutations of the trials."""
    return rng.permuted(np.tile(np.arange(n), (n_orders, 1)), axis=1)


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
