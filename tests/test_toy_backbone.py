"""A backbone defined in a test module: ``@register_backbone`` is the only step to pre-train it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cmcr.configs import flatten_config, load_config
from cmcr.configs.schema import ModelConfig
from cmcr.engine.pipeline import run_pretrain
from cmcr.models import register_backbone
from cmcr.tracking.store import make_client


class ToyBackbone(nn.Module):
    """Per-voxel MLP on (features, normalised voxel position): the backbone contract, no spconv."""

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels + 3, width), nn.ReLU(), nn.Linear(width, width)
        )
        self.out_dim = width

    def forward(
        self, coords: torch.Tensor, feats: torch.Tensor, spatial_shape: list[int], batch_size: int
    ) -> torch.Tensor:
        """(V, out_dim) features of voxels ``coords`` (V, 4) with inputs ``feats`` (V, C_in)."""
        scale = torch.tensor(spatial_shape, dtype=feats.dtype, device=feats.device).clamp(min=1)
        xyz = coords[:, 1:].to(feats.dtype) / scale  # (V, 3) in [0, 1)
        return self.mlp(torch.cat([feats, xyz], dim=1))


@register_backbone("toy")
def toy(in_channels: int, cfg: ModelConfig) -> ToyBackbone:
    """The toy backbone, buildable as model.backbone=toy (no convolution: no stem_kernel)."""
    return ToyBackbone(in_channels)


def test_registered_toy_backbone_pretrains_on_the_smoke_preset(smoke_world: Path, tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(
        "smoke",
        {
            "model.backbone": "toy",
            "data.dataroot": str(smoke_world),
            "tracking.tracking_uri": store,
            "tracking.output_dir": str(tmp_path / "runs"),
            "train.max_steps": 2,
        },
    )
    res = run_pretrain(cfg)
    run = make_client(store).get_run(res.run_id)
    assert run.info.status == "FINISHED" and res.steps == 2
    assert run.data.params["model.backbone"] == "toy"
    assert set(run.data.params) == set(flatten_config(cfg))
    state = torch.load(res.backbone_path, weights_only=True)
    assert {"backbone.mlp.0.weight", "backbone.mlp.2.weight"} <= set(state)
    assert state["backbone.mlp.0.weight"].shape == (16, 1 + 3)
