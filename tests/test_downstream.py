"""Probe / fine-tune loop, pretrained-weight handling, MLflow records (in-process, tiny sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmcr.configs import flatten_config, load_config
from cmcr.engine.downstream import (
    SegModel,
    run_downstream,
)
from cmcr.models import CMCRModel


@pytest.fixture()
def world_cfg(smoke_world):
    """Overrides pointing the smoke preset at the session's smoke world."""
    return {"data.dataroot": str(smoke_world)}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A sqlite MLflow store, created up front (its creation logs INFO lines to stderr)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlruns")
    MlflowClient(f"sqlite:///{path}/mlflow.db").search_experiments()
    return path


def _cfg(store: Path, mode: str, world: dict, **over):
    base = {
        **world,
        "data.voxel_size": 0.3,  # fewer voxels: fast CPU tests, same code path
        "tracking.tracking_uri": f"sqlite:///{store}/mlflow.db",
        "tracking.output_dir": str(store / "runs"),
        "downstream.mode": mode,
        "downstream.probe_label_fraction": 1.0,
        "downstream.finetune_label_fraction": 1.0,
        "downstream.probe_epochs": 3,
        "downstream.finetune_epochs": 1,
    }
    base.update(over)
    return load_config("smoke", base)


def _backbone_file(cfg, path: Path) -> Path:
    """A backbone.pt written by the real CMCRModel (random method: 3D parts only)."""
    from cmcr.configs import apply_overrides

    torch.manual_seed(123)
    model = CMCRModel(apply_overrides(load_config("smoke"), {"method.name": "random"}))
    torch.save(model.backbone_state(), path)
    return path


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _backbone_only(state: dict) -> dict:
    """backbone.pt without its pre-training heads: what seg_backbone.pt holds (release)."""
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def test_probe_freezes_encoder_and_trains_head(world_cfg, store, tmp_path) -> None:
    cfg = _cfg(store, "probe", world_cfg)
    bb = _backbone_file(cfg, tmp_path / "backbone.pt")
    seen = []
    res = run_downstream(cfg, pretrained=str(bb), report=lambda e, v: seen.append((e, v)))
    assert [e for e, _ in seen] == [1, 2, 3] and 0.0 <= res.miou <= 1.0
    out = Path(cfg.tracking.output_dir) / res.run_id
    before = _backbone_only(torch.load(bb, weights_only=True))
    assert _states_equal(torch.load(out / "seg_backbone.pt", weights_only=True), before)
    torch.manual_seed(cfg.train.seed)
    init_head = SegModel(cfg).classifier.state_dict()
    assert not _states_equal(torch.load(out / "seg_head.pt", weights_only=True), init_head)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["cmcr.kind"] == "probe"
    # whether the probe's training clouds are augmented, from the config as logged
    augment = (
        run.data.params["data.rotate"] == "True" or float(run.data.params["data.flip_prob"]) > 0
    )
    assert run.data.tags["cmcr.probe_augment"] == str(augment).lower()
    assert run.data.params["downstream.probe_lr"] == str(cfg.downstream.probe_lr)
    assert run.data.metrics["val/miou"] == pytest.approx(res.miou)
    assert [m.step for m in client.get_metric_history(res.run_id, "val/miou")] == [1, 2, 3]
    assert "val/iou_car" in run.data.metrics and "train/seg_loss" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(res.run_id, "downstream")}
    assert {"downstream/per_class_iou.csv", "downstream/per_class_iou.md"} <= arts
    assert "downstream/confusion.html" in arts


def test_finetune_changes_encoder(world_cfg, store, tmp_path) -> None:
    cfg = _cfg(store, "finetune", world_cfg)
    bb = _backbone_file(cfg, tmp_path / "backbone.pt")
    res = run_downstream(cfg, pretrained=str(bb))
    out = Path(cfg.tracking.output_dir) / res.run_id
    after = torch.load(out / "seg_backbone.pt", weights_only=True)
    before = _backbone_only(torch.load(bb, weights_only=True))
    assert after.keys() == before.keys()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("backbone.") and k.endswith("weight") for k in changed)
    assert 0.0 <= res.miou <= 1.0


def _no_running_runs(uri: str) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return not client.search_runs(exps, "attributes.status = 'RUNNING'")


def _cli(store: Path, *args: str) -> list[str]:
    return [
        "probe",
        "--config",
        "smoke",
        "--set",
        f"tracking.tracking_uri=sqlite:///{store}/mlflow.db",
        "--set",
        f"tracking.output_dir={store / 'runs'}",
        *args,
    ]


@pytest.mark.parametrize("kind", ["unknown_run", "corrupt", "wrong_arch", "missing_file"])
def test_bad_pretrained_exits_2_one_line(kind, world_cfg, store, tmp_path, capsys) -> None:
    from cmcr.cli import main

    if kind == "unknown_run":
        spec, expect = "0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"
    elif kind == "corrupt":
        spec = str(tmp_path / "backbone.pt")
        Path(spec).write_bytes(b"not a torch file" * 10)
        expect = "corrupt"
    elif kind == "wrong_arch":
        cfg = load_config("smoke", {"model.backbone": "unet34c"})
        spec = str(tmp_path / "backbone.pt")
        torch.save(SegModel(cfg).backbone_state(), spec)
        expect = "does not fit"
    else:
        spec, expect = str(tmp_path / "nope" / "backbone.pt"), "does not exist"
    code = main(_cli(store, "--pretrained", spec))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("cmcr probe: error:") and expect in err[0]
    assert _no_running_runs(f"sqlite:///{store}/mlflow.db")


def test_report_exception_propagates_and_fails_run(world_cfg, store) -> None:
    class Pruned(Exception):
        pass

    def report(epoch: int, value: float) -> None:
        raise Pruned(f"epoch {epoch}")

    cfg = _cfg(store, "probe", world_cfg)
    with pytest.raises(Pruned):
        run_downstream(cfg, pretrained="none", report=report)
    assert _no_running_runs(cfg.tracking.tracking_uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    (last,) = client.search_runs(exps, order_by=["attributes.start_time DESC"], max_results=1)
    assert last.info.status == "FAILED" and "Pruned" in last.data.tags["cmcr.status_reason"]
    assert last.data.tags["cmcr.variant"] == "random"  # --pretrained none


def test_pretrained_run_id_from_artifacts_links_runs(world_cfg, store, tmp_path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from cmcr.cli import main
    from cmcr.tracking.inputs import run_spec
    from cmcr.tracking.runs import RunLogger

    cfg = _cfg(store, "probe", world_cfg, **{"downstream.probe_epochs": 1})
    bb = _backbone_file(cfg, tmp_path / "backbone.pt")
    pre_cfg = load_config("smoke", {**flatten_config(cfg), "method.name": "ppkt"})
    with RunLogger.start(run_spec(pre_cfg, kind="pretrain")) as pre:
        pre.log_artifact(bb)  # only an artifact: runs/<id>/backbone.pt does not exist
    assert not (Path(cfg.tracking.output_dir) / pre.run_id / "backbone.pt").exists()
    res = run_downstream(cfg, pretrained=pre.run_id)
    tags = MlflowClient(cfg.tracking.tracking_uri).get_run(res.run_id).data.tags
    assert tags["cmcr.pretrained_run"] == pre.run_id
    assert tags["mlflow.parentRunId"] == pre.run_id
    assert tags["cmcr.variant"] == "ppkt"  # copied from the pre-training run, not the probe cfg
    out = Path(cfg.tracking.output_dir) / res.run_id / "seg_backbone.pt"
    want = _backbone_only(torch.load(bb, weights_only=True))
    assert _states_equal(torch.load(out, weights_only=True), want)

    with RunLogger.start(run_spec(cfg, kind="pretrain")) as empty:
        pass  # a run without weights
    capsys.readouterr()  # the probe above printed its progress lines
    code = main(_cli(store, "--pretrained", empty.run_id))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no backbone.pt" in err[0] and empty.run_id in err[0]
    assert _no_running_runs(cfg.tracking.tracking_uri)


def test_zero_epochs_rejected_before_any_run(store) -> None:
    from cmcr.configs import ConfigError

    with pytest.raises(ConfigError, match="downstream.finetune_epochs"):
        _cfg(store, "finetune", {}, **{"downstream.finetune_epochs": 0})  # the schema's range
    cfg = _cfg(store, "finetune", {})
    cfg.downstream.finetune_epochs = 0  # a config changed after loading is checked again
    with pytest.raises(ConfigError, match="downstream.finetune_epochs"):
        run_downstream(cfg, pretrained="none")
    assert _no_running_runs(cfg.tracking.tracking_uri)
