"""How long a sweep will take, said before it starts.

From the study's own finished trials when it has some (their median wall time), else from the
preset's measured costs (``MEASURED``): seconds per pre-training step and per downstream
scan-epoch on an idle 2-core CPU machine, times the trial's work as its config plans it (steps
from ``train.max_steps`` or epochs × batches of the training scans; the downstream epochs over
the labelled training scans and the validation scans).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cmcr.configs import Config


@dataclass(frozen=True)
class Cost:
    """Measured costs of one preset on one kind of machine."""

    start_s: float  # per trial: run set-up, data loading, held-out validation, artifacts
    step_s: float  # per pre-training optimiser step (CMCR; PPKT is cheaper)
    scan_epoch_s: float  # per scan per downstream epoch (forward of the frozen backbone + head)
    machine: str


# measured with `make demo` / the smoke sweep on an idle 2-core CPU machine, 2026-12-02
MEASURED: dict[str, Cost] = {
    "demo": Cost(start_s=20.0, step_s=1.5, scan_epoch_s=0.12, machine="2 CPU cores"),
    "smoke": Cost(start_s=6.0, step_s=1.0, scan_epoch_s=0.25, machine="2 CPU cores"),
}


@dataclass(frozen=True)
class Estimate:
    """Seconds per trial and where the figure comes from."""

    trial_s: float | None
    source: str

    def total_s(self, trials: int, workers: int) -> float | None:
        """Wall time of ``trials`` trials shared by ``workers`` (parallel workers on one CPU
        machine share its cores: the figure is per machine, not per worker)."""
        if self.trial_s is None:
            return None
        return self.trial_s * math.ceil(trials / max(1, workers))


def planned_work(cfg: Config) -> tuple[int, int]:
    """(pre-training steps, downstream scan-epochs) of one seed of a trial with ``cfg``."""
    from cmcr.data.pretrain import select_records

    steps = 0
    if cfg.method.name != "random":
        if cfg.train.max_steps > 0:
            steps = cfg.train.max_steps
        else:
            n = len(select_records(cfg, cfg.data.train_split, holdout="exclude"))
            batches = math.ceil(n / cfg.train.batch_size)
            steps = cfg.train.epochs * math.ceil(batches / cfg.train.grad_accum)
    d = cfg.downstream
    labelled = len(select_records(cfg, cfg.data.train_split, d.label_fraction))
    val = len(select_records(cfg, cfg.data.val_split))
    epochs = d.probe_epochs if d.mode == "probe" else d.finetune_epochs
    return steps, epochs * (labelled + val)


def estimate(cfg: Config, study: Any = None, seeds: int = 1) -> Estimate:
    """Seconds per trial (of ``seeds`` seeds) from the study's finished trials, else the
    preset's measured costs; ``trial_s`` None when neither is known."""
    if study is not None:
        from cmcr.sweep.progress import trial_seconds

        times = sorted(trial_seconds(study.get_trials(deepcopy=False)))
        if times:
            median = times[len(times) // 2]
            return Estimate(median, f"median of the study's {len(times)} finished trial(s)")
    cost = MEASURED.get(str(cfg.preset))
    if cost is None:
        return Estimate(None, f"no measured cost for preset {cfg.preset!r}")
    try:
        steps, scan_epochs = planned_work(cfg)
    except Exception:  # the data is checked (and its error reported) by the preflight
        return Estimate(None, "the data could not be read")
    seconds = cost.start_s + steps * cost.step_s + scan_epochs * cost.scan_epoch_s
    per_seed = "" if seeds == 1 else f", × {seeds} seeds"
    return Estimate(
        seconds * seeds,
        f"preset {cfg.preset}'s measured cost on {cost.machine}: {steps} steps × "
        f"{cost.step_s:g} s + {scan_epochs} scan-epochs × {cost.scan_epoch_s:g} s{per_seed}",
    )
