"""How long a sweep will take, said before it starts.

From the study's own finished trials when it has some (their median wall time), else from the
preset's measured costs (``MEASURED``): seconds per pre-training step and per downstream
scan-epoch on an idle 2-core CPU machine, times the trial's work as its config plans it (steps
from ``train.max_steps`` or epochs × batches of the training scans; the downstream epochs over
the labelled training scans and the validation scans).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from cmcr.configs import Config, evaluation_config, evaluation_list
from cmcr.progress import FINETUNE, PRETRAIN, PROBE
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


# measured on an idle 2-core CPU machine (torch's default threads), 2026-12-06: demo from a fresh
# clone's `make demo` (trials of 65.8 s and 66.6 s: 42 steps in 29.9 s, 600 probe scan-epochs)
# and two 2-trial demo sweeps (2 steps, 1 and 3 fine-tuning epochs); smoke from 2-trial sweeps
# at 4 / 24 steps and 2 / 6 probe or fine-tuning epochs (the second trial's time: the first adds
# ~1.5 s of imports). The 2026-12-02 figures (demo 20 s + 1.3 s/step, smoke 6 s + 1.0 s/step)
# had become 2-3x pessimistic: `make demo` said 6m44s for 3m44s of trials. The downstream
# scan-epochs: each dataset's module, cmcr/datasets/
MEASURED: dict[str, Cost] = {
    "demo": Cost("demo", start_s=5.0, step_s=0.7, machine="2 CPU cores"),
    "smoke": Cost("smoke", start_s=1.5, step_s=0.33, machine="2 CPU cores"),
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
    load_factor: float = 1.0  # how much the machine's load scaled the figure (under_load)
    # a grid's idle-machine seconds per slot (slot_costs): the live view prices its queue by them
    slot_s: dict[int, float] | None = None

    @property
    def idle_s(self) -> float | None:
        """The figure on an idle machine (what the live slowdown is measured against)."""
        return None if self.trial_s is None else self.trial_s / self.load_factor

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
            # lazy: cmcr.data imports torch, scipy and pandas (~1.5 s), which a sweep process
            # that only parses, lists, spawns workers or reads --status never needs
            from cmcr.data.pretrain import select_records

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


def work_key(cfg: Config) -> str:
    """What sizes a trial's phases (the trials of a study differ in other keys)."""
    t = cfg.train
    return repr((cfg.preset, cfg.method.name, cfg.data, cfg.downstream, cfg.semantickitti,
                 t.max_steps, t.epochs, t.batch_size, t.grad_accum))  # fmt: skip


_WORK: dict[str, tuple[int, dict[str, int]]] = {}


def _planned(cfg: Config) -> tuple[int, dict[str, int]]:
    """``planned_work``, once per work key (reading a dataset's tables takes a second)."""
    key = work_key(cfg)
    if key not in _WORK:
        _WORK[key] = planned_work(cfg)
    return _WORK[key]


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
        steps, work = _planned(cfg)
    except Exception:  # the data is checked (and its error reported) by the preflight
        return Estimate(None, f"the data at {cfg.data.dataroot} could not be read")
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


def slot_costs(base: Config, spec: Any, seeds: int = 1) -> dict[int, float] | None:
    """Idle-machine seconds of each slot of a grid study, from its own cell's work (a random-init
    row pre-trains nothing; a 3-seed row runs three seeds), at the preset's measured costs;
    None for a sampled study (its trials share the base config's figure) or a preset without
    measured costs."""
    if not spec.is_grid or str(base.preset) not in MEASURED:
        return None
    out = {}
    for slot, cell in enumerate(spec.grid_cells()):
        est = estimate(spec.config_for(base, cell), None, seeds)
        if est.idle_s is None:
            return None
        out[slot] = est.idle_s
    return out


def per_cell(est: Estimate, costs: dict[int, float] | None, slots: list[int]) -> Estimate:
    """``est`` (the base config's whole-machine figure) as the mean of ``slots``' own costs,
    load factor kept, so that the start line's total is their sum."""
    if not costs or not est.whole_machine or not slots or est.trial_s is None:
        return est
    mean = sum(costs[s] for s in slots) / len(slots)
    return dataclasses.replace(
        est, trial_s=mean * est.load_factor, slot_s=costs,
        source=f"{est.source}; the mean over these {len(slots)} grid cells' own work")  # fmt: skip


def cpu_share(seconds: float = 0.25) -> float:
    """The fraction of one core this process gets now: CPU time over wall time of a short
    busy loop (a direct measure of contention; the load average also counts sleeping and
    short-lived processes and overstated it 3x on a shared machine, 2026-12-06)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        pass
    return max((time.process_time() - cpu0) / (time.perf_counter() - wall0), 0.05)


def under_load(
    est: Estimate,
    load: float | None = None,
    cores: int | None = None,
    share: float | None = None,
) -> tuple[Estimate, str | None]:
    """``est`` (a preset's idle-machine cost) scaled for the processes that already share the
    cores: by 1 / the share of a core this process measures (``cpu_share``) when the load
    average says others run (L >= 1). Returns the scaled estimate and, when the load reaches
    the core count, the line that says so. The live view recalibrates from the measured rates
    once the first steps ran."""
    load = os.getloadavg()[0] if load is None else load
    cores = (os.cpu_count() or 1) if cores is None else cores
    if est.trial_s is None or not est.whole_machine or load < 1.0:
        return est, None
    k = max(1.0, min(1.0 / (cpu_share() if share is None else share), 20.0))
    scaled = dataclasses.replace(
        est,
        trial_s=est.trial_s * k,
        source=f"{est.source}; × {k:.1f} for the machine's load",
        load_factor=k,
    )
    if load < cores:
        return scaled, None
    return (
        scaled,
        f"  {load:.0f} other processes share the {cores} cores: estimates are {k:.1f}x slower",
    )


@dataclass(frozen=True)
class Phase:
    """One phase of a seed as the trainers report it (``cmcr.progress``): its name, its units
    (steps or epochs) and the preset's measured seconds per unit on an idle machine."""

    name: str
    units: int
    unit_s: float


def phase_plan(cfg: Config) -> list[Phase] | None:
    """The phases one seed of a trial with ``cfg`` runs, in order (pre-training, then each
    evaluation's probe / fine-tune epochs); None without a measured cost for its preset."""
    cost = MEASURED.get(str(cfg.preset))
    if cost is None:
        return None
    steps, work = _planned(cfg)
    phases = [Phase(PRETRAIN, steps, cost.step_s)] if steps else []
    measured = cost.scan_epoch_s
    for dataset, mode in evaluation_list(cfg):
        name = f"{dataset}/{mode}"
        d = evaluation_config(cfg, dataset, mode).downstream
        epochs = d.probe_epochs if mode == "probe" else d.finetune_epochs
        per_epoch = work[name] / epochs * measured.get(name, max(measured.values()))
        phases.append(Phase(PROBE if mode == "probe" else FINETUNE, epochs, per_epoch))
    return phases


_PLANS: dict[str, list[Phase] | None] = {}


class TrialClock:
    """The time a running trial has left, from its live rate: each progress record of the
    trainers gets ``trial_eta_s`` (the current phase's ETA, plus every later phase and seed
    at the preset's cost times the measured ``slowdown``: the live seconds per unit over the
    preset's), ``slowdown`` itself, which the sweep view also applies to the queue, and
    ``unit_s``, the seconds one unit of the current phase should take (a slow epoch is not a
    stale worker)."""

    def __init__(self, phases: list[Phase] | None, seeds_left: int, start_s: float = 0.0):
        self.phases, self.seeds_left, self.start_s = phases, seeds_left, start_s
        self.pos = 0  # the phase the trainers report now
        self.slowdown: float | None = None

    def annotate(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with ``trial_eta_s`` and ``slowdown`` (when the plan is known)."""
        if not self.phases:
            return record
        names = [p.name for p in self.phases]
        if names[self.pos] != record.get("phase") and record.get("phase") in names[self.pos :]:
            self.pos = names.index(record["phase"], self.pos)
        now = self.phases[self.pos]
        rate = record.get("rate")
        if rate and now.unit_s > 0 and now.name == record.get("phase"):
            self.slowdown = 1.0 / (rate * now.unit_s)
        k = self.slowdown or 1.0
        current = record.get("eta_s")
        if current is None:
            left = max(int(record.get("total", now.units)) - int(record.get("step", 0)), 0)
            current = left * now.unit_s * k
        later = sum(p.units * p.unit_s for p in self.phases[self.pos + 1 :])
        seed_s = self.start_s + sum(p.units * p.unit_s for p in self.phases)
        eta = current + k * (later + (self.seeds_left - 1) * seed_s)
        return {**record, "trial_eta_s": eta, "slowdown": self.slowdown, "unit_s": now.unit_s * k}

    def next_seed(self) -> None:
        """A seed finished: the plan starts over for the next one."""
        self.seeds_left, self.pos = max(self.seeds_left - 1, 1), 0


def trial_clock(cfg: Config, seeds_left: int) -> TrialClock:
    """A ``TrialClock`` for a trial with ``cfg`` and ``seeds_left`` seeds to run; one that
    adds nothing when the preset has no measured cost or the data cannot be read."""
    key = work_key(cfg)
    if key not in _PLANS:  # reading a full dataset's tables takes seconds: once per worker
        try:
            _PLANS[key] = phase_plan(cfg)
        except Exception:  # the data check reports unreadable data; the clock is only a view
            _PLANS[key] = None
    phases = _PLANS[key]
    cost = MEASURED.get(str(cfg.preset))
    return TrialClock(phases, seeds_left, cost.start_s if cost else 0.0)
