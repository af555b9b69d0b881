"""Joint augmentations and patch masking: pure functions of arrays and a numpy Generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CropRule:
    """The random resized crop and its redraw rule (data.crop_*, METHOD.md release protocol)."""

    scale: tuple[float, float]  # area fraction of the source image
    aspect: tuple[float, float]  # width / height of the box, before the resize
    tries: int
    min_pairs: int
    min_fraction: float

    @classmethod
    def from_config(cls, data: Any) -> CropRule:
        """From a DataConfig (data.crop_scale, crop_aspect, crop_tries, crop_min_pair*)."""
        return cls(
            scale=(float(data.crop_scale[0]), float(data.crop_scale[1])),
            aspect=(float(data.crop_aspect[0]), float(data.crop_aspect[1])),
            tries=int(data.crop_tries),
            min_pairs=int(data.crop_min_pairs),
            min_fraction=float(data.crop_min_pair_fraction),
        )


def draw_crop_candidates(
    rng: np.random.Generator,
    image_hw: np.ndarray,
    scale: tuple[float, float],
    aspect: tuple[float, float],
    tries: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``tries`` random resized crop boxes per image, like torchvision's RandomResizedCrop.

    image_hw: (C, 2). Area = U(scale) of the image, aspect (width / height) log-uniform in
    ``aspect``, position uniform where the box fits. Returns boxes (C, T, 4) int64
    [top, left, height, width] and fits (C, T) bool. A box that does not fit is shrunk at its
    aspect until it does and marked ``fits = False`` (torchvision would redraw it; here all draws
    are made at once, in a fixed order: area, aspect, top, left).
    """
    shape = (len(image_hw), tries)
    src_h = image_hw[:, 0, None].astype(np.float64)  # (C, 1)
    src_w = image_hw[:, 1, None].astype(np.float64)
    area = rng.uniform(scale[0], scale[1], shape) * src_h * src_w  # (C, T)
    ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), shape))
    width, height = np.round(np.sqrt(area * ratio)), np.round(np.sqrt(area / ratio))
    fits = (width >= 1) & (width <= src_w) & (height >= 1) & (height <= src_h)
    shrink = np.minimum(
        1.0, np.minimum(src_w / np.maximum(width, 1), src_h / np.maximum(height, 1))
    )
    width = np.clip(np.floor(width * shrink), 1, src_w).astype(np.int64)
    height = np.clip(np.floor(height * shrink), 1, src_h).astype(np.int64)
    top = np.floor(rng.random(shape) * (src_h - height + 1)).astype(np.int64)
    left = np.floor(rng.random(shape) * (src_w - width + 1)).astype(np.int64)
    return np.stack([top, left, height, width], axis=-1), fits


def _pixel_of(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(col, row) int32 whole pixels of continuous (u, v)."""
    return np.floor(u).astype(np.int32), np.floor(v).astype(np.int32)


def _count_in_boxes(boxes: np.ndarray, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """(T,) pixels (col, row) (M,) of one image inside each box (T, 4) [top, left, h, w].

    Box bounds are whole pixels, so u in [left, left + w) iff floor(u) is, and one unsigned
    compare tests both ends of each axis.
    """
    b = boxes.astype(np.int32)[..., None]  # (T, 4, 1)
    inside = (col - b[:, 1]).view(np.uint32) < b[:, 3].view(np.uint32)  # (T, M)
    inside &= (row - b[:, 0]).view(np.uint32) < b[:, 2].view(np.uint32)
    return np.count_nonzero(inside, axis=1)


def count_surviving_pairs(
    boxes: np.ndarray, u: np.ndarray, v: np.ndarray, cam: np.ndarray
) -> np.ndarray:
    """(C, T) number of pairings (u, v, cam) inside each candidate box (C, T, 4).

    A loop over the C cameras with one (T, M_c) comparison each measured 2.0 ms against 5.5 ms
    for a single (M, T) gather over all cameras and 12.5 ms for the float (M, T, 4) version
    (30 000 pairings, 6 cameras, 20 tries).
    """
    col, row = _pixel_of(u, v)
    counts = np.zeros(boxes.shape[:2], np.int64)
    for c in range(len(boxes)):  # 6 cameras, not pairings
        sel = cam == c
        counts[c] = _count_in_boxes(boxes[c], col[sel], row[sel])
    return counts


def _passes(counts, fits, totals, min_pairs: int, min_fraction: float) -> np.ndarray:
    """Whether each candidate keeps enough pairings (the redraw rule's test), same shape."""
    total = np.asarray(totals)[..., None].astype(np.float64)
    return fits & ((counts > min_pairs) | (counts > min_fraction * total))


def count_until_passing(
    boxes: np.ndarray,
    fits: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    cam: np.ndarray,
    rule: CropRule,
) -> np.ndarray:
    """(C, T) counts as count_surviving_pairs where choose_crops reads them: an image whose
    first candidate passes gets only that count (the rest 0: choose_crops takes the first).

    The first candidate passes for most images at full resolution (with ~4000 pairings an
    image, 1024 survive any crop of 30 % of it), so counting it alone saves 19 of 20 counts.
    """
    col, row = _pixel_of(u, v)
    totals = np.bincount(cam, minlength=len(boxes))
    counts = np.zeros(boxes.shape[:2], np.int64)
    for c in range(len(boxes)):  # 6 cameras, not pairings
        sel = cam == c
        col_c, row_c = col[sel], row[sel]
        counts[c, :1] = _count_in_boxes(boxes[c, :1], col_c, row_c)
        if not _passes(counts[c, 0], fits[c, 0], totals[c], rule.min_pairs, rule.min_fraction):
            counts[c, 1:] = _count_in_boxes(boxes[c, 1:], col_c, row_c)
    return counts


def choose_crops(
    counts: np.ndarray, fits: np.ndarray, totals: np.ndarray, min_pairs: int, min_fraction: float
) -> np.ndarray:
    """(C,) index of the chosen candidate per image (the release's redraw rule, vectorised).

    A candidate passes when it fits and more than ``min_pairs`` of the image's ``totals``
    pairings survive it, or more than ``min_fraction`` of them. The first passing candidate is
    taken (the one the release's redraw loop would stop at); when none passes, the fitting
    candidate with the most survivors (first on ties), else the shrunk one with the most.
    """
    counts = counts.astype(np.int64)
    passing = _passes(counts, fits, totals, min_pairs, min_fraction)  # (C, T)
    best = np.argmax(counts + fits * (int(totals.max(initial=0)) + 1), axis=1)
    return np.where(passing.any(axis=1), np.argmax(passing, axis=1), best)


def sample_crops(
    rng: np.random.Generator,
    image_hw: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    cam: np.ndarray,
    rule: CropRule,
) -> np.ndarray:
    """(C, 4) int64 crop boxes [top, left, height, width], one per image, by the crop rule.

    All ``rule.tries`` candidates per image are drawn at once (draw_crop_candidates) and the
    first that keeps enough of the image's pairings (u, v, cam) is taken, else the best
    (choose_crops). The crop is later resized to the output size, so pixels may stretch.
    """
    boxes, fits = draw_crop_candidates(rng, image_hw, rule.scale, rule.aspect, rule.tries)
    counts = count_until_passing(boxes, fits, u, v, cam, rule)  # (C, T)
    totals = np.bincount(cam, minlength=len(image_hw))  # (C,) the image's pairings
    pick = choose_crops(counts, fits, totals, rule.min_pairs, rule.min_fraction)
    return boxes[np.arange(len(boxes)), pick]


def map_pixels(
    u: np.ndarray,
    v: np.ndarray,
    cam: np.ndarray,
    crops: np.ndarray,
    flips: np.ndarray,
    out_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map continuous source pixel coords through crop → resize → hflip; returns (row, col, keep).

    Uses the resize's own convention (output pixel j covers source
    [left + j·w/W, left + (j+1)·w/W)), so a pair lands on the output pixel whose area holds it.
    u, v, cam: (M,); crops (C, 4) [top, left, h, w]; flips (C,) bool. keep: (M,) inside the crop.
    """
    out_h, out_w = out_hw
    box = crops[cam].astype(np.float32)  # (M, 4)
    col = np.floor((u - box[:, 1]) * (out_w / box[:, 3])).astype(np.int64)
    row = np.floor((v - box[:, 0]) * (out_h / box[:, 2])).astype(np.int64)
    keep = (col >= 0) & (col < out_w) & (row >= 0) & (row < out_h)
    col = np.where(flips[cam], out_w - 1 - col, col)
    return row[keep], col[keep], keep


def augment_cloud(
    rng: np.random.Generator, xyz: np.ndarray, rotate: bool, flip_prob: float
) -> np.ndarray:
    """Rotate (N, 3) points about z by U(0, 2π) and flip the x and y axes each with flip_prob."""
    angle = rng.uniform(0.0, 2.0 * np.pi) if rotate else 0.0
    flip = rng.random(2) < flip_prob
    cos, sin = np.cos(angle), np.sin(angle)
    mat = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    mat[0] *= -1.0 if flip[0] else 1.0  # flipping after rotating: rows negate x' or y'
    mat[1] *= -1.0 if flip[1] else 1.0
    return xyz @ mat.T.astype(np.float32)


def patch_grid(
    rng: np.random.Generator,
    n_images: int,
    hw: tuple[int, int],
    image_prob: float,
    ratio: float,
    patch: int,
) -> np.ndarray:
    """(C, ceil(H/patch), ceil(W/patch)) bool dropped patches of an (H, W) image.

    Each image is masked with image_prob, then each of its patches with ratio (draws in that
    order). Patch (i, j) covers pixels [i·patch, (i+1)·patch) × [j·patch, (j+1)·patch).
    """
    grid_h, grid_w = -(-hw[0] // patch), -(-hw[1] // patch)
    masked_image = rng.random(n_images) < image_prob  # (C,)
    drop = rng.random((n_images, grid_h, grid_w)) < ratio  # (C, gh, gw)
    return drop & masked_image[:, None, None]


def expand_grid(grid: np.ndarray, patch: int, hw: tuple[int, int]) -> np.ndarray:
    """(..., H, W) bool pixel mask of a patch grid (..., gh, gw): every pixel takes its patch."""
    pixels = grid.repeat(patch, axis=-2).repeat(patch, axis=-1)
    return np.ascontiguousarray(pixels[..., : hw[0], : hw[1]])


def patch_mask(
    rng: np.random.Generator,
    n_images: int,
    out_hw: tuple[int, int],
    image_prob: float,
    ratio: float,
    patch: int,
) -> np.ndarray:
    """(C, H, W) bool pixel mask: each image masked with image_prob, then patches with ratio."""
    grid = patch_grid(rng, n_images, out_hw, image_prob, ratio, patch)
    return expand_grid(grid, patch, out_hw)


def source_pixel_masked(
    grid: np.ndarray, patch: int, cam: np.ndarray, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """(M,) whether the source pixel (floor(v), floor(u)) of camera cam lies in a dropped patch."""
    row = np.floor(v).astype(np.int64) // patch
    col = np.floor(u).astype(np.int64) // patch
    return grid[cam, row, col]


def mask_through_crop(
    grid: np.ndarray,
    patch: int,
    image_hw: np.ndarray,
    crops: np.ndarray,
    flips: np.ndarray,
    out_hw: tuple[int, int],
) -> np.ndarray:
    """(C, H, W) bool: a source patch grid carried through crop → resize → hflip (nearest).

    Output pixel (r, j) takes the source pixel under its centre, top + (r + ½)·h/H and
    left + (j + ½)·w/W, the convention of map_pixels and read_image_crop.
    """
    out_h, out_w = out_hw
    top, left, height, width = (crops[:, k, None].astype(np.float64) for k in range(4))
    src_h, src_w = image_hw[:, 0, None], image_hw[:, 1, None]  # (C, 1)
    ys = np.floor(top + (np.arange(out_h) + 0.5) * height / out_h).astype(np.int64)  # (C, H)
    xs = np.floor(left + (np.arange(out_w) + 0.5) * width / out_w).astype(np.int64)  # (C, W)
    ys = np.minimum(ys, src_h - 1) // patch
    xs = np.minimum(xs, src_w - 1) // patch
    # two 1-D takes per camera: measured ~4x faster than one (C, H, W) fancy index
    mask = np.stack([grid[c][ys[c]][:, xs[c]] for c in range(len(grid))])  # (C, H, W)
    return np.where(flips[:, None, None], mask[:, :, ::-1], mask)
