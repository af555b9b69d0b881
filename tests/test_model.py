"""CMCRModel: smoke forward/backward, switches, gradient paths, frozen encoder, weight loading."""

from __future__ import annotations

import pytest
import torch

from cmcr.bench.batch import batch_from_config, make_pretrain_batch
from cmcr.configs import load_config
from cmcr.errors import CheckpointError, CMCRError
from cmcr.losses import weighted_total
from cmcr.models import CMCRModel, ResNet, build_backbone
from cmcr.models.decoders import GeometryScatter, OccupancyDecoder, mean_per_query

ALL_TERMS = {"nce", "mim", "occ", "intensity", "orth", "commit", "cmcm"}


def _model(**overrides) -> CMCRModel:
    torch.manual_seed(0)
    return CMCRModel(load_config("smoke", overrides)).train()


@pytest.fixture(scope="module")
def batch() -> dict:
    # two cameras keep the shared CPU busy for less time; every contract key is present
    return batch_from_config(load_config("smoke"), seed=1, n_cams=2)


@pytest.fixture(scope="module")
def trained(batch) -> tuple[CMCRModel, dict, torch.Tensor]:
    """One forward of the full smoke model (GEMIM on: off in official), shared by inspectors."""
    model = _model(**{"method.gemim": True})
    before = {
        "bn": model.image_encoder.net.bn1.running_mean.clone(),
        "codes": model.codebook.codes.clone(),
    }
    return model, model(batch), before


def test_smoke_forward_backward_all_terms_finite(trained) -> None:
    model, out, _ = trained
    assert set(out["losses"]) == ALL_TERMS
    for name, value in out["losses"].items():
        assert value.ndim == 0 and torch.isfinite(value), name
    total = weighted_total(out["losses"], model.cfg.loss.weights)
    total.backward(retain_graph=True)
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert 0 < out["stats"]["codebook_usage"] <= 1
    assert out["stats"]["codebook_perplexity"] >= 1


def test_codebook_updates_in_training_only(trained, batch) -> None:
    model, _, before = trained
    assert not torch.equal(model.codebook.codes, before["codes"])  # the training forward moved it
    codes = model.codebook.codes.clone()
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch)
    finally:
        model.train()
    assert torch.equal(model.codebook.codes, codes)
    assert set(out["losses"]) == ALL_TERMS


def _grad_norm(term: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_each_term_alone_reaches_the_backbone(trained) -> None:
    model, out, _ = trained
    params = list(model.backbone.parameters())
    for name, value in out["losses"].items():
        assert _grad_norm(value, params) > 0, f"{name} gives the backbone no gradient"
    assert all(not p.requires_grad for p in model.image_encoder.parameters())


def test_frozen_image_encoder_keeps_eval_mode_and_statistics(trained) -> None:
    model, out, before = trained
    enc = model.image_encoder
    assert model.training and not enc.training and not enc.net.layer1[0].bn1.training
    assert torch.equal(enc.net.bn1.running_mean, before["bn"])  # the train-mode forward left it
    weighted_total(out["losses"], model.cfg.loss.weights).backward(retain_graph=True)
    assert all(p.grad is None for p in enc.parameters())


def test_mim_reaches_backbone_only_through_gemim(batch) -> None:
    model = _model(**{"method.gemim": False})
    assert not hasattr(model, "gemim")
    out = model(batch)
    assert _grad_norm(out["losses"]["mim"], list(model.backbone.parameters())) == 0
    # and the image heads and decoder do learn from it
    assert _grad_norm(out["losses"]["mim"], list(model.mim_decoder.parameters())) > 0


def test_switches_build_only_what_is_on(batch) -> None:
    ppkt = _model(**{"method.name": "ppkt"})
    assert set(ppkt(batch)["losses"]) == {"nce"}
    for attr in ("codebook", "mim_decoder", "occ_decoder", "gemim", "image_head_specific"):
        assert not hasattr(ppkt, attr)
    no_cb = _model(**{"method.codebook": False})
    assert not hasattr(no_cb, "codebook")
    assert set(no_cb(batch)["losses"]) == ALL_TERMS - {"commit", "cmcm"}
    no_occ_orth = _model(**{"method.occupancy": False, "method.orth": False})
    assert set(no_occ_orth(batch)["losses"]) == ALL_TERMS - {"occ", "intensity", "orth"}
    rnd = _model(**{"method.name": "random", "model.image_weights": ""})
    assert not hasattr(rnd, "image_encoder")
    with pytest.raises(CMCRError):
        rnd(batch)


def test_matches_are_unmasked_and_reproducible(batch) -> None:
    model = _model()
    (a, ga), (b, gb) = model.sample_matches(batch), model.sample_matches(batch)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert len(a) == min(model.cfg.loss.num_matches, int((~batch["pair_masked"]).sum()))
    assert not batch["pair_masked"][a].any()
    assert len(set(a.tolist())) == len(a)


def test_backbone_state_round_trip(batch) -> None:
    model = _model()
    sd = model.backbone_state()
    assert {k.split(".")[0] for k in sd} == {"backbone", "point_head_shared", "point_head_specific"}
    other = _model(**{"method.name": "ppkt"})
    torch.manual_seed(1)
    other.load_backbone_state(sd)
    for k, v in other.backbone_state().items():
        assert torch.equal(v, sd[k])
    with pytest.raises(CheckpointError):
        other.load_backbone_state({"backbone.nope": torch.zeros(1)})


def test_unet34c_shape() -> None:
    batch = make_pretrain_batch(batch_size=1, n_points=300, n_pairs=10, n_queries=3)
    net = build_backbone(load_config("paper").model)
    assert net.out_dim == 96
    enc = [net.enc[i][0].conv2.out_channels for i in range(4)]
    dec = [net.dec[i][0].conv2.out_channels for i in range(4)]
    assert enc == [32, 64, 128, 256] and dec == [256, 128, 96, 96]
    out = net(batch["coords"], batch["feats"], batch["spatial_shape"], batch["batch_size"])
    assert out.shape == (len(batch["coords"]), 96)


# ---- image weights -------------------------------------------------------------------------


def _reference_state(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    net = ResNet(name)
    sd = {k: v + 0.5 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, net.out_dim), torch.zeros(1000)
    return sd


def _loaded(path: str) -> CMCRModel:
    return _model(**{"model.image_weights": path})


def test_loads_torchvision_state_dict(tmp_path) -> None:
    sd = _reference_state("resnet18")
    torch.save(sd, tmp_path / "tv.pth")
    net = _loaded(str(tmp_path / "tv.pth")).image_encoder.net
    assert torch.equal(net.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    assert torch.equal(net.bn1.running_var, sd["bn1.running_var"])


def test_loads_moco_v2_checkpoint(tmp_path) -> None:
    sd = _reference_state("resnet18")
    moco = {f"module.encoder_q.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    moco["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 512)  # MoCo-v2 MLP head: dropped
    moco["module.encoder_k.conv1.weight"] = torch.zeros(64, 3, 7, 7)  # key encoder: ignored
    moco["module.queue"] = torch.zeros(128, 16)
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": moco}, tmp_path / "moco.pth.tar")
    net = _loaded(str(tmp_path / "moco.pth.tar")).image_encoder.net
    assert torch.equal(net.conv1.weight, sd["conv1.weight"])


def test_torchvision_resnet50_names() -> None:
    names = set(ResNet("resnet50").state_dict())
    for key in ("layer1.0.downsample.0.weight", "layer4.2.bn3.running_mean", "conv1.weight"):
        assert key in names
    assert ResNet("resnet50").out_dim == 2048


@pytest.mark.parametrize("weights", ["", "/nonexistent/moco.pth", "corrupt", "wrong"])
def test_bad_image_weights_fail_at_construction(tmp_path, weights) -> None:
    if weights == "corrupt":
        weights = str(tmp_path / "corrupt.pth")
        (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    elif weights == "wrong":
        weights = str(tmp_path / "r50.pth")
        torch.save(ResNet("resnet50").state_dict(), weights)  # the smoke preset is resnet18
    with pytest.raises(CheckpointError, match="model.image_weights"):
        _loaded(weights)


# ---- decoders against slow versions --------------------------------------------------------


def test_gemim_scatter_is_mean_of_projected_points() -> None:
    torch.manual_seed(0)
    scatter = GeometryScatter(4)
    feats = torch.randn(5, 4)
    pairs = torch.tensor([[0, 0, 1, 2], [1, 0, 1, 2], [2, 1, 0, 0], [3, 0, 0, 1]])
    out = scatter(feats, pairs, (2, 4, 3, 3))
    expected = torch.zeros(2, 4, 3, 3)
    hits: dict[tuple, list] = {}
    for p, i, r, c in pairs.tolist():
        hits.setdefault((i, r, c), []).append(scatter.proj(feats[p]))
    for (i, r, c), vals in hits.items():
        expected[i, :, r, c] = torch.stack(vals).mean(0)
    assert torch.allclose(out, expected, atol=1e-6)


def test_occupancy_decoder_means_over_valid_neighbours() -> None:
    """loss.occ_reduce=queries: the per-pair outputs averaged over each query's neighbours."""
    torch.manual_seed(0)
    dec = OccupancyDecoder(4, [8, 8], last_relu=False)
    feats, points, queries = torch.randn(6, 4), torch.randn(6, 3), torch.randn(3, 3)
    nbrs = torch.tensor([[0, 2, -1], [-1, -1, -1], [5, 4, 3]])
    pair_logit, pair_inten, q = dec(feats, points, queries, nbrs)
    assert q.tolist() == [0, 0, 2, 2, 2]  # one row per valid (query, neighbour) pair
    mean, has = mean_per_query(torch.stack([pair_logit, pair_inten], 1), q, len(queries))
    logit, inten = mean[:, 0], mean[:, 1]
    assert has.tolist() == [True, False, True]
    for q in (0, 2):
        rows = [
            dec.mlp(torch.cat([feats[n], queries[q] - points[n]]))
            for n in nbrs[q].tolist()
            if n >= 0
        ]
        mean = torch.stack(rows).mean(0)
        assert torch.allclose(logit[q], mean[0], atol=1e-6)
        assert torch.allclose(inten[q], mean[1], atol=1e-6)
