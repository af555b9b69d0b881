"""The step benchmark splits one training step into data, forward, losses, backward, optimiser."""

from __future__ import annotations

import pytest

from cmcr.bench.step import split_step
from cmcr.compat import patch_spconv_cpu


def test_step_split_parts_add_up_to_the_step(smoke_world) -> None:
    patch_spconv_cpu()
    out = split_step("smoke", smoke_world, {}, 1)
    parts = ("data", "forward", "losses", "backward", "optimiser")
    assert all(out[f"{p}_s"] > 0 for p in parts)
    assert sum(out[f"{p}_s"] for p in parts) == pytest.approx(out["step_s"], abs=0.005)
    assert sum(out[f"{p}_share"] for p in parts) == pytest.approx(1.0, abs=0.01)
