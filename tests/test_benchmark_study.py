"""The benchmark study: the ablation grid, one budget for every row, within ~40 min on 2 cores."""

from __future__ import annotations

import math

from cmcr.configs import apply_overrides, flatten_config, load_config, variant_name
from cmcr.engine.train import total_steps
from cmcr.sweep.space import check_space, load_study
from cmcr.synth.spec import PRESETS

COMPONENTS = ("mim", "gemim", "occupancy", "codebook", "orth")
SEEDS = 3  # the study is run with --seeds 3
# measured (docs/results.md, issue-13 run): the 150-step grid under the official protocol, 24
# runs, --workers 2, one thread per worker, took 38 min 11 s wall on 2 cores that two other
# sessions' short tests shared. Charged here as ~0.9 CPU-s per CMCR step (PPKT is cheaper) and
# ~70 CPU-s per run (start, held-out validation, the 20-epoch probe that recomputes augmented
# features every epoch), spread over the 2 cores the two workers use: about 38 min.
STEP_CPU_S, RUN_OVERHEAD_CPU_S, CORES = 0.9, 70.0, 2
BUDGET_S = 40 * 60  # "about 30 minutes" (issue 13) was missed by the measured run: see results.md


def _cells():
    spec = load_study("benchmark")
    base = load_config(spec.preset, spec.fixed)
    cells = {
        c["variant"]: apply_overrides(load_config(spec.preset, spec.fixed), spec.overrides_for(c))
        for c in spec.grid_cells()
    }
    return spec, base, cells


def test_benchmark_is_the_ablation_grid_on_demo():
    spec, base, cells = _cells()
    assert spec.is_grid and spec.preset == "demo"
    check_space(spec, base)
    expected = ["random", "ppkt", "cmcr"] + [f"cmcr-{c}" for c in COMPONENTS]
    assert list(cells) == expected
    assert cells["random"].method.name == "random" and cells["ppkt"].method.name == "ppkt"
    for comp in COMPONENTS:
        cfg = cells[f"cmcr-{comp}"]
        assert cfg.method.name == "cmcr" and not getattr(cfg.method, comp)
        others = [c for c in COMPONENTS if c != comp]
        assert all(getattr(cfg.method, c) for c in others)  # exactly one component off
    assert len({variant_name(c) for c in cells.values()}) == len(expected)


def test_every_row_gets_the_same_budget_and_probe():
    _, _, cells = _cells()

    def shared(cfg):  # everything but the method switches: no baseline is tuned down
        return {k: v for k, v in flatten_config(cfg).items() if not k.startswith("method.")}

    rows = [shared(c) for c in cells.values()]
    assert all(r == rows[0] for r in rows[1:])


def test_budget_fields_fit_forty_minutes():
    spec, base, cells = _cells()
    assert {"train.max_steps", "train.epochs", "downstream.probe_epochs"} <= set(spec.fixed)
    world = PRESETS["demo"]
    # scene-1094 of mini_train is one of the release's held-out scenes: pre-training leaves it out
    held = set(base.data.holdout_scenes) & set(world.scene_names[: world.train_scenes])
    assert held == {"scene-1094"}
    train_scans = (world.train_scenes - len(held)) * world.samples_per_scene
    batches = math.ceil(train_scans / base.train.batch_size)
    # max_steps decides (train.epochs is ignored then): every pre-trained row runs that many
    assert base.train.max_steps > 0 and total_steps(base, batches) == base.train.max_steps
    pretrained = [c for c in cells.values() if c.method.name != "random"]
    cpu_s = SEEDS * (
        len(pretrained) * base.train.max_steps * STEP_CPU_S + len(cells) * RUN_OVERHEAD_CPU_S
    )
    total_s = cpu_s / CORES
    assert total_s <= BUDGET_S, f"benchmark needs ~{total_s / 60:.0f} min, budget 40"
