"""The pre-training dataset: voxels, cameras, pairings, masks and occupancy queries per keyframe."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from cmcr.configs import Config
from cmcr.data.augment import (
    CropRule,
    augment_cloud,
    expand_grid,
    map_pixels,
    mask_through_crop,
    patch_grid,
    sample_crops,
    source_pixel_masked,
)
from cmcr.data.geometry import project_points
from cmcr.data.io import read_image_crop, read_points
from cmcr.data.occupancy import query_neighbours, sample_queries
from cmcr.data.records import SampleRecord
from cmcr.data.records_cache import cached_records
from cmcr.data.voxel import voxelize
from cmcr.errors import DataError

INTENSITY_SCALE = 255.0  # nuScenes intensity is 0..255; voxel feats and query targets are /255


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one random stream of sample `index` in `epoch` (docs/architecture.md, Randomness)."""
    return np.random.default_rng([seed, epoch, index])


def every_kth(items: list, fraction: float) -> list:
    """Every k-th item with k = round(1 / fraction), starting with the first.

    ``fraction`` is a label fraction, whose range (0, 1] validate_config checks.
    """
    return items[:: max(1, round(1.0 / fraction))]


def every_kth_scene(
    records: list[SampleRecord], fraction: float, start: str = "kth"
) -> list[SampleRecord]:
    """All keyframes of every k-th scene (k = round(1 / fraction)), in the split's scene order.

    The release's label-fraction subsets: 1 % = every 100th training *scene* with all its scans.
    ``start`` (downstream.label_fraction_start): "kth" keeps scene positions k-1, 2k-1, ... as
    the release does (its counter is incremented before the modulo,
    downstream/dataloader_nuscenes.py:130-131); "first" keeps positions 0, k, 2k, ...
    A split of fewer than k scenes (the small synthetic worlds) keeps its first scene under
    "kth" (the release falls back to one fixed scene there, scene-0392, lines 134-151).
    """
    scenes = list(dict.fromkeys(r.scene_name for r in records))  # scene order, each once
    k = max(1, round(1.0 / fraction))
    kept = set((scenes[k - 1 :: k] or scenes[:1]) if start == "kth" else scenes[::k])
    return [r for r in records if r.scene_name in kept]


HOLDOUT_CHOICES = ("all", "exclude", "only")


class NoHeldOutScenes(DataError):
    """The split holds none of data.holdout_scenes: there is nothing to validate on."""


def apply_holdout(
    records: list[SampleRecord], holdout_scenes: list[str], holdout: str, split: str
) -> list[SampleRecord]:
    """The records of a split with data.holdout_scenes kept ("all"), left out or alone.

    "exclude": pre-training's train split (release: train minus the 100 held-out scenes);
    "only": its validation on those scenes. DataError naming data.holdout_scenes when empty.
    """
    if holdout not in HOLDOUT_CHOICES:
        raise ValueError(f"holdout: expected one of {HOLDOUT_CHOICES}, got {holdout!r}")
    if holdout == "all":
        return records
    held = set(holdout_scenes)
    kept = [r for r in records if (r.scene_name in held) == (holdout == "only")]
    if not kept:
        what = "every scene" if holdout == "exclude" else "none of the scenes"
        raise (DataError if holdout == "exclude" else NoHeldOutScenes)(
            f"data.holdout_scenes: {what} of split '{split}' is held out, so "
            f"{'pre-training' if holdout == 'exclude' else 'the held-out validation'} "
            "has no samples"
        )
    return kept


def select_records(
    cfg: Config,
    split: str,
    fraction: float = 1.0,
    unit: str | None = None,
    holdout: str = "all",
) -> list[SampleRecord]:
    """The keyframes a run uses: the split, its held-out scenes rule, its label-fraction subset,
    the first max_samples.

    ``unit``: "scene" (every k-th scene) or "scan" (every k-th scan); default
    cfg.downstream.label_fraction_unit. ``holdout``: see apply_holdout ("all" downstream).
    """
    records = cached_records(cfg.data, split)
    records = apply_holdout(records, cfg.data.holdout_scenes, holdout, split)
    if fraction < 1.0:
        unit = unit or cfg.downstream.label_fraction_unit
        records = (
            every_kth_scene(records, fraction, cfg.downstream.label_fraction_start)
            if unit == "scene"
            else every_kth(records, fraction)
        )
    if cfg.data.max_samples > 0:
        records = records[: cfg.data.max_samples]
    return records


def split_index(index: int | tuple[int, int], epoch: int) -> tuple[int, int]:
    """(epoch, i) from a plain index (the dataset's epoch) or an (epoch, i) pair from the sampler."""
    if isinstance(index, tuple):
        return int(index[0]), int(index[1])
    return epoch, int(index)


class KeyframeDataset(Dataset):
    """Keyframes of one split with the per-(seed, epoch, index) random streams both datasets use."""

    def __init__(
        self,
        cfg: Config,
        split: str,
        *,
        seed: int | None = None,
        fraction: float = 1.0,
        holdout: str = "all",
    ):
        self.cfg = cfg.data
        self.seed = cfg.train.seed if seed is None else seed
        self.epoch = 0
        self.records: list[SampleRecord] = select_records(cfg, split, fraction, holdout=holdout)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (the sampler also passes it with each index)."""
        self.epoch = epoch

    def _resolve(self, index: int | tuple[int, int]) -> tuple[SampleRecord, np.random.Generator]:
        epoch, i = split_index(index, self.epoch)
        return self.records[i], sample_rng(self.seed, epoch, i)


class PretrainDataset(KeyframeDataset):
    """nuScenes keyframes of one split as pre-training samples (contract: collate_pretrain).

    ``holdout``: "exclude" (default: pre-training leaves data.holdout_scenes out), "only" (the
    held-out scenes alone, pre-training's validation) or "all".
    """

    def __init__(
        self, cfg: Config, split: str, *, seed: int | None = None, holdout: str = "exclude"
    ):
        super().__init__(cfg, split, seed=seed, holdout=holdout)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        record, rng = self._resolve(index)
        return build_pretrain_sample(record, self.cfg, rng)


def build_pretrain_sample(rec: SampleRecord, cfg, rng: np.random.Generator) -> dict:
    """One sample (numpy, sample-local indices); every random choice comes from rng, in order."""
    points = read_points(rec.lidar_path)
    if cfg.max_points > 0 and len(points) > cfg.max_points:
        keep = np.zeros(len(points), dtype=bool)  # = points[np.sort(choice)], without a sort
        keep[rng.choice(len(points), cfg.max_points, replace=False)] = True
        points = points[keep]
    if len(points) == 0:
        raise DataError(f"sample {rec.lidar_token}: no LiDAR points in {rec.lidar_path}")
    xyz, intensity = points[:, :3], points[:, 3] / np.float32(INTENSITY_SCALE)
    cameras = _cameras(rec, cfg, rng, xyz)
    aug = augment_cloud(rng, xyz, cfg.rotate, cfg.flip_prob)  # (N, 3)
    coords, feats, inverse = voxelize(aug, intensity, cfg.voxel_size, cfg.voxel_feature)
    queries = sample_queries(rng, aug, intensity, cfg.n_queries, cfg.query_offset)
    return {
        "coords": coords,
        "feats": feats,
        "inverse": inverse,
        "points": aug.astype(np.float32, copy=False),  # float32 already: no copy
        **cameras,
        "queries": queries.xyz,
        "query_occ": queries.occ,
        "query_intensity": queries.intensity,
        "query_has_intensity": queries.has_intensity,
        "query_neighbours": query_neighbours(
            aug, queries.xyz, cfg.query_radius, cfg.max_neighbours, cfg.occ_neighbours
        ),
        "query_source": queries.source,
        "sample_token": rec.lidar_token,
    }


def _cameras(rec: SampleRecord, cfg, rng: np.random.Generator, xyz: np.ndarray) -> dict:
    """Cropped images (target and network input), masks and pairings (un-augmented cloud).

    Draw order: crop candidates, flips, patch masks (docs/architecture.md, Randomness).
    """
    out_hw = (cfg.image_size[0], cfg.image_size[1])
    point, cam, u, v = project_points(
        xyz, rec.lidar_to_ego, rec.ego_to_global, rec.global_to_cam_ego, rec.cam_ego_to_cam,
        rec.intrinsics, rec.image_hw, cfg.min_depth, cfg.pixel_margin,
    )  # fmt: skip
    crops = sample_crops(rng, rec.image_hw, u, v, cam, CropRule.from_config(cfg))  # (C, 4)
    flips = rng.random(len(crops)) < cfg.hflip_prob  # (C,)
    row, col, keep = map_pixels(u, v, cam, crops, flips, out_hw)
    pairs = np.stack([point[keep], cam[keep], row, col], axis=1).astype(np.int64)  # (P, 4)
    if len(pairs) == 0:
        raise DataError(f"sample {rec.lidar_token}: no point projects into any camera crop")
    if cfg.mask_stage == "source":
        masks = _source_masks(rec, cfg, rng, crops, flips, cam[keep], u[keep], v[keep])
    else:
        masks = _output_masks(rec, cfg, rng, crops, flips, pairs)
    return {
        **masks,
        "image_crops": np.concatenate([crops, flips[:, None]], axis=1),  # [top, left, h, w, flip]
        "pairs": pairs,
    }


def _source_masks(rec, cfg, rng, crops, flips, cam, u, v) -> dict:
    """Masking on the full-resolution source image before the crop (release): patches of
    mask_patch source pixels; a pair is masked when its exact source pixel is."""
    out_hw, patch = (cfg.image_size[0], cfg.image_size[1]), cfg.mask_patch
    full_hw = (int(rec.image_hw[:, 0].max()), int(rec.image_hw[:, 1].max()))
    grid = patch_grid(rng, len(crops), full_hw, cfg.mask_image_prob, cfg.mask_ratio, patch)
    black = cfg.mask_fill == "black"
    aa = cfg.image_resize_antialias
    target, net_input = _read_images(rec, crops, flips, out_hw, grid if black else None, patch, aa)
    return {
        "images": target,
        "image_input": net_input,
        "image_mask": mask_through_crop(grid, patch, rec.image_hw, crops, flips, out_hw),
        "pair_masked": source_pixel_masked(grid, patch, cam, u, v),
    }


def _output_masks(rec, cfg, rng, crops, flips, pairs) -> dict:
    """Masking on the output image after the crop: patches of mask_patch output pixels."""
    out_hw, patch = (cfg.image_size[0], cfg.image_size[1]), cfg.mask_patch
    grid = patch_grid(rng, len(crops), out_hw, cfg.mask_image_prob, cfg.mask_ratio, patch)
    mask = expand_grid(grid, patch, out_hw)  # (C, H, W)
    target, _ = _read_images(rec, crops, flips, out_hw, None, patch, cfg.image_resize_antialias)
    net_input = np.where(mask[..., None], 0, target) if cfg.mask_fill == "black" else target
    return {
        "images": target,
        "image_input": net_input.astype(np.uint8, copy=False),
        "image_mask": mask,
        "pair_masked": mask[pairs[:, 1], pairs[:, 2], pairs[:, 3]],
    }


def _read_images(rec, crops, flips, out_hw, grid, patch, antialias):
    """(target, input) (C, H, W, 3) uint8 of every camera; input masks grid's patches black.

    Each warp writes straight into its camera's slot (no per-image arrays, no stack).
    """
    target = np.empty((len(crops), *out_hw, 3), np.uint8)
    net_input = np.empty_like(target)
    for i, (p, c, hw, f) in enumerate(zip(rec.cam_paths, crops, rec.image_hw, flips, strict=True)):
        drop = None if grid is None else grid[i]
        pair = (target[i], net_input[i])
        read_image_crop(p, c, hw, out_hw, f, drop, patch, out=pair, antialias=antialias)
    return target, net_input
