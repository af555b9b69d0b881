"""Config system: presets load, overrides are strict, flattening round-trips through strings."""

from __future__ import annotations

import pytest

from cmcr.configs import (
    ConfigError,
    config_from_flat,
    flatten_config,
    list_presets,
    load_config,
    variant_name,
)


@pytest.mark.parametrize("preset", ["paper", "demo", "smoke"])
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
    assert variant_name(load_config("smoke")) == "cmcr"
    assert variant_name(load_config("smoke", ["method.name=ppkt"])) == "ppkt"
    assert variant_name(load_config("smoke", ["method.mim=false"])) == "cmcr-mim"


def test_data_root_env_beats_preset_but_not_overrides(monkeypatch) -> None:
    monkeypatch.setenv("CMCR_DATA_ROOT", "/somewhere/nuscenes")
    assert load_config("smoke").data.dataroot == "/somewhere/nuscenes"
    assert load_config("smoke", ["data.dataroot=/x"]).data.dataroot == "/x"
