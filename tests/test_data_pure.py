"""Unit tests of the data pipeline's pure functions on hand-made arrays (no world needed)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from pyquaternion import Quaternion

from cmcr.configs import load_config
from cmcr.data import first_k, occupancy
from cmcr.data.augment import augment_cloud, map_pixels, patch_mask
from cmcr.data.collate import collate_pretrain, collate_seg, unit_float
from cmcr.data.geometry import project_points, rigid_inverse, transform_matrix
from cmcr.data.io import read_image_crop, read_points
from cmcr.data.loader import EpochSampler
from cmcr.data.occupancy import (
    FAR_EMPTY,
    INSIDE,
    NEAR_OUTSIDE,
    query_neighbours,
    sample_queries,
)
from cmcr.data.pretrain import every_kth, every_kth_scene
from cmcr.data.voxel import voxelize
from cmcr.errors import DataError


def _random_pose(rng: np.random.Generator, scale: float) -> tuple[list[float], list[float]]:
    """A random (w, x, y, z) unit quaternion and translation, like a nuScenes record."""
    q = rng.normal(size=4)
    return list(q / np.linalg.norm(q)), list(rng.normal(scale=scale, size=3))


def _slow_devkit_projection(xyz, lidar_cs, lidar_pose, cam_pose, cam_cs, K, hw, min_depth):
    """NuScenesExplorer.map_pointcloud_to_image's chain, step by step with pyquaternion."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points

    pc = LidarPointCloud(np.concatenate([xyz.T, np.zeros((1, len(xyz)))]).astype(np.float64))
    pc.rotate(Quaternion(lidar_cs[0]).rotation_matrix)
    pc.translate(np.array(lidar_cs[1]))
    pc.rotate(Quaternion(lidar_pose[0]).rotation_matrix)
    pc.translate(np.array(lidar_pose[1]))
    pc.translate(-np.array(cam_pose[1]))
    pc.rotate(Quaternion(cam_pose[0]).rotation_matrix.T)
    pc.translate(-np.array(cam_cs[1]))
    pc.rotate(Quaternion(cam_cs[0]).rotation_matrix.T)
    depth = pc.points[2]
    uv = view_points(pc.points[:3], K, normalize=True)
    # the release's pixel-validity rule (`pretrain/dataloader_nuscenes.py:280-283`): u < W - 1
    w, h = hw[1] - 1, hw[0] - 1
    keep = (depth > min_depth) & (uv[0] > 0) & (uv[0] < w) & (uv[1] > 0) & (uv[1] < h)
    return np.nonzero(keep)[0], uv[0, keep], uv[1, keep]


@pytest.mark.parametrize("pixel_margin", [1.0, 0.0])
def test_projection_keeps_pixels_inside_the_release_margin(pixel_margin: float) -> None:
    # identity poses, K = identity: a point (u, v, 1) projects to (u, v); the image is 10×20
    uv = np.array([[0.5, 0.5], [18.5, 5.0], [19.5, 5.0], [5.0, 8.5], [5.0, 9.5], [20.5, 5.0]])
    xyz = np.concatenate([uv, np.ones((len(uv), 1))], axis=1).astype(np.float32) * 2.0
    eye = np.eye(4)[None]
    point, *_ = project_points(
        xyz, eye[0], eye[0], eye, eye, np.eye(3)[None], np.array([[10, 20]]), 1.0, pixel_margin
    )
    # 0 < u < W - margin and 0 < v < H - margin: the release's margin 1 drops u = 19.5, v = 9.5
    want = [0, 1, 3] if pixel_margin == 1.0 else [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(point, want)


def test_projection_matches_devkit_chain() -> None:
    rng = np.random.default_rng(0)
    n_cam, hw = 3, np.array([[90, 160], [90, 160], [120, 100]])
    lidar_cs, lidar_pose = _random_pose(rng, 1.0), _random_pose(rng, 100.0)
    lidar_pose[1][0] += 400.0  # global coordinates are hundreds of metres away
    cams = []
    for _ in range(n_cam):
        cam_pose = (lidar_pose[0], list(np.array(lidar_pose[1]) + rng.normal(scale=0.5, size=3)))
        cams.append((cam_pose, _random_pose(rng, 1.0)))
    K = np.array([[[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]]] * n_cam)
    K[2, 0, 2] = 50
    xyz = rng.uniform(-20, 20, (4000, 3)).astype(np.float32)
    point, cam, u, v = project_points(
        xyz,
        transform_matrix(*lidar_cs),
        transform_matrix(*lidar_pose),
        np.stack([rigid_inverse(transform_matrix(*c[0])) for c in cams]),
        np.stack([rigid_inverse(transform_matrix(*c[1])) for c in cams]),
        K,
        hw,
        1.0,
    )
    total = 0
    for c in range(n_cam):
        idx, su, sv = _slow_devkit_projection(
            xyz.astype(np.float64), lidar_cs, lidar_pose, cams[c][0], cams[c][1], K[c], hw[c], 1.0
        )
        # points within float32 rounding of the image border may fall either way
        mine = point[cam == c]
        common = np.intersect1d(mine, idx)
        assert len(common) >= len(idx) - 2 and len(common) >= len(mine) - 2
        pos_slow, pos_mine = np.searchsorted(idx, common), np.searchsorted(mine, common)
        np.testing.assert_allclose(u[cam == c][pos_mine], su[pos_slow], atol=2e-3)
        np.testing.assert_allclose(v[cam == c][pos_mine], sv[pos_slow], atol=2e-3)
        total += len(idx)
    assert total > 300  # the test really projected something into each camera


def test_rigid_inverse() -> None:
    mat = transform_matrix(*_random_pose(np.random.default_rng(1), 5.0))
    np.testing.assert_allclose(rigid_inverse(mat) @ mat, np.eye(4), atol=1e-12)


def test_map_pixels_lands_in_the_output_pixel_holding_the_point() -> None:
    rng = np.random.default_rng(0)
    crops = np.array([[10, 20, 60, 90], [0, 0, 72, 128]])
    flips = np.array([False, True])
    out_hw = (40, 64)
    u, v = rng.uniform(0, 128, 5000).astype(np.float32), rng.uniform(0, 72, 5000).astype(np.float32)
    cam = rng.integers(0, 2, 5000)
    row, col, keep = map_pixels(u, v, cam, crops, flips, out_hw)
    u, v, cam = u[keep], v[keep], cam[keep]
    unflipped = np.where(flips[cam], out_hw[1] - 1 - col, col)
    top, left, h, w = crops[cam].T
    # the source box of output pixel (row, col) under the resize contains the point
    assert (
        (left + unflipped * w / out_hw[1] <= u + 1e-4)
        & (u < left + (unflipped + 1) * w / out_hw[1] + 1e-4)
    ).all()
    assert (
        (top + row * h / out_hw[0] <= v + 1e-4) & (v < top + (row + 1) * h / out_hw[0] + 1e-4)
    ).all()
    inside = (u >= left) & (u < left + w) & (v >= top) & (v < top + h)
    assert inside.all() and keep.sum() < len(keep)  # crop 0 really dropped points


@pytest.mark.parametrize("crop", [[100, 300, 500, 928], [0, 0, 900, 1600], [37, 11, 233, 433]])
def test_read_image_crop_matches_full_decode_and_resize(tmp_path, crop) -> None:
    yy, xx = np.mgrid[0:900, 0:1600]
    pattern = 127 + 120 * np.sin(xx / 40.0) * np.cos(yy / 30.0)
    rgb = np.stack([pattern, 255 - pattern, np.full_like(pattern, 90)], -1).astype(np.uint8)
    path = tmp_path / "cam.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    crop = np.array(crop)  # the first decodes at 1/4 scale, the others at 1/8 and 1/2
    top, left, h, w = (int(x) for x in crop)
    fast, same = read_image_crop(str(path), crop, np.array([900, 1600]), (56, 104), flip=False)
    assert same is fast  # no mask: the network input is the target
    full = Image.open(path).convert("RGB")
    slow = full.resize((104, 56), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    assert fast.dtype == np.uint8 and fast.shape == (56, 104, 3)
    assert np.abs(fast.astype(float) - np.asarray(slow, float)).mean() < 4.0
    flipped, _ = read_image_crop(str(path), crop, np.array([900, 1600]), (56, 104), flip=True)
    np.testing.assert_array_equal(flipped, fast[:, ::-1])


@pytest.mark.parametrize("antialias", [False, True])
def test_image_resize_is_bilinear_from_full_resolution_without_antialias(tmp_path, antialias):
    # the release: torchvision 0.9.1 resized_crop on a tensor = the crop, then bilinear
    # interpolation (half-pixel centres) from the full-resolution image, no antialiasing
    import torch.nn.functional as F

    assert load_config("official").data.image_resize_antialias is False
    yy, xx = np.mgrid[0:900, 0:1600]
    pattern = 127 + 120 * np.sin(xx / 1.7) * np.cos(yy / 2.3)  # finer than the output pixels
    rgb = np.stack([pattern, 255 - pattern, np.full_like(pattern, 90)], -1).astype(np.uint8)
    path = tmp_path / "cam.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    crop = np.array([100, 300, 500, 928])  # 1/4 scale would be decoded when antialiasing
    got, _ = read_image_crop(str(path), crop, np.array([900, 1600]), (56, 104), False,
                             antialias=antialias)  # fmt: skip
    full = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32))
    box = full[100:600, 300:1228].permute(2, 0, 1)[None]  # (1, 3, h, w)
    want = F.interpolate(box, size=(56, 104), mode="bilinear", align_corners=False)
    err = np.abs(got.astype(np.float32) - want[0].permute(1, 2, 0).numpy()).mean()
    assert (err < 2.0) != antialias, err  # the reduced-scale decode averages the fine pattern


@pytest.mark.parametrize("flip", [False, True])
def test_a_box_smaller_than_the_output_is_cut_at_its_edge_as_the_release_crops(tmp_path, flip):
    # crop, then resize: the pixels past the box are never read (a warp of the whole image
    # read them: 43 levels off at the box's edge)
    import torch.nn.functional as F

    yy, xx = np.mgrid[0:900, 0:1600]
    pattern = 127 + 120 * np.sin(xx / 3.1) * np.cos(yy / 2.3)
    rgb = np.stack([pattern, 255 - pattern, np.full_like(pattern, 90)], -1).astype(np.uint8)
    path = tmp_path / "cam.png.jpg"
    Image.fromarray(rgb).save(path, quality=100, subsampling=0)
    crop = np.array([300, 500, 40, 70])  # upscaled to 56 × 104
    got, _ = read_image_crop(str(path), crop, np.array([900, 1600]), (56, 104), flip,
                             antialias=False)  # fmt: skip
    full = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32))
    box = full[300:340, 500:570].permute(2, 0, 1)[None]
    want = F.interpolate(box, size=(56, 104), mode="bilinear", align_corners=False)[0]
    want = want.permute(1, 2, 0).numpy()
    if flip:
        want = want[:, ::-1]
    assert np.abs(got.astype(np.float32) - want).max() <= 1.0


def test_read_image_crop_names_bad_files(tmp_path) -> None:
    path = tmp_path / "cam.jpg"
    Image.fromarray(np.zeros((90, 160, 3), np.uint8)).save(path)
    args = (np.array([0, 0, 90, 160]), np.array([90, 160]), (45, 80), False)
    assert read_image_crop(str(path), *args)[0].shape == (45, 80, 3)
    with pytest.raises(DataError, match="expected 100x160"):
        read_image_crop(str(path), args[0], np.array([100, 160]), *args[2:])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="cam.jpg: truncated"):
        read_image_crop(str(path), *args)
    with pytest.raises(DataError, match="nope.jpg: camera image not found"):
        read_image_crop(str(tmp_path / "nope.jpg"), *args)


def test_augment_cloud_is_rigid_and_identity_when_off() -> None:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(100, 3)).astype(np.float32)
    out = augment_cloud(np.random.default_rng(1), xyz, rotate=True, flip_prob=0.5)
    np.testing.assert_allclose(
        np.linalg.norm(out[:, :2], axis=1), np.linalg.norm(xyz[:, :2], axis=1), rtol=1e-5
    )
    np.testing.assert_array_equal(out[:, 2], xyz[:, 2])
    assert not np.allclose(out, xyz)
    same = augment_cloud(np.random.default_rng(1), xyz, rotate=False, flip_prob=0.0)
    np.testing.assert_array_equal(same, xyz)


def test_patch_mask() -> None:
    rng = np.random.default_rng(0)
    mask = patch_mask(rng, 400, (40, 56), image_prob=0.5, ratio=0.5, patch=16)
    assert mask.shape == (400, 40, 56)
    per_image = mask.reshape(400, -1).any(1)
    assert 0.35 < per_image.mean() < 0.65  # about half the images are masked
    blocks = mask[:, :32, :48].reshape(400, 2, 16, 3, 16)
    assert (blocks.all(axis=(2, 4)) == blocks.any(axis=(2, 4))).all()  # whole patches only
    masked = mask[per_image]
    assert 0.4 < masked[:, :32, :48].mean() < 0.6
    assert not patch_mask(rng, 5, (40, 56), 0.0, 1.0, 16).any()
    assert patch_mask(rng, 5, (40, 56), 1.0, 1.0, 16).all()


def test_voxelize_point_lies_in_its_voxel() -> None:
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-5, 5, (3000, 3)).astype(np.float32)
    xyz[1500:] = xyz[:1500] + 0.01  # share voxels
    intensity = rng.random(3000).astype(np.float32)
    coords, feats, inverse = voxelize(xyz, intensity, 0.5, "mean")
    assert coords.dtype == np.int32 and (coords >= 0).all()
    assert len(np.unique(coords, axis=0)) == len(coords)
    lo = np.floor(xyz / 0.5).min(axis=0)
    cell = coords[inverse] + lo  # (N, 3) voxel of each point, back in grid units
    assert ((cell * 0.5 <= xyz + 1e-5) & (xyz < (cell + 1) * 0.5 + 1e-5)).all()
    mean = np.bincount(inverse, intensity) / np.bincount(inverse)
    np.testing.assert_allclose(feats[:, 0], mean, rtol=1e-5)


def test_queries_inside_farther_near_closer_far_between() -> None:
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-30, 30, (500, 3)).astype(np.float32)
    intensity = rng.random(500).astype(np.float32)
    q = sample_queries(rng, xyz, intensity, 300, offset=0.1)
    d_q, d_src = np.linalg.norm(q.xyz, axis=1), np.linalg.norm(xyz[q.source], axis=1)
    for kind in (INSIDE, NEAR_OUTSIDE, FAR_EMPTY):
        assert (q.kind == kind).sum() == 100
    inside, near, far = q.kind == INSIDE, q.kind == NEAR_OUTSIDE, q.kind == FAR_EMPTY
    assert (d_q[inside] >= d_src[inside]).all() and (
        d_q[inside] <= d_src[inside] + 0.1 + 1e-4
    ).all()
    assert (d_q[near] <= d_src[near]).all() and (d_q[near] >= d_src[near] - 0.1 - 1e-4).all()
    assert (d_q[far] <= d_src[far] + 1e-4).all()
    cos = (q.xyz * xyz[q.source]).sum(1) / (d_q * d_src + 1e-9)
    assert (cos > 0.999).all()  # every query stays on its point's ray
    assert (q.occ == inside).all() and (q.has_intensity == ~far).all()
    np.testing.assert_array_equal(q.intensity[~far], intensity[q.source][~far])
    assert (q.intensity[far] == 0).all()


def _fresh_search(
    monkeypatch: pytest.MonkeyPatch, switch_seconds: float, compiled: Callable | None = None
) -> None:
    """This process's neighbour search as a new process has it (``compiled`` already in use when
    given), switching once the trees have cost ``switch_seconds``."""
    monkeypatch.setattr(
        occupancy, "_search", {"tree_seconds": 0.0, "compiled": compiled, "unavailable": False}
    )
    monkeypatch.setattr(occupancy, "SWITCH_SECONDS", switch_seconds)


def _brute_force(
    pts: np.ndarray, queries: np.ndarray, radius: float, k: int, rule: str = "first"
) -> tuple[np.ndarray, np.ndarray]:
    """The slow, obvious rule, in float64: the release's first k indices within ``radius`` of
    each query ("first") or the k nearest, −1 padding; and the (Q, N) within-radius mask."""
    dist = np.linalg.norm(queries[:, None] - np.asarray(pts, np.float64)[None], axis=2)  # (Q, N)
    within = dist < radius
    key = np.where(within, np.arange(len(pts)) if rule == "first" else dist, np.inf)
    want = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(within, want, 1), want, -1), within


# radius 0.5: about 8 points within a query's radius; 1.5: about 200
@pytest.mark.parametrize("radius", [0.5, 1.5])
@pytest.mark.parametrize(
    "occ_neighbours, search, size",
    [
        ("nearest", "trees", 0),
        ("first", "trees", 4096),  # one block of points
        ("first", "trees", 300),  # 7 blocks, with early exits
        ("first", "compiled", 4096),  # cells of the radius
        ("first", "compiled", 8),  # coarser cells
    ],
)
def test_query_neighbours_match_brute_force(
    occ_neighbours: str, search: str, size: int, radius: float, monkeypatch
) -> None:
    monkeypatch.setattr(occupancy, "FIRST_BLOCK", size)
    monkeypatch.setattr(first_k, "MIN_GRID_CELLS", size)
    monkeypatch.setattr(first_k, "MAX_CELLS", size / 2000)
    _fresh_search(monkeypatch, 1e9, first_k.first_k_within if search == "compiled" else None)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 5, (2000, 3))
    top = pts[pts[:, 2].argmax()] + [0.0, 0.0, 0.1]  # above the cloud, near its top point
    outside = [[-2.0, -2.0, -2.0], [7.0, 7.0, 7.0], [2.5, 2.5, -1.6], top]
    queries = np.concatenate([rng.uniform(0, 5, (50, 3)), outside])
    nb = query_neighbours(pts, queries, radius, 8, occ_neighbours)
    assert occupancy.compiled_search_in_use() == (search == "compiled")
    want, within = _brute_force(pts, queries, radius, 8, occ_neighbours)
    counts, n_within = (nb >= 0).sum(1), within.sum(1)
    assert (counts == 8).any() and ((counts < 8).any() or radius > 1)
    assert (n_within[:50] > 32).mean() > 0.9 if radius > 1 else (n_within <= 32).all()
    assert (n_within[50:53] == 0).all() and n_within[53] > 0  # queries outside the cloud
    np.testing.assert_array_equal(np.sort(nb, 1), np.sort(want, 1))
    if occ_neighbours == "first":  # ascending, as the release's scan finds them
        np.testing.assert_array_equal(nb, want)


def test_a_process_switches_to_the_compiled_search_once_the_trees_cost_it_enough(
    monkeypatch,
) -> None:
    _fresh_search(monkeypatch, 1e9)
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 10, (20000, 3)).astype(np.float32)  # about 80 within 1 m of a query
    queries = rng.uniform(0, 10, (500, 3))
    by_trees = [query_neighbours(pts, queries, 1.0, 32) for _ in range(2)]
    spent = occupancy._search["tree_seconds"]
    assert spent > 0 and not occupancy.compiled_search_in_use()
    monkeypatch.setattr(occupancy, "SWITCH_SECONDS", spent)  # the trees have cost that much
    compiled = query_neighbours(pts, queries, 1.0, 32)
    assert occupancy.compiled_search_in_use()
    assert occupancy._search["tree_seconds"] == spent  # no tree ran
    np.testing.assert_array_equal(compiled, by_trees[0])
    assert ((compiled >= 0).sum(1) == 32).mean() > 0.5  # most queries are full


def test_without_numba_a_run_keeps_the_tree_search_and_says_so_once(monkeypatch) -> None:
    _fresh_search(monkeypatch, 0.0)  # switch at the first call
    rng = np.random.default_rng(4)
    pts, queries = rng.uniform(0, 4, (3000, 3)), rng.uniform(0, 4, (40, 3))
    # the reference first: numba's on-disk cache, when another process wrote one, is loaded by
    # importing the module by name, which the next line makes fail
    expected = first_k.first_k_within(pts, queries, 1.0, 8)
    monkeypatch.setitem(sys.modules, "cmcr.data.first_k", None)  # its import fails
    with pytest.warns(RuntimeWarning, match="compiled search is unavailable"):
        first = query_neighbours(pts, queries, 1.0, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call stays quiet
        second = query_neighbours(pts, queries, 1.0, 8)
    assert not occupancy.compiled_search_in_use()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, expected)


def test_first_neighbours_of_a_cloud_with_a_far_outlier_and_of_none() -> None:
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(0, 3, (500, 3)), [[1e4, -1e4, 50.0]]]).astype(np.float32)
    queries = np.concatenate([rng.uniform(0, 3, (20, 3)), [[1e4, -1e4, 50.5]]])
    nb = first_k.first_k_within(pts, queries, 1.0, 40)
    np.testing.assert_array_equal(nb, _brute_force(pts, queries, 1.0, 40)[0])
    assert nb[-1].tolist() == [500] + [-1] * 39  # the outlier finds its own neighbour
    assert (first_k.first_k_within(pts[:0], queries, 1.0, 4) == -1).all()


def _fake_sample(rng: np.random.Generator, n_points: int, n_cams: int = 2) -> dict:
    n_vox, n_pairs, n_q = n_points // 2, 7, 5
    neighbours = rng.integers(-1, n_points, (n_q, 3))
    return {
        "coords": rng.integers(0, 10, (n_vox, 3)).astype(np.int32),
        "feats": rng.random((n_vox, 1)).astype(np.float32),
        "inverse": rng.integers(0, n_vox, n_points),
        "points": rng.random((n_points, 3)).astype(np.float32),
        "images": rng.integers(0, 256, (n_cams, 4, 6, 3)).astype(np.uint8),
        "image_input": rng.integers(0, 256, (n_cams, 4, 6, 3)).astype(np.uint8),
        "image_mask": rng.random((n_cams, 4, 6)) < 0.5,
        "pairs": np.stack(
            [
                rng.integers(0, n_points, n_pairs),
                rng.integers(0, n_cams, n_pairs),
                rng.integers(0, 4, n_pairs),
                rng.integers(0, 6, n_pairs),
            ],
            1,
        ),  # fmt: skip
        "pair_masked": rng.random(n_pairs) < 0.5,
        "queries": rng.random((n_q, 3)).astype(np.float32),
        "query_occ": np.ones(n_q, np.float32),
        "query_intensity": np.ones(n_q, np.float32),
        "query_has_intensity": np.ones(n_q, bool),
        "query_neighbours": neighbours,
        "labels": rng.integers(0, 17, n_points),
        "sample_token": f"tok{n_points}",
    }


def test_collate_offsets_every_index() -> None:
    rng = np.random.default_rng(0)
    samples = [_fake_sample(rng, 10), _fake_sample(rng, 20)]
    batch = collate_pretrain(samples)
    assert batch["batch_size"] == 2 and batch["sample_tokens"] == ["tok10", "tok20"]
    assert batch["coords"].shape == (15, 4) and batch["coords"][5:, 0].eq(1).all()
    assert batch["spatial_shape"] == (batch["coords"][:, 1:].amax(0) + 1).tolist()
    np.testing.assert_array_equal(batch["inverse"][10:].numpy(), samples[1]["inverse"] + 5)
    pairs = batch["pairs"].numpy()
    np.testing.assert_array_equal(pairs[7:, 0], samples[1]["pairs"][:, 0] + 10)
    np.testing.assert_array_equal(pairs[7:, 1], samples[1]["pairs"][:, 1] + 2)
    np.testing.assert_array_equal(pairs[:7], samples[0]["pairs"])
    nb = batch["query_neighbours"].numpy()
    src = samples[1]["query_neighbours"]
    np.testing.assert_array_equal(nb[5:], np.where(src >= 0, src + 10, -1))
    assert (nb == -1).any()
    img = batch["images"]
    assert img.shape == (4, 3, 4, 6) and img.dtype == torch.uint8  # bytes until the model
    np.testing.assert_array_equal(img[3].permute(1, 2, 0).numpy(), samples[1]["images"][1])
    np.testing.assert_array_equal(
        batch["image_input"][2].permute(1, 2, 0).numpy(), samples[1]["image_input"][0]
    )
    as_float = unit_float(img)  # what the model sees: x / 255 in float32, as collate once gave
    assert as_float.dtype == torch.float32
    torch.testing.assert_close(as_float, img.float() / 255.0, rtol=0, atol=0)
    assert unit_float(as_float) is as_float  # a float batch (the synthetic factory) as it is
    assert batch["image_input"].shape == img.shape
    assert batch["query_batch"].tolist() == [0] * 5 + [1] * 5
    assert batch["point_batch"].tolist() == [0] * 10 + [1] * 20
    seg = collate_seg(samples)
    assert seg["num_points"].tolist() == [10, 20] and seg["labels"].shape == (30,)


def test_epoch_sampler_is_a_pure_function_of_seed_and_epoch() -> None:
    a, b = EpochSampler(50, seed=3, shuffle=True), EpochSampler(50, seed=3, shuffle=True)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and all(e == 2 for e, _ in a)
    assert sorted(i for _, i in a) == list(range(50))
    b.set_epoch(3)
    assert [i for _, i in a] != [i for _, i in b]
    assert [i for _, i in EpochSampler(5, seed=0, shuffle=False)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("fraction", "expected"), [(1.0, 100), (0.25, 25), (0.1, 10), (0.01, 1)])
def test_every_kth(fraction: float, expected: int) -> None:
    picked = every_kth(list(range(100)), fraction)
    assert len(picked) == expected and picked[0] == 0


def _scene_records(n_scenes: int) -> list:
    from types import SimpleNamespace

    # n scenes of 3 to 5 scans each, as a split's records come: scene order, then time
    sizes = [3 + i % 3 for i in range(n_scenes)]
    return [
        SimpleNamespace(scene_name=f"scene-{i:04d}", t=t)
        for i, n in enumerate(sizes)
        for t in range(n)
    ]


def test_every_kth_scene_keeps_whole_scenes_in_scene_order() -> None:
    records = _scene_records(250)
    kept = every_kth_scene(records, 0.01, "first")  # every 100th scene from the first: 0, 100, 200
    assert [r.scene_name for r in kept] == ["scene-0000"] * 3 + ["scene-0100"] * 4 + [
        "scene-0200"
    ] * 5
    assert [r.t for r in kept][:3] == [0, 1, 2]  # all keyframes of a kept scene, in time order
    assert len(every_kth_scene(records, 1.0)) == len(records)
    assert {r.scene_name for r in every_kth_scene(records, 0.1, "first")} == {
        f"scene-{i:04d}" for i in range(0, 250, 10)
    }


def test_every_kth_scene_keeps_the_release_positions_by_default() -> None:
    # the release counts a scene before the modulo (downstream/dataloader_nuscenes.py:130-131):
    # 1 % of nuScenes' 700 train scenes is positions 99, 199, ..., 699, none of 0, 100, ..., 600
    records = _scene_records(700)
    kept = list(dict.fromkeys(r.scene_name for r in every_kth_scene(records, 0.01)))
    assert kept == [f"scene-{i:04d}" for i in range(99, 700, 100)]
    assert {r.scene_name for r in every_kth_scene(records, 0.1)} == {
        f"scene-{i:04d}" for i in range(9, 700, 10)
    }
    assert len(every_kth_scene(records, 1.0)) == len(records)
    # fewer scenes than k: the first scene, so a small world still has a subset
    assert {r.scene_name for r in every_kth_scene(_scene_records(8), 0.01)} == {"scene-0000"}


def test_read_points_names_a_file_with_non_finite_values(tmp_path) -> None:
    path = tmp_path / "nan.pcd.bin"
    points = np.ones((10, 5), dtype=np.float32)
    points.tofile(path)
    assert read_points(str(path)).shape == (10, 5)
    points[4, 3] = np.inf
    points.tofile(path)
    with pytest.raises(DataError, match=r"nan.pcd.bin: 1 of 10 LiDAR points have non-finite"):
        read_points(str(path))


def test_query_sources_are_distinct_within_each_third() -> None:
    # the release draws each third with its own randperm: no point twice in one third (with
    # replacement, 100 draws from 120 points repeat one almost surely)
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-30, 30, (120, 3)).astype(np.float32)
    q = sample_queries(rng, xyz, rng.random(120).astype(np.float32), 300, offset=0.1)
    for kind in (INSIDE, NEAR_OUTSIDE, FAR_EMPTY):
        src = q.source[q.kind == kind]
        assert len(src) == 100 and len(np.unique(src)) == 100
    few = sample_queries(rng, xyz[:10], np.zeros(10, np.float32), 60, offset=0.1)
    assert len(few.source) == 60  # a cloud with too few points still gives every query


def test_the_compiled_search_imports_where_numba_can_write_no_cache() -> None:
    """A read-only install and home (a container with a read-only root file system): numba
    refuses cache=True there at decoration ("no locator available"); first_k compiles per
    process instead of failing the switch mid-run. Simulated by leaving numba no cache locator,
    in a fresh process (the module compiles at import)."""
    import subprocess

    code = """
import numba, numpy as np
from numba.core import caching
caching.CacheImpl._locator_classes = []  # no folder numba could cache in
try:
    numba.njit(cache=True)(lambda x: x + 1)
    raise SystemExit("numba cached without a locator: the simulation no longer holds")
except RuntimeError:
    pass
from cmcr.data import first_k
rng = np.random.default_rng(0)
pts, qs = rng.uniform(0, 3, (500, 3)), rng.uniform(0, 3, (20, 3))
got = first_k.first_k_within(pts, qs, 0.7, 6)
d = np.linalg.norm(qs[:, None] - pts[None], axis=2)
want = [np.flatnonzero(row < 0.7)[:6] for row in d]
assert all((g[: len(w)] == w).all() and (g[len(w):] == -1).all() for g, w in zip(got, want))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr[-3000:]
