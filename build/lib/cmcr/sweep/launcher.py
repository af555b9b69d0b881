"""What the worker loop asks of whoever started it: the ``Launcher`` protocol, and the local one.

``cmcr.sweep.worker.work`` runs the same loop everywhere; what differs by launcher is said
here. A local worker (a ``--workers`` process, the sweep's own process, rank 0 of a launch)
needs nothing; a SLURM worker job (``cmcr.sweep.slurm.SlurmLauncher``) records its job on each
trial, fails the trials of jobs that ended, leaves for a requeue when the scheduler warns it,
and the last one to leave ends the study's parent run.
"""

from __future__ import annotations

from typing import Any, Protocol


class Launcher(Protocol):
    """The launcher's part of the worker loop (cmcr.sweep.worker.work)."""

    def before_claim(self, plan: Any, study: Any) -> None:
        """Before each claim: leave if asked to, fail the trials of lost workers."""

    def claimed(self, trial: Any) -> None:
        """Record on the claimed ``trial`` who runs it."""

    def leave(self, why: str) -> BaseException:
        """The exception a worker exits with after training stopped on request."""

    def finished(self, plan: Any, study: Any, parent: str) -> None:
        """The queue is empty and no running trial is left to wait for."""


class LocalLauncher:
    """A worker on this machine: the sweep that started it waits for it and summarises."""

    def before_claim(self, plan: Any, study: Any) -> None:
        """Nothing: a lost local worker is found by ``runner.heal``."""

    def claimed(self, trial: Any) -> None:
        """Nothing beyond the worker id the loop records."""

    def leave(self, why: str) -> BaseException:
        """An interruption, as Ctrl-C (nothing local asks training to stop: see slurm)."""
        return KeyboardInterrupt(why)

    def finished(self, plan: Any, study: Any, parent: str) -> None:
        """Nothing: the sweep's own process ends the parent run."""
