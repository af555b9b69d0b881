"""What a probe / fine-tune run does, said once: printed before training, recorded in MLflow.

A reader of a run (or of the terminal) sees the protocol actually run, derived from the model,
the loaders and the config as logged: frozen / trainable parameter counts, the label fraction
and its unit, the scenes and scans used, the loss, the optimiser, epochs and batch size.

The dataset's loader (``seg_loader``) and splits (``seg_splits``) come from its registered
``DownstreamDataset`` (``cmcr.datasets``); the per-dataset values themselves from
``cmcr.configs.evaluation_config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmcr.configs import Config
from cmcr.data import build_seg_loader
from cmcr.datasets import DATASETS, spec_of
from cmcr.names import Tag, dataset_key

PROTOCOL_FILE = "downstream/protocol.txt"  # the printed lines, as a run artifact


def protocol_file(dataset: str) -> str:
    """The protocol artifact of a dataset's evaluation (downstream/<dataset>/ but nuScenes)."""
    return dataset_key(dataset, PROTOCOL_FILE)


def seg_splits(cfg: Config) -> tuple[str, str]:
    """(train, val) split names of cfg.downstream.dataset."""
    return spec_of(cfg).splits(cfg)


def seg_loader(cfg: Config, split: str, *, train: bool) -> Any:
    """The segmentation loader of cfg.downstream.dataset for ``split``; a training loader drops
    its last, partial batch where downstream.drop_last says so, as the release's training
    loaders (downstream/lightning_datamodule.py:62)."""
    drop = train and cfg.downstream.drop_last
    spec = spec_of(cfg)
    return build_seg_loader(cfg, split, train=train, dataset_cls=spec.dataset_cls, drop_last=drop)


def voxel_phrase(cfg: Config) -> str:
    """The downstream voxels in words."""
    return spec_of(cfg).voxels(cfg)


@dataclass
class Protocol:
    """The downstream protocol of one run, as numbers and short phrases."""

    mode: str
    frozen_params: int
    trainable_params: int
    labels: str  # e.g. "1 % of the labels: 1 scene in every 100 (all its scans)"
    train_scenes: int
    train_scans: int
    val_scans: int
    loss: str
    optimizer: str
    schedule: str
    augment: str
    dataset: str = "nuscenes"
    voxels: str = ""
    # the scenes of a label-fraction subset, in order ((): the whole split, not listed)
    scene_names: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """Human-readable lines (the CLI prints them to stderr before training)."""
        frozen = "the backbone, in eval mode" if self.mode == "probe" else "none"
        plain = DATASETS.get(self.dataset).plain_keys  # the main benchmark names no dataset
        where = "" if plain else f" on {self.dataset}"
        extra = [] if plain else [f"  voxels: {self.voxels}"]
        if self.scene_names:
            extra.append(f"  train scenes: {', '.join(self.scene_names)}")
        return [
            f"cmcr {self.mode}{where}: protocol",
            f"  parameters: {self.trainable_params:,} trainable, {self.frozen_params:,} frozen "
            f"({frozen})",
            f"  labels: {self.labels}",
            f"  train: {_n(self.train_scenes, 'scene')}, {_n(self.train_scans, 'scan')}; "
            f"val: {_n(self.val_scans, 'scan')} (every point)",
            f"  loss: {self.loss}",
            f"  optimiser: {self.optimizer}",
            f"  schedule: {self.schedule}",
            f"  augmentation: {self.augment}",
            *extra,
        ]

    def tags(self) -> dict[str, str]:
        """The MLflow tags that record it (names in cmcr.names.Tag; per dataset but nuScenes)."""
        tags = {
            Tag.PROTOCOL_FROZEN_PARAMS: str(self.frozen_params),
            Tag.PROTOCOL_TRAINABLE_PARAMS: str(self.trainable_params),
            Tag.PROTOCOL_LABELS: self.labels,
            Tag.PROTOCOL_TRAIN_SCENES: str(self.train_scenes),
            Tag.PROTOCOL_TRAIN_SCANS: str(self.train_scans),
            Tag.PROTOCOL_VAL_SCANS: str(self.val_scans),
            Tag.PROTOCOL_LOSS: self.loss,
            Tag.PROTOCOL_OPTIMIZER: self.optimizer,
            Tag.PROTOCOL_SCHEDULE: self.schedule,
        }
        return {dataset_key(self.dataset, k): v for k, v in tags.items()}


def label_phrase(fraction: float, unit: str) -> str:
    """The label fraction and its unit in words (every k-th scene or scan, k = round(1/f))."""
    if fraction >= 1.0:
        return "100 % of the labels (every training scene)"
    k = max(1, round(1.0 / fraction))
    what = f"1 scene in every {k} (all its scans)" if unit == "scene" else f"1 scan in every {k}"
    return f"{100 * fraction:g} % of the labels: {what}"


def loss_phrase(cfg: Config) -> str:
    """The training loss in words: its terms, its unit, the ignore class's column."""
    ds = cfg.downstream
    terms = "cross-entropy + Lovász-softmax" if ds.lovasz else "cross-entropy"
    unit = "voxels (each its first point's label)" if ds.loss_unit == "voxel" else "points"
    head = "; the ignore class in the softmax" if ds.head_includes_ignore else ""
    return f"{terms} over {unit}{head}"


def optimizer_phrase(cfg: Config) -> str:
    """SGD and its settings, with the learning rate of each parameter group."""
    ds = cfg.downstream
    if ds.mode == "probe":
        lrs = f"lr {ds.probe_lr:g} (the new layer)"
    else:
        lrs = f"lr {ds.finetune_lr:g} (backbone), {ds.finetune_head_lr:g} (the new layer)"
    return (
        f"SGD {lrs}, momentum {ds.momentum:g}, dampening {ds.dampening:g}, "
        f"weight decay {ds.weight_decay:g}"
    )


def augment_phrase(cfg: Config) -> str:
    """The training clouds' augmentation, drawn afresh every epoch."""
    parts = (["rotation about z"] if cfg.data.rotate else []) + (
        [f"x / y flips p={cfg.data.flip_prob:g}"] if cfg.data.flip_prob > 0 else []
    )
    return ", ".join(parts) + ", drawn afresh every epoch" if parts else "none"


def describe(
    cfg: Config, groups: list[dict[str, Any]], model: Any, loaders: tuple, steps: int
) -> Protocol:
    """The protocol of a run from its optimiser groups (what trains), model, loaders, steps."""
    ds = cfg.downstream
    train, val = loaders
    trainable = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in model.parameters())
    epochs = ds.probe_epochs if ds.mode == "probe" else ds.finetune_epochs
    layer = model.classifier
    scenes = tuple(dict.fromkeys(r.scene_name for r in train.dataset.records))  # in order
    blocks_keep = cfg.model.bn_momentum_scope == "outside_blocks"
    return Protocol(
        mode=ds.mode,
        frozen_params=total - trainable,
        trainable_params=trainable,
        labels=label_phrase(ds.label_fraction, ds.label_fraction_unit),
        train_scenes=len(scenes),
        train_scans=len(train.dataset),
        val_scans=len(val.dataset),
        loss=loss_phrase(cfg),
        optimizer=optimizer_phrase(cfg),
        schedule=(
            f"{cosine_phrase(cfg, steps)} ({_n(epochs, 'epoch')} × {_n(len(train), 'batch')} "
            f"of {ds.batch_size} scans); BatchNorm momentum {ds.bn_momentum:g}"
            f"{' outside the residual blocks (0.1 in them)' if blocks_keep else ''}; "
            f"new layer Linear({layer.in_features}→{layer.out_features})"
        ),
        augment=augment_phrase(cfg),
        dataset=ds.dataset,
        voxels=voxel_phrase(cfg),
        scene_names=scenes if ds.label_fraction < 1.0 else (),
    )


def cosine_phrase(cfg: Config, steps: int) -> str:
    """The cosine schedule's length and interval in words."""
    ds = cfg.downstream
    if ds.scheduler_interval == "step":
        return f"cosine over {_n(steps, 'step')}"
    epochs = ds.probe_epochs if ds.mode == "probe" else ds.finetune_epochs
    return f"cosine over {_n(epochs, 'epoch')}, stepped per epoch; {_n(steps, 'step')}"


def _n(count: int, noun: str) -> str:
    """'1 scene', '3 scenes', '2 batches', '20 epochs'."""
    plural = "es" if noun.endswith(("tch", "sh", "ss", "x")) else "s"  # batches, epochs
    return f"{count} {noun}{'' if count == 1 else plural}"
