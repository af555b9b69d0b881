"""Checkpoints hold no pickle and resume survives a bad newest checkpoint (issue 14).

A finished 4-step run (checkpoints after steps 2 and 4) has its backbone.pt removed, so that
``--resume`` trains again from a checkpoint; then one checkpoint is tampered with.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

from cmcr.configs import load_config
from cmcr.engine.checkpoint import (
    COMPLETE_MARKER,
    STATE_FILE,
    checkpoint_dir,
    latest_step,
)
from cmcr.engine.pipeline import run_pretrain
from cmcr.errors import CheckpointError
from cmcr.tracking.store import make_client


class _Planted:
    """A pickle that creates a file when it is unpickled (what an attacker would plant)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def finished(smoke_world, tmp_path, one_thread):
    """(config, run id, reference backbone) of a finished run that must train again."""
    over = {
        "data.dataroot": str(smoke_world),
        "tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.output_dir": str(tmp_path / "runs"),
        "data.cameras": ["CAM_FRONT"],
        "train.max_steps": 4,
        "train.checkpoint_every": 2,
        "train.keep_checkpoints": 3,
        "train.batch_size": 1,
        "data.num_workers": 0,
    }
    cfg = load_config("smoke", over)
    result = run_pretrain(cfg)
    reference = torch.load(result.backbone_path, weights_only=True)
    result.backbone_path.unlink()  # "pre-training done" needs backbone.pt: resume retrains
    return cfg, result.run_id, reference


def test_checkpoints_hold_json_state_and_no_pickle(finished) -> None:
    cfg, run_id, _ = finished
    folders = sorted(checkpoint_dir(cfg, run_id).glob("checkpoint_*"))
    assert [p.name for p in folders] == ["checkpoint_0", "checkpoint_1"]
    for folder in folders:
        assert (folder / COMPLETE_MARKER).exists() and (folder / STATE_FILE).is_file()
        assert (folder / "model.safetensors").is_file()
        assert list(folder.rglob("*.pkl")) == [], folder
    assert latest_step(cfg, run_id) == 4
    assert latest_step(cfg, "no-such-run") == 0


def test_planted_pickle_is_refused_before_loading(finished, tmp_path) -> None:
    cfg, run_id, _ = finished
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Planted(tmp_path / "armed"))).close()
    assert (tmp_path / "armed").exists()  # the plant is live: unpickling it writes a file
    oldest = checkpoint_dir(cfg, run_id) / "checkpoint_0"
    (oldest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl"):
        run_pretrain(cfg, run_id=run_id)
    assert not marker.exists()  # nothing was unpickled
    client = make_client(cfg.tracking.tracking_uri)
    assert client.get_run(run_id).info.status == "FAILED"


def test_garbage_newest_falls_back_to_previous_and_completes(finished, caplog) -> None:
    cfg, run_id, reference = finished
    newest = checkpoint_dir(cfg, run_id) / "checkpoint_1"
    (newest / "model.safetensors").write_bytes(b"garbage")
    assert latest_step(cfg, run_id) == 4  # the counters are still readable
    (newest / STATE_FILE).write_text("{not json")
    assert latest_step(cfg, run_id) == 2  # step discovery skips the unreadable one

    with caplog.at_level(logging.INFO, logger="cmcr"):
        result = run_pretrain(cfg, run_id=run_id)
    assert result.steps == 4
    assert "resuming from" in caplog.text and "checkpoint_0 (step 2)" in caplog.text
    assert "checkpoint_1" in caplog.text and "trying an older checkpoint" in caplog.text
    client = make_client(cfg.tracking.tracking_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.tags["cmcr.resumed_from_step"] == "2"  # not 4
    # the garbage one was moved aside and its index reused by the new step-4 save
    assert (checkpoint_dir(cfg, run_id).parent / "rejected" / "checkpoint_1").is_dir()
    assert latest_step(cfg, run_id) == 4
    weights = torch.load(result.backbone_path, weights_only=True)
    assert weights.keys() == reference.keys()
    for key in reference:  # steps 3-4 re-run from checkpoint_0 reproduce the original
        torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=1e-6, msg=key)
