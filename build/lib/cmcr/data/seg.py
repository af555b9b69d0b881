"""The downstream segmentation dataset: voxels and per-point challenge labels per keyframe."""

from __future__ import annotations

import numpy as np

from cmcr.configs import Config
from cmcr.data.augment import augment_cloud
from cmcr.data.classes import RAW_TO_CHALLENGE
from cmcr.data.io import read_lidarseg, read_points
from cmcr.data.pretrain import INTENSITY_SCALE, KeyframeDataset
from cmcr.data.records import SampleRecord
from cmcr.data.voxel import voxelize
from cmcr.errors import DataError


class SegDataset(KeyframeDataset):
    """lidarseg keyframes of a split; train: label-fraction subset + rotation/flip augmentation.

    Evaluation keeps every point of the file in file order (no max_points, no augmentation);
    training subsamples to data.max_points when it is set, so CPU presets stay fast.
    """

    def __init__(self, cfg: Config, split: str, *, train: bool, seed: int | None = None) -> None:
        fraction = cfg.downstream.label_fraction if train else 1.0
        super().__init__(cfg, split, seed=seed, fraction=fraction)
        self.train = train
        # a split without lidarseg labels (v1.0-test): inference only, every label 0 (ignored)
        self.labelled = train or any(r.lidarseg_path for r in self.records)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        record, rng = self._resolve(index)
        return build_seg_sample(record, self.cfg, rng if self.train else None, self.labelled)


def build_seg_sample(
    rec: SampleRecord, cfg, rng: np.random.Generator | None, labelled: bool = True
) -> dict:
    """One sample; rng None = evaluation (every point, no augmentation); ``labelled`` False:
    labels all 0 (a test split)."""
    points = read_points(rec.lidar_path)
    if labelled:
        labels = RAW_TO_CHALLENGE[read_lidarseg(rec.lidarseg_path, len(points), rec.lidar_token)]
    else:
        labels = np.zeros(len(points), dtype=np.int64)
    if len(points) == 0:
        raise DataError(f"sample {rec.lidar_token}: no LiDAR points in {rec.lidar_path}")
    xyz = points[:, :3]
    if rng is not None:
        if cfg.max_points > 0 and len(points) > cfg.max_points:
            keep = np.sort(rng.choice(len(points), cfg.max_points, replace=False))
            points, labels, xyz = points[keep], labels[keep], xyz[keep]
        xyz = augment_cloud(rng, xyz, cfg.rotate, cfg.flip_prob)
    coords, feats, inverse = voxelize(
        xyz, points[:, 3] / np.float32(INTENSITY_SCALE), cfg.voxel_size, cfg.voxel_feature
    )
    return {
        "coords": coords,
        "feats": feats,
        "inverse": inverse,
        "points": np.ascontiguousarray(xyz, dtype=np.float32),
        "labels": labels.astype(np.int64),
        "sample_token": rec.lidar_token,
    }
