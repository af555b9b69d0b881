"""The one place config values are checked, and machine-dependent values resolved.

Each field declares its allowed values on the schema (``setting(...)`` in schema.py: choices,
a model registry, bounds, finiteness, list length); ``validate_config`` walks the dataclasses
and checks every field against them, then runs the few named cross-field rules below.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any

from cmcr.configs.schema import DOWNSTREAM_MODES
from cmcr.errors import ConfigError
from cmcr.guard import CONTROL, shown
from cmcr.registry import BACKBONES, DATASETS, IMAGE_ENCODERS, LOSS_TERMS

log = logging.getLogger("cmcr")

# registry-backed fields: setting(registry=...) -> the registry that holds the names (each
# imports its homes, torch and spconv among them, on the first lookup, not when this loads)
REGISTRIES = {
    "backbone": BACKBONES,
    "image_encoder": IMAGE_ENCODERS,
    "loss_term": LOSS_TERMS,
    "dataset": DATASETS,
}
EXPERIMENT_MAX = 256  # MLflow's experiment name column
IMAGE_STRIDE = 32  # the image encoder's output stride: image sides must be multiples of it


def registry_names(registry: str) -> list[str]:
    """The names registered in a registry (``backbone``, ``image_encoder``, ``loss_term``,
    ``dataset``), or ``evaluation``: each registered dataset's ``<dataset>/<mode>``."""
    if registry == "evaluation":
        return [f"{d}/{m}" for d in sorted(DATASETS.names()) for m in DOWNSTREAM_MODES]
    return sorted(REGISTRIES[registry].names())


def _check(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {shown(value, 80)}")


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def describe_bounds(meta: dict[str, Any], integer: bool) -> str | None:
    """The bounds of ``meta`` in words (``a value in [0, 1]``, ``an integer >= 1``), or None."""
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    kind = "integer" if integer else "number"
    if low and high:
        what = "an integer" if integer and isinstance(high[1], int) else "a value"
        return f"{what} in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
    if low == ("(", 0):
        return f"a positive {kind}"
    if low == ("[", 0):
        return f"a non-negative {kind}"
    if low:
        return f"an {kind} {'>=' if low[0] == '[' else '>'} {_num(low[1])}"
    if high:
        return f"a {kind} {'<=' if high[0] == ']' else '<'} {_num(high[1])}"
    return None


def _low(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k in ("ge", "gt")}


def _in_bounds(x: float, meta: dict[str, Any]) -> bool:
    return (
        ("ge" not in meta or x >= meta["ge"])
        and ("gt" not in meta or x > meta["gt"])
        and ("le" not in meta or x <= meta["le"])
        and ("lt" not in meta or x < meta["lt"])
    )


def check_value(key: str, value: Any, meta: dict[str, Any]) -> None:
    """Check one field's value against its declared metadata; ConfigError names the key."""
    if isinstance(value, dict):  # a mapping field: keys from the registry, values by the bounds
        allowed = registry_names(meta["registry"]) if "registry" in meta else list(value)
        for name, item in value.items():
            _check(name in allowed, f"{key}.{name}", f"a name in {allowed}", name)
            check_value(f"{key}.{name}", item, {k: v for k, v in meta.items() if k != "registry"})
        return
    items = value if isinstance(value, list) else [value]
    each = "every item to be " if isinstance(value, list) else ""
    if isinstance(value, list):
        if "length" in meta:
            _check(len(value) == meta["length"], key, f"a list of {meta['length']} items", value)
        if "min_length" in meta:
            n = meta["min_length"]
            _check(len(value) >= n, key, f"a list of at least {n} item(s)", value)
        if "max_length" in meta:
            n = meta["max_length"]
            _check(len(value) <= n, key, f"a list of at most {n} items", value)
    allowed = meta.get("choices")
    if "registry" in meta:  # fixed choices (e.g. "" for none) and the registered names
        allowed = [*(allowed or ()), *registry_names(meta["registry"])]
    if allowed is not None:
        _check(all(v in allowed for v in items), key, f"{each}one of {', '.join(allowed)}", value)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if meta.get("finite", True):
            _check(math.isfinite(v), key, f"{each}a finite number", value)
        integer = isinstance(v, int)
        # an integer under its floor gets the floor's words ("an integer >= 1"); over its
        # ceiling (every size, count and seed has one), the whole range
        low_only = integer and isinstance(meta.get("le", meta.get("lt")), int)
        shown_meta = _low(meta) if low_only and not _in_bounds(v, _low(meta)) else meta
        bounds = describe_bounds(shown_meta, integer)
        if bounds:
            _check(_in_bounds(v, meta), key, f"{each}{bounds}", value)


def _check_node(node: Any, prefix: str) -> None:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_node(value, f"{prefix}{f.name}.")
        else:
            check_value(f"{prefix}{f.name}", value, dict(f.metadata))


# ---- cross-field rules: each names the key it reports ----------------------------------------


def image_size_stride(cfg: Any) -> None:
    """Image sides are multiples of the encoder's stride (the heads upsample by it)."""
    size = cfg.data.image_size
    ok = all(s % IMAGE_STRIDE == 0 for s in size)
    _check(ok, "data.image_size", f"positive multiples of {IMAGE_STRIDE}", size)


def crop_scale_order(cfg: Any) -> None:
    """The crop area range is [min, max] with min <= max."""
    lo, hi = cfg.data.crop_scale
    _check(lo <= hi, "data.crop_scale", "[min, max] with 0 < min <= max <= 1", [lo, hi])


def crop_aspect_order(cfg: Any) -> None:
    """The crop aspect range is [min, max] with min <= max."""
    lo, hi = cfg.data.crop_aspect
    _check(lo <= hi, "data.crop_aspect", "[min, max] width/height with 0 < min <= max", [lo, hi])


def some_training(cfg: Any) -> None:
    """Pre-training runs at least one step: epochs or max_steps is positive."""
    t = cfg.train
    ok = t.epochs >= 1 or t.max_steps >= 1
    _check(ok, "train.epochs", "an integer >= 1 when train.max_steps is 0", t.epochs)


def one_evaluation_per_dataset(cfg: Any) -> None:
    """A trial's evaluations name each dataset once (its metrics are named per dataset), and
    the objective is one of them."""
    ds = cfg.downstream
    datasets = [e.split("/")[0] for e in ds.evaluations]
    ok = len(datasets) == len(set(datasets))
    _check(
        ok, "downstream.evaluations", "at most one '<dataset>/<mode>' per dataset", ds.evaluations
    )
    if ds.objective and ds.evaluations:
        _check(
            ds.objective in ds.evaluations,
            "downstream.objective",
            f"one of downstream.evaluations {ds.evaluations}",
            ds.objective,
        )


def output_dir_text(cfg: Any) -> None:
    """The runs folder is a path that goes into logs and job scripts: no control characters
    (a newline would end an ``#SBATCH`` line and start a shell command)."""
    value = cfg.tracking.output_dir
    ok = bool(value) and not CONTROL.search(value)
    _check(ok, "tracking.output_dir", "a non-empty folder path without control characters", value)


def experiment_name(cfg: Any) -> None:
    """The MLflow experiment is named: MLflow refuses an empty name only once a run starts.
    Not ``check_name``'s identifier rule: MLflow's own names may hold spaces and slashes
    (``/Users/me/cmcr`` on Databricks); a study's experiment is its checked name already."""
    value = cfg.tracking.experiment
    ok = bool(value.strip()) and len(value) <= EXPERIMENT_MAX and not CONTROL.search(value)
    expected = f"a non-blank name of at most {EXPERIMENT_MAX} characters, no control characters"
    _check(ok, "tracking.experiment", expected, value)


RULES = (
    image_size_stride,
    crop_scale_order,
    crop_aspect_order,
    some_training,
    one_evaluation_per_dataset,
    output_dir_text,
    experiment_name,
)


def validate_config(cfg: Any) -> Any:
    """Every field against its declared choices and ranges, then the cross-field rules."""
    _check_node(cfg, "")
    for rule in RULES:
        rule(cfg)
    return cfg


def cuda_available() -> bool:
    """Whether this process will train on CUDA (a GPU is visible and ACCELERATE_USE_CPU unset)."""
    import torch  # here, not at the top: the configs package stays light to import
    from accelerate.utils import parse_flag_from_env

    return torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")


def resolve_config(cfg: Any, *, cuda: bool | None = None) -> Any:
    """A copy of ``cfg`` with machine-dependent values made explicit, to log before the run.

    Mixed precision is a CUDA feature: without CUDA it becomes ``no`` (with a log line), so the
    logged ``train.mixed_precision`` is what the run really used.
    """
    cfg = validate_config(copy.deepcopy(cfg))
    if cuda is None:
        cuda = cuda_available()
    if not cuda and cfg.train.mixed_precision != "no":
        log.info(
            "train.mixed_precision: %s needs CUDA, none here: running (and logging) 'no'",
            cfg.train.mixed_precision,
        )
        cfg.train.mixed_precision = "no"
    return cfg
