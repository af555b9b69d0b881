"""The segmentation network of the downstream evaluation (METHOD.md).

Which features it classifies: the pre-trained **shared** 3D head's output (``feat_dim``,
L2-normalised), i.e. exactly the features that were distilled from the images, with a linear
head to the 16 challenge classes. Probe, fine-tune and the random baseline use this same
network and differ only in what is trained and from which weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmcr.configs import Config
from cmcr.data.classes import NUM_CHALLENGE


class PointEncoder(nn.Module):
    """The 3D part of CMCRModel with the same module names, so ``backbone.pt`` loads strictly.

    The specific head is kept only so that the state dict matches; the probe and fine-tuning
    read the shared head (see the module docstring).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        from cmcr.models.backbone import build_backbone

        self.backbone = build_backbone(cfg.model)
        self.point_head_shared = nn.Linear(self.backbone.out_dim, cfg.model.feat_dim)
        self.point_head_specific = nn.Linear(self.backbone.out_dim, cfg.model.feat_dim)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(V, feat_dim) L2-normalised shared features of the batch's voxels."""
        voxel = self.backbone(
            batch["coords"], batch["feats"], batch["spatial_shape"], batch["batch_size"]
        )  # (V, C)
        return nn.functional.normalize(self.point_head_shared(voxel), dim=1)


def linear_head(feat_dim: int) -> nn.Sequential:
    """The linear classifier: per-dimension standardisation (BatchNorm without affine) + Linear.

    As in MAE's linear probe: BatchNorm is affine at evaluation, so the head stays linear in
    the features, but the probe no longer depends on the features' scale. This matters: the
    L2-normalised output of an untrained shared head is nearly one constant direction (its bias
    dominates; mean pairwise cosine 0.999 on the smoke world), and a plain Linear layer at
    probe_lr barely moves off the majority class for the random baseline.
    """
    return nn.Sequential(nn.BatchNorm1d(feat_dim, affine=False), nn.Linear(feat_dim, NUM_CHALLENGE))


class SegModel(nn.Module):
    """Backbone → pre-trained shared 3D head (L2-normalised, feat_dim) → linear classifier."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.encoder = PointEncoder(cfg)
        self.classifier = linear_head(cfg.model.feat_dim)

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """(V, feat_dim) shared-head features of the batch's voxels."""
        return self.encoder(batch)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(V, 16) voxel logits for classes 1..16."""
        return self.classifier(self.features(batch))
