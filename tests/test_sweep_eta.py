"""Estimates that hold on a busy machine (issue 32): a trial's ETA covers every phase and seed
left, from its live rate; the study's ETA and its queue follow the measured slowdown; a slow
epoch is not a stale worker; a loaded machine is said at the start.

The slowdown is synthetic: the trainer stand-in sleeps 3x the preset's measured cost per unit,
as a trial does on a 2-core machine shared with 2 busy processes per core (C / (L + C) of the
cores: 2 / 6). Sleeping, not spinning, keeps the test's timing independent of the CI's load.
"""

from __future__ import annotations

import time

import pytest

from cmcr import progress
from cmcr.sweep.estimate import Estimate, Phase, TrialClock, under_load
from cmcr.sweep.progress import Running, running_trial, study_eta

SLOW = 3.0
PHASES = [Phase(progress.PRETRAIN, 12, 0.02), Phase(progress.PROBE, 3, 0.06)]
PER_SEED_S = sum(p.units * p.unit_s for p in PHASES)  # the preset's idle cost: 0.42 s


def _train(clock: TrialClock, seeds: int, records: list[tuple[float, dict]]) -> None:
    """The phases of ``seeds`` seeds at SLOW x the preset's cost, records annotated by
    ``clock`` as the sweep objective's progress sink does."""

    def sink(record: dict) -> None:
        records.append((time.monotonic(), clock.annotate(record)))

    for _ in range(seeds):
        with progress.listen(sink, every_s=0.0):
            for phase in PHASES:
                with progress.task(phase.name, phase.units) as bar:
                    for _ in range(phase.units):
                        time.sleep(SLOW * phase.unit_s)
                        bar.update()
        clock.next_seed()


def test_after_calibration_the_trial_and_study_etas_are_within_30_percent() -> None:
    records: list[tuple[float, dict]] = []
    t0 = time.monotonic()
    _train(TrialClock(PHASES, seeds_left=2), 2, records)
    end = time.monotonic()
    # calibration: the first record with a measured rate (after the first pre-training step)
    at, first = next((t, r) for t, r in records if r.get("rate"))
    assert first["phase"] == progress.PRETRAIN and first["step"] == 1
    assert first["slowdown"] == pytest.approx(SLOW, rel=0.3)
    real_left = end - at  # the rest of pre-training, the probe, and the whole second seed
    assert first["trial_eta_s"] == pytest.approx(real_left, rel=0.3), (first, real_left)
    # before the fix the ETA was the current phase's: at the end of pre-training, 0 s
    last_step = next(r for t, r in records if r["phase"] == progress.PRETRAIN and r["step"] == 12)
    assert last_step["eta_s"] == 0 and last_step["trial_eta_s"] > SLOW * PER_SEED_S * 0.9
    # the study: this trial running plus 3 queued, the preset's estimate scaled by the
    # running trial's measured slowdown; real: the time left plus 3 trials as long as this one
    trial_s = end - t0
    running = Running(0, "", first["phase"], 1, 12, "", first["eta_s"], at - t0,
                      trial_eta_s=first["trial_eta_s"], slowdown=first["slowdown"])  # fmt: skip
    idle = 2 * PER_SEED_S
    eta = study_eta(idle, (running,), waiting=3, workers=1, measured=False, idle_s=idle)
    assert eta == pytest.approx(real_left + 3 * trial_s, rel=0.3)
    # without the calibration, the preset's idle figure is 3x too short: the test can fail
    assert study_eta(idle, (), 3, 1, measured=False) < 0.5 * 3 * trial_s


def test_the_view_and_the_start_line_agree_on_a_whole_machine_estimate() -> None:
    """The preset's figure is one trial on the whole machine: 2 local workers do not halve the
    queue (the start line's total); a measured median (at the sweep's parallelism) does."""
    est = Estimate(60.0, "preset", whole_machine=True)
    assert study_eta(est.trial_s, (), 3, 2, measured=False) == est.total_s(3, 2) == 180.0
    assert study_eta(60.0, (), 3, 2, measured=True) == 90.0  # 3 trials shared by 2 workers


class _Trial:
    def __init__(self, record: dict) -> None:
        import datetime

        self.number, self.params = 0, {}
        self.user_attrs = {"cmcr.progress": record}
        self.datetime_start = datetime.datetime.now()


def test_a_slow_epoch_is_not_stale_but_a_silent_worker_is() -> None:
    import datetime

    now = datetime.datetime.now()
    epoch = {"phase": "probe", "step": 2, "total": 10, "rate": 1 / 180, "eta_s": 1440.0}
    slow = running_trial(_Trial({**epoch, "t": time.time() - 170}), now)  # 3-minute epochs
    assert not slow.stale
    silent = running_trial(_Trial({**epoch, "t": time.time() - 3 * 180 - 5}), now)
    assert silent.stale
    first = {"phase": "probe", "step": 0, "total": 10, "rate": None, "unit_s": 200.0}
    assert not running_trial(_Trial({**first, "t": time.time() - 300}), now).stale


def test_a_loaded_machine_is_said_and_scales_the_presets_estimate() -> None:
    est = Estimate(100.0, "preset demo", whole_machine=True)
    scaled, line = under_load(est, load=4.0, cores=2, share=1 / 3)  # a third of a core
    assert scaled.trial_s == pytest.approx(300.0) and "for the machine's load" in scaled.source
    assert line is not None and "4 other processes share the 2 cores" in line and "3.0x" in line
    assert scaled.idle_s == pytest.approx(100.0)  # what the live slowdown is measured against
    assert under_load(est, load=0.3, cores=2) == (est, None)  # idle: as measured
    median = Estimate(100.0, "median of the study's 3 finished trial(s)")
    assert under_load(median, load=4.0, cores=2) == (median, None)  # measured as it ran


def test_the_cpu_share_is_measured_not_guessed() -> None:
    from cmcr.sweep.estimate import cpu_share

    share = cpu_share(0.1)  # alone or beside the suite's other worker: a real fraction
    assert 0.05 <= share <= 1.05


def test_a_grids_queue_is_priced_cell_by_cell(smoke_world) -> None:
    """A grid's rows differ in work (the benchmark's random-init row pre-trains nothing): the
    start line sums each new cell's own cost, and once a trial measured its slowdown the queue
    is each waiting cell's idle cost times it, not the median of whichever rows finished first
    (on the benchmark the study ETA fell from 1h57m to 13m26s when the random row finished)."""
    from cmcr.configs import load_config
    from cmcr.sweep.estimate import estimate, per_cell, slot_costs
    from cmcr.sweep.space import load_study

    cfg = load_config("smoke", {"data.dataroot": str(smoke_world)})
    spec = load_study("benchmark")
    costs = slot_costs(cfg, spec, seeds=2)
    cells = spec.grid_cells()
    random_slot = next(i for i, c in enumerate(cells) if c["variant"] == "random")
    assert len(costs) == len(cells) and costs[random_slot] < min(
        v for s, v in costs.items() if s != random_slot
    )
    base = estimate(cfg, None, seeds=2)
    est = per_cell(base, costs, list(range(len(cells))))
    assert est.total_s(len(cells), 2) == pytest.approx(sum(costs.values()))
    assert est.slot_s == costs and base.total_s(len(cells), 2) > est.total_s(len(cells), 2)
    # a sampled study: one figure for all
    assert slot_costs(cfg, load_study("loss_weights")) is None
    # the live view: one trial running at 2x, the random row finished in 10 s, 3 cells queued
    running = Running(1, "", progress.PRETRAIN, 1, 12, "", 30.0, 5.0,
                      trial_eta_s=40.0, slowdown=2.0)  # fmt: skip
    own = [100.0, 400.0, 400.0]
    eta = study_eta(10.0, (running,), 3, 1, measured=True, idle_s=400.0, waiting_idle=own)
    assert eta == pytest.approx(40.0 + 2.0 * 900.0)
    assert study_eta(10.0, (running,), 3, 1, measured=True, idle_s=400.0) == pytest.approx(70.0)
    # two workers share the queue; before any slowdown, the preset's load factor prices it
    assert study_eta(10.0, (running,), 3, 2, measured=True, idle_s=400.0,
                     waiting_idle=own) == pytest.approx((40.0 + 1800.0) / 2)  # fmt: skip
    assert study_eta(800.0, (), 3, 1, measured=False, idle_s=400.0,
                     waiting_idle=own) == pytest.approx(1800.0)  # fmt: skip
    # the next trial has not measured its rate yet: the finished cells' own slowdown (their
    # seconds over their idle costs) prices the queue, not the random row's short time
    starting = Running(2, "", "starting", None, None, "", None, 1.0)
    eta = study_eta(10.0, (starting,), 3, 1, measured=True, idle_s=400.0, waiting_idle=own,
                    done_slowdown=2.0)  # fmt: skip
    assert eta == pytest.approx((800.0 - 1.0) + 2.0 * 900.0)
    assert study_eta(10.0, (starting,), 3, 1, measured=True, idle_s=400.0) == pytest.approx(39.0)


def test_the_finished_cells_slowdown_is_their_seconds_over_their_own_cost() -> None:
    import datetime
    from types import SimpleNamespace

    from cmcr.sweep.progress import _done_slowdown

    t0 = datetime.datetime(2026, 12, 6, 12, 0, 0)

    def done(slot: int, seconds: float) -> SimpleNamespace:
        end = t0 + datetime.timedelta(seconds=seconds)
        return SimpleNamespace(user_attrs={"cmcr.slot": slot}, datetime_start=t0,
                               datetime_complete=end)  # fmt: skip

    costs = {0: 10.0, 1: 100.0, 2: 100.0}
    # the random row took 30 s for a 10 s cost (3x), the others 200 s for 100 s (2x)
    assert _done_slowdown([done(0, 30.0), done(1, 200.0), done(2, 200.0)], costs) == 2.0
    assert _done_slowdown([done(5, 30.0)], costs) is None  # a slot without a cost is not used
