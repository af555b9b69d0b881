"""Data-pipeline throughput: pre-training samples/s per worker count vs the file-reading floor.

The floor is what no pipeline can beat on the same samples: reading the LiDAR and lidarseg files
and fully decoding the 6 JPEGs (with OpenCV, the faster full decoder here), nothing else. Runs on
the demo world (``data/synthetic``) when present, else on a small demo-preset world generated
once under ``bench_results/data_worlds``; without ``--quick`` also on a world with full-size
(1600×900) images and the official preset's data settings (= paper's: every point, 224×416
crops, 2048 queries), the regime of real nuScenes.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from cmcr.configs import load_config
from cmcr.data import build_pretrain_loader, collate_pretrain, occupancy, set_loader_epoch
from cmcr.data.records import SampleRecord
from cmcr.synth import generate_world

WORLD_CACHE = Path("bench_results/data_worlds")


def _world(name: str, **spec) -> Path:
    """A cached synthetic world (generated on first use)."""
    out = WORLD_CACHE / name
    if not (out / "v1.0-mini").is_dir():
        print(f"generating {out} {spec}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        generate_world(out, preset="demo", seed=0, overwrite=True, **spec)
    return out


def _floor_one(rec: SampleRecord) -> None:
    """Read the point and label files and fully decode every JPEG of one sample."""
    np.fromfile(rec.lidar_path, dtype=np.float32)
    if rec.lidarseg_path:
        np.fromfile(rec.lidarseg_path, dtype=np.uint8)
    for path in rec.cam_paths:
        cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)


def _min_seconds(fn, repeats: int) -> float:
    """Least CPU time of `repeats` calls (single-threaded libraries, as in a loader worker).

    CPU time, not wall clock: on a CPU shared with many jobs a 10 ms call is preempted
    almost every time, so wall-clock minima measure the neighbours, not the code.
    """
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _epoch_rate(loader, epoch: int) -> float:
    """Samples/s (wall clock) of one loader epoch, collate included."""
    set_loader_epoch(loader, epoch)
    t0 = time.perf_counter()
    n = sum(batch["batch_size"] for batch in loader)
    return n / (time.perf_counter() - t0)


def measure(cfg, split: str, repeats: int) -> dict:
    """Floor and in-process pipeline (getitem + collate) as per-sample least CPU time;
    1 and 2 workers as best-of-`repeats` wall-clock epoch rates (these carry the machine's load).
    """
    cfg.data.num_workers = 0
    dataset = build_pretrain_loader(cfg, split, seed=0).dataset
    floor = pipe = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        for i, rec in enumerate(dataset.records):
            floor += _min_seconds(lambda rec=rec: _floor_one(rec), repeats)
            pipe += _min_seconds(lambda i=i: collate_pretrain([dataset[(0, i)]]), repeats)
    torch.set_num_threads(threads)
    n = len(dataset)
    figures: dict[str, float] = {
        "samples": n,
        "load_average_1min": round(os.getloadavg()[0], 1),
        "floor_cpu_samples_per_s": round(n / floor, 1),
        "workers0_cpu_samples_per_s": round(n / pipe, 1),
        "workers0_cpu_vs_floor": round(floor / pipe, 2),
    }
    for w in (1, 2):
        cfg.data.num_workers = w
        loader = build_pretrain_loader(cfg, split, seed=0, drop_last=False)  # every sample
        _epoch_rate(loader, 0)  # start the persistent workers
        rate = max(_epoch_rate(loader, e + 1) for e in range(repeats))
        figures[f"workers{w}_wall_samples_per_s"] = round(rate, 1)
        figures[f"workers{w}_wall_vs_floor_cpu"] = round(rate * floor / n, 2)
    return figures


# the stages of one pre-training sample (cmcr.data functions), in pipeline order
STAGES = (
    "read_points",
    "project_points",
    "sample_crops",
    "map_pixels",
    "patch_grid",
    "mask_through_crop",
    "read_image_crop",
    "augment_cloud",
    "voxelize",
    "sample_queries",
    "query_neighbours",
    "collate_pretrain",
)


def profile(cfg, split: str, repeats: int = 3) -> dict:
    """Where one sample's CPU time goes: cProfile over getitem + collate, single-threaded.

    Per stage (a cmcr.data function, its callees included): ms per sample and share of the
    total. ``rest`` is what is left: the dict and array glue between the stages.
    """
    import cProfile
    import pstats

    cfg.data.num_workers = 0
    dataset = build_pretrain_loader(cfg, split, seed=0).dataset
    n = len(dataset)
    prof = cProfile.Profile()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        collate_pretrain([dataset[(0, 0)]])  # warm caches outside the profile
        prof.enable()
        for _ in range(repeats):
            for i in range(n):
                collate_pretrain([dataset[(0, i)]])
        prof.disable()
    torch.set_num_threads(threads)
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())
    samples = n * repeats
    out: dict[str, float] = {"profile_total_ms_per_sample": round(1e3 * total / samples, 2)}
    covered = 0.0
    for stage in STAGES:
        cum = sum(
            v[3]
            for (file, _, name), v in stats.items()
            if name == stage and f"cmcr{os.sep}data" in file
        )
        covered += cum
        out[f"profile_{stage}_ms"] = round(1e3 * cum / samples, 2)
        out[f"profile_{stage}_share"] = round(cum / total, 3)
    rest = max(0.0, total - covered)
    out["profile_rest_ms"] = round(1e3 * rest / samples, 2)
    out["profile_rest_share"] = round(rest / total, 3)
    return out


def run(args: argparse.Namespace) -> dict:
    """Figures for `python -m cmcr.bench data`."""
    quick = getattr(args, "quick", False)
    # a run's steady state: a process switches to the compiled neighbour search once the k-d
    # tree search has cost it a second (cmcr/data/occupancy.py); loader workers inherit it
    occupancy.use_compiled_search()
    demo_root = Path("data/synthetic")
    if not (demo_root / "v1.0-mini").is_dir():
        demo_root = _world(
            "demo_small", scenes_per_split="1,1", samples_per_scene=3 if quick else 6
        )
    cfg = load_config("demo", {"data.dataroot": str(demo_root)})
    figures: dict = {
        "neighbour_search": "compiled" if occupancy.compiled_search_in_use() else "k-d trees"
    }
    figures |= {
        f"demo_{k}": v for k, v in measure(cfg, cfg.data.train_split, 3 if quick else 8).items()
    }
    figures["demo_target_vs_floor"] = 0.7
    figures.update({f"demo_{k}": v for k, v in profile(cfg, cfg.data.train_split).items()})
    if not quick:
        root = _world("fullres", scenes_per_split="1,1", samples_per_scene=2, image_scale=1.0)
        # official and paper share every data setting (paper adds GEMIM, a model switch)
        full_data = {"data.version": "v1.0-mini", "data.train_split": "mini_train"}
        cfg = load_config("official", {"data.dataroot": str(root), **full_data})
        figures["fullres_preset"] = "official = paper (data settings)"
        figures.update(
            {f"fullres_{k}": v for k, v in measure(cfg, cfg.data.train_split, 8).items()}
        )
        figures["fullres_target_vs_floor"] = 0.8
        figures.update({f"fullres_{k}": v for k, v in profile(cfg, cfg.data.train_split).items()})
    return figures
