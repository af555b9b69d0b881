"""The release's downstream protocol, point by point (METHOD.md, Downstream evaluation).

Each test fails if its point regresses: the network (backbone + a new plain layer on its own
output), what the probe trains and how, the loss, the optimiser's groups, BatchNorm momentum,
the fine-tune label subset by whole scenes, and the protocol printed and recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import cmcr.engine.downstream as D
from cmcr.configs import apply_overrides, load_config
from cmcr.data import SegDataset, collate_seg
from cmcr.data.records import load_records
from cmcr.engine.downstream_protocol import seg_loader
from cmcr.engine.seg_weights import build_seg_model, load_seg_backbone
from cmcr.errors import CheckpointError
from cmcr.models import CMCRModel
from cmcr.models.segmentation import SegModel
from cmcr.names import Tag


def _cfg(world: Path | None = None, **over):
    base = {"data.voxel_size": 0.3, "downstream.probe_epochs": 2, "downstream.finetune_epochs": 1}
    if world is not None:
        base["data.dataroot"] = str(world)
    return load_config("smoke", {**base, **over})


def _backbone_file(path: Path, seed: int, heads_seed: int | None = None) -> Path:
    """A backbone.pt of the real CMCRModel; ``heads_seed`` redraws only the two point heads."""
    torch.manual_seed(seed)
    model = CMCRModel(apply_overrides(load_config("smoke"), {"method.name": "random"}))
    state = model.backbone_state()
    if heads_seed is not None:
        g = torch.Generator().manual_seed(heads_seed)
        for k in state:
            if k.startswith("point_head_"):
                state[k] = torch.randn(state[k].shape, generator=g)
    torch.save(state, path)
    return path


class _NullLogger:
    """The logger interface the loop uses, recording nothing."""

    run_id = None

    def log_metrics(self, metrics, step) -> None:
        pass


def _batch(cfg, world_split: str = "mini_train") -> dict:
    ds = SegDataset(cfg, world_split, train=False)
    return collate_seg([ds[0], ds[1]])


# ---- the network ------------------------------------------------------------------------------
@pytest.mark.parametrize(("backbone", "dim"), [("unet34c", 96), ("unet_small", 32)])
def test_new_layer_sits_on_the_backbone_output(backbone: str, dim: int) -> None:
    model = SegModel(_cfg(**{"model.backbone": backbone}))
    assert type(model.classifier) is nn.Linear  # a plain layer: no BatchNorm standardisation
    assert model.classifier.in_features == model.backbone.out_dim == dim
    assert model.classifier.out_features == 17  # 16 classes + ignore (release: model_n_out 17)
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "classifier"}


def test_logits_are_the_layer_on_raw_backbone_features(smoke_world, one_thread) -> None:
    cfg = _cfg(smoke_world)
    model = SegModel(cfg).eval()
    batch = _batch(cfg)
    with torch.no_grad():
        feats = model.backbone(
            batch["coords"], batch["feats"], batch["spatial_shape"], batch["batch_size"]
        )  # (V, out_dim), no normalisation
        ref = feats @ model.classifier.weight.T + model.classifier.bias  # (V, 17)
        assert torch.allclose(model(batch), ref[:, 1:], atol=1e-6)  # the ignore column masked
    assert not torch.allclose(feats.norm(dim=1), torch.ones(len(feats)))  # not L2-normalised


def test_backbone_file_heads_are_ignored(tmp_path) -> None:
    cfg = _cfg()
    a = build_seg_model(cfg, str(_backbone_file(tmp_path / "a.pt", 7, heads_seed=1)))[0]
    b = build_seg_model(cfg, str(_backbone_file(tmp_path / "b.pt", 7, heads_seed=2)))[0]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the backbone itself did load: another backbone seed gives other weights
    c = build_seg_model(cfg, str(_backbone_file(tmp_path / "c.pt", 8)))[0]
    assert not torch.equal(c.state_dict()["backbone.stem.weight"], sa["backbone.stem.weight"])
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(sa["backbone.stem.weight"], saved["backbone.stem.weight"])


def test_backbone_keys_load_strictly(tmp_path) -> None:
    state = torch.load(_backbone_file(tmp_path / "a.pt", 0), weights_only=True)
    model = SegModel(_cfg())
    missing = {k: v for k, v in state.items() if k != "backbone.stem.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_seg_backbone(model, tmp_path / "missing.pt")
    torch.save({**state, "codebook.codes": torch.zeros(3)}, tmp_path / "stranger.pt")
    with pytest.raises(CheckpointError, match="codebook.codes"):
        load_seg_backbone(model, tmp_path / "stranger.pt")
    # seg_backbone.pt's layout (no heads) loads too: cmcr evaluate --run reads it
    torch.save(model.backbone_state(), tmp_path / "seg_backbone.pt")
    load_seg_backbone(SegModel(_cfg()), tmp_path / "seg_backbone.pt")


@pytest.mark.parametrize("momentum", [0.02, 0.3])
def test_backbone_batchnorm_momentum_downstream(momentum: float) -> None:
    cfg = _cfg(**{"downstream.bn_momentum": momentum, "model.bn_momentum_scope": "all"})
    bns = [m for m in SegModel(cfg).backbone.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(m.momentum == momentum for m in bns)
    # the release's scope: the residual blocks' inner BatchNorms keep 0.1
    release = SegModel(_cfg(**{"downstream.bn_momentum": momentum})).backbone
    assert {m.momentum for m in release.modules() if isinstance(m, nn.BatchNorm1d)} == {
        momentum,
        0.1,
    }
    assert load_config("official").downstream.bn_momentum == 0.02


# ---- optimiser, loss ---------------------------------------------------------------------------
def test_optimiser_groups_follow_the_release() -> None:
    official = load_config("official")
    for mode, lrs in (("probe", [0.05]), ("finetune", [0.02, 2.0])):
        cfg = apply_overrides(official, {"downstream.mode": mode, "model.backbone": "unet_small"})
        model = SegModel(cfg)
        opt, sched = D.make_optimizer(cfg, D.param_groups(cfg, model), total_steps=10)
        assert isinstance(opt, torch.optim.SGD)
        assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
        assert [g["lr"] for g in opt.param_groups] == lrs
        for g in opt.param_groups:
            assert (g["momentum"], g["dampening"], g["weight_decay"]) == (0.9, 0.1, 1e-4)
        head = {id(p) for p in model.classifier.parameters()}
        assert {id(p) for p in opt.param_groups[-1]["params"]} == head
        if mode == "finetune":
            body = {id(p) for p in model.backbone.parameters()}
            assert {id(p) for p in opt.param_groups[0]["params"]} == body


def _slow_lovasz(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Berman et al.'s per-class loop (labels already without ignored points)."""
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).float()
        if fg.sum() == 0:
            continue
        errors, perm = torch.sort((fg - probs[:, c]).abs(), descending=True)
        fg_sorted = fg[perm]
        inter = fg_sorted.sum() - fg_sorted.cumsum(0)
        union = fg_sorted.sum() + (1 - fg_sorted).cumsum(0)
        jac = 1.0 - inter / union
        grad = torch.cat([jac[:1], jac[1:] - jac[:-1]])
        losses.append(torch.dot(errors, grad))
    return torch.stack(losses).mean()


def test_seg_loss_is_cross_entropy_plus_lovasz() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 16, generator=g)
    target = torch.randint(-1, 16, (200,), generator=g)  # -1: label 0, ignored
    keep = target != D.IGNORE
    ce = nn.functional.cross_entropy(logits[keep], target[keep])
    ref = ce + _slow_lovasz(logits[keep].softmax(1), target[keep])
    assert D.seg_loss(logits, target, lovasz=True).item() == pytest.approx(ref.item(), rel=1e-5)
    assert D.seg_loss(logits, target, lovasz=False).item() == pytest.approx(ce.item(), rel=1e-5)


# ---- the probe's loop --------------------------------------------------------------------------
def _train_probe(cfg, monkeypatch) -> tuple[SegModel, list, list]:
    """Run the real probe loop; record seg_loss's lovasz flag and each training batch."""
    flags, batches = [], []
    real_loss, real_logits = D.seg_loss, D.train_logits

    def loss(logits, target, lovasz):
        flags.append(lovasz)
        return real_loss(logits, target, lovasz)

    def logits(model, batch, probe):
        batches.append({k: batch[k] for k in ("sample_tokens", "points", "num_points")})
        return real_logits(model, batch, probe)

    monkeypatch.setattr(D, "seg_loss", loss)
    monkeypatch.setattr(D, "train_logits", logits)
    model = SegModel(cfg)
    loaders = D.build_loaders(cfg, cfg.downstream.mode)
    D._train(cfg, model, loaders, torch.device("cpu"), D._Trainer(cfg, model, _NullLogger(), None))
    return model, flags, batches


def test_probe_trains_only_the_layer_with_a_frozen_eval_backbone(smoke_world, monkeypatch):
    cfg = _cfg(smoke_world)
    torch.manual_seed(0)
    before = SegModel(cfg).state_dict()
    torch.manual_seed(0)
    model, flags, _ = _train_probe(cfg, monkeypatch)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.classifier.parameters()}
    after = model.state_dict()
    # weights and BatchNorm running statistics unchanged: the backbone stayed in eval mode
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert flags and all(flags)  # CE + Lovász (downstream.lovasz, on by default)
    _, flags, _ = _train_probe(apply_overrides(cfg, {"downstream.lovasz": False}), monkeypatch)
    assert flags and not any(flags)


def test_probe_augmentation_is_drawn_every_epoch(smoke_world, monkeypatch) -> None:
    cfg = _cfg(smoke_world)
    _, _, batches = _train_probe(cfg, monkeypatch)
    half = len(batches) // 2
    assert half > 0 and len(batches) == 2 * half  # two epochs, same number of batches

    def clouds(part: list) -> dict:  # token -> its (N, 3) training cloud
        return {
            t: p
            for b in part
            for t, p in zip(
                b["sample_tokens"], b["points"].split(b["num_points"].tolist()), strict=True
            )
        }

    first, second = clouds(batches[:half]), clouds(batches[half:])
    assert first.keys() == second.keys()
    assert all(not torch.equal(first[t], second[t]) for t in first)


# ---- label fractions by whole scenes ------------------------------------------------------------
@pytest.fixture(scope="module")
def eight_scene_world(tmp_path_factory) -> Path:
    """8 train scenes × 3 keyframes: every 2nd / 4th / 100th scene is a meaningful subset."""
    from cmcr.synth import generate_world

    out = tmp_path_factory.mktemp("scenes") / "world"
    generate_world(out, preset="smoke", seed=3, scenes_per_split=(8, 1), samples_per_scene=3)
    return out


# the release's positions k-1, 2k-1, ... (kth); fewer than k scenes keep the first
@pytest.mark.parametrize(("fraction", "kept_scenes", "start"),
                         [(0.01, [0], "kth"), (0.5, [1, 3, 5, 7], "kth"), (0.25, [3, 7], "kth"),
                          (0.5, [0, 2, 4, 6], "first"), (0.25, [0, 4], "first")])  # fmt: skip
def test_finetune_fraction_keeps_whole_scenes(
    eight_scene_world, fraction, kept_scenes, start
) -> None:
    cfg = _cfg(eight_scene_world, **{"data.max_samples": 0, "downstream.mode": "finetune",
                                     "downstream.finetune_label_fraction": fraction,
                                     "downstream.label_fraction_start": start})  # fmt: skip
    every = load_records(cfg.data, cfg.data.train_split)
    scenes = list(dict.fromkeys(r.scene_name for r in every))
    assert len(scenes) == 8
    want = [r.lidar_token for r in every if scenes.index(r.scene_name) in kept_scenes]
    kept = SegDataset(cfg, cfg.data.train_split, train=True).records
    assert [r.lidar_token for r in kept] == want
    assert len(want) == 3 * len(kept_scenes)  # every keyframe of each chosen scene
    # the probe's own fraction (100 % by default) is not the fine-tune's
    probe = apply_overrides(cfg, {"downstream.mode": "probe"})
    assert len(SegDataset(probe, probe.data.train_split, train=True)) == len(every)


def test_finetune_protocol_lists_the_subset_scene_names(eight_scene_world) -> None:
    from cmcr.engine.downstream_protocol import describe

    cfg = _cfg(eight_scene_world, **{"data.max_samples": 0, "downstream.mode": "finetune",
                                     "downstream.finetune_label_fraction": 0.25})  # fmt: skip
    scenes = list(dict.fromkeys(r.scene_name for r in load_records(cfg.data, "mini_train")))
    model = SegModel(cfg)
    loaders = D.build_loaders(cfg, "finetune")
    lines = describe(cfg, D.param_groups(cfg, model), model, loaders, steps=1).lines()
    # the release's positions k-1, 2k-1 (3 and 7), as cmcr finetune prints them
    assert f"  train scenes: {scenes[3]}, {scenes[7]}" in lines
    probe = apply_overrides(cfg, {"downstream.mode": "probe"})  # 100 %: no list
    lines = describe(probe, D.param_groups(probe, model), model, loaders, steps=1).lines()
    assert not any("train scenes:" in line for line in lines)


# ---- the protocol printed and recorded ---------------------------------------------------------
def test_cli_prints_and_records_the_protocol(smoke_world, tmp_path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from cmcr.cli import main

    store = tmp_path / "store"
    sets = {
        "data.dataroot": smoke_world,
        "data.voxel_size": 0.3,
        "downstream.probe_epochs": 1,
        "tracking.tracking_uri": f"sqlite:///{store}/mlflow.db",
        "tracking.output_dir": store / "runs",
    }
    argv = ["probe", "--config", "smoke", "--pretrained", "none"]
    argv += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])  # stdout's last line: the metrics
    cfg = _cfg(smoke_world)
    model = SegModel(cfg)
    n_layer = sum(p.numel() for p in model.classifier.parameters())
    n_all = sum(p.numel() for p in model.parameters())
    train = seg_loader(cfg, cfg.data.train_split, train=True)  # the last partial batch dropped
    n_steps = f"{len(train)} step" + ("" if len(train) == 1 else "s")
    n_batches = f"{len(train)} batch" + ("" if len(train) == 1 else "es")
    for line in (
        "cmcr probe: protocol",
        f"parameters: {n_layer:,} trainable, {n_all - n_layer:,} frozen",
        "labels: 100 % of the labels (every training scene)",
        f"train: 1 scene, {len(train.dataset)} scans; val: ",
        "loss: cross-entropy + Lovász-softmax over voxels",
        "optimiser: SGD lr 0.05 (the new layer), momentum 0.9, dampening 0.1, weight decay 0.0001",
        f"cosine over 1 epoch, stepped per epoch; {n_steps} (1 epoch × {n_batches} of 2 scans)",
        "BatchNorm momentum 0.02",
        "augmentation: rotation about z",
    ):
        assert line in err, line
    tags = MlflowClient(f"sqlite:///{store}/mlflow.db").get_run(result["run_id"]).data.tags
    assert tags[Tag.PROTOCOL_TRAINABLE_PARAMS] == str(n_layer)
    assert tags[Tag.PROTOCOL_FROZEN_PARAMS] == str(n_all - n_layer)
    assert tags[Tag.PROTOCOL_LOSS].startswith("cross-entropy + Lovász-softmax over voxels")
    assert tags[Tag.PROTOCOL_TRAIN_SCANS] == str(len(train.dataset))


def test_finetune_protocol_names_both_lrs_and_the_scene_fraction(smoke_world) -> None:
    from cmcr.engine.downstream_protocol import describe

    cfg = _cfg(smoke_world, **{"downstream.mode": "finetune"})
    model = SegModel(cfg)
    loaders = D.build_loaders(cfg, "finetune")
    proto = describe(cfg, D.param_groups(cfg, model), model, loaders, steps=5)
    text = "\n".join(proto.lines())
    assert proto.frozen_params == 0
    assert proto.trainable_params == sum(p.numel() for p in model.parameters())
    assert "1 % of the labels: 1 scene in every 100 (all its scans)" in text
    assert "SGD lr 0.02 (backbone), 2 (the new layer), momentum 0.9, dampening 0.1" in text
    assert "cmcr finetune: protocol" in text and "frozen (none)" in text


# ---- old runs ---------------------------------------------------------------------------------
def test_results_read_runs_with_the_removed_label_fraction_param(tmp_path) -> None:
    """Runs logged before issue 13 carry ``downstream.label_fraction``: collect keeps reading."""
    from mlflow.tracking import MlflowClient

    from cmcr.results.collect import Selection, collect

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("cmcr")
    for legacy in (True, False):
        run = client.create_run(exp, tags={Tag.KIND: "probe", Tag.VARIANT: "ppkt"})
        params = {"downstream.probe_lr": "0.05", "method.mim": "True"}
        if legacy:
            params["downstream.label_fraction"] = "0.01"
        for k, v in params.items():
            client.log_param(run.info.run_id, k, v)
        client.log_metric(run.info.run_id, "val/miou", 0.3, step=1)
        client.set_terminated(run.info.run_id)
    rt = collect(Selection(tracking_uri=uri))
    assert len(rt.runs) == 2 and rt.runs["downstream.probe_lr"].tolist() == [0.05, 0.05]
    assert sorted(rt.runs["downstream.label_fraction"].dropna()) == ["0.01"]  # kept, as text
