"""Benchmark: one pre-training step on CPU split into data, forward, losses, backward, optimiser.

Per preset, on a world of its data regime: ``demo`` on the demo world (480×270 images, its own
sizes), ``paper`` (= ``official`` + GEMIM; the same data settings) on the full-resolution world
(1600×900 images, every point, 6 cameras at 224×416, 2048 queries; ResNet-50 with random
weights, said explicitly; batch 1 on CPU). data = one batch from the in-process loader (read,
decode, crop, voxelise, collate); forward excludes the loss terms, which are timed apart (the
model's ``profile`` sections); optimiser = the trainer's AdamW step. ``--quick``: demo only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from cmcr import losses as L
from cmcr.bench.data import _world
from cmcr.compat import patch_spconv_cpu
from cmcr.configs import load_config
from cmcr.data import build_pretrain_loader, set_loader_epoch
from cmcr.engine.train import build_optimizer
from cmcr.models import CMCRModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this benchmark (all optional)."""
    parser.add_argument("--step-repeats", type=int, default=1, help="timed steps after warm-up")


def _step(model: CMCRModel, batch: dict, opt: torch.optim.Optimizer) -> dict[str, float]:
    """One training step; seconds of forward (losses excluded), losses, backward, optimiser."""
    opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = model(batch)
    t1 = time.perf_counter()
    L.weighted_total(out["losses"], model.cfg.loss.weights).backward()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    losses = model.timings.get("losses", 0.0)
    return {
        "forward": t1 - t0 - losses,
        "losses": losses,
        "backward": t2 - t1,
        "optimiser": t3 - t2,
        **{f"section_{k}": v for k, v in model.timings.items() if k != "losses"},
    }


def _data_seconds(loader, repeats: int) -> tuple[dict, float]:
    """A batch of the loader and the least wall seconds of building one (in-process)."""
    best, batch = float("inf"), None
    for epoch in range(repeats):
        set_loader_epoch(loader, epoch)
        t0 = time.perf_counter()
        batch = next(iter(loader))
        best = min(best, time.perf_counter() - t0)
    return batch, best


def split_step(preset: str, root: Path, overrides: dict, repeats: int) -> dict[str, float]:
    """Step split of ``preset`` on the world at ``root`` (medians of ``repeats`` steps)."""
    cfg = load_config(
        preset,
        {
            "data.dataroot": str(root),
            "data.num_workers": 0,
            "model.image_weights": "random",  # explicit: no MoCo file is needed to time a step
            **overrides,
        },
    )
    torch.manual_seed(cfg.train.seed)
    loader = build_pretrain_loader(cfg, cfg.data.train_split, seed=0)
    batch, data_s = _data_seconds(loader, repeats)
    model = CMCRModel(cfg).train()
    model.profile = True
    opt = build_optimizer(cfg, model)
    _step(model, batch, opt)  # warm-up: spconv index building, allocator, optimiser state
    runs = [_step(model, batch, opt) for _ in range(max(repeats, 1))]
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    parts = {"data": data_s, **{k: med[k] for k in ("forward", "losses", "backward", "optimiser")}}
    total = sum(parts.values())
    figures: dict[str, float] = {
        "batch_size": cfg.train.batch_size,
        "loss_groups": -(-cfg.train.batch_size // cfg.loss.group_size),
        "points": len(batch["points"]),
        "images": "x".join(str(x) for x in batch["images"].shape),
        "step_s": round(total, 3),
    }
    for name, value in parts.items():
        figures[f"{name}_s"] = round(value, 3)
        figures[f"{name}_share"] = round(value / total, 3)
    # nearest-code search over every point and pixel (the MIM decoder's quantised input):
    # model work inside forward, reported beside the losses
    figures["codebook_assign_s"] = round(med.get("section_codebook_assign", 0.0), 3)
    return figures


def run(args: argparse.Namespace) -> dict:
    """Step splits of the demo preset and (without --quick) the paper preset at full size."""
    patch_spconv_cpu()
    quick = bool(getattr(args, "quick", False))
    repeats = max(int(getattr(args, "step_repeats", 1)), 1)
    demo_root = Path("data/synthetic")
    if not (demo_root / "v1.0-mini").is_dir():
        demo_root = _world(
            "demo_small", scenes_per_split="1,1", samples_per_scene=3 if quick else 6
        )
    figures = {"device": "cpu", "threads": torch.get_num_threads()}
    demo = split_step("demo", demo_root, {}, max(repeats, 3))
    figures.update({f"demo_{k}": v for k, v in demo.items()})
    if not quick:
        root = _world("fullres", scenes_per_split="1,1", samples_per_scene=2, image_scale=1.0)
        paper_data = {"data.version": "v1.0-mini", "data.train_split": "mini_train"}
        paper = split_step("paper", root, {"train.batch_size": 1, **paper_data}, repeats)
        figures.update({f"paper_{k}": v for k, v in paper.items()})
        figures["paper_loss_share_target"] = 0.15
    return figures
