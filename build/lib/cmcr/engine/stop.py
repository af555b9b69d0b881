"""A request to stop training at the next optimiser step, after a checkpoint (preemption).

A scheduler warns a job before it takes the node away (SLURM: ``--signal=TERM@120``). The
signal handler only records the request (``request``); the pre-training loop looks at it after
each optimiser step, saves a checkpoint there and raises ``Stopped``, so the retry resumes from
that very step instead of the last periodic checkpoint. Raising inside the handler would stop
the process mid-step, with nothing saved since the last ``checkpoint_every``.

``Stopped`` is a KeyboardInterrupt: everything that handles an interruption (the run ends
KILLED, the sweep fails the trial as ``interrupted`` without spending a retry) handles it.
"""

from __future__ import annotations

from typing import Any

_requested: int | None = None  # the signal number that asked, while a stop is pending


class Stopped(KeyboardInterrupt):
    """Training stopped on request after checkpointing optimiser step ``step``."""

    def __init__(self, step: int, signum: int | None) -> None:
        super().__init__(f"stopped on signal {signum} after checkpointing step {step}")
        self.step = step
        self.signum = signum


def request(signum: int) -> None:
    """Ask the running training to checkpoint and stop at its next step (signal-handler safe)."""
    global _requested
    _requested = signum


def requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested


def clear() -> None:
    """Forget a pending request (a new worker process, or a test)."""
    global _requested
    _requested = None


def agreed(accelerator: Any) -> bool:
    """Whether any process of the launch was asked to stop (a collective when there are
    several: all ranks must checkpoint at the same step, since ``save_state`` is collective)."""
    if accelerator.num_processes == 1:
        return _requested is not None
    import torch

    flag = torch.tensor([0.0 if _requested is None else 1.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
