"""The release's downstream protocol, point by point: the downstream rows of docs/fidelity.md.

Beside ``cmcr.configs.protocol`` (which holds the pre-training rows, renders the table and
collects these rows after its own); a row names where the release does it (file:line of the
authors' repository, Eaphan/CMCR), the config key that holds it and the tests that pin it.
"""

from __future__ import annotations

from cmcr.configs.protocol_point import Point

T = "tests/test_protocol_downstream.py::"
PARITY = "tests/test_protocol_parity.py::"
P = Point
DOWNSTREAM_POINTS: tuple[Point, ...] = (
    P(
        "downstream",
        "a new 1×1 layer on the backbone's own 96-d output; pre-training heads, "
        "codebook and decoders not loaded; features not L2-normalised",
        {},
        (
            T + "test_new_layer_sits_on_the_backbone_output",
            T + "test_logits_are_the_layer_on_raw_backbone_features",
            T + "test_backbone_file_heads_are_ignored",
        ),
    ),
    P(
        "downstream",
        "the new layer has 17 outputs, the ignore class among them (SemanticKITTI 20): in the "
        "softmax while training (label 0 left out of the loss), zeroed before the argmax at "
        "evaluation (`config/semseg_nuscenes.yaml:44-45`, `downstream/lightning_trainer.py:"
        "147-153`)",
        {"downstream.head_includes_ignore": True},
        (
            PARITY + "test_head_includes_the_ignore_class_in_training_and_masks_it_at_evaluation",
            PARITY + "test_a_head_file_loads_with_or_without_the_ignore_row",
        ),
        "false: one output per class",
    ),
    P(
        "downstream",
        "BatchNorm momentum 0.02 downstream, on the BatchNorms outside the residual blocks "
        "(the blocks keep 0.1, as in pre-training)",
        {"downstream.bn_momentum": 0.02, "model.bn_momentum_scope": "outside_blocks"},
        (
            T + "test_backbone_batchnorm_momentum_downstream",
            PARITY + "test_bn_momentum_reaches_only_batchnorms_outside_the_residual_blocks",
        ),
    ),
    P(
        "downstream",
        "linear probe: everything frozen but the new layer, 100 % of the labels",
        {"downstream.probe_label_fraction": 1.0},
        (
            T + "test_probe_trains_only_the_layer_with_a_frozen_eval_backbone",
            T + "test_cli_prints_and_records_the_protocol",
        ),
    ),
    P(
        "downstream",
        "probe and fine-tuning: cloud augmentation (rotation about z, axis flips), "
        "drawn every epoch",
        {"data.rotate": True, "data.flip_prob": 0.5},
        (
            T + "test_probe_augmentation_is_drawn_every_epoch",
            "tests/test_data_pure.py::test_augment_cloud_is_rigid_and_identity_when_off",
        ),
    ),
    P(
        "downstream",
        "loss = cross-entropy + Lovász-softmax over **voxels**, each labelled with its first "
        "point's label (`downstream/dataloader_nuscenes.py:208-220`, "
        "`downstream/lightning_trainer.py:119-122`)",
        {"downstream.lovasz": True, "downstream.loss_unit": "voxel"},
        (
            T + "test_seg_loss_is_cross_entropy_plus_lovasz",
            T + "test_probe_trains_only_the_layer_with_a_frozen_eval_backbone",
            PARITY + "test_loss_over_voxels_labels_each_voxel_with_its_first_point",
            PARITY + "test_training_loss_is_over_voxel_logits",
        ),
        "point: over points (dense near-range regions weigh more)",
    ),
    P(
        "downstream",
        "probe: SGD lr 0.05, momentum 0.9, dampening 0.1, weight decay 1e-4, "
        "cosine over 50 epochs, batch 16",
        {
            "downstream.probe_lr": 0.05,
            "downstream.momentum": 0.9,
            "downstream.dampening": 0.1,
            "downstream.weight_decay": 1e-4,
            "downstream.probe_epochs": 50,
            "downstream.batch_size": 16,
        },
        (T + "test_optimiser_groups_follow_the_release",),
    ),
    P(
        "downstream",
        "fine-tuning: everything trains, SGD lr 0.02 (backbone) and 2.0 (new layer), "
        "cosine over 100 epochs",
        {
            "downstream.finetune_lr": 0.02,
            "downstream.finetune_head_lr": 2.0,
            "downstream.finetune_epochs": 100,
        },
        (
            T + "test_optimiser_groups_follow_the_release",
            T + "test_finetune_protocol_names_both_lrs_and_the_scene_fraction",
        ),
    ),
    P(
        "downstream",
        "the cosine is stepped once per epoch, T_max = the epochs (`downstream/"
        "lightning_trainer.py:100-105`, Lightning's default interval)",
        {"downstream.scheduler_interval": "epoch"},
        (PARITY + "test_cosine_is_stepped_per_epoch_over_the_epochs",),
        "step: per optimiser step over all steps",
    ),
    P(
        "downstream",
        "the training loader drops its last, partial batch; validation keeps every scan "
        "(`downstream/lightning_datamodule.py:62`, `:78`)",
        {"downstream.drop_last": True},
        (PARITY + "test_downstream_training_loader_drops_the_last_partial_batch",),
        "a set smaller than one batch keeps it (the release would train on nothing)",
    ),
    P(
        "downstream",
        "1 % = every 100th training *scene* with all its keyframes, in nuScenes order, "
        "counted before the modulo: positions 99, 199, ..., 699 "
        "(`downstream/dataloader_nuscenes.py:127-132`)",
        {
            "downstream.finetune_label_fraction": 0.01,
            "downstream.label_fraction_unit": "scene",
            "downstream.label_fraction_start": "kth",
        },
        (
            "tests/test_data_pure.py::test_every_kth_scene_keeps_the_release_positions_by_default",
            T + "test_finetune_fraction_keeps_whole_scenes",
            T + "test_finetune_protocol_lists_the_subset_scene_names",
            "tests/test_data_world.py::test_seg_train_label_fraction_and_augmentation",
        ),
        "`cmcr finetune` prints the scene names; first: positions 0, 100, ...; a split of "
        "fewer than 100 scenes keeps its first (the release: scene-0392, lines 134-151)",
    ),
    P(
        "downstream",
        "Cartesian voxels of 0.1 m downstream as in pre-training",
        {"data.voxel_size": 0.1},
        (
            "tests/test_downstream_devkit.py::test_probe_miou_matches_devkit_evaluator",
            PARITY + "test_a_lightning_checkpoint_is_not_taken_for_a_backbone",
        ),
        "deliberate: the release's probing config says cylindrical (see below)",
    ),
    P(
        "downstream",
        "scoring: mIoU over the 16 challenge classes, fwIoU, per-class IoU",
        {},
        ("tests/test_downstream_devkit.py::test_probe_miou_matches_devkit_evaluator",),
        "deliberate: every val point by the devkit's rules; fwIoU by class frequency (see below)",
    ),
)
