"""A sweep's MLflow runs: the study's parent run (found, created or reopened; described; ended
with the study) and the end of each trial's child runs by the trial's outcome.

Every run ends through a verb of ``cmcr.tracking.runs`` (``end_study``, ``mark_pruned``, ...):
the MLflow status each outcome gives is chosen there, never here. Updating MLflow is best
effort where noted: Optuna's record of a trial must not depend on MLflow being reachable.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import yaml

from cmcr.configs import Config, variant_name
from cmcr.names import Attr, Kind, Metric, Tag
from cmcr.sweep import recovery
from cmcr.tracking import runs
from cmcr.tracking.inputs import run_spec
from cmcr.tracking.runs import RunLogger
from cmcr.tracking.store import client_for, get_or_create_experiment, resolve_tracking_uri
from cmcr.tracking.study import describe_study, prepare_study_experiment, study_note
from cmcr.uris import redact

log = logging.getLogger("cmcr.sweep")


def one_line(what: str, exc: BaseException) -> str:
    """``what: Type: first line of the message``, credentials redacted."""
    text = str(exc).strip().splitlines()
    return redact(f"{what}: {type(exc).__name__}: {text[0] if text else '(no message)'}")


def open_parent(
    base: Config,
    study: Any,
    *,
    name: str,
    storage: str,
    definition: dict[str, Any],
    n_trials: int,
    params: list[str],
) -> str:
    """The study's MLflow parent run: linked in the study's user attrs, else found by tag,
    else created. Marked RUNNING while workers run. ``definition``: the study file's content
    (direction, sampler, ...); ``params``: the swept keys."""
    cfg = copy.deepcopy(base)
    cfg.tracking.system_metrics = False  # the parent run does no work worth monitoring
    uri = resolve_tracking_uri(cfg)
    tags = {
        Tag.STUDY: name,
        Tag.STORAGE: redact(storage),
        Tag.DIRECTION: definition["direction"],
        Tag.SAMPLER: definition["sampler"],
        Tag.N_TRIALS: str(n_trials),
    }
    if not any(key.startswith("method.") for key in params):  # every trial has this variant
        tags[Tag.VARIANT] = variant_name(cfg)
    parent = study.user_attrs.get(Attr.PARENT_RUN) or runs.find_study_run(
        uri, cfg.tracking.experiment, name, tags[Tag.STORAGE]
    )
    if parent is None:
        logger = RunLogger.start(run_spec(cfg, kind=Kind.STUDY, tags=tags, name=name))
        logger.log_text(yaml.safe_dump(definition, sort_keys=False), "study.yaml")
        parent = logger.run_id
    else:
        get_or_create_experiment(client_for(uri), cfg.tracking.experiment, uri)
        runs.reopen(uri, parent, {Tag.N_TRIALS: str(n_trials)})
    study.set_user_attr(Attr.PARENT_RUN, parent)
    _describe_experiment(uri, base.tracking.experiment, name, definition["direction"], params,
                         parent)  # fmt: skip
    return parent


def _describe_experiment(
    uri: str, experiment: str, name: str, direction: str, params: list[str], parent: str
) -> None:
    """The study's experiment: model-training kind, its runs view, its and the parent's notes."""
    params = sorted(params)
    note = study_note(name, objective=Metric.VAL_MIOU, direction=direction, params=params)
    try:  # a convenience for the UI: workers starting together may race on the same tags
        exp_id = prepare_study_experiment(uri, experiment, study=name, objective=Metric.VAL_MIOU,
                                          direction=direction, params=params)  # fmt: skip
        describe_study(uri, exp_id, parent, note, shared=True)
    except Exception as exc:
        log.warning(one_line("could not describe the study's MLflow experiment", exc))


def finish_parent(
    base: Config, study: Any, parent: str, summary: dict[str, Any], max_retries: int
) -> None:
    """Record the best trial on the parent run, end the orphaned child runs, and end the parent
    with the study once every slot is done (``summary["done"]``, ``summary["failed_slots"]``)."""
    uri = resolve_tracking_uri(base)
    if "best_value" in summary:
        best = study.best_trial
        n_complete = summary.get("COMPLETE", 0)
        logger = RunLogger(client_for(uri), parent, uri)
        # once per step: every finish (each --resume, each worker) would log it again
        last = logger.last_logged_step(Metric.STUDY_BEST_VALUE)
        if last is None or last < n_complete:
            logger.log_metrics({Metric.STUDY_BEST_VALUE: best.value}, step=n_complete)
        runs.set_tag_shared(uri, parent, Tag.BEST_TRIAL, str(best.number))
        runs.set_tag_shared(uri, parent, Tag.BEST_RUN_ID, str(best.user_attrs.get(Attr.RUN_ID)))
    _end_orphans(uri, base.tracking.experiment, study, parent, max_retries)
    if summary["done"]:
        failures = [f"slot {s} (trial {n}): {r}" for s, n, r in summary["failed_slots"]]
        runs.end_study(uri, parent, failures)


def _end_orphans(uri: str, experiment: str, study: Any, parent: str, max_retries: int) -> None:
    """End child runs left RUNNING whose slot no worker holds (a kill between an attempt's end
    and the update of its runs, or a run created by an attempt killed before it linked it)."""
    slots = recovery.by_slot(study.get_trials(deepcopy=False))
    first = recovery.reopened(study)
    for run in runs.running_children(uri, experiment, parent):
        run_id = run.info.run_id
        slot = recovery.slot_of_tag(run.data.tags.get(Tag.SLOT))
        attempts = slots.get(slot) if slot is not None else None
        if attempts is None:
            runs.end_killed(uri, run_id, "no trial of the sweep holds this run")
            continue
        state, reason = recovery.verdict(attempts, first.get(slot, 0), max_retries)
        if state == "done" and any(t.state.name == "COMPLETE" for t in attempts):
            runs.end_complete(uri, run_id, reason or None)
        elif state == "done":
            runs.end_killed(uri, run_id, reason)
        elif state == "failed":
            runs.end_failed(uri, run_id, reason)


def end_interrupted(base: Config, parent: str, reason: str) -> None:
    """End the parent run of a sweep the user interrupted (KILLED, with ``reason``)."""
    runs.end_killed(resolve_tracking_uri(base), parent, reason)


# ---- a trial's child runs, by the trial's outcome (best effort) -----------------------------
def runs_complete(base: Config, trial: Any) -> None:
    """The trial completed: its runs are tagged COMPLETE."""
    _each_run(base, trial, runs.mark_complete)


def runs_pruned(base: Config, trial: Any, reason: str, tags: dict[str, str]) -> None:
    """The pruner stopped the trial: its runs are tagged PRUNED with where, and ended."""
    _each_run(base, trial, runs.mark_pruned, reason, tags)


def runs_failed(base: Config, trial: Any, reason: str) -> None:
    """The trial failed: its open runs are ended as failed with ``reason``."""
    _each_run(base, trial, runs.mark_failed, reason)


def runs_lost(base: Config, trial: Any, reason: str) -> None:
    """The trial's worker was lost: its open runs are ended as killed with ``reason``."""
    _each_run(base, trial, runs.mark_lost, reason)


def _each_run(base: Config, trial: Any, verb: Any, *args: Any) -> None:
    """``verb(uri, run_id, *args)`` on each of the trial's child runs; best effort: Optuna's
    record of the trial must not depend on MLflow being reachable."""
    try:
        uri = resolve_tracking_uri(base)
        for run_id in trial.user_attrs.get(Attr.RUN_IDS, {}).values():
            verb(uri, run_id, *args)
    except Exception as exc:
        log.warning(one_line("could not update the trial's MLflow runs", exc))
