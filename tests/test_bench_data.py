"""The data benchmark's profile accounts for a sample's whole CPU time, stage by stage."""

from __future__ import annotations

import pytest

from cmcr.bench.data import STAGES, profile
from cmcr.configs import load_config


def test_profile_stages_add_up_to_the_total(smoke_world):
    cfg = load_config("smoke", {"data.dataroot": str(smoke_world)})
    out = profile(cfg, cfg.data.train_split, repeats=1)
    shares = [out[f"profile_{s}_share"] for s in STAGES] + [out["profile_rest_share"]]
    assert all(s >= 0 for s in shares)
    assert sum(shares) == pytest.approx(1.0, abs=0.01)  # stages do not nest: nothing counted twice
    assert out["profile_read_image_crop_ms"] > 0 and out["profile_voxelize_ms"] > 0
    total = out["profile_total_ms_per_sample"]
    stage_ms = sum(out[f"profile_{s}_ms"] for s in STAGES) + out["profile_rest_ms"]
    assert stage_ms == pytest.approx(total, rel=0.02)
