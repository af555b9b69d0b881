"""``python sweeps/run.py``: resumable, parallel Optuna sweeps over the CMCR config.

Examples::

    python sweeps/run.py --list
    python sweeps/run.py --study loss_weights --preset smoke --n-trials 3
    python sweeps/run.py --study components --workers 2          # the 8-cell ablation grid
    python sweeps/run.py --study loss_weights --resume           # after a crash or kill
    python sweeps/run.py --study loss_weights --status
    python sweeps/run.py --study loss_weights --add-seeds 2      # seeds S, S+1 of every config
    python sweeps/run.py --study my_study.yaml --storage postgresql://user@db:5432/optuna

Several machines share a study by pointing ``--storage`` at one PostgreSQL database and
running the same command on each.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cmcr.configs import set_values
from cmcr.engine.preflight import before_sweep
from cmcr.errors import UNAVAILABLE_EXIT, CMCRError, Unavailable
from cmcr.names import Attr
from cmcr.runlog import setup_console
from cmcr.sweep import group as launch
from cmcr.sweep import parent as parent_runs
from cmcr.sweep import runner, slurm
from cmcr.sweep.estimate import estimate, per_cell, slot_costs, under_load
from cmcr.sweep.group import GroupBroken
from cmcr.sweep.objective import default_trial_fn
from cmcr.sweep.options import PROG, add_arguments, reuse_stored, sweep_options
from cmcr.sweep.progress import ProgressView
from cmcr.sweep.shield import shielded
from cmcr.sweep.slurm_job import worker_launcher
from cmcr.sweep.spawn import WORKER_CMD, run_here
from cmcr.sweep.summary import (
    list_studies,
    print_status,
    queue_line,
    start_lines,
    summary_line,
    where_to_look,
    with_noise,
)
from cmcr.sweep.worker import work
from cmcr.uris import print_traceback, redact, redact_logging


@dataclass(frozen=True)
class Extras:
    """What a sweep does beside its trials. A caller whose stand-in trial function reads no
    data and makes no real runs turns them off (tests/sweep_with_trial_fn.py)."""

    check_data: bool = True  # the preset's data is there, before the study is written
    estimate: bool = True  # the time estimate in the start lines and the live view
    build_report: bool = True  # the study's report after a finished sweep


def run(
    args: argparse.Namespace,
    trial_fn: Any = None,
    worker_cmd: Sequence[str] = WORKER_CMD,
    extras: Extras = Extras(),
) -> int:
    """Dispatch --list / --status / --cancel / a worker / a sweep.

    ``trial_fn`` replaces ``run_trial`` in this process; ``worker_cmd`` starts each spawned
    worker (a test passes one that injects its trial function there too); ``extras``: see
    ``Extras``.
    """
    _quiet_libraries()
    if args.no_report:
        extras = dataclasses.replace(extras, build_report=False)
    if args.list:
        print(list_studies(args.preset, set_values(args.overrides)))
        return 0
    if not args.study:
        raise CMCRError("--study: required (a built-in name from --list, or a study .yaml)")
    if args.heartbeat_s < 1:
        raise CMCRError(f"--heartbeat: expected an integer >= 1, got {args.heartbeat_s}")
    plan = runner.plan_sweep(sweep_options(args))
    if args.resume and not args.worker:
        plan = _reuse_stored(args, plan)
    if args.add_seeds is not None and args.status:
        raise CMCRError("--add-seeds: not with --status (run it, then ask for the status)")
    if args.status:  # the stored study's size, not the study file's default
        return print_status(runner.resume_size(plan) if plan.opts.n_trials is None else plan)
    if args.cancel:
        return slurm.cancel(plan)
    if not args.worker:  # a spawned worker's parent checked and sized the study already
        settings = slurm.check(plan.opts)
        plan, rc = _before_start(plan, extras)
        if rc is not None:
            return rc
        if settings is not None:
            return slurm.submit(plan, settings)
    return _launch(args, plan, trial_fn, worker_cmd, extras)


def _reuse_stored(args: argparse.Namespace, plan: Any) -> Any:
    """``--resume``: the stored study's preset, seeds, objective and overrides where the call
    names none (a smoke sweep resumes as smoke without --preset smoke); says what it reused."""
    stored = runner.stored_attrs(plan)
    if stored is None:
        return plan
    reused = reuse_stored(args, stored, dict(plan.spec.fixed))
    if not reused:
        return plan
    print(f"--resume: the stored study's {'; '.join(reused)}", flush=True)
    return runner.plan_sweep(sweep_options(args))


def _before_start(plan: Any, extras: Extras) -> tuple[Any, int | None]:
    """Size the study and check the data, before anything is written; an exit code when
    there is nothing to run."""
    if plan.opts.add_seeds is not None:
        plan = runner.check_add_seeds(plan)  # before anything is written to any store
    elif plan.opts.n_trials is None:
        # a stored study keeps its size: only --n-trials grows it (never the file's default)
        plan = runner.resume_size(plan)
        finished = runner.finished_size(plan)
        if finished is not None and not (plan.opts.resume or plan.opts.retry_failed):
            print(
                f"study '{plan.study_name}' has finished its {finished} trial(s): nothing to "
                f"run. Grow it with --n-trials N (N > {finished}); --status shows it"
            )
            return plan, 0
    # a caller's own trial function decides what it reads: only run_trial's data is checked
    before_sweep(plan.base, data=extras.check_data)
    return plan, None


def _launch(
    args: argparse.Namespace,
    plan: Any,
    trial_fn: Any,
    worker_cmd: Sequence[str],
    extras: Extras,
) -> int:
    """This process's part: a rank that follows rank 0, or a worker, or the sweep."""
    if launch.world_size() > 1 and plan.opts.workers != 1:
        raise CMCRError(
            f"--workers {plan.opts.workers}: under accelerate launch/torchrun "
            f"(WORLD_SIZE={launch.world_size()}) one launch is one worker; scale by starting "
            "more launches"
        )
    launch.group_timeout()  # a bad CMCR_GROUP_TIMEOUT_MIN fails here, before the group starts
    group = launch.group_from_env()
    if group is not None and not group.is_main:
        group.follow(trial_fn or default_trial_fn(), plan.base)
        group.close()
        return 0
    try:
        storage = runner.connect(plan)
        if args.worker:
            study = runner.load(plan, storage)
            runner.check_compatible(plan, study)
            parent = study.user_attrs[Attr.PARENT_RUN]
            work(plan, study, parent, trial_fn, group, worker_launcher(plan.opts))
            return 0
        return sweep(plan, storage, trial_fn, group, worker_cmd, extras)
    finally:
        if group is not None:
            group.stop()
            group.close()


def sweep(
    plan: Any,
    storage: Any,
    trial_fn: Any = None,
    group: Any = None,
    worker_cmd: Sequence[str] = WORKER_CMD,
    extras: Extras = Extras(),
) -> int:
    """Set up the study, say what will run and for how long, run the workers under the live
    view, summarise with where to look. Ctrl-C / SIGTERM: the interrupted trials are failed
    as interrupted (no retry spent) and the parent run ends KILLED with the reason."""
    lost: list[Any] = []
    stored = _stored(plan, storage)
    before = int(stored.user_attrs.get(Attr.N_TRIALS, 0)) if stored is not None else 0
    est, busy = None, None
    if extras.estimate:
        est, busy = under_load(estimate(plan.base, stored, plan.opts.seeds))
        if est.whole_machine:  # a grid's rows differ in work: each new slot at its own cost
            costs = slot_costs(plan.base, plan.spec, plan.opts.seeds)
            est = per_cell(est, costs, list(range(before, plan.n_trials)))
    for line in (busy, queue_line(plan, before, est)):  # said before a single trial is queued
        if line is not None:
            print(line, flush=True)
    try:
        study, parent = runner.setup(plan, storage, lost)
    except KeyboardInterrupt:  # the parent run may be RUNNING already
        _interrupted(plan, None, None, storage)
        raise
    try:
        return _run_study(
            plan, study, parent, lost, before, est, trial_fn, group, worker_cmd, extras
        )
    except KeyboardInterrupt:
        _interrupted(plan, study, parent)
        raise


def _run_study(
    plan: Any,
    study: Any,
    parent: str,
    lost: list[Any],
    before: int,
    est: Any,
    trial_fn: Any,
    group: Any,
    worker_cmd: Sequence[str],
    extras: Extras,
) -> int:
    """``sweep`` once the study is set up: say what runs, run it under the live view, and
    summarise with where to look; returns the exit code."""
    total = runner.n_units(plan, study)
    print(start_lines(plan, study, parent, before, est), flush=True)
    notice = plan.pruning_notice()
    if notice is not None:
        print(notice, flush=True)
    if lost:
        numbers = [t.number for t in lost]
        print(f"trial(s) {numbers} had lost their worker; queued again (no retry spent)")
    rc = 0
    view = ProgressView(
        study,
        plan.study_name,
        total,
        estimate_s=est.trial_s if est else None,
        idle_s=est.idle_s if est and est.whole_machine else None,
        workers=plan.opts.workers,
        slot_idle=est.slot_s if est else None,  # set by per_cell on whole-machine figures
    )
    with view:
        rc = run_here(plan, study, parent, trial_fn, group, worker_cmd)
    runner.heal(plan, study)
    summary = with_noise(runner.finish(plan, study, parent), study)
    print(summary_line(summary), flush=True)
    if summary.get("tracking_error"):
        print(f"{PROG}: {summary['tracking_error']}", file=sys.stderr)
    for slot, number, reason in summary["failed_slots"]:
        print(f"{PROG}: trial {number} (slot {slot}) failed: {redact(reason)}", file=sys.stderr)
        rc = rc or 1
    if summary["done"] and "best_value" in summary:
        for line in where_to_look(plan, summary, build_report=extras.build_report):
            print(line, flush=True)
    return rc


def _interrupted(plan: Any, study: Any, parent: str | None, storage: Any = None) -> None:
    """After Ctrl-C / SIGTERM: heal (the interrupted trials keep their retry budget: the worker
    failed them as ``interrupted``; a trial this process claimed but had not started is failed
    as lost), then end the parent run KILLED with the reason, unless another machine still runs
    trials of the study (its sweep finishes the parent run). ``study`` None: interrupted during
    setup; the stored study's parent run, if it has one by then."""
    try:
        if study is None:
            study = runner.load(plan, storage)
            parent = study.user_attrs.get(Attr.PARENT_RUN)
            if parent is None:
                return
        runner.heal(plan, study, pid=os.getpid())
        if _count(study, "RUNNING"):
            return
        done = runner.finished_size(plan)
        left = "" if done is not None else "; resume with --resume"
        parent_runs.end_interrupted(
            plan.base, parent, f"sweep interrupted by the user (Ctrl-C or SIGTERM){left}"
        )
    except CMCRError:
        return  # interrupted before the study was stored: nothing to end
    except Exception as exc:  # the stores may be what broke: the next start fixes the records
        print(f"{PROG}: could not end the parent run: {redact(str(exc))}", file=sys.stderr)


def _count(study: Any, state: str) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == state)


def _stored(plan: Any, storage: Any) -> Any:
    """The stored study as it was before this start (None for a new study)."""
    try:
        return runner.load(plan, storage)
    except CMCRError:
        return None


def _quiet_libraries() -> None:
    """Optuna's per-trial INFO lines would interleave with the progress view."""
    import optuna  # lazy: optuna takes ~0.3 s, and --help never gets here

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup_console()  # library chatter goes to each run's run.log artifact (cmcr.runlog)
    redact_logging()


def main(
    argv: list[str] | None = None,
    *,
    trial_fn: Any = None,
    worker_cmd: Sequence[str] = WORKER_CMD,
    extras: Extras = Extras(),
) -> int:
    """Entry point: user errors as one line on stderr and exit code 2.

    ``trial_fn`` / ``worker_cmd`` / ``extras``: see ``run`` (tests/sweep_with_trial_fn.py
    passes all three).
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    # a stop request takes the Ctrl-C path while the sweep runs, a second one waits for the
    # clean-up (cmcr.sweep.shield); the caller's handlers come back after
    with shielded(PROG):
        code = _run_reporting(args, trial_fn, worker_cmd, extras)
    return _leave_launch(code)


def _run_reporting(args: argparse.Namespace, trial_fn: Any, worker_cmd: Any, extras: Extras) -> int:
    """``run``, its errors as one line (a traceback for a bug) and their exit codes."""
    try:
        return run(args, trial_fn, worker_cmd, extras)
    except GroupBroken as exc:  # not a usage error: start again once fixed
        print(f"{PROG}: {redact(str(exc))}", file=sys.stderr)
        return 1
    except Unavailable as exc:  # the environment (a server, the database, the disk): not usage
        print(f"{PROG}: {redact(str(exc))}", file=sys.stderr)
        return UNAVAILABLE_EXIT
    except CMCRError as exc:
        print(f"{PROG}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again to continue", file=sys.stderr)
        return 130
    except Exception:  # a bug or a library error: its traceback, without credentials
        print_traceback(PROG)
        return 1


def _leave_launch(code: int) -> int:
    """A rank of a multi-process launch ends here with ``code``, skipping the interpreter's
    teardown: after the process group is destroyed, torch's C++ threads still abort it now and
    then while static objects are destroyed ("terminate called without an active exception",
    SIGABRT, seen in CI on 2026-12-02 after a two-rank study had completed), and the launcher
    then reports the launch failed. Everything is recorded by then; logs and streams are
    flushed first. A single process returns normally."""
    try:
        several = launch.world_size() > 1
    except CMCRError:
        several = False
    if not several:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
