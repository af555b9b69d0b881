"""A loss term defined in a test module, added by the documented steps (docs/architecture.md,
How to extend): ``@register_loss_term`` and a weight in ``loss.weights.extra``; nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmcr.configs import ConfigError, config_from_flat, flatten_config, load_config
from cmcr.engine.pipeline import run_pretrain
from cmcr.losses import weighted_total
from cmcr.losses.registry import TermInputs, register_loss_term
from cmcr.tracking.store import make_client

CALLS: list[int] = []


@register_loss_term("toy_spread")
def toy_spread(x: TermInputs) -> torch.Tensor:
    """Pull the matched point features apart: mean cosine between different matches."""
    CALLS.append(len(x.f_p))
    sim = x.f_p @ x.f_p.t()  # (n, n), unit-norm rows
    n = len(sim)
    return (sim.sum() - sim.diagonal().sum()) / max(n * (n - 1), 1)


def test_weight_is_a_typed_validated_config_value():
    cfg = load_config("smoke", ["loss.weights.extra.toy_spread=0.5"])
    assert cfg.loss.weights.extra == {"toy_spread": 0.5}
    flat = flatten_config(cfg)
    assert flat["loss.weights.extra.toy_spread"] == 0.5  # an MLflow param and a sweepable key
    assert config_from_flat({"loss.weights.extra.toy_spread": "0.5"}).loss.weights.extra == {
        "toy_spread": 0.5
    }
    with pytest.raises(ConfigError, match="loss.weights.extra.nope"):
        load_config("smoke", ["loss.weights.extra.nope=1.0"])  # not a registered term
    with pytest.raises(ConfigError, match="loss.weights.extra.toy_spread"):
        load_config("smoke", ["loss.weights.extra.toy_spread=-1"])


def test_weighted_total_applies_the_extra_weight():
    cfg = load_config("smoke", ["loss.weights.extra.toy_spread=0.5"])
    total = weighted_total(
        {"nce": torch.tensor(2.0), "toy_spread": torch.tensor(4.0)}, cfg.loss.weights
    )
    assert float(total) == pytest.approx(2.0 + 0.5 * 4.0)


def test_toy_term_is_computed_logged_and_weighted(smoke_world: Path, tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = {
        "data.dataroot": str(smoke_world),
        "tracking.tracking_uri": store,
        "tracking.output_dir": str(tmp_path / "runs"),
        "train.max_steps": 2,
    }
    CALLS.clear()
    off = run_pretrain(load_config("smoke", base))  # weight 0 (absent): not computed
    assert CALLS == []
    on = run_pretrain(load_config("smoke", {**base, "loss.weights.extra.toy_spread": 0.5}))
    assert len(CALLS) == 2 and all(n > 0 for n in CALLS)  # once per step, on real matches
    client = make_client(store)
    hist = client.get_metric_history(on.run_id, "train/loss_toy_spread")
    assert [m.step for m in hist] == [1, 2]
    assert "train/loss_toy_spread" not in client.get_run(off.run_id).data.metrics
    assert client.get_run(on.run_id).data.params["loss.weights.extra.toy_spread"] == "0.5"


def test_logged_config_is_the_effective_one(smoke_world: Path, tmp_path: Path):
    """bf16 asked on a machine without CUDA: the run records (and runs) "no", and says so."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: bf16 would run as asked")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(
        "smoke",
        {
            "data.dataroot": str(smoke_world),
            "tracking.tracking_uri": store,
            "tracking.output_dir": str(tmp_path / "runs"),
            "train.max_steps": 1,
            "train.mixed_precision": "bf16",
        },
    )
    res = run_pretrain(cfg)
    assert make_client(store).get_run(res.run_id).data.params["train.mixed_precision"] == "no"
