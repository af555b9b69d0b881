"""The segmentation network of the downstream evaluation (METHOD.md, Downstream evaluation).

The release's network: the pre-trained 3D backbone and a **new 1×1 layer** on the backbone's
own output (its last decoder stage, 96-d for unet34c): no pre-training head, no L2
normalisation, no standardisation before the layer. Probe, fine-tune and the random baseline
use this same network and differ only in what is trained and from which weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmcr.configs import Config
from cmcr.models.backbone import build_backbone, set_bn_momentum
from cmcr.registry import DATASETS

BACKBONE_PREFIX = "backbone."  # the backbone's keys in backbone.pt and seg_backbone.pt


class SegModel(nn.Module):
    """Pre-trained backbone (V, out_dim) → a new 1×1 layer (nn.Linear) → (V, C) logits (+ the
    ignore class's column in training where downstream.head_includes_ignore)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        # the module name "backbone" matches CMCRModel's, so backbone.pt's keys load as they are
        self.backbone = set_bn_momentum(
            build_backbone(cfg.model), cfg.downstream.bn_momentum, cfg.model.bn_momentum_scope
        )
        # the registered dataset's classes (16 nuScenes, 19 SemanticKITTI); an unknown dataset
        # is an error listing the known ones
        self.num_classes = DATASETS.get(cfg.downstream.dataset).num_classes
        # downstream.head_includes_ignore: one more output for the ignore class (the release's
        # model_n_out 17: in the softmax while training, masked at evaluation)
        self.ignore_column = cfg.downstream.head_includes_ignore
        rows = self.num_classes + int(self.ignore_column)
        self.classifier = nn.Linear(self.backbone.out_dim, rows)

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """(V, out_dim) backbone features of the batch's voxels (the last decoder stage)."""
        return self.backbone(
            batch["coords"], batch["feats"], batch["spatial_shape"], batch["batch_size"]
        )

    def class_logits(self, head: torch.Tensor) -> torch.Tensor:
        """(V, C) logits of classes 1..C from the layer's output: the ignore column dropped,
        so an argmax never predicts it (the release zeroes its probability before the argmax)."""
        return head[:, 1:] if self.ignore_column else head

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(V, C) voxel logits for classes 1..C (the dataset's: 16 nuScenes, 19 SemanticKITTI)."""
        return self.class_logits(self.classifier(self.features(batch)))

    def fit_head_rows(self, rows: int) -> None:
        """A new layer of ``rows`` outputs (C, or C + 1 with the ignore class) for a head file:
        the file says which it holds, so heads saved either way load."""
        if (
            rows in (self.num_classes, self.num_classes + 1)
            and rows != self.classifier.out_features
        ):
            self.ignore_column = rows == self.num_classes + 1
            self.classifier = nn.Linear(self.classifier.in_features, rows)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The backbone's weights under ``backbone.*`` (the layout of backbone.pt, no heads)."""
        return {BACKBONE_PREFIX + k: v for k, v in self.backbone.state_dict().items()}
