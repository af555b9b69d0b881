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

from cmcr.configs import Config, evaluation_config, evaluation_list
from cmcr.data.pretrain import select_records
from cmcr.registry import DATASETS
from cmcr.sweep.progress import trial_seconds


@dataclass(frozen=True)
class Cost:
    """Measured costs of one preset on one kind of machine."""

    preset: str
    start_s: float  # per trial: run set-up, data loading, held-out validation, artifacts
    step_s: float  # per pre-training optimiser step (CMCR; PPKT is cheaper)
    machine: str

    @property
    def scan_epoch_s(self) -> dict[str, float]:
        """Per scan per downstream epoch, by evaluation ("<dataset>/<mode>"), as each registered
        dataset measured it for this preset: a probe runs the frozen backbone forward, a
        fine-tuning also its backward; KITTI's scans are the larger."""
        return {
            f"{name}/{mode}": seconds
            for name, spec in DATASETS.items()
            for mode, seconds in spec.scan_epoch_s.get(self.preset, {}).items()
        }


# measured with `make demo` / the smoke sweep on an idle 2-core CPU machine, 2026-12-02 (the
# downstream scan-epochs: each dataset's module, cmcr/datasets/)
MEASURED: dict[str, Cost] = {
    "demo": Cost("demo", start_s=20.0, step_s=1.3, machine="2 CPU cores"),
    "smoke": Cost("smoke", start_s=6.0, step_s=1.0, machine="2 CPU cores"),
}


@dataclass(frozen=True)
class Estimate:
    """Seconds per trial and where the figure comes from."""

    trial_s: float | None
    source: str
    # the figure is one trial using the whole machine (the preset's cost): local --workers
    # share its cores, so they do not divide the total; a median of the study's own trials was
    # measured at the sweep's parallelism, so they do
    whole_machine: bool = False

    def total_s(self, trials: int, workers: int) -> float | None:
        """Wall time of ``trials`` trials run by ``workers`` local workers."""
        if self.trial_s is None:
            return None
        if self.whole_machine:
            return self.trial_s * trials
        return self.trial_s * math.ceil(trials / max(1, workers))


def planned_work(cfg: Config) -> tuple[int, dict[str, int]]:
    """(pre-training steps, {evaluation: scan-epochs}) of one seed of a trial with ``cfg``;
    the evaluations are ``downstream.evaluations`` (else downstream.dataset / mode)."""
    steps = 0
    if cfg.method.name != "random":
        if cfg.train.max_steps > 0:
            steps = cfg.train.max_steps
        else:
            n = len(select_records(cfg, cfg.data.train_split, holdout="exclude"))
            batches = math.ceil(n / cfg.train.batch_size)
            steps = cfg.train.epochs * math.ceil(batches / cfg.train.grad_accum)
    work = {}
    for dataset, mode in evaluation_list(cfg):
        name = f"{dataset}/{mode}"
        ecfg = evaluation_config(cfg, dataset, mode)
        d, spec = ecfg.downstream, DATASETS.get(dataset)
        train_split, val_split = spec.splits(ecfg)
        labelled = spec.count(ecfg, train_split, d.label_fraction)
        val = spec.count(ecfg, val_split, 1.0)
        epochs = d.probe_epochs if mode == "probe" else d.finetune_epochs
        work[name] = epochs * (labelled + val)
    return steps, work


def estimate(cfg: Config, study: Any = None, seeds: int = 1) -> Estimate:
    """Seconds per trial (of ``seeds`` seeds) from the study's finished trials, else the
    preset's measured costs; ``trial_s`` None when neither is known."""
    if study is not None:
        times = sorted(trial_seconds(study.get_trials(deepcopy=False)))
        if times:
            median = times[len(times) // 2]
            return Estimate(median, f"median of the study's {len(times)} finished trial(s)")
    cost = MEASURED.get(str(cfg.preset))
    if cost is None:
        return Estimate(None, f"no measured cost for preset {cfg.preset!r}")
    try:
        steps, work = planned_work(cfg)
    except Exception:  # the data is checked (and its error reported) by the preflight
        return Estimate(None, "the data could not be read")
    seconds = cost.start_s + steps * cost.step_s
    parts = [f"{steps} steps × {cost.step_s:g} s"]
    measured = cost.scan_epoch_s
    for name, scan_epochs in work.items():
        each = measured.get(name, max(measured.values()))
        seconds += scan_epochs * each
        parts.append(f"{name} {scan_epochs} scan-epochs × {each:g} s")
    per_seed = "" if seeds == 1 else f", × {seeds} seeds"
    return Estimate(
        seconds * seeds,
        f"preset {cfg.preset}'s measured cost on {cost.machine}: {' + '.join(parts)}{per_seed}",
        whole_machine=True,
    )
