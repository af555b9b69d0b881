"""The release's effective behaviour, second pass (issue 30; docs/fidelity.md).

Each test pins one point and flips its key to the alternative we keep, so it fails when the
behaviour does: the downstream loss over voxels, the head with the ignore class, BatchNorm
momentum outside the residual blocks, the cosine stepped per epoch, drop_last, SyncBN.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import cmcr.engine.downstream as D
from cmcr.configs import load_config
from cmcr.engine.checkpoint import load_seg_head
from cmcr.models.segmentation import SegModel


def _cfg(**over):
    return load_config("smoke", {"data.voxel_size": 0.3, **over})


def _toy_batch() -> dict:
    """7 points in 3 voxels; each voxel's first point (lowest index) has another label."""
    inverse = torch.tensor([2, 0, 0, 1, 2, 1, 0])
    labels = torch.tensor([5, 0, 3, 7, 9, 7, 3])  # voxel 0: point 1 (label 0), 1: 3, 2: 0
    return {"inverse": inverse, "labels": labels, "coords": torch.zeros(3, 4, dtype=torch.int32)}


# ---- point 2: the downstream loss over voxels ---------------------------------------------------
def test_loss_over_voxels_labels_each_voxel_with_its_first_point() -> None:
    batch = _toy_batch()
    first = D.first_point_of_voxel(batch["inverse"], 3)
    slow = [min(i for i, v in enumerate(batch["inverse"].tolist()) if v == j) for j in range(3)]
    assert first.tolist() == slow == [1, 3, 0]
    voxel = D.seg_targets(batch, _cfg(**{"downstream.head_includes_ignore": False}))
    assert voxel.tolist() == [D.IGNORE, 6, 4]  # labels 0, 7, 5 shifted to columns 0..15
    assert load_config("official").downstream.loss_unit == "voxel"
    point = D.seg_targets(
        batch, _cfg(**{"downstream.loss_unit": "point", "downstream.head_includes_ignore": False})
    )
    assert point.tolist() == [4, D.IGNORE, 2, 6, 8, 6, 2]


class _OneLoss(D._Trainer):
    """The real loop's first training loss, nothing else (no update, no evaluation)."""

    def fit(self, epochs, epoch_losses, evaluate) -> None:
        next(epoch_losses(1))


def test_training_loss_is_over_voxel_logits(monkeypatch, smoke_world: Path) -> None:
    """The real loop hands seg_loss one row per voxel (one per point when flipped)."""
    seen = []
    real = D.seg_loss

    def loss(logits, target, lovasz):
        seen.append((logits.shape[0], target.shape[0]))
        return real(logits, target, lovasz)

    monkeypatch.setattr(D, "seg_loss", loss)
    loaders = D.build_loaders(_cfg(**{"data.dataroot": str(smoke_world)}), "probe")
    for unit in ("voxel", "point"):  # the loaders do not depend on the loss unit
        cfg = _cfg(**{"data.dataroot": str(smoke_world), "downstream.loss_unit": unit})
        model = SegModel(cfg)
        D._train(cfg, model, loaders, torch.device("cpu"), _OneLoss(cfg, model, None, None))
    train = loaders[0]
    D.set_loader_epoch(train, 0)
    batch = next(iter(train))
    n_voxels, n_points = len(batch["coords"]), len(batch["labels"])
    assert seen == [(n_voxels, n_voxels), (n_points, n_points)] and n_voxels < n_points


# ---- point 5: the head with the ignore class ----------------------------------------------------
def test_head_includes_the_ignore_class_in_training_and_masks_it_at_evaluation() -> None:
    official = _cfg()
    assert official.downstream.head_includes_ignore is True
    model = SegModel(official)
    assert model.classifier.out_features == 16 + 1
    batch = _toy_batch()
    target = D.seg_targets(batch, official)  # column c for label c; label 0 never a target
    assert target.tolist() == [D.IGNORE, 7, 5]
    # cross-entropy over 17 columns with label 0 left out = the release's ignore_index=0
    logits = torch.randn(3, 17, generator=torch.Generator().manual_seed(0))
    voxel_labels = torch.tensor([0, 7, 5])
    ref = nn.functional.cross_entropy(logits, voxel_labels, ignore_index=0)
    assert D.seg_loss(logits, target, lovasz=False).item() == pytest.approx(ref.item())
    # evaluation: the ignore column is dropped before the argmax (never predicted)
    head = torch.zeros(2, 17)
    head[:, 0] = 10.0
    head[0, 4], head[1, 9] = 1.0, 2.0
    assert (model.class_logits(head).argmax(1) + 1).tolist() == [4, 9]
    flipped = SegModel(_cfg(**{"downstream.head_includes_ignore": False}))
    assert flipped.classifier.out_features == 16
    assert flipped.class_logits(head).shape == (2, 17)  # nothing dropped


@pytest.mark.parametrize("rows", [16, 17])
def test_a_head_file_loads_with_or_without_the_ignore_row(tmp_path: Path, rows: int) -> None:
    path = tmp_path / "seg_head.pt"
    layer = nn.Linear(32, rows)
    torch.save(layer.state_dict(), path)
    model = SegModel(_cfg())
    load_seg_head(model, path)
    assert torch.equal(model.classifier.weight, layer.weight)
    assert model.ignore_column == (rows == 17)


# ---- point 4: BatchNorm momentum outside the residual blocks ------------------------------------
@pytest.mark.parametrize("stage", ["pretrain", "downstream"])
def test_bn_momentum_reaches_only_batchnorms_outside_the_residual_blocks(stage: str) -> None:
    from cmcr.models.backbone import BasicBlock, build_backbone, set_bn_momentum

    cfg = load_config("official")
    assert cfg.model.bn_momentum_scope == "outside_blocks"
    value = cfg.model.bn_momentum if stage == "pretrain" else cfg.downstream.bn_momentum
    net = set_bn_momentum(build_backbone(cfg.model), value, cfg.model.bn_momentum_scope)
    inner = {id(m) for b in net.modules() if isinstance(b, BasicBlock) for m in (b.bn1, b.bn2)}
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    # unet34c: 23 blocks × 2 inner at 0.1; stem, 4 stride-2, 4 transposed, 7 shortcuts at value
    assert len(bns) == 62 and len(inner) == 46
    assert all(m.momentum == (0.1 if id(m) in inner else value) for m in bns)
    every = set_bn_momentum(build_backbone(cfg.model), value, "all")
    assert {m.momentum for m in every.modules() if isinstance(m, nn.BatchNorm1d)} == {value}
