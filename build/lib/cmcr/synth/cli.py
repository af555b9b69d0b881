"""``cmcr synth``: write the synthetic nuScenes-format world to a directory."""

from __future__ import annotations

import argparse

from cmcr.errors import CMCRError
from cmcr.synth.generate import generate_world
from cmcr.synth.kitti import generate_kitti_world
from cmcr.synth.spec import PRESETS, parse_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cmcr synth``; numbers are parsed by the generator so errors stay one line."""
    parser.add_argument(
        "--format",
        default="nuscenes",
        # the file layouts this generator writes: its own list, not the dataset registry (a
        # registered downstream dataset need not have a synthetic world)
        choices=("nuscenes", "semantickitti"),
        help="layout: nuScenes v1.0-mini (default) or SemanticKITTI sequences/",
    )
    parser.add_argument(
        "--sequences",
        default=None,
        metavar="NN:SCANS,...",
        help="semantickitti: sequences and their scan counts, e.g. 00:101,01:101,08:12",
    )
    parser.add_argument("--out", required=True, help="output directory (its parent must exist)")
    parser.add_argument(
        "--preset", default="default", help=f"world size: {' | '.join(PRESETS)} (default: default)"
    )
    parser.add_argument(
        "--scenes-per-split",
        default=None,
        metavar="TRAIN,VAL",
        help="mini_train and mini_val scenes to write, e.g. 8,2 (at most 8 and 2)",
    )
    parser.add_argument(
        "--samples-per-scene", default=None, metavar="N", help="keyframes per scene"
    )
    parser.add_argument(
        "--test-scenes",
        default=None,
        metavar="N",
        help="also the devkit's first N test scenes (150: all) in v1.0-test, without lidarseg "
        "labels, like the benchmark's test split (default 0)",
    )
    parser.add_argument(
        "--image-scale", default=None, metavar="S", help="camera size as a fraction of 1600x900"
    )
    parser.add_argument("--seed", default="0", metavar="K", help="world seed (default 0)")
    parser.add_argument("--workers", default=None, metavar="N", help="processes (default: CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    """Generate the world; CMCRError (one line naming the argument) reaches the CLI -> exit 2."""
    workers = None if args.workers is None else parse_int("--workers", args.workers, 1, 64)
    if args.format == "semantickitti":
        return _run_kitti(args, workers)
    summary = generate_world(
        args.out,
        preset=args.preset,
        seed=args.seed,
        scenes_per_split=args.scenes_per_split,
        samples_per_scene=args.samples_per_scene,
        image_scale=args.image_scale,
        test_scenes=args.test_scenes,
        overwrite=args.overwrite,
        workers=workers,
    )
    width, height = summary["image_size"]
    print(
        f"wrote {summary['scenes']} scenes, {summary['samples']} samples, {summary['images']} "
        f"images ({width}x{height}), {summary['points_per_sweep_mean']:.0f} points/sweep "
        + (
            f"and {summary['test_scenes']} test scenes (v1.0-test) "
            if summary["test_scenes"]
            else ""
        )
        + f"to {summary['path']} in {summary['seconds']:.1f} s"
    )
    return 0


def _run_kitti(args: argparse.Namespace, workers: int | None) -> int:
    """``--format semantickitti``: the same streets in the SemanticKITTI layout."""
    nuscenes_only = ("--scenes-per-split", "--samples-per-scene", "--image-scale")
    given = [
        name
        for name, value in zip(
            nuscenes_only,
            (args.scenes_per_split, args.samples_per_scene, args.image_scale),
            strict=True,
        )
        if value is not None
    ]
    if given:
        raise CMCRError(f"{', '.join(given)}: nuScenes layout only (use --sequences)")
    s = generate_kitti_world(
        args.out,
        preset=args.preset,
        seed=args.seed,
        sequences=args.sequences,
        overwrite=args.overwrite,
        workers=workers,
    )
    print(
        f"wrote {s['sequences']} sequences, {s['scans']} scans, "
        f"{s['points_per_scan_mean']:.0f} points/scan to {s['path']} in {s['seconds']:.1f} s"
    )
    return 0
