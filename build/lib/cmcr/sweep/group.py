"""Multi-process trials: one sweep worker = one ``accelerate launch`` / ``torchrun`` group.

Under a launcher every process runs ``sweeps/run.py`` (``WORLD_SIZE`` > 1). Only rank 0 is a
sweep worker: it talks to Optuna and MLflow, claims a queued trial, creates the trial's MLflow
run and, before each seed, broadcasts the task (config + run id) to the other ranks. All ranks
then call the same ``run_trial``: pre-training is data-parallel through Accelerate (the run and
its metrics belong to rank 0), and the downstream evaluation runs on rank 0 alone while the
other ranks wait for the next task. When no trial is left rank 0 broadcasts "stop".

Failures. A rank that fails must not leave the others waiting inside a collective:

- divergence (``TrainingDiverged``) is detected on the all-reduced loss, so every rank raises it
  at the same step: the trial is failed (not retried) and the group goes on;
- a pruned trial: during the downstream evaluation, which only rank 0 runs, or at a probe step
  of pre-training, where rank 0 broadcasts the decision and every rank checkpoints and stops
  (``cmcr.engine.probe.PrunedElsewhere`` on the others): the group goes on;
- anything else ends the launch: rank 0 first records the failure and queues the retry, then
  exits non-zero (a follower that fails exits non-zero too); the launcher stops the other ranks.
  Start the launch again (compose's ``restart: on-failure`` does) and the retry resumes from
  the trial's last checkpoint, in the same MLflow run.

The process group is created here, with a long timeout (``CMCR_GROUP_TIMEOUT_MIN``, default
360 minutes): the other ranks wait inside a broadcast while rank 0 evaluates, and a fine-tuning
evaluation can outlast the default 10–30 minutes.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from cmcr.errors import CMCRError
from cmcr.names import LOCAL_KEYS

log = logging.getLogger("cmcr.sweep")
TIMEOUT_ENV = "CMCR_GROUP_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 360
# What each rank keeps of its own config: the machine-local fields (names.LOCAL_KEYS) except the
# ``tracking.`` section. Deliberately: every rank saves and resumes the run's checkpoints in
# rank 0's tracking.output_dir/<run id> (save_state is collective), and only rank 0
# talks to MLflow, so the tracking settings must be rank 0's.
RANK_LOCAL_FIELDS = tuple(k for k in LOCAL_KEYS if not k.startswith("tracking."))


class GroupBroken(CMCRError):
    """A trial failed in a way the other ranks cannot recover from; the launch must end."""


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE`` from accelerate launch / torchrun; 1 if unset)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise CMCRError(f"WORLD_SIZE: expected an integer, got {raw!r}") from None


def group_timeout() -> datetime.timedelta:
    """The process-group timeout (env ``CMCR_GROUP_TIMEOUT_MIN``), checked before any work."""
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_MIN))
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise CMCRError(f"{TIMEOUT_ENV}: expected a number of minutes > 0, got {raw!r}")
    return datetime.timedelta(minutes=minutes)


@dataclass
class Task:
    """One seed of one trial, as rank 0 runs it."""

    cfg: Any
    kwargs: dict[str, Any] = field(default_factory=dict)  # run_id, parent_run_id, tags


class Group:
    """The launch's process group, seen from one rank."""

    def __init__(self, timeout: datetime.timedelta) -> None:
        import torch
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        # the first PartialState creates the process group; the trainer's later calls share it
        self.state = PartialState(cpu=cpu, timeout=timeout)
        self.rank = self.state.process_index
        self.size = self.state.num_processes
        self.is_main = self.state.is_main_process
        self.broken = False

    def _broadcast(self, value: Any) -> Any:
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def announce(self, cfg: Any, kwargs: dict[str, Any]) -> None:
        """Rank 0: the other ranks run this seed with it (``report`` stays on rank 0)."""
        self._broadcast(Task(copy.deepcopy(cfg), {k: v for k, v in kwargs.items()}))

    def stop(self) -> None:
        """Rank 0: no trial left; the other ranks return. Skipped once the group is broken."""
        if not self.broken:
            self._broadcast(None)

    def close(self) -> None:
        """Tear the process group down before the interpreter exits (gloo's threads otherwise
        abort the process at exit now and then: "terminate called without an active exception").
        Skipped once broken: the launcher stops the ranks instead."""
        import torch.distributed as dist

        if not self.broken and dist.is_initialized():
            dist.destroy_process_group()

    def follow(self, trial_fn: Any, local: Any) -> int:
        """A rank > 0: run every announced task until "stop"; returns the tasks run.

        ``local``: this rank's own base config, whose machine-local keys replace rank 0's.
        """
        ran = 0
        while True:
            task = self._broadcast(None)
            if task is None:
                return ran
            cfg = task.cfg
            for key in RANK_LOCAL_FIELDS:
                section, name = key.split(".")
                setattr(getattr(cfg, section), name, getattr(getattr(local, section), name))
            try:
                trial_fn(cfg, report=None, **task.kwargs)
            except Exception as exc:
                if not is_synchronised(exc):
                    raise
                log.warning(f"rank {self.rank}: {exc}; waiting for the next trial")
            ran += 1


def is_synchronised(exc: BaseException) -> bool:
    """Raised on every rank at the same point (so the group can go on): divergence, or the
    pruner's decision at a probe step of pre-training."""
    import sys

    train = sys.modules.get("cmcr.engine.train")
    probe = sys.modules.get("cmcr.engine.probe")
    return (train is not None and isinstance(exc, train.TrainingDiverged)) or (
        probe is not None and isinstance(exc, probe.PrunedElsewhere)
    )


def group_from_env() -> Group | None:
    """The launch's group when started by a launcher with more than one process, else None."""
    if world_size() <= 1:
        return None
    return Group(group_timeout())
