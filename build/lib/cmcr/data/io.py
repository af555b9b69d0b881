"""File readers: LiDAR sweeps, lidarseg labels and cropped JPEGs; failures name the file."""

from __future__ import annotations

import os

import cv2
import numpy as np

from cmcr.errors import DataError

POINT_DIMS = 5  # nuScenes .pcd.bin: x, y, z, intensity, ring (float32)
cv2.setNumThreads(1)  # per-image warps are tiny: thread hand-offs cost more than they save
_REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def read_points(path: str) -> np.ndarray:
    """(N, 5) float32 points of a nuScenes .pcd.bin; DataError when missing, truncated or nan."""
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DataError(f"{path}: LiDAR file not found") from err
    size = os.path.getsize(path)  # np.fromfile drops a tail shorter than one float
    if raw.size % POINT_DIMS or raw.nbytes != size:
        raise DataError(
            f"{path}: truncated LiDAR file ({size} bytes is not a whole number of "
            f"{POINT_DIMS}-float points)"
        )
    points = raw.reshape(-1, POINT_DIMS)
    if np.isfinite(raw).all():  # one contiguous pass (30x faster than the per-row test below)
        return points
    bad = ~np.isfinite(points[:, :4]).all(axis=1)  # x, y, z, intensity (the ring is unused)
    if bad.any():  # else voxelisation fails later with a message about voxel counts
        raise DataError(
            f"{path}: {int(bad.sum())} of {len(points)} LiDAR points have non-finite (nan/inf) "
            "values"
        )
    return points


def read_lidarseg(path: str | None, n_points: int, token: str) -> np.ndarray:
    """(N,) uint8 raw class per point; DataError when absent or of the wrong length."""
    if path is None:
        raise DataError(f"lidar sample_data {token}: no lidarseg labels (lidarseg.json)")
    try:
        labels = np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DataError(f"{path}: lidarseg file not found") from err
    if labels.size != n_points:
        raise DataError(f"{path}: {labels.size} labels for {n_points} points")
    return labels


def read_image_crop(
    path: str,
    crop: np.ndarray,
    full_hw: np.ndarray,
    out_hw: tuple[int, int],
    flip: bool,
    drop: np.ndarray | None = None,
    patch: int = 1,
    out: tuple[np.ndarray, np.ndarray] | None = None,
    antialias: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(target, input), each (H, W, 3) uint8 RGB: crop [top, left, h, w] of a JPEG resized
    (bilinear) to out_hw and flipped; ``input`` is the same crop of the source image whose
    dropped patches (``drop``: (gh, gw) bool grid of ``patch`` source pixels) are black.

    The JPEG is decoded (as RGB) at 1/2, 1/4 or 1/8 scale when the crop still covers out_hw
    there (the rule of PIL's draft), then ONE affine warp does crop + resize + flip on the small
    image; decoded at full scale, the crop box itself is resized (cv2.resize, then a mirror),
    as the release crops and then resizes. Both keep the half-pixel-centre convention of
    map_pixels, so pairings land on their pixel. Measured faster than PIL draft + resize
    (cmcr/bench/data.py). A masked image decodes
    only at a scale dividing ``patch``, so every decoded pixel lies in one patch and masking it
    there equals masking the source: an output pixel whose bilinear footprint is all masked is
    0. ``input`` is ``target`` itself when nothing is dropped, unless ``out`` (two (H, W, 3)
    uint8 arrays) is given: then both are written there (no copy of the warps) and returned.
    ``antialias=False`` decodes at full resolution and resizes bilinearly from it, without
    antialiasing: the release's torchvision 0.9.1 ``resized_crop`` on tensors.
    """
    top, left, height, width = (int(x) for x in crop)
    masked = drop is not None and bool(drop.any())
    ratio = min(width // out_hw[1], height // out_hw[0]) if antialias else 1
    scale = next(s for s in (8, 4, 2, 1) if s <= max(ratio, 1) and (not masked or patch % s == 0))
    img = _decode(path, full_hw, scale)  # (ceil(H/s), ceil(W/s), 3) RGB
    box = (top, left, height, width)
    target = _render(img, box, scale, out_hw, flip, None if out is None else out[0])
    if not masked:
        if out is None:
            return target, target
        out[1][...] = target
        return out
    # mask only the decoded pixels the warp reads: the crop and a one-pixel bilinear margin
    y0, x0 = max(top // scale - 1, 0), max(left // scale - 1, 0)
    y1 = min(-(-(top + height) // scale) + 2, img.shape[0])
    x1 = min(-(-(left + width) // scale) + 2, img.shape[1])
    # the target is made: black the dropped patches in the decoded image itself (0 before
    # ImageNet normalisation), in place, then resize or warp again the same way (a masked copy
    # of the window and its pixel mask took 1 ms a full-resolution image, this 0.2 ms)
    _zero_dropped(img, drop, patch // scale, (y0, y1), (x0, x1))
    return target, _render(img, box, scale, out_hw, flip, None if out is None else out[1])


def _render(
    img: np.ndarray,
    box: tuple[int, int, int, int],
    scale: int,
    out_hw: tuple[int, int],
    flip: bool,
    dst: np.ndarray | None,
) -> np.ndarray:
    """(H, W, 3) the crop box of the source, resized bilinearly to out_hw and mirrored if flip,
    from ``img`` decoded at 1/scale (into ``dst`` when given).

    At full scale the box's own pixels are resized (0.18 against 0.37 ms for the warp at
    1600×900 -> 224×416); cut at the box's edge as the release's crop-then-resize is, where
    the warp would read the pixels past it when the box is smaller than the output. At a
    reduced scale the box has fractional corners: one affine warp.
    """
    if scale != 1:
        return _warp(img, _crop_matrix(box, scale, out_hw, flip), out_hw, dst)
    top, left, height, width = box
    size = (out_hw[1], out_hw[0])
    crop = img[top : top + height, left : left + width]
    if not flip:
        return cv2.resize(crop, size, dst=dst, interpolation=cv2.INTER_LINEAR)
    return cv2.flip(cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR), 1, dst=dst)


def _crop_matrix(box: tuple[int, int, int, int], scale: int, out_hw, flip: bool) -> np.ndarray:
    """(2, 3) affine from a 1/scale decoded image to the crop box resized to out_hw (flipped)."""
    top, left, height, width = box
    out_h, out_w = out_hw
    # source continuous x = scale·x_small; dst x' = (x − left)·out_w/width; integer pixel
    # indices sit at continuous − 0.5 in OpenCV's convention
    ax, ay = out_w / width, out_h / height
    mat = np.array(
        [[scale * ax, 0.0, (0.5 * scale - left) * ax - 0.5],
         [0.0, scale * ay, (0.5 * scale - top) * ay - 0.5]]
    )  # fmt: skip
    if flip:
        mat[0] = -mat[0]
        mat[0, 2] += out_w - 1
    return mat


def _zero_dropped(
    img: np.ndarray, drop: np.ndarray, k: int, rows: tuple[int, int], cols: tuple[int, int]
) -> None:
    """Zero, in place, every pixel of ``img`` (H, W, 3) in a dropped patch that meets the
    window rows × cols; decoded pixel (r, c) lies in patch (r // k, c // k) of ``drop``.

    Whole patches through a (rows, cols, k, k, 3) view of the image, so a dropped patch is one
    assignment; a partial patch row or column at the image's edge (H or W not a multiple of k)
    by its own strip.
    """
    (r0, r1), (c0, c1) = rows, cols
    g0, g1, h0, h1 = r0 // k, -(-r1 // k), c0 // k, -(-c1 // k)
    cells = drop[g0:g1, h0:h1]
    height, width = img.shape[:2]
    nr, nc = min(g1, height // k) - g0, min(h1, width // k) - h0  # whole patches
    if nr > 0 and nc > 0:
        block = img[g0 * k : (g0 + nr) * k, h0 * k : (h0 + nc) * k]
        sr, sc, sp = block.strides
        view = np.lib.stride_tricks.as_strided(
            block, (nr, nc, k, k, 3), (sr * k, sc * k, sr, sc, sp), writeable=True
        )
        view[cells[:nr, :nc]] = 0
    if g0 + nr < g1:  # the last patch row, cut by the image's bottom edge
        strip = img[(g0 + nr) * k :, h0 * k : h1 * k]
        strip[:, cells[nr].repeat(k)[: strip.shape[1]]] = 0
    if h0 + nc < h1:  # the last patch column, cut by the image's right edge
        strip = img[g0 * k : g1 * k, (h0 + nc) * k :]
        strip[cells[:, nc].repeat(k)[: strip.shape[0]]] = 0


def _decode(path: str, full_hw: np.ndarray, scale: int) -> np.ndarray:
    """A camera JPEG decoded at 1/scale as RGB (libjpeg's own order: the BGR decode's channels
    reversed, bit for bit, and no colour conversion after the warp); DataError when missing,
    truncated or mis-sized."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DataError(f"{path}: camera image not found") from err
    if buf.size < 4 or buf[-2] != 0xFF or buf[-1] != 0xD9:  # JPEG end-of-image marker
        raise DataError(f"{path}: truncated or not a JPEG camera image")
    img = cv2.imdecode(buf, _REDUCED[scale] | cv2.IMREAD_COLOR_RGB)  # (ceil(H/s), ceil(W/s), 3)
    expected = (-(-int(full_hw[0]) // scale), -(-int(full_hw[1]) // scale))
    if img is None or img.shape[:2] != expected:
        got = "undecodable" if img is None else f"{img.shape[0] * scale}x{img.shape[1] * scale}"
        raise DataError(f"{path}: camera image {got}, expected {full_hw[0]}x{full_hw[1]} (table)")
    return img


def _warp(
    img: np.ndarray, mat: np.ndarray, out_hw: tuple[int, int], dst: np.ndarray | None = None
) -> np.ndarray:
    """(H, W, 3): one bilinear affine warp (into ``dst`` when given)."""
    return cv2.warpAffine(
        img,
        mat,
        (out_hw[1], out_hw[0]),
        dst=dst,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
