"""What a downstream dataset registers: everything the engine, the sweep and the reports ask
of it, so that adding one is one module (``cmcr/datasets/<name>.py``) plus its test."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcr.configs import Config
from cmcr.eval.metrics import LabelSpace
from cmcr.registry import DATASETS


def _unchanged(cfg: Config) -> None:
    """A dataset whose values are ``downstream.*`` as they are (no section of its own)."""


def _labelled(cfg: Config, split: str) -> bool:
    """Every split of a dataset that says nothing else has labels."""
    return True


def cartesian_voxels(cfg: Config) -> str:
    """Cubic voxels of ``data.voxel_size``, in words."""
    return f"Cartesian: {cfg.data.voxel_size:g} m"


@dataclass(frozen=True)
class DownstreamDataset:
    """One downstream dataset: its names, label space, data, check, writer and costs.

    Every callable takes the evaluation's config (``cmcr.configs.evaluation_config``: its
    section already applied by ``configure``)."""

    name: str  # downstream.dataset, the "<dataset>/<mode>" evaluations, metric segments
    display: str  # in reports: "nuScenes", "SemanticKITTI"
    space: LabelSpace  # classes (index 0 ignored) and the absent-class rule of its mIoU
    # "<section>.{mode}_label_fraction": the param holding a run's label fraction
    fraction_key: str
    # (train, val) split names of the evaluation
    splits: Callable[[Config], tuple[str, str]]
    # the segmentation dataset class: (cfg, split, *, train, seed) -> samples that collate_seg
    # batches (docs/architecture.md, Segmentation batch); records with scene_name, set_epoch
    dataset_cls: type
    # records of ``split`` the evaluation reads at label ``fraction`` (the sweep's estimate)
    count: Callable[[Config, str, float], int]
    # checks every labelled file the evaluation reads; the number of samples checked
    check: Callable[[Config], int]
    # (cfg, export_dir, split) -> the submission writer (write_batch, finish)
    writer: Callable[[Config, str | Path, str], Any]
    # copies its config section into ``downstream.*`` (in place)
    configure: Callable[[Config], None] = _unchanged
    voxels: Callable[[Config], str] = cartesian_voxels  # the protocol's voxel phrase
    # (cfg, split) -> whether the split has labels (a test split: inference and export only)
    labelled: Callable[[Config, str], bool] = _labelled
    # the release's main benchmark keeps the plain metric, artifact and weight names
    # (val/miou, runs/<id>/); any other dataset adds its name (val/<name>/miou, runs/<id>/<name>/)
    plain_keys: bool = False
    # measured seconds per scan per downstream epoch: {preset: {mode: s}} (cmcr.sweep.estimate)
    scan_epoch_s: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes the segmentation network predicts (its label space less ignore)."""
        return self.space.num_classes

    def subfolder(self) -> str:
        """Where its weights go under runs/<id>/: "" for plain keys, else its name."""
        return "" if self.plain_keys else self.name


def spec_of(cfg: Config) -> DownstreamDataset:
    """The registered dataset of ``cfg.downstream.dataset`` (an error listing the known ones)."""
    return DATASETS.get(cfg.downstream.dataset)


def register_dataset(spec: DownstreamDataset) -> DownstreamDataset:
    """Register ``spec`` under its name (a taken name is an error)."""
    DATASETS.add(spec.name, spec)
    return spec
