"""Benchmark: time to generate the default and the smoke synthetic worlds."""

from __future__ import annotations

import argparse
import os
import tempfile

from cmcr.synth import generate_world


def run(args: argparse.Namespace) -> dict:
    """Generate each preset into a temp dir; report wall and CPU seconds, points, images."""
    presets = ("smoke",) if getattr(args, "quick", False) else ("default", "smoke")
    figures: dict[str, float | int | str] = {"cpus": os.cpu_count() or 1}
    for preset in presets:
        with tempfile.TemporaryDirectory(prefix="cmcr-bench-synth-") as tmp:
            summary = generate_world(os.path.join(tmp, "world"), preset=preset, seed=0)
        width, height = summary["image_size"]
        figures[f"{preset}_seconds"] = summary["seconds"]
        figures[f"{preset}_cpu_seconds"] = summary["cpu_seconds"]  # honest on a shared CPU
        figures[f"{preset}_scenes"] = summary["scenes"]
        figures[f"{preset}_samples"] = summary["samples"]
        figures[f"{preset}_images"] = summary["images"]
        figures[f"{preset}_image_size"] = f"{width}x{height}"
        figures[f"{preset}_points_per_sweep_mean"] = round(summary["points_per_sweep_mean"])
        figures[f"{preset}_points_per_sweep_min"] = summary["points_per_sweep_min"]
    return figures
