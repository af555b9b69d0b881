"""Config loading: presets, dotted overrides with strict type checks, flattening for MLflow."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from cmcr.configs.schema import (
    NUSCENES_CAMERAS,
    Config,
    DataConfig,
    DownstreamConfig,
    LossConfig,
    LossWeights,
    MethodConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
)
from cmcr.errors import CMCRError

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
    "validate_config",
    "variant_name",
    "COMPONENTS",
]

PRESET_DIR = Path(__file__).resolve().parent


class ConfigError(CMCRError, ValueError):
    """A config key, value or file is wrong; the message names which and what was expected."""


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
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    if value is None:
        value = ""
    return key, value


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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    return data


def load_config(
    preset: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None
) -> Config:
    """Build a Config from defaults, a preset name or YAML path, then dotted overrides.

    A YAML file may name ``preset: <name>`` to start from a shipped preset.
    """
    cfg = Config()
    if preset:
        text = str(preset)
        path = PRESET_DIR / f"{text}.yaml"
        if not path.is_file():
            path = Path(text)
            if not path.is_file():
                raise ConfigError(
                    f"config '{text}': neither a preset ({', '.join(list_presets())}) "
                    "nor an existing YAML file"
                )
        data = load_yaml_file(path)
        base = data.pop("preset", None)
        if base is not None and path.parent != PRESET_DIR:
            cfg = load_config(base)
        apply_overrides(cfg, _flatten_dict(data))
        cfg.preset = path.stem if path.parent == PRESET_DIR else str(base or path.stem)
    # the environment names where *this machine* keeps the data: it beats presets, not --set
    env_root = os.environ.get("CMCR_DATA_ROOT")
    if env_root:
        cfg.data.dataroot = env_root
    apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


def _check(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def validate_config(cfg: Config) -> Config:
    """Range and choice checks, so bad values fail before any compute starts."""
    d, m, lo, me, t, ds = cfg.data, cfg.model, cfg.loss, cfg.method, cfg.train, cfg.downstream
    _check(0.0 <= d.mask_ratio <= 1.0, "data.mask_ratio", "a value in [0, 1]", d.mask_ratio)
    _check(
        0.0 <= d.mask_image_prob <= 1.0,
        "data.mask_image_prob",
        "a value in [0, 1]",
        d.mask_image_prob,
    )
    _check(d.mask_patch > 0, "data.mask_patch", "a positive integer", d.mask_patch)
    _check(len(d.image_size) == 2, "data.image_size", "[height, width]", d.image_size)
    _check(
        all(s > 0 and s % 32 == 0 for s in d.image_size),
        "data.image_size",
        "positive multiples of 32",
        d.image_size,
    )
    _check(
        len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
        "data.crop_scale",
        "[min, max] with 0 < min <= max <= 1",
        d.crop_scale,
    )
    unknown_cams = [c for c in d.cameras if c not in NUSCENES_CAMERAS]
    _check(
        bool(d.cameras) and not unknown_cams,
        "data.cameras",
        f"a non-empty subset of {list(NUSCENES_CAMERAS)}",
        d.cameras,
    )
    _check(d.voxel_size > 0, "data.voxel_size", "a positive number", d.voxel_size)
    _check(d.n_queries >= 0, "data.n_queries", "a non-negative integer", d.n_queries)
    _check(d.query_radius > 0, "data.query_radius", "a positive number", d.query_radius)
    _check(d.max_neighbours > 0, "data.max_neighbours", "a positive integer", d.max_neighbours)
    _check(d.num_workers >= 0, "data.num_workers", "a non-negative integer", d.num_workers)
    _check(
        m.backbone in ("unet34c", "unet_small"),
        "model.backbone",
        "unet34c or unet_small",
        m.backbone,
    )
    _check(
        m.image_encoder in ("resnet50", "resnet18"),
        "model.image_encoder",
        "resnet50 or resnet18",
        m.image_encoder,
    )
    _check(m.feat_dim > 0, "model.feat_dim", "a positive integer", m.feat_dim)
    _check(m.codebook_size > 0, "model.codebook_size", "a positive integer", m.codebook_size)
    _check(0 < m.codebook_decay < 1, "model.codebook_decay", "a value in (0, 1)", m.codebook_decay)
    _check(lo.temperature > 0, "loss.temperature", "a positive number", lo.temperature)
    _check(lo.num_matches > 0, "loss.num_matches", "a positive integer", lo.num_matches)
    _check(lo.mim_on in ("all", "masked"), "loss.mim_on", "all or masked", lo.mim_on)
    for name, w in dataclasses.asdict(lo.weights).items():
        _check(w >= 0, f"loss.weights.{name}", "a non-negative number", w)
    _check(me.name in ("cmcr", "ppkt", "random"), "method.name", "cmcr, ppkt or random", me.name)
    _check(t.batch_size > 0, "train.batch_size", "a positive integer", t.batch_size)
    _check(t.lr > 0, "train.lr", "a positive number", t.lr)
    _check(t.epochs >= 0 and t.max_steps >= 0, "train.epochs", "non-negative", t.epochs)
    _check(
        t.scheduler in ("cosine", "constant"), "train.scheduler", "cosine or constant", t.scheduler
    )
    _check(
        t.mixed_precision in ("no", "fp16", "bf16"),
        "train.mixed_precision",
        "no, fp16 or bf16",
        t.mixed_precision,
    )
    _check(t.grad_accum >= 1, "train.grad_accum", "an integer >= 1", t.grad_accum)
    _check(t.checkpoint_every >= 1, "train.checkpoint_every", "an integer >= 1", t.checkpoint_every)
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "an integer >= 1", t.keep_checkpoints)
    _check(ds.mode in ("probe", "finetune"), "downstream.mode", "probe or finetune", ds.mode)
    _check(
        0 < ds.label_fraction <= 1,
        "downstream.label_fraction",
        "a fraction in (0, 1]",
        ds.label_fraction,
    )
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
                value = yaml.safe_load(value)
        _set(cfg, key, value)
    return cfg


def _lookup_type(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = getattr(node, part, None)
        if node is None or not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key '{dotted}'")
    types = _field_types(node)
    if parts[-1] not in types:
        raise ConfigError(f"unknown config key '{dotted}'")
    return types[parts[-1]]
