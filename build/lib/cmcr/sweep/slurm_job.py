"""Inside a ``--launcher slurm`` worker job: the worker loop's SLURM launcher.

The job script (cmcr.sweep.slurm) runs ``python -m cmcr.sweep … --worker`` in each array task.
There the worker records its job on each trial it claims, fails the trials of jobs that ended
(``slurm.fail_lost``), turns the scheduler's warning signal into a stop request (checkpoint at
the next optimiser step, cmcr.engine.stop) and then leaves for a requeue (exit 75 and a mark
file the script looks for); the last worker to leave ends the study's parent run.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

from cmcr.engine import stop
from cmcr.names import Attr
from cmcr.sweep import runner
from cmcr.sweep.launcher import Launcher, LocalLauncher
from cmcr.sweep.slurm import (
    DEFAULT_SIGNAL,
    MARK_ENV,
    REQUEUE_EXIT,
    current_job,
    fail_lost,
    parse_signal,
)

log = logging.getLogger("cmcr.sweep")


class SlurmLauncher:
    """A worker in SLURM array task ``job`` (``<array>_<task>``): see the module docstring."""

    def __init__(self, job: str) -> None:
        self.job = job

    def before_claim(self, plan: Any, study: Any) -> None:
        """Leave if warned between trials (holding nothing); fail the trials of lost jobs."""
        if stop.requested() is not None:
            raise leave_for_requeue("warned by the scheduler between trials")
        fail_lost(plan, study)  # trials of workers whose job ended or was requeued

    def claimed(self, trial: Any) -> None:
        """The trial's job, for ``fail_lost`` and ``--status``."""
        trial.set_user_attr(Attr.SLURM_JOB, self.job)

    def leave(self, why: str) -> BaseException:
        """Training checkpointed on the warning: leave for a requeue."""
        return leave_for_requeue(why)

    def finished(self, plan: Any, study: Any, parent: str) -> None:
        """The last worker to leave ends the study's parent run."""
        finish_if_done(plan, study, parent)


def worker_launcher(opts: Any) -> Launcher:
    """In a ``--launcher slurm`` worker job: its launcher, with the scheduler's warning signal
    turned into a stop request (checkpoint at the next step, then requeue); else the local one."""
    job = current_job() if opts.launcher == "slurm" else None
    if job is None:
        return LocalLauncher()
    install_warning(opts.signal)
    return SlurmLauncher(job)


def install_warning(spec: str | None) -> int:
    """Turn the scheduler's warning signal into a stop request (cmcr.engine.stop); a second
    one interrupts at once (KeyboardInterrupt, as SIGTERM does elsewhere). Returns the signal."""
    signum, _ = parse_signal(spec or DEFAULT_SIGNAL)
    stop.clear()

    def warned(num: int, frame: Any) -> None:
        if stop.requested() is not None:
            raise KeyboardInterrupt(f"signal {num} again")
        stop.request(num)
        log.warning(f"signal {num}: checkpointing at the next step, then leaving for a requeue")

    signal.signal(signum, warned)
    return signum


class Preempted(SystemExit):
    """The worker left for a requeue (the scheduler warned it); its trial is re-queued."""

    def __init__(self, why: str) -> None:
        super().__init__(REQUEUE_EXIT)
        self.why = why


def leave_for_requeue(why: str) -> Preempted:
    """Leave the requeue mark for the job script; the exception the worker exits with."""
    mark = os.environ.get(MARK_ENV)
    if mark:
        Path(mark).touch()
    log.warning(f"worker {current_job()}: {why}; leaving for a requeue")
    return Preempted(why)


def finish_if_done(plan: Any, study: Any, parent: str) -> None:
    """The last worker to leave ends the study's parent run (nobody waits on the login node)."""
    runner.heal(plan, study)
    summary = runner.finish(plan, study, parent)
    if summary["done"]:
        log.info(f"study '{plan.study_name}' done: {summary}")
