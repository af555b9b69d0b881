"""The downstream segmentation dataset: voxels and per-point challenge labels per keyframe."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from cmcr.configs import Config
from cmcr.data.augment import augment_cloud
from cmcr.data.classes import RAW_TO_CHALLENGE
from cmcr.data.io import read_lidarseg, read_points
from cmcr.data.pretrain import INTENSITY_SCALE, sample_rng, split_index
from cmcr.data.records import SampleRecord, load_records
from cmcr.data.voxel import voxelize
from cmcr.errors import DataError


def every_kth(records: list, fraction: float) -> list:
    """Every k-th scan with k = round(1 / fraction), as the official label-fraction subsets."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"downstream.label_fraction: expected a value in (0, 1], got {fraction}")
    return records[:: max(1, round(1.0 / fraction))]


class SegDataset(Dataset):
    """lidarseg keyframes of a split; train: label-fraction subset + rotation/flip augmentation.

    Evaluation keeps every point of the file in file order (no max_points, no augmentation);
    training subsamples to data.max_points when it is set, so CPU presets stay fast.
    """

    def __init__(self, cfg: Config, split: str, *, train: bool, seed: int | None = None) -> None:
        self.cfg = cfg.data
        self.train = train
        self.seed = cfg.train.seed if seed is None else seed
        self.epoch = 0
        records = load_records(cfg.data, split)
        if train:
            records = every_kth(records, cfg.downstream.label_fraction)
        if cfg.data.max_samples > 0:
            records = records[: cfg.data.max_samples]
        self.records: list[SampleRecord] = records

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices."""
        self.epoch = epoch

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        epoch, i = split_index(index, self.epoch)
        rng = sample_rng(self.seed, epoch, i) if self.train else None
        return build_seg_sample(self.records[i], self.cfg, rng)


def build_seg_sample(rec: SampleRecord, cfg, rng: np.random.Generator | None) -> dict:
    """One sample; rng None = evaluation (every point, no augmentation)."""
    points = read_points(rec.lidar_path)
    labels = RAW_TO_CHALLENGE[read_lidarseg(rec.lidarseg_path, len(points), rec.lidar_token)]
    if len(points) == 0:
        raise DataError(f"sample {rec.lidar_token}: no LiDAR points in {rec.lidar_path}")
    xyz = points[:, :3]
    if rng is not None:
        if cfg.max_points > 0 and len(points) > cfg.max_points:
            keep = np.sort(rng.choice(len(points), cfg.max_points, replace=False))
            points, labels, xyz = points[keep], labels[keep], xyz[keep]
        xyz = augment_cloud(rng, xyz, cfg.rotate, cfg.flip_prob)
    coords, feats, inverse = voxelize(
        xyz, points[:, 3] / np.float32(INTENSITY_SCALE), cfg.voxel_size
    )
    return {
        "coords": coords,
        "feats": feats,
        "inverse": inverse,
        "points": np.ascontiguousarray(xyz, dtype=np.float32),
        "labels": labels.astype(np.int64),
        "sample_token": rec.lidar_token,
    }
