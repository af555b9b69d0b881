"""The data pipeline's release-protocol points (METHOD.md, "The official release's protocol"):
the crop rule, masking on the source image before the crop, the voxel feature, held-out scenes.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cmcr.configs import load_config
from cmcr.data import PretrainDataset, check_pretrain_data, collate_pretrain
from cmcr.data.augment import (
    CropRule,
    choose_crops,
    count_surviving_pairs,
    count_until_passing,
    draw_crop_candidates,
    mask_through_crop,
    patch_grid,
    sample_crops,
    source_pixel_masked,
)
from cmcr.data.io import _zero_dropped, read_image_crop
from cmcr.data.pretrain import apply_holdout
from cmcr.data.voxel import voxelize
from cmcr.errors import DataError

RULE = CropRule(
    scale=(0.3, 1.0), aspect=(14 / 9, 17 / 9), tries=20, min_pairs=1024, min_fraction=0.75
)


def _cfg(world: Path, **overrides):
    return load_config("smoke", {"data.dataroot": str(world), **overrides})


# ---- crop rule ---------------------------------------------------------------------------------
def test_crop_candidates_fit_and_keep_area_and_aspect_in_range() -> None:
    hw = np.array([[900, 1600]] * 50 + [[270, 480]] * 50)
    boxes, fits = draw_crop_candidates(np.random.default_rng(0), hw, RULE.scale, RULE.aspect, 20)
    top, left, h, w = np.moveaxis(boxes, -1, 0)  # each (C, T)
    src_h, src_w = hw[:, :1], hw[:, 1:]
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= src_h).all() and (left + w <= src_w).all()  # every box lies in its image
    assert 0.5 < fits.mean() < 1.0  # some large draws do not fit the 16:9 image
    area = (h * w / (src_h * src_w))[fits]
    aspect = (w / h)[fits]
    # rounding the box to whole pixels moves area and aspect by under a pixel's worth
    assert area.min() > 0.3 - 0.01 and area.max() <= 1.0 and area.min() < 0.35
    assert aspect.min() > 14 / 9 - 0.02 and aspect.max() < 17 / 9 + 0.02
    assert aspect.min() < 1.6 and aspect.max() > 1.85  # the whole range is drawn
    assert (w / h)[~fits].min() > 14 / 9 - 0.02  # shrunk boxes keep their aspect
    assert len(np.unique(left)) > 200  # positions vary


def _slow_counts(boxes, u, v, cam) -> np.ndarray:
    counts = np.zeros(boxes.shape[:2], np.int64)
    for c in range(boxes.shape[0]):
        for t in range(boxes.shape[1]):
            top, left, h, w = boxes[c, t]
            for uu, vv, cc in zip(u, v, cam, strict=True):
                counts[c, t] += cc == c and left <= uu < left + w and top <= vv < top + h
    return counts


def _slow_choice(counts, fits, totals, min_pairs, min_fraction) -> list[int]:
    """The release's redraw loop: stop at the first fitting candidate keeping enough pairings."""
    picks = []
    for c in range(len(counts)):
        pick = None
        for t in range(counts.shape[1]):
            if fits[c, t] and (counts[c, t] > min_pairs or counts[c, t] > min_fraction * totals[c]):
                pick = t
                break
        if pick is None:  # no candidate passes: the fitting one with most survivors, first on ties
            order = [t for t in range(counts.shape[1]) if fits[c, t]] or range(counts.shape[1])
            pick = max(order, key=lambda t: (counts[c, t], -t))
        picks.append(pick)
    return picks


def _random_pairs(rng, hw, n):
    cam = rng.integers(0, len(hw), n)
    u = rng.uniform(0, hw[cam, 1]).astype(np.float32)
    v = rng.uniform(0, hw[cam, 0]).astype(np.float32)
    # a cluster in one corner, so that some candidates lose most pairings
    corner = rng.random(n) < 0.5
    u[corner] *= 0.2
    v[corner] *= 0.2
    return u, v, cam


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_choice_equals_a_slow_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hw = np.array([[90, 160], [90, 160], [100, 100]])
    u, v, cam = _random_pairs(rng, hw, 600)
    boxes, fits = draw_crop_candidates(rng, hw, (0.1, 1.0), (1.2, 2.0), 12)
    counts = count_surviving_pairs(boxes, u, v, cam)
    np.testing.assert_array_equal(counts, _slow_counts(boxes, u, v, cam))
    totals = np.bincount(cam, minlength=3)
    for min_pairs, fraction in [(150, 0.75), (10_000, 0.9), (10_000, 1.0), (0, 0.0)]:
        got = choose_crops(counts, fits, totals, min_pairs, fraction)
        assert got.tolist() == _slow_choice(counts, fits, totals, min_pairs, fraction)
    # random counts with ties and unfitting candidates too
    counts = rng.integers(0, 5, (40, 7))
    fits = rng.random((40, 7)) < 0.6
    totals = rng.integers(1, 8, 40)
    got = choose_crops(counts, fits, totals, 3, 0.5)
    assert got.tolist() == _slow_choice(counts, fits, totals, 3, 0.5)


@pytest.mark.parametrize("min_pairs", [0, 150, 10_000])
def test_counting_until_the_first_pass_chooses_as_counting_all(min_pairs: int) -> None:
    rng = np.random.default_rng(min_pairs)
    hw = np.array([[90, 160], [90, 160], [100, 100]])
    u, v, cam = _random_pairs(rng, hw, 600)
    rule = CropRule((0.1, 1.0), (1.2, 2.0), 12, min_pairs, 0.75)
    boxes, fits = draw_crop_candidates(rng, hw, rule.scale, rule.aspect, rule.tries)
    full = count_surviving_pairs(boxes, u, v, cam)
    lazy = count_until_passing(boxes, fits, u, v, cam, rule)
    totals = np.bincount(cam, minlength=3)
    args = (fits, totals, min_pairs, 0.75)
    assert choose_crops(lazy, fits, totals, min_pairs, 0.75).tolist() == _slow_choice(full, *args)
    np.testing.assert_array_equal(lazy[:, 0], full[:, 0])
    first_fails = lazy[:, 1:].any(1)  # the rest is counted only where the first fails
    np.testing.assert_array_equal(lazy[first_fails], full[first_fails])


@pytest.mark.parametrize(
    ("k", "hw", "rows", "cols"),
    [
        (1, (60, 110), (0, 9), (3, 17)),
        (4, (238, 437), (5, 38), (1, 64)),
        (8, (460, 877), (0, 57), (9, 100)),
        (5, (238, 437), (200, 238), (400, 437)),  # the edges cut the last patch row and column
        (16, (900, 1600), (897, 900), (0, 1600)),  # a window inside the last, partial, row
    ],
)
def test_zero_dropped_blacks_exactly_the_dropped_patches_over_the_window(k, hw, rows, cols):
    rng = np.random.default_rng(k)
    drop = rng.random((-(-hw[0] // k), -(-hw[1] // k))) < 0.5  # patches of k decoded pixels
    img = rng.integers(1, 256, (*hw, 3)).astype(np.uint8)  # no 0: a zero was written
    before = img.copy()
    _zero_dropped(img, drop, k, rows, cols)
    r, c = np.arange(hw[0]), np.arange(hw[1])
    dropped = drop[r // k][:, c // k]  # (H, W) the patch of every pixel
    window = np.zeros(hw, bool)
    window[rows[0] : rows[1], cols[0] : cols[1]] = True
    zeroed = (img == 0).all(2)
    assert (zeroed[window] == dropped[window]).all()  # every dropped pixel the warp reads
    assert not zeroed[~dropped].any()  # no kept pixel anywhere
    np.testing.assert_array_equal(img[~zeroed], before[~zeroed])


def test_chosen_crop_keeps_enough_pairs_whenever_a_candidate_could() -> None:
    hw = np.array([[900, 1600]] * 6)
    rule = CropRule((0.3, 1.0), (14 / 9, 17 / 9), 20, 1024, 0.75)
    passed = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        u, v, cam = _random_pairs(rng, hw, 12_000)
        crops = sample_crops(np.random.default_rng([seed, 1]), hw, u, v, cam, rule)
        boxes, fits = draw_crop_candidates(
            np.random.default_rng([seed, 1]), hw, rule.scale, rule.aspect, rule.tries
        )  # the same draws sample_crops made
        counts = count_surviving_pairs(boxes, u, v, cam)
        totals = np.bincount(cam, minlength=6)
        could = (fits & ((counts > 1024) | (counts > 0.75 * totals[:, None]))).any(1)
        kept = count_surviving_pairs(crops[:, None], u, v, cam)[:, 0]
        ok = (kept > 1024) | (kept > 0.75 * totals)
        assert ok[could].all()
        assert (kept[~could] == np.where(fits, counts, -1).max(1)[~could]).all()  # else the best
        passed += int(could.sum())
    assert passed > 50


# ---- masking on the source image -----------------------------------------------------------------
def test_pair_in_a_masked_source_patch_is_masked_and_one_outside_is_not() -> None:
    grid = np.zeros((2, 4, 5), bool)  # two images of 64×80 source pixels, 16-px patches
    grid[1, 2, 3] = True  # source rows 32..47, cols 48..63 of image 1
    u = np.array([48.0, 63.99, 47.99, 50.0, 50.0])
    v = np.array([32.0, 47.5, 40.0, 48.01, 40.0])
    cam = np.array([1, 1, 1, 1, 0])
    np.testing.assert_array_equal(
        source_pixel_masked(grid, 16, cam, u, v), [True, True, False, False, False]
    )
    rng = np.random.default_rng(0)
    grid = patch_grid(rng, 3, (90, 160), 1.0, 0.5, 16)
    u, v, cam = rng.uniform(0, 160, 500), rng.uniform(0, 90, 500), rng.integers(0, 3, 500)
    slow = [grid[c, int(y) // 16, int(x) // 16] for x, y, c in zip(u, v, cam, strict=True)]
    np.testing.assert_array_equal(source_pixel_masked(grid, 16, cam, u, v), slow)


def _jpeg(tmp_path: Path, hw=(900, 1600)) -> str:
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    pattern = 127 + 120 * np.sin(xx / 40.0) * np.cos(yy / 30.0)
    rgb = np.stack([pattern, 255 - pattern, np.full_like(pattern, 90)], -1).astype(np.uint8)
    path = tmp_path / "cam.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    return str(path)


def _source_boxes(crop, out_hw, flip, margin: float):
    """Per output pixel, the source pixel rows / cols its area touches, widened by margin."""
    top, left, h, w = crop
    rows, cols = np.arange(out_hw[0]), np.arange(out_hw[1])
    if flip:
        cols = cols[::-1]
    y0 = np.floor(top + rows * h / out_hw[0] - margin).astype(int)
    y1 = np.ceil(top + (rows + 1) * h / out_hw[0] + margin).astype(int)
    x0 = np.floor(left + cols * w / out_hw[1] - margin).astype(int)
    x1 = np.ceil(left + (cols + 1) * w / out_hw[1] + margin).astype(int)
    return y0, y1, x0, x1


@pytest.mark.parametrize(
    ("crop", "flip"),
    [([100, 300, 500, 928], False), ([0, 0, 900, 1600], True), ([37, 11, 233, 433], False)],
)  # decoded at 1/4, 1/8 and 1/2 scale
def test_encoder_input_is_black_where_the_output_pixel_is_all_masked(tmp_path, crop, flip):
    path, full_hw, out_hw = _jpeg(tmp_path), np.array([900, 1600]), (56, 104)
    grid = patch_grid(np.random.default_rng(0), 1, (900, 1600), 1.0, 0.3, 16)[0]  # (57, 100)
    source = grid.repeat(16, 0).repeat(16, 1)[:900, :1600]  # (900, 1600) masked source pixels
    target, net_input = read_image_crop(path, np.array(crop), full_hw, out_hw, flip, grid, 16)
    plain, same = read_image_crop(path, np.array(crop), full_hw, out_hw, flip)
    np.testing.assert_array_equal(target, plain)  # the MIM target is the unmasked crop
    assert same is plain  # nothing masked: the input is the target
    y0, y1, x0, x1 = _source_boxes(crop, out_hw, flip, 0.0)
    all_masked = np.array(
        [[source[a:b, c:d].all() for c, d in zip(x0, x1, strict=True)]
         for a, b in zip(y0, y1, strict=True)]
    )  # fmt: skip  # (H, W)
    # the bilinear footprint reaches 1.5 decoded pixels (at most 1/8 scale: 12 px) past the box
    y0, y1, x0, x1 = _source_boxes(crop, out_hw, flip, 12.0)
    y0, x0 = np.maximum(y0, 0), np.maximum(x0, 0)
    none_masked = np.array(
        [[not source[a:b, c:d].any() for c, d in zip(x0, x1, strict=True)]
         for a, b in zip(y0, y1, strict=True)]
    )  # fmt: skip
    assert all_masked.mean() > 0.01 and none_masked.mean() > 0.01  # both cases occur
    assert (net_input[all_masked] == 0).all()  # black (0) before normalisation
    assert (target[all_masked] > 0).any()  # ... while the target keeps the image there
    np.testing.assert_array_equal(net_input[none_masked], target[none_masked])
    out_mask = mask_through_crop(
        grid[None], 16, full_hw[None], np.array([crop]), np.array([flip]), out_hw
    )[0]
    assert out_mask[all_masked].all() and not out_mask[none_masked].any()


@pytest.mark.parametrize("ratio", [0.0, 0.3])  # nothing dropped / patches dropped
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("antialias", [True, False])  # decoded at 1/4 (a warp) / 1 (a resize)
def test_read_into_slots_equals_the_returned_arrays(tmp_path, ratio, flip, antialias) -> None:
    path, full_hw, out_hw = _jpeg(tmp_path), np.array([900, 1600]), (56, 104)
    grid = patch_grid(np.random.default_rng(1), 1, (900, 1600), 1.0, ratio, 16)[0]
    crop = np.array([37, 11, 233, 433])
    args = (path, crop, full_hw, out_hw, flip, grid, 16)
    target, net_input = read_image_crop(*args, antialias=antialias)
    slots = np.zeros((2, *out_hw, 3), np.uint8)
    got = read_image_crop(*args, out=(slots[0], slots[1]), antialias=antialias)
    np.testing.assert_array_equal(slots[0], target)
    np.testing.assert_array_equal(slots[1], net_input)
    assert got[0] is slots[0] or np.shares_memory(got[0], slots)
    assert (slots[0] > 0).any() and ((slots[1] == 0).all(2).any() == (ratio > 0))


def test_mask_through_crop_equals_nearest_resize_of_the_source_mask() -> None:
    rng = np.random.default_rng(3)
    hw = np.array([[90, 160], [90, 160]])
    grid = patch_grid(rng, 2, (90, 160), 1.0, 0.5, 4)
    crops, flips, out_hw = (
        np.array([[5, 7, 60, 100], [0, 0, 90, 160]]),
        np.array([False, True]),
        (24, 40),
    )
    got = mask_through_crop(grid, 4, hw, crops, flips, out_hw)
    for c in range(2):
        top, left, h, w = crops[c]
        for r in range(out_hw[0]):
            for j in range(out_hw[1]):
                y = int(np.floor(top + (r + 0.5) * h / out_hw[0]))
                x = int(np.floor(left + (j + 0.5) * w / out_hw[1]))
                jj = out_hw[1] - 1 - j if flips[c] else j
                assert got[c, r, jj] == grid[c, y // 4, x // 4]


def test_world_sample_masks_at_the_source(smoke_world: Path) -> None:
    cfg = _cfg(smoke_world, **{"data.mask_image_prob": 1.0})
    assert cfg.data.mask_stage == "source" and cfg.data.mask_fill == "black"
    sample = PretrainDataset(cfg, "mini_train")[0]
    p, mask = sample["pairs"], sample["image_mask"]
    assert 0.2 < sample["pair_masked"].mean() < 0.8 and 0.2 < mask.mean() < 0.8
    # the exact source pixel and the output pixel's centre agree but at patch borders
    assert (sample["pair_masked"] == mask[p[:, 1], p[:, 2], p[:, 3]]).mean() > 0.8
    black = (sample["image_input"] == 0).all(-1)
    assert black[mask].mean() > 0.5 and not black[~mask].mean() > 0.05
    batch = collate_pretrain([sample])
    assert batch["image_input"].shape == batch["images"].shape
    assert batch["image_input"].dtype == torch.uint8  # bytes until the model (unit_float)
    np.testing.assert_array_equal(
        batch["image_input"][0].permute(1, 2, 0).numpy(), sample["image_input"][0]
    )


def test_output_stage_and_mean_fill_keep_the_old_behaviour(smoke_world: Path) -> None:
    cfg = _cfg(smoke_world, **{"data.mask_image_prob": 1.0, "data.mask_stage": "output"})
    sample = PretrainDataset(cfg, "mini_train")[0]
    p, mask = sample["pairs"], sample["image_mask"]
    np.testing.assert_array_equal(sample["pair_masked"], mask[p[:, 1], p[:, 2], p[:, 3]])
    assert (sample["image_input"][mask] == 0).all()
    np.testing.assert_array_equal(sample["image_input"][~mask], sample["images"][~mask])
    mean = PretrainDataset(_cfg(smoke_world, **{"data.mask_fill": "mean"}), "mini_train")[0]
    np.testing.assert_array_equal(mean["image_input"], mean["images"])  # the encoder masks


def test_encoder_fill_black_vs_mean() -> None:
    from cmcr.models.decoders import FrozenImageEncoder

    enc = FrozenImageEncoder("resnet18", "random")
    seen = []
    enc.net.forward = lambda x: seen.append(x) or x  # look at the network's input
    image = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[:, :8] = True
    black = image.clone()
    black[:, :, :8] = 0
    enc(black, mask, "black")
    enc(image, mask, "mean")
    assert torch.allclose(seen[0][:, :, :8], (-enc.mean / enc.std).expand(1, 3, 8, 32))
    assert (seen[1][:, :, :8] == 0).all()  # the ImageNet mean colour
    assert torch.equal(seen[0][:, :, 8:], seen[1][:, :, 8:])


def test_masked_pairs_are_never_sampled(smoke_world: Path) -> None:
    from cmcr.models.cmcr import CMCRModel

    cfg = _cfg(smoke_world, **{"data.mask_image_prob": 1.0, "loss.num_matches": 100_000})
    ds = PretrainDataset(cfg, "mini_train")
    batch = collate_pretrain([ds[0], ds[1]])
    masked = batch["pair_masked"]
    assert masked.any() and not masked.all()
    sel, _ = CMCRModel(cfg).sample_matches(batch)
    assert not masked[sel].any()
    # boolean filtering: every unmasked pair, each once (the release's `1 - mask` integer index
    # picks pairs 0 and 1 over and over instead)
    assert sorted(sel.tolist()) == (~masked).nonzero().flatten().tolist()


# ---- voxel feature ------------------------------------------------------------------------------
def test_voxel_feature_first_is_the_first_point_of_each_voxel() -> None:
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-3, 3, (4000, 3)).astype(np.float32)
    intensity = rng.random(4000).astype(np.float32)
    coords, feats, inverse = voxelize(xyz, intensity, 0.5, "first")
    first: dict[int, float] = {}
    for p, vox in enumerate(inverse.tolist()):  # the slow, obvious reference
        first.setdefault(vox, intensity[p])
    np.testing.assert_array_equal(feats[:, 0], [first[v] for v in range(len(coords))])
    c2, mean, i2 = voxelize(xyz, intensity, 0.5, "mean")
    np.testing.assert_array_equal(c2, coords)
    np.testing.assert_array_equal(i2, inverse)
    assert not np.allclose(mean, feats)


def test_datasets_use_the_configured_voxel_feature(smoke_world: Path) -> None:
    from cmcr.data import SegDataset
    from cmcr.data.io import read_points

    feats = {}
    for feature in ("first", "mean"):
        cfg = _cfg(smoke_world, **{"data.voxel_feature": feature})
        ds = SegDataset(cfg, "mini_val", train=False)  # every point, in file order
        sample = ds[0]
        inv = sample["inverse"]
        intensity = read_points(ds.records[0].lidar_path)[:, 3] / np.float32(255.0)
        if feature == "first":
            expected = intensity[np.unique(inv, return_index=True)[1]]
        else:
            expected = np.bincount(inv, intensity) / np.bincount(inv)
        np.testing.assert_allclose(sample["feats"][:, 0], expected, rtol=1e-6)
        feats[feature] = PretrainDataset(cfg, "mini_train")[0]["feats"]
    assert feats["first"].shape == feats["mean"].shape  # same seed: same cloud and voxels
    assert not np.allclose(feats["first"], feats["mean"])


# ---- held-out scenes -------------------------------------------------------------------------------
def test_apply_holdout_excludes_or_keeps_only_the_held_out_scenes() -> None:
    records = [
        SimpleNamespace(scene_name=f"scene-{i:04d}", t=t) for i in range(6) for t in range(2)
    ]
    held = ["scene-0001", "scene-0004", "scene-0999"]
    out = apply_holdout(records, held, "exclude", "train")
    assert [r.scene_name for r in out] == [f"scene-{i:04d}" for i in (0, 0, 2, 2, 3, 3, 5, 5)]
    only = apply_holdout(records, held, "only", "train")
    assert [r.scene_name for r in only] == ["scene-0001"] * 2 + ["scene-0004"] * 2
    assert apply_holdout(records, held, "all", "train") is records
    with pytest.raises(DataError, match="data.holdout_scenes"):
        apply_holdout(records, [r.scene_name for r in records], "exclude", "train")
    with pytest.raises(DataError, match="data.holdout_scenes"):
        apply_holdout(records, ["scene-0999"], "only", "train")


def test_pretraining_leaves_the_held_out_scenes_out(smoke_world: Path) -> None:
    cfg = _cfg(smoke_world)
    assert "scene-0061" not in cfg.data.holdout_scenes  # the release's list: mini unaffected
    n = len(PretrainDataset(cfg, "mini_train"))
    assert n == check_pretrain_data(cfg) == 3
    held = _cfg(smoke_world, **{"data.holdout_scenes": ["scene-0061"]})  # the only train scene
    with pytest.raises(DataError, match="data.holdout_scenes"):
        PretrainDataset(held, "mini_train")
    # the check reads what pre-training reads: its training scenes and the held-out ones it
    # validates on (the whole split); the empty training set fails when the loader is built
    assert check_pretrain_data(held) == n
    only = PretrainDataset(held, "mini_train", holdout="only")
    assert len(only) == n and {r.scene_name for r in only.records} == {"scene-0061"}
    from cmcr.data import build_pretrain_loader

    assert len(build_pretrain_loader(held, "mini_train", holdout="only").dataset) == n
    other = _cfg(smoke_world, **{"data.holdout_scenes": ["scene-0103"]})  # a val scene
    assert len(PretrainDataset(other, "mini_train")) == n
