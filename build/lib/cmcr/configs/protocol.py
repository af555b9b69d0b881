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
from pathlib import Path
from typing import Any

from cmcr.configs.protocol_downstream import DOWNSTREAM_POINTS
from cmcr.configs.protocol_point import Point
from cmcr.configs.schema import RELEASE_HOLDOUT_SCENES

P = Point
PRETRAIN_POINTS: tuple[Point, ...] = (
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
        "the crop is resized bilinearly from the full-resolution image, without antialiasing"
        " (`utils/transforms.py:183-188`: torchvision 0.9.1's `resized_crop` on tensors)",
        {"data.image_resize_antialias": False},
        (
            "tests/test_data_pure.py::test_image_resize_is_bilinear_from_full_resolution_without_antialias",
            "tests/test_data_pure.py::test_a_box_smaller_than_the_output_is_cut_at_its_edge_as_the_release_crops",
        ),
        "true: the JPEG decoded at 1/2-1/8 scale where the crop allows, then resized (faster;"
        " the reduced decode averages, so fine detail does not alias)",
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
        "occupancy neighbours: the first 32 input points by index within 1.0 m of the query, not"
        " the nearest (`pretrain/lightning_trainer.py:75`, `:197`: torch_geometric's `radius`"
        " with its default max_num_neighbors=32, whose CUDA kernel scans the points in order"
        " and stops at 32)",
        {"data.max_neighbours": 32, "data.query_radius": 1.0, "data.occ_neighbours": "first"},
        ("tests/test_data_pure.py::test_query_neighbours_match_brute_force",),
        "nearest: the 32 nearest (issue 30's audit, a dense cloud: mean distance 0.26 m vs 0.73 m)",
    ),
    P(
        "data",
        "occupancy queries: 2048 in thirds (inside takes the remainder), each third's points drawn"
        " without replacement (`pretrain/dataloader_nuscenes.py:335-341`)",
        {"data.n_queries": 2048},
        (
            "tests/test_data_pure.py::test_query_sources_are_distinct_within_each_third",
            "tests/test_data_pure.py::test_queries_inside_farther_near_closer_far_between",
        ),
        "a cloud with fewer points than a third draws with replacement (the release makes fewer)",
    ),
    P(
        "data",
        "a pairing's pixel must lie in 0 < u < W − 1 and 0 < v < H − 1"
        " (`pretrain/dataloader_nuscenes.py:280-283`)",
        {"data.pixel_margin": 1.0},
        (
            "tests/test_data_pure.py::test_projection_keeps_pixels_inside_the_release_margin",
            "tests/test_data_pure.py::test_projection_matches_devkit_chain",
        ),
        "0: every pixel of the image, 0 < u < W",
    ),
    # ---- pre-training model ----------------------------------------------------------------
    P(
        "model",
        "backbone MinkUNet34C-shaped sparse U-Net; first convolution kernel 3",
        {"model.backbone": "unet34c", "model.stem_kernel": 3},
        ("tests/test_protocol_model.py::test_official_stem_kernel_and_bn_momentum",),
    ),
    P(
        "model",
        "BatchNorm momentum 0.05 in pre-training on the 16 BatchNorms outside the residual "
        "blocks (stem, stride-2, transposed, shortcut: `model/res16unet.py:55-222`, "
        "`model/resnet.py:133-138`); the blocks' 46 are built without it and keep 0.1 "
        "(`model/resnet.py:140-163`, `model/modules/resnet_block.py:25`)",
        {"model.bn_momentum": 0.05, "model.bn_momentum_scope": "outside_blocks"},
        (
            "tests/test_protocol_model.py::test_official_stem_kernel_and_bn_momentum",
            "tests/test_protocol_parity.py::"
            "test_bn_momentum_reaches_only_batchnorms_outside_the_residual_blocks",
        ),
        "all: every BatchNorm at the value",
    ),
    P(
        "model",
        "BatchNorm synchronised across the 6 GPUs (`pretrain.py:42-44`; downstream "
        "`downstream.py:43-44` when it runs on several)",
        {"train.sync_bn": True},
        ("tests/test_protocol_parity.py::test_batchnorms_synchronise_with_several_cuda_processes",),
        "several CUDA processes only (torch has no CPU SyncBatchNorm); one process over the "
        "batch of 12 already gives the synchronised statistics; downstream runs one process",
    ),
    P(
        "model",
        "frozen ResNet-50 image encoder (MoCo-v2 weights from a local file)",
        {"model.image_encoder": "resnet50"},
        ("tests/test_model.py::test_frozen_image_encoder_keeps_eval_mode_and_statistics",),
    ),
    P(
        "model",
        "image heads: 1×1 conv, bilinear upsampling ×32 with align_corners=True",
        {"model.image_head_align_corners": True, "model.image_upsample": 32},
        ("tests/test_protocol_model.py::test_image_heads_upsample_with_align_corners",),
    ),
    P(
        "model",
        "codebook: 400 codes initialised U(−1, 1) then L2-normalised; EMA 0.999, eps 1e-5",
        {
            "model.codebook_init": "uniform",
            "model.codebook_size": 400,
            "model.codebook_decay": 0.999,
            "model.codebook_eps": 1e-5,
        },
        (
            "tests/test_protocol_model.py::test_codebook_init_uniform_then_normalised",
            "tests/test_codebook.py::test_pair_pulls_both_codes_as_specified",
        ),
    ),
    P(
        "model",
        "occupancy MLP Linear(67→128), ReLU, Linear(128→128), ReLU, Linear(128→128), "
        "Linear(128→2): no activation before the output layer",
        {"model.occ_hidden": [128, 128, 128], "model.occ_last_relu": False},
        ("tests/test_protocol_model.py::test_occupancy_mlp_is_the_release_shape",),
    ),
    P(
        "model",
        "GEMIM absent from the released code",
        {"method.gemim": False},
        ("tests/test_config.py::test_paper_is_official_plus_gemim",),
        "`paper` = `official` + GEMIM",
    ),
    # ---- losses --------------------------------------------------------------------------
    P(
        "losses",
        "every loss per group of 2 scans (one of 6 GPUs' batch), averaged over groups",
        {"loss.group_size": 2, "train.batch_size": 12},
        (
            "tests/test_protocol_model.py::test_group_of_two_equals_each_pair_of_scans_by_hand",
            "tests/test_protocol_model.py::test_group_at_least_batch_size_is_the_whole_batch",
            "tests/test_protocol_model.py::test_codebook_statistics_are_averaged_over_groups",
        ),
        "nce / cmcm batched over groups as padded (G, n, n) logits",
    ),
    P(
        "losses",
        "2048 sampled unmasked matches per group",
        {"loss.num_matches": 2048},
        ("tests/test_protocol_model.py::test_matches_per_group_are_num_matches_when_available",),
    ),
    P(
        "losses",
        "commit, cmcm and the codebook's EMA update on a second sample of 2048 matches, drawn"
        " independently of InfoNCE's (`pretrain/lightning_trainer.py:241`, `:255`)",
        {"loss.codebook_matches": "independent"},
        ("tests/test_protocol_model.py::test_codebook_terms_draw_their_own_sample_of_matches",),
        "shared: the codebook terms reuse InfoNCE's matches",
    ),
    P(
        "losses",
        "InfoNCE temperature 0.07; commitment β 0.25; weights 1, orthogonality 0.1",
        {
            "loss.temperature": 0.07,
            "loss.commit_beta": 0.25,
            "loss.weights.orth": 0.1,
            "loss.weights.nce": 1.0,
            "loss.weights.cmcm": 1.0,
            "loss.weights.commit": 1.0,
            "loss.weights.mim": 1.0,
            "loss.weights.occ": 1.0,
            "loss.weights.intensity": 1.0,
        },
        (
            "tests/test_losses.py::test_nce_matches_loop",
            "tests/test_losses.py::test_commit_matches_formula",
            "tests/test_losses.py::test_weighted_total_applies_weights",
        ),
    ),
    P(
        "losses",
        "MIM: MSE over all pixels of the unmasked image",
        {"loss.mim_on": "all"},
        ("tests/test_protocol_model.py::test_grouped_mim_is_the_mean_of_per_group_mim",),
    ),
    P(
        "losses",
        "occupancy BCE and intensity L1 averaged over (query, neighbour) pairs",
        {"loss.occ_reduce": "pairs"},
        ("tests/test_protocol_model.py::test_occupancy_bce_per_pair_against_a_loop",),
    ),
    P(
        "losses",
        "orth over voxel rows (the backbone's output before the inverse), per group",
        {"loss.orth_rows": "voxels"},
        ("tests/test_protocol_model.py::test_orth_over_voxel_rows_not_points",),
    ),
    # ---- optimiser -----------------------------------------------------------------------
    P(
        "optimiser",
        "AdamW lr 1e-3, PyTorch's default weight decay 0.01, constant lr, 10 epochs",
        {
            "train.lr": 1e-3,
            "train.weight_decay": 0.01,
            "train.scheduler": "constant",
            "train.warmup_steps": 0,
            "train.epochs": 10,
        },
        (
            "tests/test_fidelity.py::test_pretraining_optimiser_is_adamw_with_a_constant_lr",
            "tests/test_pretrain.py::test_pretrain_logs_the_contract",
        ),
    ),
    P(
        "optimiser",
        "the pre-training loader drops its last, partial batch; the held-out validation keeps"
        " every scan (`pretrain/lightning_datamodule.py:86`, `:109`)",
        {"train.drop_last": True},
        ("tests/test_protocol_parity.py::test_pretraining_loader_drops_the_last_partial_batch",),
        "a set smaller than one batch keeps it (the release would train on nothing)",
    ),
)
POINTS: tuple[Point, ...] = PRETRAIN_POINTS + DOWNSTREAM_POINTS


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
