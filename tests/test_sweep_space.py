"""Study definitions: built-ins parse and fit the config, malformed files fail with one clear line."""

from __future__ import annotations

import pytest
import yaml

from cmcr.configs import load_config
from cmcr.errors import StudyError
from cmcr.sweep.space import (
    builtin_studies,
    check_space,
    load_study,
    parse_study,
    parse_study_file,
)


def test_builtin_studies_parse_and_fit_every_preset():
    names = set(builtin_studies())
    assert {"loss_weights", "mask_ratio", "codebook_size", "components"} <= names
    for name in names:
        spec = load_study(name)
        for preset in ("smoke", "demo", "official", "paper"):
            check_space(spec, load_config(preset))


def test_components_grid_is_the_paper_ablation():
    spec = load_study("components")
    assert spec.is_grid and spec.default_n_trials() == 8
    labels = [c["variant"] for c in spec.grid_cells()]
    assert labels == [
        "random", "ppkt", "cmcr", "cmcr-mim", "cmcr-gemim", "cmcr-occupancy", "cmcr-codebook",
        "cmcr-orth",
    ]  # fmt: skip
    assert spec.overrides_for({"variant": "cmcr-occupancy"}) == {
        "method.name": "cmcr",
        "method.gemim": True,  # the full method: official has no GEMIM
        "method.occupancy": False,
    }
    # every cell is a distinct variant name of the config
    from cmcr.configs import apply_overrides, variant_name

    variants = {
        variant_name(apply_overrides(load_config("smoke"), spec.overrides_for(c)))
        for c in spec.grid_cells()
    }
    assert len(variants) == 8


def test_grid_cells_product_order():
    spec = parse_study(
        {
            "name": "g",
            "params": {
                "model.codebook_size": {"type": "grid", "choices": [8, 16]},
                "data.mask_ratio": {"type": "grid", "choices": [0.25, 0.5, 0.75]},
            },
        }
    )
    cells = spec.grid_cells()
    assert len(cells) == 6 and spec.sampler == "grid"
    assert cells[0] == {"model.codebook_size": 8, "data.mask_ratio": 0.25}
    assert cells[-1] == {"model.codebook_size": 16, "data.mask_ratio": 0.75}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"params": {"data.mask_ratio": {"type": "float", "low": 0, "high": 1}}}, "'name'"),
        ({"name": "x", "params": {}}, "'params'"),
        ({"name": "x", "params": {"a.b": {"type": "uniform"}}}, "'type'"),
        ({"name": "x", "params": {"a.b": {"type": "float", "low": 1, "high": 0}}}, "below"),
        (
            {"name": "x", "params": {"a.b": {"type": "float", "low": 0, "high": 1, "log": True}}},
            "log",
        ),
        ({"name": "x", "params": {"a.b": {"type": "categorical", "choices": []}}}, "choices"),
        (
            {"name": "x", "params": {"a.b": {"type": "grid", "choices": [1]}}, "sampler": "tpe"},
            "grid",
        ),
        (
            {"name": "x", "params": {"a.b": {"type": "float", "low": 0, "high": 1, "hi": 2}}},
            "unknown",
        ),
        (
            {"name": "x", "direction": "up", "params": {"a.b": {"type": "grid", "choices": [1]}}},
            "direction",
        ),
        (
            {"name": "x", "extra": 1, "params": {"a.b": {"type": "grid", "choices": [1]}}},
            "unknown key",
        ),
    ],
)
def test_malformed_study_names_the_key(data, fragment):
    with pytest.raises(StudyError, match=fragment):
        parse_study(data, source="s.yaml")


def test_unknown_config_key_and_out_of_range_fail_check_space():
    base = load_config("smoke")
    bad_key = parse_study(
        {"name": "x", "params": {"loss.weights.nope": {"type": "float", "low": 0.1, "high": 1}}}
    )
    with pytest.raises(StudyError, match="loss.weights.nope"):
        check_space(bad_key, base)
    too_high = parse_study(
        {"name": "x", "params": {"data.mask_ratio": {"type": "float", "low": 0.1, "high": 1.5}}}
    )
    with pytest.raises(StudyError, match=r"data.mask_ratio.*1.5"):
        check_space(too_high, base)
    bad_choice = parse_study(
        {"name": "x", "params": {"v": {"type": "grid", "choices": {"a": {"method.name": "nope"}}}}}
    )
    with pytest.raises(StudyError, match="method.name"):
        check_space(bad_choice, base)


def test_study_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nparams: [unclosed\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        parse_study_file(bad)
    with pytest.raises(StudyError, match="unknown study"):
        load_study("no_such_study")
    with pytest.raises(StudyError, match="does not exist"):
        load_study(str(tmp_path / "missing.yaml"))
    good = tmp_path / "mine.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            }
        )
    )
    spec = load_study(str(good))
    assert spec.name == "mine" and spec.sampler == "tpe" and spec.direction == "maximize"


@pytest.mark.parametrize(
    ("bounds", "key"),
    [
        ("low: .nan, high: 1.0", "low"),
        ("low: 0.1, high: .inf", "high"),
        ("low: -.inf, high: 1.0", "low"),
        ("low: 0.1, high: 1.0, step: .inf", "step"),
    ],
)
def test_study_bounds_must_be_finite(tmp_path, bounds: str, key: str) -> None:
    path = tmp_path / "nan.yaml"
    path.write_text(f"name: x\nparams:\n  train.lr: {{type: float, {bounds}}}\n")
    with pytest.raises(StudyError) as info:
        parse_study_file(path)
    message = str(info.value)
    assert "params.train.lr" in message and f"'{key}'" in message and "\n" not in message
