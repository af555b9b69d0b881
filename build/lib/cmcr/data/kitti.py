"""SemanticKITTI segmentation: records, readers, the label map and the downstream dataset.

Standard layout under ``semantickitti.root`` (or ``CMCR_KITTI_ROOT``)::

    sequences/NN/velodyne/NNNNNN.bin    float32 (N, 4): x, y, z, remission in [0, 1]
    sequences/NN/labels/NNNNNN.label    uint32 (N,): lower 16 bits raw semantic id, upper instance
    semantic-kitti.yaml                 optional: its learning_map / learning_map_inv are used

Training sequences ``semantickitti.train_sequences`` (00-10 but 08), validation
``semantickitti.val_sequences`` (08), test 11-21 (the benchmark's, without ``labels/``: read
for inference only, every label 0); label fractions keep every k-th *scan* of the training
sequences in order (k = round(1 / fraction): 1 % = every 100th scan, the release's
``dataset_skip_step``). The samples follow the segmentation batch contract of
``cmcr.data.collate_seg`` with labels in 0..19 (0 ignored).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from cmcr.configs import Config
from cmcr.configs.yaml_io import read_yaml_file
from cmcr.data.augment import augment_cloud
from cmcr.data.check_cache import LidarCheckCache
from cmcr.data.kitti_classes import (
    LEARNING_MAP,
    LEARNING_MAP_INV,
    MAX_RAW,
    NUM_KITTI,
    inverse_table,
    learning_table,
)
from cmcr.data.pretrain import every_kth, sample_rng, split_index
from cmcr.data.voxel import voxelize
from cmcr.errors import DataError
from cmcr.names import KITTI_ROOT_ENV

KITTI_YAML = "semantic-kitti.yaml"
POINT_DIMS = 4  # x, y, z, remission
SPLITS = ("train", "val", "test")
TEST_SEQUENCES = tuple(f"{i:02d}" for i in range(11, 22))  # the benchmark's, without labels


@dataclass(frozen=True)
class KittiRecord:
    """One scan: its sequence, frame number and files."""

    sequence: str  # "00"
    frame: str  # "000000"
    velodyne_path: str
    label_path: str | None  # None: a sequence without labels/ (the test split)

    @property
    def token(self) -> str:
        """``NN/NNNNNN``: the scan's name in batches and in the submission layout."""
        return f"{self.sequence}/{self.frame}"

    @property
    def scene_name(self) -> str:
        """The sequence (the protocol counts it as the scan's scene)."""
        return self.sequence


def kitti_root(cfg: Config) -> Path:
    """``semantickitti.root`` (``load_config`` applies CMCR_KITTI_ROOT); must hold sequences/."""
    root = Path(cfg.semantickitti.root)
    if not (root / "sequences").is_dir():
        raise DataError(
            f"semantickitti.root: expected a SemanticKITTI folder holding sequences/, got "
            f"'{root}' (set semantickitti.root or {KITTI_ROOT_ENV}, or run "
            "`cmcr synth --format semantickitti`)"
        )
    return root


def label_maps(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(learning table (65536,), inverse table (20,)): the root's semantic-kitti.yaml if there,
    else the standard maps; DataError naming the file when its maps are malformed."""
    path = root / KITTI_YAML
    if not path.is_file():
        return learning_table(LEARNING_MAP), inverse_table(LEARNING_MAP_INV)
    try:
        data = read_yaml_file(path, str(path), DataError)  # bounded: a billion laughs is refused
        fwd = {int(k): int(v) for k, v in data["learning_map"].items()}
        inv = {int(k): int(v) for k, v in data["learning_map_inv"].items()}
        table, inverse = learning_table(fwd), inverse_table(inv)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: not a SemanticKITTI label map ({err})") from None
    if table.max() > NUM_KITTI or sorted(inv) != list(range(NUM_KITTI + 1)):
        raise DataError(
            f"{path}: learning_map must map into 0..{NUM_KITTI}, inverse from all of them"
        )
    check_inverse(table, inverse, path)
    return table, inverse


def check_inverse(table: np.ndarray, inverse: np.ndarray, path: Path) -> None:
    """DataError unless learning_map_inv inverts learning_map on the 19 classes: every class c
    goes to a raw id that learning_map sends back to c (else the export holds other classes)."""
    classes = np.arange(1, NUM_KITTI + 1)
    raw = inverse[classes]  # (19,)
    back = np.where((raw >= 0) & (raw < MAX_RAW), table[np.clip(raw, 0, MAX_RAW - 1)], -1)
    wrong = classes[back != classes]
    if wrong.size:
        c = int(wrong[0])
        raise DataError(
            f"{path}: learning_map_inv does not invert learning_map: class {c} -> raw id "
            f"{int(raw[c - 1])} -> class {int(back[c - 1])} ({wrong.size} of {NUM_KITTI} classes)"
        )


def split_sequences(cfg: Config, split: str) -> list[str]:
    """The sequences of ``train`` or ``val`` (config keys semantickitti.*_sequences), or
    ``test`` (11-21)."""
    if split not in SPLITS:
        raise DataError(f"SemanticKITTI split '{split}': expected one of {', '.join(SPLITS)}")
    kc = cfg.semantickitti
    if split == "test":
        return list(TEST_SEQUENCES)
    return list(kc.train_sequences if split == "train" else kc.val_sequences)


def load_kitti_records(cfg: Config, split: str) -> list[KittiRecord]:
    """Every scan of the split's sequences, in sequence then frame order; DataError when empty."""
    root = kitti_root(cfg)
    records = []
    for seq in split_sequences(cfg, split):
        folder = root / "sequences" / seq
        scans = sorted((folder / "velodyne").glob("*.bin"))
        if not scans:
            raise DataError(
                f"semantickitti.{split}_sequences: sequence '{seq}' has no scans in "
                f"{folder / 'velodyne'}"
            )
        labels = folder / "labels"
        records += [
            KittiRecord(
                seq, p.stem, str(p), str(labels / f"{p.stem}.label") if labels.is_dir() else None
            )
            for p in scans
        ]
    return records


def is_labelled(records: list[KittiRecord]) -> bool:
    """Whether any scan has a labels/ folder (a split without any: inference only)."""
    return any(r.label_path is not None for r in records)


def select_kitti_records(cfg: Config, split: str, fraction: float = 1.0) -> list[KittiRecord]:
    """The scans a run uses: the split, every k-th scan for a label fraction, the first
    data.max_samples."""
    records = load_kitti_records(cfg, split)
    if fraction < 1.0:
        records = every_kth(records, fraction)
    if cfg.data.max_samples > 0:
        records = records[: cfg.data.max_samples]
    return records


def read_sized(path: str, dtype: type, item: int, what: str) -> np.ndarray:
    """The file as a flat ``dtype`` array; DataError when missing, empty, or when its size in
    bytes is not a whole number of ``item``-byte records (np.fromfile would drop the tail)."""
    try:
        size = os.path.getsize(path)
        raw = np.fromfile(path, dtype=dtype)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        raise DataError(f"{path}: {what} not found") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    if size == 0 or size % item or raw.nbytes != size:
        raise DataError(
            f"{path}: {size} bytes is not a non-empty whole number of {item}-byte records ({what})"
        )
    return raw


def read_kitti_points(path: str) -> np.ndarray:
    """(N, 4) float32 of a velodyne .bin; DataError when missing, truncated, empty or not finite."""
    raw = read_sized(path, np.float32, 4 * POINT_DIMS, "velodyne scan")
    points = raw.reshape(-1, POINT_DIMS)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} of {len(points)} points are not finite")
    return points


def read_kitti_labels(path: str | None, n_points: int) -> np.ndarray:
    """(N,) uint32 labels of a .label file; DataError when missing or of the wrong length."""
    if path is None:
        raise DataError("a SemanticKITTI sequence without labels/ where labels are needed")
    labels = read_sized(path, np.uint32, 4, "SemanticKITTI label file")
    if labels.size != n_points:
        raise DataError(f"{path}: {labels.size} labels for {n_points} points")
    return labels


def to_classes(raw: np.ndarray, table: np.ndarray, path: str) -> np.ndarray:
    """(N,) int64 classes 0..19 of uint32 labels (semantic id = lower 16 bits)."""
    classes = table[raw.astype(np.int64) & (MAX_RAW - 1)]
    if (classes < 0).any():
        unknown = np.unique(raw[classes < 0] & (MAX_RAW - 1))[:5].tolist()
        raise DataError(f"{path}: raw label ids {unknown} are not in the learning map")
    return classes


def cylindrical(xyz: np.ndarray) -> np.ndarray:
    """(N, 3) float32 (ρ m, φ degrees in [-180, 180), z m) of Cartesian points."""
    rho = np.hypot(xyz[:, 0], xyz[:, 1])
    phi = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
    return np.stack([rho, phi, xyz[:, 2]], axis=1).astype(np.float32)


def voxel_grid(cfg: Config, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates to voxelise, cell size per axis): Cartesian (data.voxel_size) or cylindrical
    (semantickitti.cylinder_size: ρ, angle in degrees, z), semantickitti.coords."""
    kc = cfg.semantickitti
    if kc.coords == "cylindrical":
        return cylindrical(xyz), np.asarray(kc.cylinder_size, dtype=np.float32)
    return xyz, np.full(3, cfg.data.voxel_size, dtype=np.float32)


class KittiSegDataset(Dataset):
    """SemanticKITTI scans of a split; train: every k-th scan + rotation / flip augmentation.

    Evaluation keeps every point of the file in file order; training subsamples to
    data.max_points when set. Random draws come from the (seed, epoch, index) stream.
    """

    def __init__(self, cfg: Config, split: str, *, train: bool, seed: int | None = None) -> None:
        fraction = cfg.downstream.label_fraction if train else 1.0
        self.cfg, self.train, self.epoch = cfg, train, 0
        self.seed = cfg.train.seed if seed is None else seed
        self.records = select_kitti_records(cfg, split, fraction)
        self.table, self.inverse = label_maps(kitti_root(cfg))
        self.labelled = train or is_labelled(self.records)  # the test split: labels all 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (the sampler also passes it with each index)."""
        self.epoch = epoch

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        epoch, i = split_index(index, self.epoch)
        rng = sample_rng(self.seed, epoch, i) if self.train else None
        table = self.table if self.labelled else None
        return build_kitti_sample(self.records[i], self.cfg, table, rng)


def build_kitti_sample(
    rec: KittiRecord, cfg: Config, table: np.ndarray | None, rng: np.random.Generator | None
) -> dict:
    """One scan as a segmentation sample; rng None = evaluation (every point, no augmentation);
    ``table`` None: an unlabelled split, every label 0."""
    points = read_kitti_points(rec.velodyne_path)
    if table is None:
        labels = np.zeros(len(points), dtype=np.int64)
    else:
        labels = to_classes(read_kitti_labels(rec.label_path, len(points)), table, rec.label_path)
    xyz, remission = points[:, :3], np.clip(points[:, 3], 0.0, 1.0)
    if rng is not None:
        max_points = cfg.data.max_points
        if max_points > 0 and len(points) > max_points:
            keep = np.sort(rng.choice(len(points), max_points, replace=False))
            xyz, remission, labels = xyz[keep], remission[keep], labels[keep]
        xyz = augment_cloud(rng, xyz, cfg.data.rotate, cfg.data.flip_prob)
    grid, size = voxel_grid(cfg, xyz)
    coords, feats, inverse = voxelize(grid, remission, size, cfg.data.voxel_feature)
    return {
        "coords": coords,
        "feats": feats,
        "inverse": inverse,
        "points": np.ascontiguousarray(xyz, dtype=np.float32),
        "labels": labels.astype(np.int64),
        "sample_token": rec.token,
    }


def check_kitti_data(cfg: Config) -> int:
    """Before a SemanticKITTI run: every scan and label file of the training subset and the
    validation split is readable and aligned (one label per point); the number checked. A
    velodyne file that passed is not read again while its size and mtime hold (check_cache)."""
    table, _ = label_maps(kitti_root(cfg))
    cache = LidarCheckCache(cfg.tracking.output_dir)
    try:
        return _check_kitti_splits(cfg, table, cache)
    finally:
        cache.save()


def _count_points(path: str) -> int:
    return len(read_kitti_points(path))


def _check_kitti_splits(cfg: Config, table: np.ndarray, cache: LidarCheckCache) -> int:
    n = 0
    for split, fraction in (("train", cfg.downstream.label_fraction), ("val", 1.0)):
        for rec in select_kitti_records(cfg, split, fraction):
            if rec.label_path is None:
                raise DataError(
                    f"semantickitti.{split}_sequences: sequence '{rec.sequence}' has no labels/ "
                    "folder (a test sequence: export it with cmcr evaluate --split test)"
                )
            n_points = cache.points(rec.velodyne_path, _count_points)
            to_classes(read_kitti_labels(rec.label_path, n_points), table, rec.label_path)
            n += 1
    return n
