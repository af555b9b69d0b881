"""``--add-seeds K [--top N]``: more seeds for a study's finished configurations, nothing run again.

Finished Optuna trials are immutable, so the new seeds run in new trials: for every distinct
configuration (params) among the study's COMPLETE trials (with ``--top N``: the N best by their
mean over every finished seed, ``ranked``), one trial is enqueued with the same
params and user attrs naming the trial it extends (``cmcr.seeds_of``) and the seeds it runs
(``cmcr.trial_seeds``: S..S+K-1, S = one past the highest seed the configuration has or has
queued). Its runs are children of the study's parent run like every other, tagged with their
seed, so the results tables count them as extra seeds of the same row.

Each such trial is a recovery unit of its own: its slot is the string ``"<slot>:s<a>-<b>"``
(ordinary slots are ints), so a failed or killed one is retried, resumed and reported exactly
like a slot (cmcr.sweep.recovery), and its runs are found again by that slot and their seed.

Kill-safety: a request is written to the study in one user attr (``cmcr.added_seeds``) before
any of its trials is enqueued, and every start tops the queue up from it under the study lock
(``enqueue_added``), so a kill between the two loses nothing: ``--resume`` queues the rest.

Idempotent (issue 29): ``--add-seeds K`` sets each configuration's target to K more seeds than
it has finished, and the seeds it already asks for (``cmcr.added_seeds``, finished or not) count
towards it; so ``--add-seeds K`` interrupted and run again adds K seeds in all, not 2K, while
run again after it finished adds K more.

Objective: a finished trial keeps its own value; an added-seeds trial's value is the mean over
every finished seed of its configuration (the trial it extends, earlier added trials, its own),
so the study's best trial reflects all seeds.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from cmcr.errors import StudyError
from cmcr.names import Attr

FLAG = "--add-seeds"
TOP = "--top"


def unit_key(slot: int, seeds: list[int]) -> str:
    """The slot of the trial that adds ``seeds`` to ``slot``'s configuration."""
    return f"{slot}:s{seeds[0]}-{seeds[-1]}"


def params_key(params: dict[str, Any]) -> str:
    """One string per configuration (params compared as stored: JSON)."""
    return json.dumps(params, sort_keys=True, default=str)


def is_added(trial: Any) -> bool:
    """Whether ``trial`` was queued by --add-seeds."""
    return Attr.TRIAL_SEEDS in trial.user_attrs


def trial_seeds(trial: Any, n_seeds: int) -> list[int]:
    """The seeds ``trial`` runs: its added seeds, else 0..n_seeds-1."""
    seeds = trial.user_attrs.get(Attr.TRIAL_SEEDS)
    return [int(s) for s in seeds] if seeds is not None else list(range(n_seeds))


def configurations(study: Any) -> dict[str, Any]:
    """{params key: the first COMPLETE ordinary trial with those params} (trial-number order)."""
    from optuna.trial import TrialState

    out: dict[str, Any] = {}
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in sorted(done, key=lambda t: t.number):
        if not is_added(t) and isinstance(t.user_attrs.get(Attr.SLOT), int):
            out.setdefault(params_key(t.params), t)
    return out


def unfinished(study: Any) -> list[int]:
    """Numbers of the study's own trials still queued or running (added-seeds trials aside)."""
    from optuna.trial import TrialState

    live = (TrialState.WAITING, TrialState.RUNNING)
    return [t.number for t in study.get_trials(deepcopy=False, states=live) if not is_added(t)]


def requested(study: Any) -> dict[str, dict[str, Any]]:
    """Every --add-seeds unit the study was asked for: {slot: {"trial": n, "seeds": [...]}}."""
    return dict(study.user_attrs.get(Attr.ADDED_SEEDS) or {})


def check_top(top: int | None, add_seeds: int | None) -> None:
    """Raise StudyError unless ``--top N`` is an integer >= 1 given with ``--add-seeds``."""
    if top is None:
        return
    if add_seeds is None:
        raise StudyError(
            f"{TOP} {top}: picks the configurations {FLAG} K adds seeds to; add {FLAG}"
        )
    if top < 1:
        raise StudyError(f"{TOP}: expected an integer >= 1, got {top}")


def seed_values(study: Any) -> dict[str, tuple[Any, dict[int, float]]]:
    """{params key: (its first COMPLETE ordinary trial, {seed: val mIoU} of every finished
    seed of the configuration)}; a trial that stored no per-seed results counts as one seed
    of its own (a negative key: it pairs with nothing)."""
    from optuna.trial import TrialState

    by_key: dict[str, dict[int, float]] = {}  # one pass: config_results per key is quadratic
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        results = t.user_attrs.get(Attr.SEED_RESULTS) or {}
        by_key.setdefault(params_key(t.params), {}).update(
            {int(seed): float(v) for seed, v in results.items()}
        )
    return {
        key: (first, by_key.get(key) or {-1 - first.number: float(first.value)})
        for key, first in configurations(study).items()
    }


def ranked(study: Any) -> list[tuple[str, Any, float]]:
    """(params key, first trial, mean over every finished seed) per configuration, best first
    (the study's direction; ties: the earlier trial)."""
    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
    rows = [
        (key, first, statistics.fmean(values.values()))
        for key, (first, values) in seed_values(study).items()
    ]
    return sorted(rows, key=lambda r: (sign * r[2], r[1].number))


def check_request(study: Any, k: int, name: str) -> int:
    """Raise StudyError unless seeds can be added to ``study``; returns its configurations."""
    n = len(configurations(study))
    if n == 0:
        raise StudyError(
            f"{FLAG} {k}: study '{name}' has no COMPLETE trial to add seeds to; "
            "finish some trials first"
        )
    return n


def request(study: Any, k: int, n_seeds: int, top: int | None = None) -> dict[str, dict[str, Any]]:
    """Plan ``k`` more seeds for every configuration (``top``: the ``top`` best, ``ranked``)
    and record the plan; returns the new units.

    Callers hold the study lock. Nothing is enqueued here (``enqueue_added`` does that), so the
    plan is one write: a kill leaves it either whole or absent.
    """
    numbers = {t.number: t for t in study.get_trials(deepcopy=False)}
    units = requested(study)
    planned: dict[str, set[int]] = {}
    for unit in units.values():
        key = params_key(numbers[unit["trial"]].params)
        planned.setdefault(key, set()).update(unit["seeds"])
    finished = {key: len(values) for key, (_, values) in seed_values(study).items()}
    new: dict[str, dict[str, Any]] = {}
    chosen = [(key, first) for key, first, _ in ranked(study)[:top]]  # top None: every one
    for key, trial in sorted(chosen, key=lambda kt: kt[1].number):
        asked = planned.get(key, set()) | set(range(n_seeds))
        # the target: K more than finished now; seeds asked for but not finished count towards
        # it, so an interrupted --add-seeds K run again tops up instead of adding K more
        missing = finished[key] + k - len(asked)
        if missing <= 0:
            continue
        seeds = list(range(max(asked) + 1, max(asked) + 1 + missing))
        new[unit_key(trial.user_attrs[Attr.SLOT], seeds)] = {"trial": trial.number, "seeds": seeds}
    study.set_user_attr(Attr.ADDED_SEEDS, {**units, **new})
    return new


def enqueue_added(study: Any) -> int:
    """Enqueue every requested unit the study has no trial for yet; returns how many.

    Callers hold the study lock (like ``trials.enqueue_slots``).
    """
    have = {t.user_attrs.get(Attr.SLOT) for t in study.get_trials(deepcopy=False)}
    numbers = {t.number: t for t in study.get_trials(deepcopy=False)}
    added = 0
    for slot, unit in requested(study).items():
        if slot in have:
            continue
        attrs = {Attr.SLOT: slot, Attr.SEEDS_OF: unit["trial"], Attr.TRIAL_SEEDS: unit["seeds"]}
        study.enqueue_trial(dict(numbers[unit["trial"]].params), user_attrs=attrs)
        added += 1
    return added


def config_results(study: Any, params: dict[str, Any]) -> dict[str, float]:
    """{"<trial>/<seed>": val mIoU} of every finished seed of the configuration ``params``.

    Seeds of COMPLETE trials only (a failed attempt's results reappear in its retry).
    """
    from optuna.trial import TrialState

    key = params_key(params)
    out: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if params_key(t.params) == key:
            for seed, value in (t.user_attrs.get(Attr.SEED_RESULTS) or {}).items():
                out[f"{t.number}/{seed}"] = float(value)
    return out


def objective_value(trial: Any, results: dict[str, float]) -> float:
    """The trial's value: the mean of its seeds; for an added-seeds trial, of its
    configuration's every finished seed (its own ``results`` included)."""
    if not is_added(trial):
        return statistics.fmean(results.values())
    merged = config_results(trial.study, trial.params)
    merged.update({f"{trial.number}/{seed}": v for seed, v in results.items()})
    return statistics.fmean(merged.values())


def status_lines(study: Any, n_seeds: int) -> list[str]:
    """Per configuration: its seeds finished (added ones marked) and their mean."""
    from optuna.trial import TrialState

    configs = configurations(study)
    if not requested(study):
        return []
    lines = [f"configurations ({len(configs)}), seeds finished / asked for:"]
    trials = study.get_trials(deepcopy=False)
    for key, first in configs.items():
        same = [t for t in trials if params_key(t.params) == key]
        asked = set(range(n_seeds)) | {s for t in same if is_added(t) for s in trial_seeds(t, 0)}
        done = {
            int(s)
            for t in same
            if t.state == TrialState.COMPLETE
            for s in (t.user_attrs.get(Attr.SEED_RESULTS) or {})
        }
        added = sorted(done - set(range(n_seeds)))
        values = config_results(study, first.params).values()
        mean = f" mean={statistics.fmean(values):.4f}" if values else ""
        lines.append(
            f"  #{first.number} seeds {_seeds(done)} of {_seeds(asked)}"
            f" (added {_seeds(set(added))}){mean} params={first.params}"
        )
    return lines


def _seeds(seeds: set[int]) -> str:
    return ",".join(str(s) for s in sorted(seeds)) or "-"
