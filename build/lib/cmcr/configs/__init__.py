"""Config loading: presets, dotted overrides with strict type checks, flattening for MLflow."""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

from cmcr.configs.schema import (
    NUSCENES_CAMERAS,
    Config,
    DataConfig,
    DownstreamConfig,
    LossConfig,
    LossWeights,
    MethodConfig,
    ModelConfig,
    SemanticKittiConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
)
from cmcr.configs.validate import registry_names, resolve_config, validate_config
from cmcr.configs.yaml_io import load_yaml_text, read_yaml_file
from cmcr.errors import ConfigError
from cmcr.names import ROOT_ENVS
from cmcr.registry import DATASETS

__all__ = [
    "NUSCENES_CAMERAS",
    "Config",
    "ConfigError",
    "DataConfig",
    "DownstreamConfig",
    "LossConfig",
    "LossWeights",
    "MethodConfig",
    "ModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "PRESET_DIR",
    "apply_overrides",
    "config_from_flat",
    "config_to_dict",
    "flatten_config",
    "list_presets",
    "load_config",
    "parse_override",
    "set_values",
    "registry_names",
    "resolve_config",
    "validate_config",
    "variant_name",
    "COMPONENTS",
    "SemanticKittiConfig",
    "SweepConfig",
    "evaluation_config",
    "evaluation_list",
    "objective_evaluation",
]

PRESET_DIR = Path(__file__).resolve().parent


def variant_name(cfg: Config) -> str:
    """The ablation label of a config: random, ppkt, cmcr, or 'cmcr-<component>,...' for ablations."""
    if cfg.method.name != "cmcr":
        return cfg.method.name
    off = [c for c in COMPONENTS if not getattr(cfg.method, c)]
    return "cmcr" if not off else "cmcr-" + ",".join(off)


COMPONENTS = ("mim", "gemim", "occupancy", "codebook", "orth")


def list_presets() -> list[str]:
    """Names of the YAML presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the annotated type; ints are accepted for floats only."""
    origin = typing.get_origin(typ)
    if origin is dict:
        _, inner = typing.get_args(typ)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of name: {inner.__name__}, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", v, inner) for k, v in value.items()}
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {inner.__name__}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as a number here only.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {typ!r}")


def _set(cfg: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key '{dotted}': '{'.'.join(parts[:i])}' is a value")
        types = _field_types(node)
        if part not in types:
            known = ", ".join(sorted(types))
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(
                f"unknown config key '{dotted}' ('{part}' is not in {where}: {known})"
            )
        if i == len(parts) - 2 and typing.get_origin(types[part]) is dict:
            # one item of a mapping field: loss.weights.extra.<name>=value
            _, inner = typing.get_args(types[part])
            getattr(node, part)[parts[-1]] = _coerce(dotted, value, inner)
            return
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                if not isinstance(value, dict):
                    raise ConfigError(f"{dotted}: expected a mapping of sub-keys, got {value!r}")
                for k, v in value.items():
                    _set(cfg, f"{dotted}.{k}", v)
                return
            setattr(node, part, _coerce(dotted, value, types[part]))
        else:
            node = getattr(node, part)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` and parse the value as YAML (``0.5`` → float, ``true`` → bool)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. loss.weights.mim=0.5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}': empty key")
    value = load_yaml_text(raw, f"override '{key}': value") if raw.strip() else ""
    if value is None:
        value = ""
    return key, value


def set_values(groups: list[list[str]] | list[str]) -> list[str]:
    """Every ``--set`` of a command line as one list: each ``--set`` takes one or more
    KEY=VALUE (argparse's append with nargs="+" gives a list per flag; a bare string is one)."""
    return [item for group in groups for item in ([group] if isinstance(group, str) else group)]


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str] | None) -> Config:
    """Apply dotted overrides in place (and return cfg); unknown keys and wrong types raise."""
    if not overrides:
        return cfg
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        _set(cfg, key, value)
    return cfg


def _flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_dict(v, key + "."))
        else:
            out[key] = v
    return out


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    data = read_yaml_file(path, f"config file '{path}'") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    return data


def _preset_path(text: str) -> Path:
    """A shipped preset's YAML by name, else a YAML file by path."""
    path = PRESET_DIR / f"{text}.yaml"
    if path.is_file():
        return path
    if Path(text).is_file():
        return Path(text)
    raise ConfigError(
        f"config '{text}': neither a preset ({', '.join(list_presets())}) nor an existing YAML file"
    )


def _from_file(text: str, chain: tuple[tuple[str, Path], ...] = ()) -> Config:
    """The config a preset or YAML file describes, after the presets it starts from
    (``preset: <name or path>``); a chain that comes back to a file is refused, named."""
    path = _preset_path(text)
    seen = [name for name, _ in chain]
    if path.resolve() in {p for _, p in chain}:
        names = " -> ".join([*seen, text])
        raise ConfigError(f"config file '{path}': preset chain {names} is a cycle; expected a "
                          "chain that ends at a file without 'preset:'")  # fmt: skip
    data = load_yaml_file(path)
    base = data.pop("preset", None)
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise ConfigError(f"config file '{path}': preset: expected a preset name or a YAML "
                          f"path, got {base!r}")  # fmt: skip
    cfg = Config() if base is None else _from_file(base, (*chain, (text, path.resolve())))
    apply_overrides(cfg, _flatten_dict(data))
    cfg.preset = path.stem if path.parent == PRESET_DIR else str(base or path.stem)
    return cfg


def load_config(
    preset: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None
) -> Config:
    """Build a Config from defaults, a preset name or YAML path, then dotted overrides.

    A YAML file (a shipped preset too: ``demo`` starts from ``official``) may name
    ``preset: <name>`` to start from a shipped preset (or another YAML file, without cycles).
    """
    cfg = _from_file(str(preset)) if preset else Config()
    # the environment names where *this machine* keeps the data: it beats presets, not --set
    for key, env in ROOT_ENVS.items():
        if os.environ.get(env):
            _set(cfg, key, os.environ[env])
    apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain-dict form (for YAML artifacts and checkpoints)."""
    return dataclasses.asdict(cfg)


def flatten_config(cfg: Config) -> dict[str, Any]:
    """Dotted keys → values; these are the MLflow param names and the dashboard columns."""
    return _flatten_dict(config_to_dict(cfg))


def config_from_flat(flat: dict[str, Any]) -> Config:
    """Rebuild a Config from dotted keys (e.g. MLflow params, which are strings)."""
    cfg = Config()
    for key, value in flat.items():
        if isinstance(value, str) and key != "preset":
            typ = _lookup_type(cfg, key)
            if typ is not str:
                value = load_yaml_text(value, f"param '{key}'")
        _set(cfg, key, value)
    return cfg


def _lookup_type(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        types = _field_types(node) if dataclasses.is_dataclass(node) else {}
        if i == len(parts) - 2 and typing.get_origin(types.get(part)) is dict:
            return typing.get_args(types[part])[1]  # an item of a mapping field
        node = getattr(node, part, None)
        if node is None or not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key '{dotted}'")
    types = _field_types(node)
    if parts[-1] not in types:
        raise ConfigError(f"unknown config key '{dotted}'")
    return types[parts[-1]]


def evaluation_list(cfg: Config) -> list[tuple[str, str]]:
    """The (dataset, mode) evaluations of a trial: downstream.evaluations, else the one
    downstream.dataset / downstream.mode names."""
    ds = cfg.downstream
    if not ds.evaluations:
        return [(ds.dataset, ds.mode)]
    return [tuple(e.split("/", 1)) for e in ds.evaluations]  # type: ignore[misc]


def objective_evaluation(cfg: Config) -> tuple[str, str]:
    """The evaluation a sweep objective scores: downstream.objective, else the first."""
    if cfg.downstream.objective and cfg.downstream.evaluations:
        dataset, mode = cfg.downstream.objective.split("/", 1)
        return dataset, mode
    return evaluation_list(cfg)[0]


def evaluation_config(cfg: Config, dataset: str, mode: str) -> Config:
    """The config one evaluation runs with: a copy whose ``downstream.*`` are that dataset's.

    The registered dataset (``cmcr.registry.DATASETS``) applies its own section: nuScenes uses
    ``downstream.*`` as they are; SemanticKITTI takes from ``semantickitti.*`` what its release
    config changes (batch, learning rates, label fractions, counted in *scans*). Every value is
    a logged param of the run; the protocol tags say what ran.
    """
    spec = DATASETS.get(dataset)  # an unknown dataset is an error listing the known ones
    out = copy.deepcopy(cfg)
    ds = out.downstream
    ds.dataset, ds.mode, ds.evaluations, ds.objective = dataset, mode, [], ""
    spec.configure(out)
    return validate_config(out)
