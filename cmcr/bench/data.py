"""Data-pipeline throughput: pre-training samples/s per worker count vs the file-reading floor.

The floor is what no pipeline can beat on the same samples: reading the LiDAR and lidarseg files
and fully decoding the 6 JPEGs (with OpenCV, the faster full decoder here), nothing else. Runs on
the demo world (``data/synthetic``) when present, else on a small demo-preset world generated
once under ``bench_results/data_worlds``; without ``--quick`` also on a world with full-size
(1600×900) images and the paper preset's data settings (every point, 224×416 crops, 2048
queries), the regime of real nuScenes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from cmcr.configs import load_config
from cmcr.data import build_pretrain_loader, set_loader_epoch
from cmcr.data.records import SampleRecord

WORLD_CACHE = Path("bench_results/data_worlds")


def _world(name: str, **spec) -> Path:
    """A cached synthetic world (generated on first use)."""
    from cmcr.synth import generate_world

    out = WORLD_CACHE / name
    if not (out / "v1.0-mini").is_dir():
        print(f"generating {out} {spec}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        generate_world(out, preset="demo", seed=0, overwrite=True, **spec)
    return out


def _floor_pass(records: list[SampleRecord]) -> float:
    """Seconds to read the point and label files and fully decode every JPEG, once."""
    t0 = time.perf_counter()
    for rec in records:
        np.fromfile(rec.lidar_path, dtype=np.float32)
        if rec.lidarseg_path:
            np.fromfile(rec.lidarseg_path, dtype=np.uint8)
        for path in rec.cam_paths:
            cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    return time.perf_counter() - t0


def _loader_pass(loader, epoch: int) -> tuple[float, int]:
    """Seconds and samples for one epoch of the loader (collate included)."""
    set_loader_epoch(loader, epoch)
    t0 = time.perf_counter()
    n = sum(batch["batch_size"] for batch in loader)
    return time.perf_counter() - t0, n


def measure(cfg, split: str, workers: tuple[int, ...], repeats: int) -> dict:
    """Best-of-`repeats` samples/s for the floor and each worker count (the CPU is shared)."""
    figures: dict[str, float] = {}
    loaders = {}
    for w in workers:
        cfg.data.num_workers = w
        loaders[w] = build_pretrain_loader(cfg, split, seed=0)
        _loader_pass(loaders[w], 0)  # start persistent workers, warm the page cache
    records = loaders[workers[0]].dataset.records
    best = {"floor": 0.0, **{w: 0.0 for w in workers}}
    for r in range(repeats):  # interleaved, so load from other processes hits all alike
        best["floor"] = max(best["floor"], len(records) / _floor_pass(records))
        for w in workers:
            seconds, n = _loader_pass(loaders[w], r + 1)
            best[w] = max(best[w], n / seconds)
    figures["samples"] = len(records)
    figures["floor_samples_per_s"] = round(best["floor"], 1)
    for w in workers:
        figures[f"workers{w}_samples_per_s"] = round(best[w], 1)
        figures[f"workers{w}_vs_floor"] = round(best[w] / best["floor"], 2)
    return figures


def run(args: argparse.Namespace) -> dict:
    """Figures for `python -m cmcr.bench data`."""
    quick = getattr(args, "quick", False)
    demo_root = Path("data/synthetic")
    if not (demo_root / "v1.0-mini").is_dir():
        demo_root = _world(
            "demo_small", scenes_per_split="1,1", samples_per_scene=3 if quick else 6
        )
    cfg = load_config("demo", {"data.dataroot": str(demo_root)})
    figures = {
        f"demo_{k}": v
        for k, v in measure(cfg, cfg.data.train_split, (0, 1, 2), 2 if quick else 4).items()
    }
    if not quick:
        root = _world("fullres", scenes_per_split="1,1", samples_per_scene=2, image_scale=1.0)
        paper_data = {"data.version": "v1.0-mini", "data.train_split": "mini_train"}
        cfg = load_config("paper", {"data.dataroot": str(root), **paper_data})
        figures.update(
            {f"fullres_{k}": v for k, v in measure(cfg, cfg.data.train_split, (0, 1, 2), 3).items()}
        )
    return figures
