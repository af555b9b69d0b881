"""Shared fixtures: a smoke-size synthetic world generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmcr.compat import patch_spconv_cpu

patch_spconv_cpu()
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke-preset synthetic nuScenes world (v1.0-mini layout), made once per session."""
    from cmcr.synth import generate_world

    out = tmp_path_factory.mktemp("world") / "smoke"
    generate_world(out, preset="smoke", seed=0)
    return out


@pytest.fixture
def one_thread():
    """CPU spconv is bit-reproducible only single-threaded (resume and checkpoint tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
