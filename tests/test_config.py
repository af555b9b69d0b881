"""Config system: presets load, overrides are strict, flattening round-trips through strings."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import pytest

from cmcr.configs import (
    Config,
    ConfigError,
    TrainConfig,
    config_from_flat,
    flatten_config,
    list_presets,
    load_config,
    registry_names,
    resolve_config,
    variant_name,
)
from cmcr.configs.validate import describe_bounds


@pytest.mark.parametrize("preset", ["official", "paper", "demo", "smoke"])
def test_presets_load(preset: str) -> None:
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert preset in list_presets()


def test_override_applies_and_roundtrips_through_strings() -> None:
    cfg = load_config("smoke", ["loss.weights.mim=0.5", "train.lr=1e-3", "method.gemim=false"])
    assert cfg.loss.weights.mim == 0.5 and cfg.train.lr == 1e-3 and cfg.method.gemim is False
    flat = {k: str(v) for k, v in flatten_config(cfg).items()}  # MLflow stores strings
    assert config_from_flat(flat) == cfg


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("loss.weights.mimx=1", "unknown config key 'loss.weights.mimx'"),
        ("train.batch_size=1.5", "train.batch_size: expected an integer"),
        ("data.mask_ratio=1.5", "data.mask_ratio: expected a value in [0, 1]"),
        ("method.mim=maybe", "method.mim: expected true or false"),
        ("data.image_size=[100,200]", "data.image_size"),
        ("nokey", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config("smoke", [override])
    assert fragment in str(info.value)


def test_unknown_preset_names_the_choices(tmp_path) -> None:
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_user_yaml_extends_a_preset(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("preset: smoke\nloss:\n  weights:\n    cmcm: 0.25\n")
    cfg = load_config(str(path))
    assert cfg.loss.weights.cmcm == 0.25
    assert cfg.model.backbone == "unet_small"  # inherited from smoke


def test_variant_names() -> None:
    # official (and so smoke and demo) is the release: CMCR without GEMIM; paper adds it
    assert variant_name(load_config("smoke")) == "cmcr-gemim"
    assert variant_name(load_config("smoke", ["method.gemim=true"])) == "cmcr"
    assert variant_name(load_config("paper")) == "cmcr"
    assert variant_name(load_config("smoke", ["method.name=ppkt"])) == "ppkt"
    assert (
        variant_name(load_config("smoke", ["method.mim=false", "method.gemim=true"])) == "cmcr-mim"
    )


# what demo and smoke may change with respect to official: where data lives, sizes and budgets
SIZES_AND_BUDGETS = {
    *("data.dataroot", "data.version", "data.train_split", "data.val_split"),
    *("data.image_size", "data.max_points", "data.n_queries", "data.max_neighbours"),
    *("data.mask_patch", "data.num_workers", "data.max_samples"),
    *("model.backbone", "model.image_encoder", "model.image_weights", "model.feat_dim"),
    *("model.codebook_size", "loss.num_matches"),
    *("train.epochs", "train.max_steps", "train.batch_size", "train.checkpoint_every"),
    *("downstream.batch_size", "downstream.probe_epochs", "downstream.finetune_epochs"),
    *("downstream.max_steps", "tracking.system_metrics", "preset"),
    *("semantickitti.root", "semantickitti.batch_size", "semantickitti.train_sequences"),
    *(
        "sweep.eval_every",
        "sweep.probe_scans",
        "sweep.probe_features",
    ),  # how often and on what pre-training is probed
}


@pytest.mark.parametrize("preset", ["demo", "smoke"])
def test_demo_and_smoke_change_sizes_and_budgets_only(preset: str) -> None:
    official, cfg = flatten_config(load_config("official")), flatten_config(load_config(preset))
    changed = {k for k in official if official[k] != cfg[k]}
    assert changed, "the preset changes nothing?"
    assert changed <= SIZES_AND_BUDGETS, f"protocol keys changed: {changed - SIZES_AND_BUDGETS}"


def test_paper_is_official_plus_gemim() -> None:
    official, paper = flatten_config(load_config("official")), flatten_config(load_config("paper"))
    assert {k for k in official if official[k] != paper[k]} == {"preset", "method.gemim"}
    assert paper["method.gemim"] is True and official["method.gemim"] is False


def test_official_is_the_schema_defaults_on_real_nuscenes() -> None:
    default, official = flatten_config(Config()), flatten_config(load_config("official"))
    changed = {k for k in default if default[k] != official[k]}
    assert changed == {
        "preset", "data.dataroot", "data.version", "data.train_split", "data.val_split",
        "method.gemim",
    }  # fmt: skip


def test_data_root_env_beats_preset_but_not_overrides(monkeypatch) -> None:
    monkeypatch.setenv("CMCR_DATA_ROOT", "/somewhere/nuscenes")
    assert load_config("smoke").data.dataroot == "/somewhere/nuscenes"
    assert load_config("smoke", ["data.dataroot=/x"]).data.dataroot == "/x"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.log_every=0", "train.log_every: expected an integer >= 1, got 0"),
        ("train.seed=-1", "train.seed: expected a non-negative integer, got -1"),
        ("data.voxel_size=inf", "data.voxel_size: expected a finite number, got inf"),
        ("data.voxel_size=.nan", "data.voxel_size: expected a finite number, got nan"),
        # 1e-9 m voxels overflow the grid in the first batch of a run that already exists
        ("data.voxel_size=1e-9", "data.voxel_size: expected a value in [0.01, 100], got 1e-09"),
        ("semantickitti.cylinder_size=[0.1,1,0]", "semantickitti.cylinder_size"),
        ("loss.temperature=-.inf", "loss.temperature: expected a finite number"),
        ("downstream.batch_size=0", "downstream.batch_size: expected an integer >= 1, got 0"),
        ("data.max_samples=-1", "data.max_samples: expected a non-negative integer, got -1"),
        ("downstream.probe_epochs=0", "downstream.probe_epochs: expected an integer >= 1"),
        ("downstream.finetune_epochs=0", "downstream.finetune_epochs: expected an integer >= 1"),
        ("downstream.eval_every=0", "downstream.eval_every: expected an integer >= 1"),
        (
            "downstream.finetune_label_fraction=0",
            "downstream.finetune_label_fraction: expected a value in (0, 1]",
        ),
        ("data.crop_aspect=[2.0, 1.5]", "data.crop_aspect: expected [min, max]"),
        ("data.mask_stage=before", "data.mask_stage: expected one of"),
        ("model.codebook_decay=1", "model.codebook_decay: expected a value in (0, 1)"),
        # the registered names (other test modules may register more: see the registry test)
        ("model.backbone=nope", "model.backbone: expected one of "),
        ("model.image_encoder=vit", "model.image_encoder: expected one of "),
        ("train.scheduler=step", "train.scheduler: expected one of cosine, constant"),
        ("train.mixed_precision=fp8", "train.mixed_precision: expected one of no, fp16, bf16"),
        ("data.cameras=[]", "data.cameras: expected a list of at least 1"),
        ("data.cameras=[CAM_X]", "data.cameras: expected every item to be one of CAM_FRONT"),
        ("data.image_size=[64]", "data.image_size: expected a list of 2 items"),
        ("data.crop_scale=[0.9,0.5]", "data.crop_scale: expected [min, max] with 0 < min <= max"),
        ("data.crop_scale=[0,1]", "data.crop_scale: expected every item to be a value in (0, 1]"),
        ("model.occ_hidden=[64,0]", "model.occ_hidden: expected every item to be an integer >= 1"),
        ("loss.weights.orth=-0.1", "loss.weights.orth: expected a non-negative number"),
        ("train.max_steps=0", "train.epochs: expected an integer >= 1 when train.max_steps is 0"),
    ],
)
def test_out_of_range_values_fail_with_one_line(override: str, fragment: str) -> None:
    # the smoke preset sets train.max_steps=4; the last case needs epochs=0 as well
    extra = ["train.epochs=0"] if override.startswith("train.max_steps") else []
    with pytest.raises(ConfigError) as info:
        load_config("smoke", [*extra, override])
    message = str(info.value)
    assert fragment in message and "\n" not in message


def _leaf_fields(node, prefix=""):
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def test_every_numeric_field_declares_a_range_and_every_choice_field_its_choices() -> None:
    cfg = Config()
    numeric, free_strings = [], []
    for key, f, value in _leaf_fields(cfg):
        item = (value[0] if value else "") if isinstance(value, list) else value
        if isinstance(item, bool):
            continue
        if isinstance(item, (int, float)):
            numeric.append(key)
            assert describe_bounds(dict(f.metadata), isinstance(item, int)), key
        elif "choices" not in f.metadata and "registry" not in f.metadata:
            free_strings.append(key)
    assert "train.log_every" in numeric and "downstream.eval_every" in numeric
    # the strings without a fixed set of values: paths, names, split names
    assert set(free_strings) == {
        "preset", "data.dataroot", "data.version", "data.train_split", "data.val_split",
        "data.holdout_scenes",
        "semantickitti.root", "semantickitti.train_sequences", "semantickitti.val_sequences",
        "model.image_weights", "tracking.tracking_uri", "tracking.experiment",
        "tracking.output_dir",
    }  # fmt: skip


def test_registry_fields_take_their_choices_from_the_registry() -> None:
    from cmcr.models.backbone import BACKBONES
    from cmcr.models.resnet import IMAGE_ENCODERS

    assert {"unet34c", "unet_small"} <= set(registry_names("backbone")) == set(BACKBONES)
    assert {"resnet18", "resnet50"} <= set(registry_names("image_encoder")) == set(IMAGE_ENCODERS)
    with pytest.raises(ConfigError, match="model.backbone") as info:
        load_config("smoke", ["model.backbone=later"])
    assert f"expected one of {', '.join(sorted(BACKBONES))}, got 'later'" in str(info.value)
    BACKBONES.register("later")(BACKBONES["unet_small"])
    IMAGE_ENCODERS.register("later_enc")(IMAGE_ENCODERS["resnet18"])
    try:
        cfg = load_config("smoke", ["model.backbone=later", "model.image_encoder=later_enc"])
        assert cfg.model.backbone == "later" and cfg.model.image_encoder == "later_enc"
    finally:
        BACKBONES.unregister("later")
        IMAGE_ENCODERS.unregister("later_enc")


def test_configs_import_stays_light() -> None:
    code = "import sys, cmcr.configs; print(sorted({'torch', 'spconv'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_resolve_config_turns_mixed_precision_off_without_cuda(caplog) -> None:
    cfg = load_config("smoke", ["train.mixed_precision=bf16"])
    with caplog.at_level(logging.INFO, logger="cmcr"):
        resolved = resolve_config(cfg, cuda=False)
    assert resolved.train.mixed_precision == "no"
    assert cfg.train.mixed_precision == "bf16"  # the caller's config is left as given
    assert "train.mixed_precision: bf16 needs CUDA" in caplog.text
    assert flatten_config(resolved)["train.mixed_precision"] == "no"  # what gets logged
    assert resolve_config(cfg, cuda=True).train.mixed_precision == "bf16"
    with pytest.raises(ConfigError, match="train.seed"):
        resolve_config(Config(train=TrainConfig(seed=-3)), cuda=True)
