"""The official release's model and loss protocol, point by point (METHOD.md; issue 13).

Each test fails if its point regresses: loss groups (per-group terms against a by-hand split of
the batch, matches per group, codebook statistics averaged over groups), occupancy per
(query, neighbour) pair, the occupancy MLP's shape, the image heads' align_corners, the
codebook's uniform init, orth over voxel rows per group, the stem kernel and BN momentum.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmcr import losses as L
from cmcr.bench.batch import batch_from_config
from cmcr.configs import load_config
from cmcr.losses.groups import loss_groups
from cmcr.models import CMCRModel, build_backbone
from cmcr.models.codebook import UnifiedCodebook
from cmcr.models.decoders import ImageHead, OccupancyDecoder

TERMS = ("nce", "mim", "occ", "intensity", "orth", "commit", "cmcm")


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


# ---- the grouped loss functions against the whole-batch ones, group by group ----------------

# groups 0 and 2 hold rows, group 1 is empty (it adds 0 and still counts), rows interleaved
GROUP = torch.tensor([0, 2, 0, 2, 2, 0, 0, 2, 2])
N_GROUPS = 3
# equal groups, no padding (the fused path), rows interleaved
EVEN = torch.tensor([1, 0, 0, 1, 0, 1, 1, 0])


def _by_hand(fn, *rows: torch.Tensor, group=GROUP, n_groups=N_GROUPS) -> torch.Tensor:
    """Mean over the groups of ``fn`` on each group's rows (an empty group adds 0)."""
    total = 0.0
    for g in range(n_groups):
        pick = group.eq(g)
        if pick.any():
            total = total + fn(*(r[pick] for r in rows))
    return total / n_groups


@pytest.mark.parametrize("group, n_groups", [(GROUP, N_GROUPS), (EVEN, 2)], ids=["padded", "even"])
def test_grouped_pair_losses_are_the_mean_of_per_group_losses(group, n_groups) -> None:
    n = len(group)
    f_p, f_v, e_p, e_v = (_unit(n, 5, s) for s in range(4))
    codes = _unit(7, 5, 9)
    cases = {
        "nce": (lambda a, b: L.nce(a, b, 0.07), (f_p, f_v)),
        "cmcm": (lambda a, b: L.cmcm(a, b, codes), (f_p, f_v)),
        "commit": (lambda a, b, c, d: L.commit(a, b, c, d, 0.25), (f_p, f_v, e_p, e_v)),
    }
    grouped = {
        "nce": L.nce(f_p, f_v, 0.07, group, n_groups),
        "cmcm": L.cmcm(f_p, f_v, codes, group, n_groups),
        "commit": L.commit(f_p, f_v, e_p, e_v, 0.25, group, n_groups),
    }
    for name, (fn, rows) in cases.items():
        expected = float(_by_hand(fn, *rows, group=group, n_groups=n_groups))
        assert float(grouped[name]) == pytest.approx(expected, rel=1e-9), name


def test_grouped_row_losses_are_the_mean_of_per_group_losses() -> None:
    g = torch.Generator().manual_seed(1)
    n = len(GROUP)
    logits, target = torch.randn(n, generator=g, dtype=torch.float64), (GROUP == 0).double()
    pred = torch.rand(n, generator=g, dtype=torch.float64)
    valid = torch.tensor([True, False, True, True, False, True, False, True, True])
    shared, spec = _unit(n, 4, 5), torch.randn(n, 4, generator=g, dtype=torch.float64)
    got = {
        "occ": L.occ(logits, target, GROUP, N_GROUPS),
        "intensity": L.intensity(pred, target, valid, GROUP, N_GROUPS),
        "orth": L.orth(shared, spec, GROUP, N_GROUPS),
    }
    ref = {
        "occ": _by_hand(L.occ, logits, target),
        "intensity": _by_hand(L.intensity, pred, target, valid),
        "orth": _by_hand(L.orth, shared, spec),
    }
    for name in got:
        assert float(got[name]) == pytest.approx(float(ref[name]), rel=1e-9), name


@pytest.mark.parametrize("on", ["all", "masked"])
def test_grouped_mim_is_the_mean_of_per_group_mim(on: str) -> None:
    g = torch.Generator().manual_seed(2)
    recon = torch.rand(6, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.rand(6, 3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 4, 5, generator=g) < 0.4
    image_group = torch.tensor([0, 0, 0, 0, 1, 1])  # 2 scans of 2 cameras, then 1 scan
    expected = sum(
        float(L.mim(recon[image_group == k], target[image_group == k], mask[image_group == k], on))
        for k in range(2)
    )
    assert float(L.mim(recon, target, mask, on, image_group, 2)) == pytest.approx(expected / 2)


def test_one_group_is_the_whole_batch_computation() -> None:
    f_p, f_v = _unit(8, 4, 0), _unit(8, 4, 1)
    zeros = torch.zeros(8, dtype=torch.long)
    for fn in (
        lambda *g: L.nce(f_p, f_v, 0.1, *g),
        lambda *g: L.cmcm(f_p, f_v, _unit(5, 4, 2), *g),
    ):
        assert float(fn(zeros, 1)) == pytest.approx(float(fn()), rel=1e-12)
    # and the whole-batch form is the plain cross-entropy over all n matches
    logits = f_p @ f_v.t() / 0.1
    assert float(L.nce(f_p, f_v, 0.1)) == pytest.approx(
        float(F.cross_entropy(logits, torch.arange(8))), rel=1e-12
    )


def test_padded_groups_give_finite_gradients() -> None:
    f_p, f_v = _unit(9, 4, 3).requires_grad_(), _unit(9, 4, 4).requires_grad_()
    spec = _unit(9, 4, 5).requires_grad_()
    total = L.nce(f_p, f_v, 0.07, GROUP, N_GROUPS) + L.cmcm(f_p, f_v, _unit(6, 4, 6), GROUP, 3)
    total = total + L.orth(f_p, spec, GROUP, N_GROUPS)
    total.backward()
    for t in (f_p, f_v, spec):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# ---- the model: loss groups against running each group of scans as its own batch -------------


def _sub_batch(batch: dict, lo: int, hi: int) -> dict:
    """Scans lo..hi-1 of ``batch`` as a batch of their own (every index renumbered)."""
    n_cams = len(batch["images"]) // batch["batch_size"]
    keep_p = (batch["point_batch"] >= lo) & (batch["point_batch"] < hi)
    keep_v = (batch["coords"][:, 0] >= lo) & (batch["coords"][:, 0] < hi)
    p_map = torch.full((len(keep_p),), -1, dtype=torch.long)
    p_map[keep_p] = torch.arange(int(keep_p.sum()))
    v_map = torch.full((len(keep_v),), -1, dtype=torch.long)
    v_map[keep_v] = torch.arange(int(keep_v.sum()))
    coords = batch["coords"][keep_v].clone()
    coords[:, 0] -= lo
    pairs = batch["pairs"][keep_p[batch["pairs"][:, 0]]].clone()
    pair_masked = batch["pair_masked"][keep_p[batch["pairs"][:, 0]]]
    pairs[:, 0], pairs[:, 1] = p_map[pairs[:, 0]], pairs[:, 1] - lo * n_cams
    keep_q = (batch["query_batch"] >= lo) & (batch["query_batch"] < hi)
    nbrs = batch["query_neighbours"][keep_q]
    images = slice(lo * n_cams, hi * n_cams)
    return {
        "batch_size": hi - lo,
        "coords": coords,
        "spatial_shape": batch["spatial_shape"],
        "feats": batch["feats"][keep_v],
        "inverse": v_map[batch["inverse"][keep_p]],
        "points": batch["points"][keep_p],
        "point_batch": batch["point_batch"][keep_p] - lo,
        "images": batch["images"][images],
        "image_input": batch["image_input"][images],
        "image_mask": batch["image_mask"][images],
        "pairs": pairs,
        "pair_masked": pair_masked,
        "queries": batch["queries"][keep_q],
        "query_batch": batch["query_batch"][keep_q] - lo,
        "query_occ": batch["query_occ"][keep_q],
        "query_intensity": batch["query_intensity"][keep_q],
        "query_has_intensity": batch["query_has_intensity"][keep_q],
        "query_neighbours": torch.where(nbrs >= 0, p_map[nbrs.clamp_min(0)], -1),
        "sample_tokens": batch["sample_tokens"][lo:hi],
    }


def _eval_model(**over) -> CMCRModel:
    torch.manual_seed(0)
    cfg = load_config("smoke", {"method.gemim": True, **over})
    return CMCRModel(cfg).eval()  # eval: BatchNorm from running statistics, codebook fixed


@pytest.fixture(scope="module")
def three_scans() -> dict:
    cfg = load_config("smoke")
    return batch_from_config(cfg, batch_size=3, n_cams=2, n_points=400, n_pairs=150, seed=3)


@pytest.mark.parametrize("mim_on", ["all", "masked"])
def test_group_of_two_equals_each_pair_of_scans_by_hand(three_scans, one_thread, mim_on) -> None:
    """B = 3, G = 2: groups {0, 1} and {2} (the last smaller); every term is the mean of the
    terms of each group run as its own batch (num_matches above the pairs: every unmasked
    pair is used, so the per-group draw does not matter)."""
    model = _eval_model(**{"loss.group_size": 2, "loss.num_matches": 10_000, "loss.mim_on": mim_on})
    with torch.no_grad():
        grouped = model(three_scans)["losses"]
        parts = [model(_sub_batch(three_scans, lo, hi))["losses"] for lo, hi in ((0, 2), (2, 3))]
    assert set(grouped) == set(TERMS)
    for name in TERMS:
        expected = (float(parts[0][name]) + float(parts[1][name])) / 2
        assert float(grouped[name]) == pytest.approx(expected, rel=1e-4, abs=1e-7), name


def test_group_at_least_batch_size_is_the_whole_batch(three_scans, one_thread) -> None:
    model = _eval_model(**{"loss.group_size": 3, "loss.num_matches": 40})
    with torch.no_grad():
        losses = model(three_scans)["losses"]
        pts, img = model.point_features(three_scans), model.image_features(three_scans)
        picked, group = model.sample_matches(three_scans)
    # the draw of the whole-batch era: the first num_matches of one seeded permutation
    candidates = (~three_scans["pair_masked"]).nonzero(as_tuple=True)[0]
    gen = torch.Generator().manual_seed(_seed(model, three_scans))
    assert torch.equal(picked, candidates[torch.randperm(len(candidates), generator=gen)[:40]])
    assert group.unique().tolist() == [0]
    sel = three_scans["pairs"][picked]
    f_p, f_v = pts["shared"][sel[:, 0]], img["shared"][sel[:, 1], :, sel[:, 2], sel[:, 3]]
    assert float(losses["nce"]) == pytest.approx(float(L.nce(f_p, f_v, 0.07)), rel=1e-5)
    codes = model.codebook.codes
    assert float(losses["cmcm"]) == pytest.approx(float(L.cmcm(f_p, f_v, codes)), rel=1e-5)
    orth = L.orth(pts["voxel_shared"], pts["voxel_specific"])
    assert float(losses["orth"]) == pytest.approx(float(orth), rel=1e-5)


def _seed(model: CMCRModel, batch: dict) -> int:
    import zlib

    keys = "|".join(batch["sample_tokens"])
    return zlib.crc32(f"{model.cfg.train.seed}:0:0:{keys}".encode())


def test_matches_per_group_are_num_matches_when_available(one_thread) -> None:
    cfg = load_config("smoke", {"loss.group_size": 2, "loss.num_matches": 30})
    batch = batch_from_config(cfg, batch_size=5, n_cams=2, n_points=300, n_pairs=100, seed=4)
    in_scan4 = (batch["pairs"][:, 0] >= 4 * 300).nonzero(as_tuple=True)[0]
    batch["pair_masked"][in_scan4[10:]] = True  # scan 4 (group 2, alone): at most 10 left
    model = CMCRModel(cfg)
    picked, group = model.sample_matches(batch)
    scan_group = batch["point_batch"][batch["pairs"][picked, 0]] // 2
    assert torch.equal(group, scan_group)  # each match is labelled with its scans' group
    unmasked = ~batch["pair_masked"]
    available = torch.bincount(batch["point_batch"][batch["pairs"][unmasked, 0]] // 2)
    assert torch.bincount(group).tolist() == [min(30, int(a)) for a in available]
    assert available[2] < 30 < available[0]  # both cases are exercised
    assert not batch["pair_masked"][picked].any() and len(set(picked.tolist())) == len(picked)
    again, _ = model.sample_matches(batch)
    assert torch.equal(picked, again)


def test_loss_groups_of_every_element(three_scans) -> None:
    g = loss_groups(three_scans, 2)
    assert g.count == 2
    assert torch.equal(g.point, three_scans["point_batch"] // 2)
    assert torch.equal(g.voxel, three_scans["coords"][:, 0].long() // 2)
    assert g.image.tolist() == [0, 0, 0, 0, 1, 1]  # 2 cameras per scan
    assert torch.equal(g.query, three_scans["query_batch"] // 2)


def test_codebook_statistics_are_averaged_over_groups() -> None:
    cb = UnifiedCodebook(4, 2, 0.9, 1e-5).train()
    start = {k: getattr(cb, k).clone() for k in ("codes", "embed_sum", "cluster_size")}
    f_p, f_v = _unit(6, 2, 0).float(), _unit(6, 2, 1).float()
    idx_p, idx_v = torch.tensor([0, 1, 1, 2, 0, 0]), torch.tensor([1, 1, 3, 2, 0, 2])
    cb.update(f_p, f_v, idx_p, idx_v, n_groups=2)  # rows 0-2: group 0, rows 3-5: group 1
    size, acc = start["cluster_size"].clone(), start["embed_sum"].clone()
    for idx in (idx_p, idx_v):  # points then pixels; per-group statistics averaged by hand
        counts, sums = torch.zeros(4), torch.zeros(4, 2)
        for rows in (range(0, 3), range(3, 6)):
            for i in rows:
                counts[idx[i]] += 1 / 2
                sums[idx[i]] += 0.5 * (f_p[i] + f_v[i]) / 2
        size, acc = 0.9 * size + 0.1 * counts, 0.9 * acc + 0.1 * sums
    assert torch.allclose(cb.cluster_size, size, atol=1e-6)
    assert torch.allclose(cb.embed_sum, acc, atol=1e-6)


# ---- occupancy per (query, neighbour) pair -----------------------------------------------------


@pytest.mark.parametrize("reduce", ["pairs", "queries"])
def test_occupancy_bce_per_pair_against_a_loop(one_thread, reduce) -> None:
    model = _eval_model(**{"loss.occ_reduce": reduce, "loss.group_size": 2})
    cfg = model.cfg
    batch = batch_from_config(cfg, n_cams=1, n_points=300, n_pairs=60, n_queries=12, seed=5)
    with torch.no_grad():
        losses = model(batch)["losses"]
        pts = model.point_features(batch)
        codes = model.codebook.codes
        q_p = codes[torch.cdist(pts["shared"], codes).argmin(1)]  # forward of straight-through
        x = pts["specific"] + q_p
        bce, l1, inten_n = [], [], 0
        for q, nbrs in enumerate(batch["query_neighbours"].tolist()):
            outs = [
                model.occ_decoder.mlp(torch.cat([x[n], batch["queries"][q] - batch["points"][n]]))
                for n in nbrs
                if n >= 0
            ]
            rows = outs if reduce == "pairs" else [torch.stack(outs).mean(0)] if outs else []
            for o in rows:
                y = float(batch["query_occ"][q])
                s = 1 / (1 + math.exp(-float(o[0])))
                bce.append(-(y * math.log(s) + (1 - y) * math.log(1 - s)))
                if batch["query_has_intensity"][q]:
                    l1.append(abs(float(o[1]) - float(batch["query_intensity"][q])))
                    inten_n += 1
    assert len(bce) > len(batch["queries"]) or reduce == "queries"
    assert float(losses["occ"]) == pytest.approx(sum(bce) / len(bce), rel=1e-4)
    assert float(losses["intensity"]) == pytest.approx(sum(l1) / inten_n, rel=1e-4)


def _official(**over) -> CMCRModel:
    torch.manual_seed(0)
    return CMCRModel(load_config("official", {"model.image_weights": "random", **over}))


@pytest.fixture(scope="module")
def official() -> CMCRModel:
    return _official()


def test_occupancy_mlp_is_the_release_shape(official) -> None:
    layers = list(official.occ_decoder.mlp)
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.Linear]
    shapes = [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)]
    assert shapes == [(67, 128), (128, 128), (128, 128), (128, 2)]
    with_relu = OccupancyDecoder(64, [128, 128, 128], last_relu=True)
    assert [type(m) for m in with_relu.mlp].count(nn.ReLU) == 3


# ---- image heads, codebook init, backbone -----------------------------------------------------


def _bilinear_corners_loop(x: torch.Tensor, s: int) -> torch.Tensor:
    """align_corners=True bilinear upsampling ×s, written out pixel by pixel: (C, h, w)."""
    c, h, w = x.shape
    out = torch.zeros(c, h * s, w * s, dtype=x.dtype)
    for i in range(h * s):
        for j in range(w * s):
            y, xx = i * (h - 1) / (h * s - 1), j * (w - 1) / (w * s - 1)
            y0, x0 = min(int(y), h - 2), min(int(xx), w - 2)
            dy, dx = y - y0, xx - x0
            out[:, i, j] = (
                x[:, y0, x0] * (1 - dy) * (1 - dx)
                + x[:, y0, x0 + 1] * (1 - dy) * dx
                + x[:, y0 + 1, x0] * dy * (1 - dx)
                + x[:, y0 + 1, x0 + 1] * dy * dx
            )
    return out


def test_image_heads_upsample_with_align_corners(official) -> None:
    assert official.image_head_shared.align_corners and official.image_head_specific.align_corners
    torch.manual_seed(0)
    head = ImageHead(3, 2, 4, normalise=False, align_corners=True).double()
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = _bilinear_corners_loop(head.proj(x)[0], 4)
        assert torch.allclose(head(x)[0], expected, atol=1e-10)
        head.align_corners = False  # the other convention differs: the test can tell them apart
        assert not torch.allclose(head(x)[0], expected, atol=1e-3)


def test_codebook_init_uniform_then_normalised(official) -> None:
    assert official.codebook.init == "uniform"
    torch.manual_seed(7)
    cb = UnifiedCodebook(50, 8, 0.99, 1e-5, init="uniform")
    torch.manual_seed(7)
    assert torch.equal(cb.codes, F.normalize(torch.rand(50, 8) * 2 - 1, dim=1))
    torch.manual_seed(7)
    normal = UnifiedCodebook(50, 8, 0.99, 1e-5, init="normal")
    torch.manual_seed(7)
    assert torch.equal(normal.codes, F.normalize(torch.randn(50, 8), dim=1))


def test_official_stem_kernel_and_bn_momentum(official) -> None:
    assert tuple(official.backbone.stem.kernel_size) == (3, 3, 3)
    bns = [m for m in official.backbone.modules() if isinstance(m, nn.BatchNorm1d)]
    # 0.05 outside the residual blocks (16 of 62); the blocks keep 0.1 (model.bn_momentum_scope)
    assert len(bns) == 62 and sorted({m.momentum for m in bns}) == [0.05, 0.1]
    assert sum(m.momentum == 0.05 for m in bns) == 16
    five = build_backbone(load_config("official", {"model.stem_kernel": 5}).model)
    assert tuple(five.stem.kernel_size) == (5, 5, 5)
    small = build_backbone(load_config("smoke", {"model.stem_kernel": 5}).model)
    assert tuple(small.stem.kernel_size) == (5, 5, 5)  # every registered backbone honours it


def test_orth_over_voxel_rows_not_points(three_scans, one_thread) -> None:
    model = _eval_model(**{"loss.group_size": 2})
    with torch.no_grad():
        orth = float(model(three_scans)["losses"]["orth"])
        pts = model.point_features(three_scans)
    g = three_scans["coords"][:, 0] // 2
    by_hand = sum(
        float(L.orth(pts["voxel_shared"][g == k], pts["voxel_specific"][g == k])) for k in (0, 1)
    )
    assert orth == pytest.approx(by_hand / 2, rel=1e-5)
    gp = three_scans["point_batch"] // 2
    on_points = sum(float(L.orth(pts["shared"][gp == k], pts["specific"][gp == k])) for k in (0, 1))
    assert orth != pytest.approx(on_points / 2, rel=1e-3)  # points repeat voxels: it differs


@pytest.mark.parametrize("codebook_matches", ["independent", "shared"])
def test_codebook_terms_draw_their_own_sample_of_matches(one_thread, monkeypatch, codebook_matches):
    # the release's loss_codebook draws num_matches pairs again (`pretrain/lightning_trainer.py:
    # 241` for nce, `:255` for commit, cmcm and the EMA update); "shared" reuses nce's pairs
    over = {"loss.num_matches": 20, "loss.group_size": 2, "loss.codebook_matches": codebook_matches}
    cfg = load_config("smoke", over)
    batch = batch_from_config(cfg, batch_size=2, n_cams=2, n_points=300, n_pairs=100, seed=4)
    seen: dict[str, torch.Tensor] = {}
    for name in ("nce", "commit"):
        real = getattr(L, name)

        def spy(f_p, *args, _name=name, _real=real, **kw):
            seen[_name] = f_p.detach().clone()
            return _real(f_p, *args, **kw)

        monkeypatch.setattr(L, name, spy)
    CMCRModel(cfg)(batch)
    assert seen["nce"].shape == seen["commit"].shape == (20, cfg.model.feat_dim)  # one group
    assert torch.equal(seen["nce"], seen["commit"]) == (codebook_matches == "shared")
