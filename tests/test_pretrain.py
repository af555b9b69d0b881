"""Pre-training on the smoke world: MLflow contract, method random, divergence, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import cmcr.engine.train as train_mod
from cmcr.cli import main as cli_main
from cmcr.configs import flatten_config, load_config
from cmcr.engine.pipeline import run_pretrain
from cmcr.engine.train import TrainingDiverged, lr_factor
from cmcr.models import CMCRModel
from cmcr.tracking.store import make_client


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _over(world: Path, tmp: Path, store: str, **extra) -> dict:
    return {
        "data.dataroot": str(world),
        "tracking.tracking_uri": store,
        "tracking.output_dir": str(tmp / "runs"),
        "data.cameras": ["CAM_FRONT"],
        **extra,
    }


def _all_runs(store: str) -> list:
    client = make_client(store)
    exp = client.get_experiment_by_name("cmcr")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_lr_schedule_warmup_cosine_constant():
    assert lr_factor(0, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(1, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(7, 10, 0, "constant") == 1.0


def test_pretrain_logs_the_contract(smoke_world, tmp_path, store):
    cfg = load_config("smoke", _over(smoke_world, tmp_path, store, **{"train.max_steps": 2}))
    res = run_pretrain(cfg, tags={"extra": "x"})
    client = make_client(store)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and res.steps == 2
    tags = run.data.tags
    # smoke starts from official, which has no GEMIM: the variant names that switch
    assert tags["cmcr.kind"] == "pretrain" and tags["cmcr.variant"] == "cmcr-gemim"
    assert tags["cmcr.pretrain_done"] == "true" and tags["extra"] == "x"
    assert set(run.data.params) == set(flatten_config(cfg))
    metrics = set(run.data.metrics)
    terms = {"nce", "mim", "occ", "intensity", "orth", "commit", "cmcm"}
    expected = {f"train/loss_{t}" for t in terms} | {
        "train/loss",
        "train/lr",
        "train/samples_per_s",
        "train/codebook_perplexity",
        "train/codebook_usage",
    }
    assert expected <= metrics, expected - metrics
    steps = [m.step for m in client.get_metric_history(res.run_id, "train/loss")]
    assert sorted(steps) == [1, 2]
    lrs = {m.step: m.value for m in client.get_metric_history(res.run_id, "train/lr")}
    # the release's constant learning rate (train.scheduler: constant in every preset)
    assert lrs[1] == pytest.approx(cfg.train.lr) and lrs[2] == pytest.approx(lrs[1])
    arts = {f.path for f in client.list_artifacts(res.run_id)}
    assert {"config.yaml", "backbone.pt"} <= arts
    state = torch.load(res.backbone_path, weights_only=True)
    assert set(state) == set(CMCRModel(cfg).backbone_state())
    assert (res.backbone_path.parent / "checkpoints" / "checkpoint_0").is_dir()


def test_method_random_saves_seeded_init(smoke_world, tmp_path, store):
    over = _over(smoke_world, tmp_path, store, **{"method.name": "random", "train.seed": 5})
    a = run_pretrain(load_config("smoke", over))
    b = run_pretrain(load_config("smoke", over))
    assert a.steps == 0 and a.run_id != b.run_id
    wa = torch.load(a.backbone_path, weights_only=True)
    wb = torch.load(b.backbone_path, weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # seeded
    run = make_client(store).get_run(a.run_id)
    assert run.data.tags["cmcr.variant"] == "random" and run.info.status == "FINISHED"


def test_nan_loss_stops_with_reason(smoke_world, tmp_path, store, monkeypatch):
    real = train_mod._forward
    calls = {"n": 0}

    def nan_on_second(cfg, model, batch):
        loss, values = real(cfg, model, batch)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] == 2 else loss), values

    monkeypatch.setattr(train_mod, "_forward", nan_on_second)
    cfg = load_config("smoke", _over(smoke_world, tmp_path, store, **{"train.max_steps": 3}))
    with pytest.raises(TrainingDiverged, match="optimiser step 2"):
        run_pretrain(cfg)
    (run,) = _all_runs(store)
    assert run.info.status == "FAILED"
    assert "TrainingDiverged" in run.data.tags["cmcr.status_reason"]
    assert "loss is nan" in run.data.tags["cmcr.status_reason"]


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the run-id cases (creating an MLflow schema costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('bad') / 'mlflow.db'}"


def _error_line(capsys) -> str:
    # MLflow may log its own INFO lines (creating the store); ours is the one error line
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("cmcr pretrain: error:"), err
    return err[0]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("data.dataroot=/no/such/dir", "data.dataroot: '/no/such/dir' has no 'v1.0-mini'"),
    ],
)
def test_bad_config_fails_before_tracking(override, needle, smoke_world, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    base = [f"data.dataroot={smoke_world}", f"tracking.tracking_uri=sqlite:///{db}"]
    args = ["pretrain", "--config", "smoke", "--set", *base, override]
    assert cli_main(args) == 2
    assert needle in _error_line(capsys)
    assert not db.exists()  # the store was never opened: no run, nothing left RUNNING


@pytest.mark.parametrize("with_config", [False, True])
def test_unknown_resume_id_fails_without_a_run(with_config, smoke_world, shared_store, capsys):
    args = ["pretrain", "--resume", "0123456789abcdef"]
    args += ["--config", "smoke"] if with_config else []
    args += ["--set", f"tracking.tracking_uri={shared_store}", f"data.dataroot={smoke_world}"]
    assert cli_main(args) == 2
    assert "run id '0123456789abcdef' does not exist" in _error_line(capsys)
    assert _all_runs(shared_store) == []


def test_resume_reuses_the_recorded_config_and_refuses_another_preset(smoke_world, tmp_path):
    """The README's pair: `--set loss.weights.mim=0.5`, then `--config <preset> --resume RUN`
    (without the --set) resumes with mim 0.5 (it failed: 'mim: 0.5 -> 1.0'); another preset
    is one line naming the recorded one."""
    import argparse

    from cmcr.engine.cli_pretrain import build_config, resume_line
    from cmcr.tracking.inputs import config_params

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    over = [f"tracking.tracking_uri={store}", f"data.dataroot={smoke_world}"]
    recorded = load_config("smoke", [*over, "loss.weights.mim=0.5"])
    client = make_client(store)
    exp = client.create_experiment("cmcr", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    for key, value in config_params(recorded).items():
        client.log_param(run_id, key, value)

    def args(config: str | None) -> argparse.Namespace:
        return argparse.Namespace(config=config, resume=run_id, overrides=[over])

    for config in ("smoke", None):
        cfg = build_config(args(config))
        assert cfg.loss.weights.mim == 0.5 and cfg.preset == "smoke"
    assert resume_line(run_id, cfg, []) == (
        f"resuming run {run_id} with its recorded config (preset smoke)"
    )
    with pytest.raises(Exception, match="recorded with preset 'smoke'.*drop --config"):
        build_config(args("demo"))


def test_a_resume_without_a_checkpoint_says_it_starts_from_step_0(
    smoke_world, tmp_path, store, caplog
):
    """Issue 32: a resumed trial restarted from step 0 without saying why."""
    import logging

    from cmcr.tracking.inputs import config_params

    cfg = load_config("smoke", _over(smoke_world, tmp_path, store, **{"train.max_steps": 2}))
    client = make_client(store)
    exp = client.create_experiment("cmcr", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    for key, value in config_params(cfg).items():
        client.log_param(run_id, key, value)
    with caplog.at_level(logging.INFO, logger="cmcr"):
        result = run_pretrain(cfg, run_id=run_id)
    assert result.run_id == run_id and result.steps == 2
    said = [r.getMessage() for r in caplog.records if "no checkpoint yet" in r.getMessage()]
    assert said and "starts from step 0" in said[0], caplog.text[-2000:]
