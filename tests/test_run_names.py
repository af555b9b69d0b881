"""Ad-hoc runs are named from what they are (issue 32: they got MLflow's random names such as
``loud-duck-578``): the kind, the preset and the settings that differ from the preset."""

from __future__ import annotations

from cmcr.configs import load_config
from cmcr.names import Kind
from cmcr.tracking.inputs import run_name, run_spec


def test_a_run_is_named_from_its_kind_preset_and_changed_settings(tmp_path) -> None:
    local = [f"data.dataroot={tmp_path}", f"tracking.output_dir={tmp_path}/runs",
             f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db"]  # fmt: skip
    cfg = load_config("demo", [*local, "loss.weights.mim=0.5"])
    assert run_name(cfg, Kind.PRETRAIN) == "pretrain demo mim=0.5"  # machine keys are not named
    assert run_spec(cfg, kind=Kind.PRETRAIN).name == "pretrain demo mim=0.5"
    assert run_spec(cfg, kind=Kind.PRETRAIN, name="mine").name == "mine"  # a caller's name wins
    plain = load_config("smoke", [*local, "downstream.mode=finetune"])
    assert run_name(plain, Kind.FINETUNE) == "finetune smoke"
    many = load_config("smoke", ["train.lr=0.0123", "model.feat_dim=48", "data.mask_ratio=0.31",
                                 "loss.weights.mim=0.5"])  # fmt: skip
    name = run_name(many, Kind.PRETRAIN)
    assert name.startswith("pretrain smoke ") and name.endswith(" +1") and name.count("=") == 3
