"""Data checks before any run exists: every file the run will read is present and plausible.

The datasets read files lazily, in workers, after the MLflow run is created; a bad file found
there ends the run FAILED. These checks look at the same samples first (sizes, headers and the
points' finiteness), so bad input fails with one line and leaves no run behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cmcr.configs import Config, evaluation_config, evaluation_list
from cmcr.data.io import read_lidarseg, read_points
from cmcr.data.pretrain import select_records
from cmcr.data.records import SampleRecord
from cmcr.errors import DataError
from cmcr.registry import DATASETS
from cmcr.weights import check_image_weights

JPEG_END = b"\xff\xd9"


def check_points(path: str) -> int:
    """Number of points of a LiDAR file; DataError when missing, empty, truncated or not finite."""
    points = read_points(path)  # missing, truncated and non-finite files raise there
    if len(points) == 0:
        raise DataError(f"{path}: LiDAR file holds no points")
    return len(points)


def check_image(path: str, height: int, width: int) -> None:
    """A camera JPEG is present, complete, and of the size its calibration table says."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: camera image not found")
    with file.open("rb") as fh:
        fh.seek(max(file.stat().st_size - 2, 0))
        if fh.read(2) != JPEG_END:
            raise DataError(f"{path}: truncated or not a JPEG camera image")
    try:
        with Image.open(file) as img:  # reads the header only
            w, h = img.size
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: not a readable camera image ({err})") from None
    if (h, w) != (height, width):
        raise DataError(f"{path}: camera image {h}x{w}, expected {height}x{width} (table)")


def check_lidarseg(record: SampleRecord, n_points: int) -> None:
    """The record's lidarseg file exists and holds one uint8 label per point (one small read)."""
    read_lidarseg(record.lidarseg_path, n_points, record.lidar_token)


def check_data(
    cfg: Config,
    split: str,
    *,
    images: bool,
    labels: bool,
    fraction: float = 1.0,
    holdout: str = "all",
) -> int:
    """Check every sample of ``split`` a run will read; the number of samples checked.

    ``images``: the cameras of cfg.data.cameras (pre-training); ``labels``: the lidarseg files
    (downstream); ``fraction``: the label-fraction subset the downstream training split uses;
    ``holdout``: the held-out scenes rule of the reader (cmcr.data.pretrain.apply_holdout).
    """
    records = select_records(cfg, split, fraction, holdout=holdout)
    for rec in records:
        n_points = check_points(rec.lidar_path)
        if images:
            for path, (h, w) in zip(rec.cam_paths, rec.image_hw, strict=True):
                check_image(path, int(h), int(w))
        if labels:
            check_lidarseg(rec, n_points)
    return len(records)


def check_pretrain_data(cfg: Config) -> int:
    """Before a pre-training run: the image weights and the LiDAR and images of exactly the
    records pre-training reads (its training and held-out scenes: the whole train split)."""
    if cfg.method.name == "random":  # a seeded, untrained backbone reads no data
        return 0
    check_image_weights(cfg.model.image_weights)
    # "all": training reads the split less the held-out scenes, validation reads those
    return check_data(cfg, cfg.data.train_split, images=True, labels=False, holdout="all")


def check_downstream_data(cfg: Config) -> int:
    """Before a probe / fine-tune run or a trial: for each evaluation it runs, the labelled
    train subset and the whole val split, by the dataset's registered check (nuScenes:
    ``check_nuscenes_labels``; SemanticKITTI: cmcr.data.kitti.check_kitti_data)."""
    n = 0
    for dataset, mode in evaluation_list(cfg):
        one = evaluation_config(cfg, dataset, mode)
        n += DATASETS.get(dataset).check(one)
    return n


def check_nuscenes_labels(cfg: Config) -> int:
    """The lidarseg files of the labelled train subset and the whole val split."""
    train = check_data(
        cfg,
        cfg.data.train_split,
        images=False,
        labels=True,
        fraction=cfg.downstream.label_fraction,
    )
    return train + check_data(cfg, cfg.data.val_split, images=False, labels=True)
