"""Bounded, typed input (issue 28, part C): every size, count and seed has a ceiling, YAML is
read with a size and alias limit, preset chains have no cycle, ``--n-trials`` is bounded. Each
refusal is one line naming the field or file, exit 2, before any store exists (the CLI cases run
``main`` in this process through ``test_validation_cli``'s harness).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_validation_cli import _assert_refused, _cmcr, _sweep
from test_validation_cli import _harness as _harness  # autouse: the in-process CLI's capture

from cmcr.configs import ConfigError, load_config
from cmcr.configs.yaml_io import MAX_BYTES, load_yaml_text, read_yaml_file
from cmcr.errors import StudyError
from cmcr.sweep.space import parse_study


def laughs(levels: int = 9) -> str:
    """A 'billion laughs' in flow style: ``levels`` nested lists of nine aliases each, 9**levels
    strings once expanded (9 levels: 387 million) from a few hundred bytes."""
    parts = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    names = "abcdefghijklmnop"
    for prev, name in zip(names, names[1 : levels + 1], strict=False):
        parts.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "[" + ", ".join(parts[:levels]) + "]"


def _world(tmp: Path) -> Path:
    return tmp / "world"  # never read: every case is refused before the data check


def _study(tmp: Path, where: str) -> Path:
    path = tmp / "laughs.yaml"
    if where == "choices":
        path.write_text(
            f"name: laughs\nparams:\n  data.mask_ratio: {{type: grid, choices: {laughs()}}}\n"
        )
    else:
        path.write_text("name: laughs\nparams:\n  data.mask_ratio: {type: float, low: 0.1, "
                        f"high: 0.9}}\nfixed:\n  data.version: {laughs()}\n")  # fmt: skip
    return path


@pytest.mark.parametrize("where", ["study choices", "study fixed", "--config", "--set"])
def test_a_billion_laughs_is_refused_in_under_two_seconds(tmp_path, where) -> None:
    start = time.monotonic()
    if where.startswith("study"):
        study = _study(tmp_path, where.split()[1])
        out, _ = _sweep(tmp_path, _world(tmp_path), "--study", str(study))
        fragments = ["laughs.yaml"]
    elif where == "--config":
        config = tmp_path / "laughs.yaml"
        config.write_text(f"preset: smoke\ndata:\n  version: {laughs()}\n")
        out, _ = _cmcr(tmp_path, _world(tmp_path), "pretrain", config=str(config))
        fragments = ["laughs.yaml"]
    else:
        sets = (f"data.version={laughs()}",)
        out, _ = _sweep(tmp_path, _world(tmp_path), "--study", "mask_ratio", sets=sets)
        fragments = ["override 'data.version'"]
    _assert_refused(out, tmp_path, *fragments, "billion laughs", "at most 100000 values")
    assert time.monotonic() - start < 2.0


BAD = [  # (sweep argv, --set values, fragments of the one line)
    ((), ("tracking.experiment=",), ("tracking.experiment", "non-blank name")),
    ((), (f"train.seed={2**64}",), ("train.seed", f"[0, {2**63 - 1}]", str(2**64))),
    ((), ("model.feat_dim=1000000000",), ("model.feat_dim", "[1, 4096]")),
    ((), ("data.image_size=[96000,128000]",), ("data.image_size", "[1, 2048]")),
    (("--n-trials", "100000000"), (), ("--n-trials", "[1, 10000]", "100000000")),
    (("--seeds", "1000000"), (), ("--seeds", "[1, 100]", "1000000")),
    (("--workers", "100000"), (), ("--workers", "[1, 1024]", "100000")),
    (("--max-retries", "100000"), (), ("--max-retries", "[0, 100]")),
    (("--add-seeds", "1000000"), (), ("--add-seeds", "[1, 100]")),
]


@pytest.mark.parametrize(("argv", "sets", "fragments"), BAD)
def test_out_of_bounds_input_is_refused_before_any_store(tmp_path, argv, sets, fragments) -> None:
    out, _ = _sweep(tmp_path, _world(tmp_path), "--study", "mask_ratio", *argv, sets=sets)
    _assert_refused(out, tmp_path, *fragments)


def test_a_config_that_starts_from_itself_is_refused(tmp_path) -> None:
    own = tmp_path / "own.yaml"
    own.write_text(f"preset: {own}\ntrain:\n  epochs: 1\n")
    out, _ = _cmcr(tmp_path, _world(tmp_path), "pretrain", config=str(own))
    _assert_refused(out, tmp_path, "own.yaml", "preset chain", "is a cycle")


def test_a_preset_cycle_of_two_files_names_the_chain(tmp_path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"preset: {b}\n")
    b.write_text(f"preset: {a}\n")
    with pytest.raises(ConfigError, match=f"preset chain {a} -> {b} -> {a} is a cycle"):
        load_config(str(a))
    b.write_text("preset: smoke\n")  # a chain that ends is fine
    assert load_config(str(a)).data.dataroot == load_config("smoke").data.dataroot


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x: " + "[" * 60 + "]" * 60, "nests deeper than 50 levels"),
        ("a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]", "more than 100 YAML aliases"),
        ("x: " + "1" * (MAX_BYTES + 1), f"larger than {MAX_BYTES} bytes"),
    ],
)
def test_yaml_limits(text, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_yaml_text(text, "doc")


def test_yaml_within_limits_reads_as_before(tmp_path) -> None:
    assert load_yaml_text("a: &a [1, 2]\nb: *a\nc: {<<: {d: 1}}", "doc") == {
        "a": [1, 2], "b": [1, 2], "c": {"d": 1},
    }  # fmt: skip
    with pytest.raises(ConfigError, match=f"larger than {MAX_BYTES} bytes"):
        read_yaml_file("/dev/zero", "--config /dev/zero")  # never read to the end
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml_file(bad, f"config file '{bad}'")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"n_trials": 100_000_000}, "'n_trials' must be an integer in [1, 10000]"),
        ({"seed": 2**32}, "'seed' must be an integer in [0, 4294967295]"),
        (
            {"params": {f"k{i}": {"type": "grid", "choices": list(range(10))} for i in range(5)}},
            "a grid of 100000 cells; expected at most 10000",
        ),
    ],
)
def test_study_counts_are_bounded(extra, fragment) -> None:
    study = {"name": "s", "params": {"data.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9}}}
    with pytest.raises(StudyError) as info:
        parse_study({**study, **extra})
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.max_steps", "[1, 2"),
        ("model.feat_dim", "abc"),
        ("model.feat_dim", "1000000000"),
        ("no.such_key", "1"),
        ("train.seed", "18446744073709551616"),
    ],  # fmt: skip
)
def test_resuming_a_run_whose_params_cannot_be_read_is_one_line(tmp_path, key, value) -> None:
    """``cmcr pretrain --resume RUN`` rebuilds the config from the run's MLflow params: a param
    that does not parse, has the wrong type, is out of range or names no key is one line naming
    the key, exit 2, and the run is left as it was (no resume starts)."""
    from mlflow.tracking import MlflowClient

    from cmcr.tracking.store import resolve_tracking_uri

    cfg = load_config("smoke", [f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    client = MlflowClient(resolve_tracking_uri(cfg))
    run = client.create_run(client.create_experiment("cmcr"))
    run_id = run.info.run_id
    client.log_param(run_id, key, value)
    client.set_terminated(run_id, "FAILED")
    out, _ = _cmcr(tmp_path, _world(tmp_path), "pretrain", extra=("--resume", run_id), config="")
    assert out.returncode == 2, out.stdout[-1500:] + out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    assert key in lines[0], lines[0]  # the param at fault (parse errors name the run too)
    after = client.get_run(run_id)
    assert after.info.status == "FAILED"
