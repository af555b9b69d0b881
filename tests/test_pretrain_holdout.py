"""Pre-training leaves the held-out scenes out and validates on them (release protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcr.configs import load_config
from cmcr.engine.pipeline import run_pretrain
from cmcr.names import Metric
from cmcr.synth import generate_world
from cmcr.tracking.store import make_client


@pytest.fixture(scope="module")
def two_scene_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("holdout") / "world"
    generate_world(out, preset="smoke", seed=2, scenes_per_split=(2, 1), samples_per_scene=2)
    return out


def test_pretraining_validates_on_the_held_out_scenes(two_scene_world, tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    over = {
        "data.dataroot": str(two_scene_world),
        "data.holdout_scenes": ["scene-0553"],  # the second mini_train scene
        "data.cameras": ["CAM_FRONT"],
        "tracking.tracking_uri": store,
        "tracking.output_dir": str(tmp_path / "runs"),
        "train.max_steps": 3,
        "train.batch_size": 2,
    }
    res = run_pretrain(load_config("smoke", over))
    client = make_client(store)
    # 2 training scans (scene-0061 only) = 1 step per epoch: epoch ends after steps 1 and 2,
    # then the end of training at step 3
    hist = client.get_metric_history(res.run_id, Metric.HOLDOUT_LOSS)
    assert sorted(m.step for m in hist) == [1, 2, 3]
    assert all(m.value > 0 for m in hist)
    terms = {k for k in client.get_run(res.run_id).data.metrics if k.startswith("holdout/loss_")}
    assert Metric.HOLDOUT_LOSS_PREFIX + "nce" in terms
    # the mini splits hold none of the release's 100 scenes: no validation, nothing left out
    plain = run_pretrain(load_config("smoke", {**over, "data.holdout_scenes": ["scene-0008"]}))
    assert client.get_metric_history(plain.run_id, Metric.HOLDOUT_LOSS) == []
