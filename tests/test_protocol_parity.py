"""The release's effective behaviour, second pass (issue 30; docs/fidelity.md).

Each test pins one point and flips its key to the alternative we keep, so it fails when the
behaviour does: the downstream loss over voxels, the head with the ignore class, BatchNorm
momentum outside the residual blocks, the cosine stepped per epoch, drop_last, SyncBN.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import cmcr.engine.downstream as D
from cmcr.configs import apply_overrides, load_config
from cmcr.engine.seg_weights import load_seg_head
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


# ---- smaller points: the cosine per epoch, drop_last ---------------------------------------------
class _Counting(D._Trainer):
    """The real update / end-of-epoch schedule steps on a toy loss, no data, no evaluation."""

    def fit(self, epochs, epoch_losses, evaluate) -> None:
        self.lrs = []
        for epoch in range(1, epochs + 1):
            for _ in range(3):  # 3 batches an epoch
                self.lrs.append(self.opt.param_groups[0]["lr"])
                self.update((self.w**2).sum())
            self.end_epoch(epoch, [], False, evaluate)


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_cosine_is_stepped_per_epoch_over_the_epochs(interval: str) -> None:
    cfg = _cfg(**{"downstream.scheduler_interval": interval, "downstream.probe_epochs": 4,
                  "downstream.eval_every": 100})  # fmt: skip
    assert load_config("official").downstream.scheduler_interval == "epoch"
    tr = _Counting(cfg, None, None, None)
    tr.w = nn.Parameter(torch.ones(2))
    tr.make_optimizer([{"params": [tr.w], "lr": 0.05}], 12)
    tr.fit(4, None, None)
    if interval == "epoch":  # the release: CosineAnnealingLR(opt, num_epochs), Lightning's epoch
        want = [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4) for _ in range(3)]
    else:
        want = [0.05 * (1 + math.cos(math.pi * s / 12)) / 2 for s in range(12)]
    assert tr.lrs == pytest.approx(want)


@pytest.mark.parametrize("drop", [True, False])
def test_downstream_training_loader_drops_the_last_partial_batch(drop: bool, smoke_world) -> None:
    from cmcr.engine.downstream_protocol import seg_loader

    cfg = _cfg(**{"data.dataroot": str(smoke_world), "downstream.batch_size": 2,
                  "downstream.drop_last": drop})  # fmt: skip
    assert load_config("official").downstream.drop_last is True
    train = seg_loader(cfg, cfg.data.train_split, train=True)
    n = len(train.dataset)
    assert n % 2 != 0  # a partial last batch exists
    sizes = [len(b["sample_tokens"]) for b in train]
    assert sizes == ([2] * (n // 2) if drop else [2] * (n // 2) + [n % 2])
    assert len(train) == len(sizes)
    val = seg_loader(cfg, cfg.data.val_split, train=False)  # validation keeps every scan
    assert sum(len(b["sample_tokens"]) for b in val) == len(val.dataset)
    # a set smaller than one batch keeps its only batch
    one = seg_loader(
        apply_overrides(cfg, {"downstream.batch_size": n + 1}), "mini_train", train=True
    )
    assert [len(b["sample_tokens"]) for b in one] == [n]


@pytest.mark.parametrize("drop", [True, False])
def test_pretraining_loader_drops_the_last_partial_batch(drop: bool, smoke_world) -> None:
    from cmcr.data import build_pretrain_loader

    cfg = _cfg(**{"data.dataroot": str(smoke_world), "train.batch_size": 2,
                  "data.num_workers": 0, "train.drop_last": drop})  # fmt: skip
    assert load_config("official").train.drop_last is True
    train = build_pretrain_loader(cfg, cfg.data.train_split, holdout="all")
    n = len(train.dataset)
    assert n % 2 != 0  # a partial last batch exists
    # the sampler's order alone: the batches' sizes, without building any sample
    assert len(train) == (n // 2 if drop else n // 2 + 1)
    assert list(map(len, train.batch_sampler)) == [2] * (n // 2) + ([] if drop else [1])
    held = build_pretrain_loader(cfg, cfg.data.train_split, shuffle=False, holdout="all")
    assert len(held) == n // 2 + 1  # validation keeps every scan


# ---- smaller points: SyncBN with several processes ----------------------------------------------
def test_batchnorms_synchronise_with_several_cuda_processes() -> None:
    from cmcr.engine.train import sync_batchnorm
    from cmcr.models import CMCRModel

    def kinds(model: nn.Module) -> set[type]:
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
        return {type(m) for m in model.modules() if isinstance(m, bn)}

    cfg = _cfg()
    assert load_config("official").train.sync_bn is True
    # several processes on CUDA (simulated: the conversion needs no process group)
    synced = sync_batchnorm(cfg, CMCRModel(cfg), 2, "cuda")
    assert kinds(synced) == {nn.SyncBatchNorm}
    bns = [m for m in synced.backbone.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert {m.momentum for m in bns} == {cfg.model.bn_momentum, 0.1}  # the scope survives
    for procs, device, over in (
        (1, "cuda", {}),
        (2, "cpu", {}),
        (2, "cuda", {"train.sync_bn": False}),
    ):
        plain = sync_batchnorm(_cfg(**over), CMCRModel(cfg), procs, device)
        assert nn.SyncBatchNorm not in kinds(plain), (procs, device, over)


# ---- the checkpoint check of the Cartesian-voxels row -------------------------------------------
def test_a_lightning_checkpoint_is_not_taken_for_a_backbone(tmp_path: Path) -> None:
    """The release's voxel check reads a ``config`` key (downstream/model_builder.py:53-59): a
    Lightning .ckpt has none and passes it. Ours takes only a flat state dict of backbone
    tensors: such a file is one CheckpointError, whatever it holds."""
    from cmcr.engine.seg_weights import build_seg_model
    from cmcr.errors import CheckpointError
    from cmcr.models import CMCRModel

    cfg = _cfg()
    state = CMCRModel(cfg).backbone_state()
    ckpt = {"epoch": 3, "global_step": 30, "pytorch-lightning_version": "1.6.5",
            "state_dict": {f"model_points.{k}": v for k, v in state.items()}}  # fmt: skip
    path = tmp_path / "epoch=3.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
        build_seg_model(cfg, str(path))
    flat = tmp_path / "backbone.pt"
    torch.save(state, flat)
    build_seg_model(cfg, str(flat))  # the layout it does take
