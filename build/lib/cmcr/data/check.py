"""Data checks before any run exists: every file the run will read is present and plausible.

The datasets read files lazily, in workers, after the MLflow run is created; a bad file found
there ends the run FAILED. These checks look at the same samples first, so bad input fails with
one line and leaves no run behind. Every sample: the tables' shapes and each camera's 3x3
intrinsics (``load_records``), the LiDAR file's size, finiteness and magnitude (read once: a
file that passed is not read again while its size and mtime hold, ``check_cache``), the lidarseg
labels' count and range, each JPEG's header, end marker and size. The first and last sample of
each split (bounded cost): every camera JPEG fully decoded. The image-weights file: read once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cmcr.configs import Config, evaluation_config, evaluation_list
from cmcr.data.check_cache import LidarCheckCache
from cmcr.data.classes import RAW_CLASSES
from cmcr.data.io import read_lidarseg, read_points
from cmcr.data.pretrain import select_records
from cmcr.data.records import SampleRecord
from cmcr.errors import DataError, first_line
from cmcr.registry import DATASETS
from cmcr.weights import check_image_weights

JPEG_END = b"\xff\xd9"
# |x|, |y|, |z| bound of a LiDAR point in metres: nuScenes' range is ~100 m; a value past this is
# a unit or encoding error (1e30 is finite, and would overflow the voxel grid's int32 indices)
MAX_POINT_M = 1e4


def check_points(path: str) -> int:
    """Number of points of a LiDAR file; DataError when missing, empty, truncated, not finite,
    or with a point MAX_POINT_M or more away."""
    points = read_points(path)  # missing, truncated and non-finite files raise there
    if len(points) == 0:
        raise DataError(f"{path}: LiDAR file holds no points")
    largest = np.abs(points[:, :3]).max()  # one reduction (~0.15 ms per 33k points)
    if largest >= MAX_POINT_M:
        far = int((np.abs(points[:, :3]) >= MAX_POINT_M).any(axis=1).sum())
        raise DataError(
            f"{path}: {far} of {len(points)} LiDAR points lie {MAX_POINT_M:g} m or more from "
            f"the sensor (largest |coordinate| {largest:.3g}), expected x, y, z in metres"
        )
    return len(points)


def check_image(path: str, height: int, width: int, *, decode: bool = False) -> None:
    """A camera JPEG is present, complete, and of the size its calibration table says;
    ``decode``: its whole body decodes too (a full decode: ~10 ms for a 1600x900 image)."""
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
            if decode:
                img.load()  # the entropy-coded body: corrupt data raises here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        detail = first_line(err, limit=200)  # libjpeg's messages may run over lines
        raise DataError(f"{path}: not a decodable camera image ({detail})") from None
    if (h, w) != (height, width):
        raise DataError(f"{path}: camera image {h}x{w}, expected {height}x{width} (table)")


def check_lidarseg(record: SampleRecord, n_points: int) -> None:
    """The record's lidarseg file exists and holds one uint8 label per point, each a raw
    nuScenes-lidarseg class (0..31: cmcr.data.classes.RAW_CLASSES; one small read)."""
    labels = read_lidarseg(record.lidarseg_path, n_points, record.lidar_token)
    bad = labels >= len(RAW_CLASSES)  # (N,)
    if bad.any():
        raise DataError(
            f"{record.lidarseg_path}: {int(bad.sum())} of {labels.size} labels outside the "
            f"nuScenes-lidarseg classes 0..{len(RAW_CLASSES) - 1} (e.g. {int(labels[bad][0])})"
        )


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
    decoded = {0, len(records) - 1}  # a full decode of every image would cost a run's epoch
    cache = LidarCheckCache(cfg.tracking.output_dir)
    try:
        for i, rec in enumerate(records):
            n_points = cache.points(rec.lidar_path, check_points)
            if images:
                for path, (h, w) in zip(rec.cam_paths, rec.image_hw, strict=True):
                    check_image(path, int(h), int(w), decode=i in decoded)
            if labels:
                check_lidarseg(rec, n_points)
    finally:
        cache.save()  # what passed so far, also when a later file fails
    return len(records)


def check_pretrain_data(cfg: Config) -> int:
    """Before a pre-training run: the image weights and the LiDAR and images of exactly the
    records pre-training reads (its training and held-out scenes: the whole train split)."""
    if cfg.method.name == "random":  # a seeded, untrained backbone reads no data
        return 0
    check_image_weights(cfg.model.image_weights, read=True)
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
