"""The official release's protocol, point by point: what docs/fidelity.md tabulates.

One row per point of METHOD.md ("The official release's protocol, point by point" and
"Downstream evaluation"): the release's value, the config key(s) that hold it, the value the
``official`` preset must have, and the test that fails if the behaviour regresses. The table
in docs/fidelity.md is generated from these rows (``python -m cmcr.configs.protocol``), and
tests/test_fidelity.py checks that the official preset has every value, that every named test
exists, and that the document is up to date.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmcr.configs.schema import RELEASE_HOLDOUT_SCENES


@dataclass(frozen=True)
class Point:
    """One protocol point: where it is set and what pins it."""

    area: str  # pre-training data | pre-training model | losses | optimiser | downstream
    point: str  # what the release does, in words
    values: dict[str, Any]  # config key -> the official preset's value
    tests: tuple[str, ...]  # "tests/test_x.py::test_name" that fail if the point regresses
    note: str = ""  # how we do it, where it is not obvious


P = Point
POINTS: tuple[Point, ...] = (
    # ---- pre-training data -----------------------------------------------------------------
    P(
        "data",
        "train scenes minus the fixed 100-scene held-out list; validated on that list",
        {"data.holdout_scenes": list(RELEASE_HOLDOUT_SCENES)},
        (
            "tests/test_protocol_data.py::test_apply_holdout_excludes_or_keeps_only_the_held_out_scenes",
            "tests/test_pretrain_holdout.py::test_pretraining_validates_on_the_held_out_scenes",
        ),
        "holdout/* metrics at every epoch's end",
    ),
    P(
        "data",
        "random resized crop to 224×416, area U(0.3, 1.0), aspect (w/h) in (14/9, 17/9)",
        {
            "data.image_size": [224, 416],
            "data.crop_scale": [0.3, 1.0],
            "data.crop_aspect": [14 / 9, 17 / 9],
        },
        (
            "tests/test_protocol_data.py::test_crop_candidates_fit_and_keep_area_and_aspect_in_range",
        ),
    ),
    P(
        "data",
        "the crop is redrawn until > 1024 of the image's pairings survive, or > 75 %",
        {"data.crop_min_pairs": 1024, "data.crop_min_pair_fraction": 0.75, "data.crop_tries": 20},
        (
            "tests/test_protocol_data.py::test_chosen_crop_keeps_enough_pairs_whenever_a_candidate_could",
            "tests/test_protocol_data.py::test_crop_choice_equals_a_slow_loop",
        ),
        "at most crop_tries draws, then the draw with most pairings (the release loops on)",
    ),
    P(
        "data",
        "horizontal flip p = 0.5; cloud rotation about z and axis flips",
        {"data.hflip_prob": 0.5, "data.rotate": True, "data.flip_prob": 0.5},
        (
            "tests/test_data_pure.py::test_augment_cloud_is_rigid_and_identity_when_off",
            "tests/test_data_pure.py::test_map_pixels_lands_in_the_output_pixel_holding_the_point",
        ),
    ),
    P(
        "data",
        "masking on the full-resolution image before the crop, 16×16 patches there",
        {"data.mask_stage": "source", "data.mask_patch": 16},
        (
            "tests/test_protocol_data.py::test_pair_in_a_masked_source_patch_is_masked_and_one_outside_is_not",
            "tests/test_protocol_data.py::test_world_sample_masks_at_the_source",
        ),
        "demo/smoke scale the patch to their smaller images (5 / 2 px)",
    ),
    P(
        "data",
        "images masked with p 0.5, patches with p 0.5",
        {"data.mask_image_prob": 0.5, "data.mask_ratio": 0.5},
        ("tests/test_data_pure.py::test_patch_mask",),
    ),
    P(
        "data",
        "masked pixels set to 0 before ImageNet normalisation (black, not grey)",
        {"data.mask_fill": "black"},
        (
            "tests/test_protocol_data.py::test_encoder_input_is_black_where_the_output_pixel_is_all_masked",
            "tests/test_protocol_data.py::test_encoder_fill_black_vs_mean",
        ),
    ),
    P(
        "data",
        "masked pairs dropped with a boolean mask (NOT the release's integer-index bug)",
        {},
        ("tests/test_protocol_data.py::test_masked_pairs_are_never_sampled",),
        "deliberate difference: the release's `1 - mask[...]` indexes elements 0 and 1",
    ),
    P(
        "data",
        "Cartesian voxels of 0.1 m; input feature = intensity of the voxel's first point",
        {"data.voxel_size": 0.1, "data.voxel_feature": "first"},
        (
            "tests/test_protocol_data.py::test_voxel_feature_first_is_the_first_point_of_each_voxel",
            "tests/test_protocol_data.py::test_datasets_use_the_configured_voxel_feature",
        ),
    ),
    P(
        "data",
        "occupancy neighbours: up to 32 input points within 1.0 m of the query",
        {"data.max_neighbours": 32, "data.query_radius": 1.0},
        ("tests/test_data_pure.py::test_query_neighbours_match_brute_force",),
    ),
)


def official_values() -> dict[str, Any]:
    """Every config key the protocol fixes, with the official preset's value."""
    out: dict[str, Any] = {}
    for p in POINTS:
        out.update(p.values)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 4:
        return f"{len(value)} scenes (METHOD.md)"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def table() -> str:
    """The markdown table of docs/fidelity.md."""
    lines = [
        "| # | area | the release | config key = official value | pinned by | note |",
        "|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(POINTS, 1):
        keys = "<br>".join(f"`{k}` = {_fmt(v)}" for k, v in p.values.items()) or "—"
        tests = "<br>".join(
            f"`{t.split('::')[0].removeprefix('tests/')}::{t.split('::')[1]}`" for t in p.tests
        )
        lines.append(f"| {i} | {p.area} | {p.point} | {keys} | {tests} | {p.note} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- cmcr-fidelity:table -->", "<!-- /cmcr-fidelity:table -->"


def render(doc: str) -> str:
    """``doc`` with the text between the markers replaced by ``table()``."""
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """``python -m cmcr.configs.protocol [DOC]``: rewrite the table in docs/fidelity.md."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "docs/fidelity.md")
    path.write_text(render(path.read_text()))
    print(f"{path}: {len(POINTS)} protocol points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
