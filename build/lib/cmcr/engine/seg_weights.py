"""Segmentation weights: the segmentation model built on a pre-trained backbone, and the
``seg_backbone.pt`` / ``seg_head.pt`` files a probe or fine-tune run writes and ``cmcr evaluate
--run`` reads (split from cmcr.engine.checkpoint, which keeps saving and safe loading)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cmcr.configs import Config
from cmcr.engine.checkpoint import (
    load_strict,
    load_weights,
    resolve_pretrained,
    run_dir,
    save_backbone,
)
from cmcr.errors import CheckpointError

SEG_BACKBONE_FILE = "seg_backbone.pt"
SEG_HEAD_FILE = "seg_head.pt"


def build_seg_model(cfg: Config, pretrained: str | None) -> tuple[Any, str | None]:
    """A SegModel with pre-trained backbone weights loaded (or random, explicitly); + source run."""
    from cmcr.models.segmentation import SegModel  # lazy: spconv loads only for a seg model

    torch.manual_seed(cfg.train.seed)
    model = SegModel(cfg)
    path, run_id = resolve_pretrained(cfg, pretrained)
    if path is not None:
        load_seg_backbone(model, path)
    return model, run_id


def backbone_keys(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` entries of a backbone.pt / seg_backbone.pt, prefix removed.

    The pre-training point heads stored beside them are dropped: the release's segmentation
    network is the backbone and a new layer (METHOD.md). Any other key means the file is not
    a backbone file: CheckpointError.
    """
    # lazy: the model modules load spconv, which reading a checkpoint's counters never needs
    from cmcr.models.cmcr import BACKBONE_PARTS
    from cmcr.models.segmentation import BACKBONE_PREFIX

    stranger = sorted(k for k in state if k.split(".")[0] not in BACKBONE_PARTS)
    if stranger:
        raise CheckpointError(
            f"backbone file '{path}' does not fit this model config "
            f"(unexpected keys: {', '.join(stranger[:3])})"
        )
    n = len(BACKBONE_PREFIX)
    return {k[n:]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}


def load_seg_backbone(model: Any, path: str | Path) -> None:
    """Load the backbone of ``path`` into ``model.backbone`` strictly; the heads are ignored."""
    state = backbone_keys(load_weights(path, "backbone"), path)
    load_strict(model.backbone, state, path, "backbone")


def load_seg_head(model: Any, path: str | Path) -> None:
    """Load a ``seg_head.pt`` into ``model.classifier`` strictly, with or without the ignore
    class's row (downstream.head_includes_ignore when it was trained)."""
    state = load_weights(path, "head")
    weight = state.get("weight")
    if weight is not None and weight.dim() == 2:
        model.fit_head_rows(int(weight.shape[0]))
    load_strict(model.classifier, state, path, "head")


def save_seg_weights(model: Any, out: Path, run: Path) -> None:
    """``seg_backbone.pt`` (backbone.pt's layout, no heads) and ``seg_head.pt`` (the new layer)
    in ``out``, inside the run folder ``run``."""
    save_backbone(model.backbone_state(), out / SEG_BACKBONE_FILE, run)
    save_backbone(model.classifier.state_dict(), out / SEG_HEAD_FILE, run)


def run_dir_weights(cfg: Config, run_id: str) -> tuple[Path, Path]:
    """``seg_backbone.pt`` and ``seg_head.pt`` of a probe / fine-tune run (CheckpointError if absent)."""
    out = run_dir(cfg, run_id)
    backbone, head = out / SEG_BACKBONE_FILE, out / SEG_HEAD_FILE
    if not (backbone.is_file() and head.is_file()):
        raise CheckpointError(
            f"--run '{run_id}': no {SEG_BACKBONE_FILE} / {SEG_HEAD_FILE} in {out} "
            "(expected the output folder of a cmcr probe or finetune run)"
        )
    return backbone, head
