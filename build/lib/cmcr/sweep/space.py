"""Study definitions: name, direction, sampler and a search space over dotted config keys.

A study lives in YAML (``sweeps/studies/<name>.yaml`` for the built-ins, or any file)::

    name: loss_weights
    direction: maximize            # maximize | minimize (the objective is val mIoU)
    sampler: tpe                   # tpe | random | grid (default: grid if every param is grid)
    n_trials: 12                   # default for --n-trials (grid: its size); 1 to 10000
    pruner: asha                   # default for --pruner (median | asha | hyperband | none)
    preset: demo                   # default for --preset
    params:
      loss.weights.mim: {type: float, low: 0.1, high: 4.0, log: true}
      model.codebook_size: {type: grid, choices: [64, 128, 400]}
      variant:                     # a name that is not a config key: choices map a label
        type: grid                 # to a set of dotted overrides (the component ablation)
        choices: {cmcr: {}, ppkt: {method.name: ppkt}}
    fixed:
      train.epochs: 2

Search spaces live here, never in model code; a trial's values reach the config only through
``cmcr.configs.apply_overrides`` (the same dotted keys as the CLI's ``--set``).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcr.configs import Config, apply_overrides, validate_config
from cmcr.configs.yaml_io import read_yaml_file
from cmcr.errors import CMCRError, StudyError
from cmcr.guard import check_name

STUDY_DIR_ENV = "CMCR_STUDY_DIR"
# sweeps/studies beside the package in a source checkout (``pip install -e .``)
DEFAULT_STUDY_DIR = Path(__file__).resolve().parents[2] / "sweeps" / "studies"
PARAM_TYPES = ("float", "int", "categorical", "grid")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "asha", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize")
# a study's trials (its n_trials, its grid's size, --n-trials): far above any real study, so a
# typo (--n-trials 100000000) is refused before a single trial is queued
MAX_TRIALS = 10_000
SAMPLER_SEED_MAX = 2**32 - 1  # numpy's RandomState, which Optuna's samplers seed
_STUDY_KEYS = {
    *("name", "direction", "sampler", "n_trials", "preset", "params", "fixed", "seed"),
    "pruner",
}
_PARAM_KEYS = {"type", "low", "high", "log", "step", "choices"}
_SCALAR = (bool, int, float, str)


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a dotted config key, or a label whose choices map to overrides."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    # label -> dotted overrides, only for choices given as a mapping
    choice_overrides: dict[str, dict[str, Any]] | None = None

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return CategoricalDistribution(list(self.choices))

    def overrides(self, value: Any) -> dict[str, Any]:
        """The dotted overrides that one value of this parameter means."""
        if self.choice_overrides is not None:
            return dict(self.choice_overrides[value])
        return {self.name: value}

    def edge_values(self) -> list[Any]:
        """Values to validate before any trial: both bounds, or every choice."""
        if self.type in ("float", "int"):
            return [self.low, self.high]
        return list(self.choices)


@dataclass(frozen=True)
class StudySpec:
    """A parsed, checked study definition."""

    name: str
    params: tuple[ParamSpec, ...]
    direction: str = "maximize"
    sampler: str = "tpe"
    n_trials: int | None = None
    preset: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    source: str = ""
    pruner: str | None = None  # default for --pruner

    @property
    def is_grid(self) -> bool:
        """Whether the study enumerates a grid (GridSampler)."""
        return self.sampler == "grid"

    def grid_cells(self) -> list[dict[str, Any]]:
        """Every combination of the grid params, in file order (first param varies slowest)."""
        names = [p.name for p in self.params]
        return [
            dict(zip(names, combo, strict=False))
            for combo in itertools.product(*(p.choices for p in self.params))
        ]

    def grid_space(self) -> dict[str, list[Any]]:
        """The search space in GridSampler's form."""
        return {p.name: list(p.choices) for p in self.params}

    def default_n_trials(self) -> int:
        """--n-trials when not given: the grid size, the file's n_trials, else 10."""
        if self.is_grid:
            return len(self.grid_cells())
        return self.n_trials or 10

    def overrides_for(self, params: dict[str, Any]) -> dict[str, Any]:
        """The dotted overrides of one trial's parameter values."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in params:
                out.update(p.overrides(params[p.name]))
        return out

    def config_for(self, base: Config, params: dict[str, Any]) -> Config:
        """A validated copy of ``base`` with one trial's parameter values applied."""
        return validate_config(apply_overrides(copy.deepcopy(base), self.overrides_for(params)))

    def to_dict(self) -> dict[str, Any]:
        """A plain form for study user attrs and the parent run's artifact."""
        params = {}
        for p in self.params:
            d: dict[str, Any] = {"type": p.type}
            if p.type in ("float", "int"):
                d.update(low=p.low, high=p.high, log=p.log)
                if p.step is not None:
                    d["step"] = p.step
            else:
                d["choices"] = p.choice_overrides or list(p.choices)
            params[p.name] = d
        return {
            "name": self.name,
            "direction": self.direction,
            "sampler": self.sampler,
            "params": params,
            "fixed": dict(self.fixed),
        }


def study_dir() -> Path:
    """Where the built-in studies live ($CMCR_STUDY_DIR overrides the source checkout's)."""
    env = os.environ.get(STUDY_DIR_ENV)
    return Path(env) if env else DEFAULT_STUDY_DIR


def builtin_studies() -> dict[str, Path]:
    """Built-in study name → YAML file."""
    folder = study_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_study(name_or_path: str) -> StudySpec:
    """A built-in study by name, or a study YAML file by path."""
    builtins = builtin_studies()
    if name_or_path in builtins:
        return parse_study_file(builtins[name_or_path])
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not path.is_file():
            raise StudyError(f"--study '{name_or_path}': study file does not exist")
        return parse_study_file(path)
    known = ", ".join(builtins) or f"none found in {study_dir()}"
    raise StudyError(
        f"--study '{name_or_path}': unknown study (built-in: {known}; or a path to a study .yaml)"
    )


def parse_study_file(path: Path) -> StudySpec:
    """Read and check one study YAML; every error names the file and the key."""
    data = read_yaml_file(path, f"study file '{path}'", StudyError)
    if not isinstance(data, dict):
        raise StudyError(f"study file '{path}': expected a mapping at the top level")
    return parse_study(data, source=str(path))


def parse_study(data: dict[str, Any], source: str = "<study>") -> StudySpec:
    """Check a study mapping (see the module docstring) and build a StudySpec."""
    where = f"study file '{source}'"
    unknown = sorted(set(data) - _STUDY_KEYS)
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown}; expected {sorted(_STUDY_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise StudyError(f"{where}: 'name' must be a non-empty string")
    check_name(name.strip(), f"{where}: 'name'")  # it becomes folders, filters, a job name
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise StudyError(f"{where}: 'params' must be a non-empty mapping of dotted keys")
    params = tuple(_parse_param(where, str(k), v) for k, v in raw_params.items())
    direction = data.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise StudyError(f"{where}: 'direction' must be one of {DIRECTIONS}, got {direction!r}")
    all_grid = all(p.type == "grid" for p in params)
    sampler = data.get("sampler", "grid" if all_grid else "tpe")
    if sampler not in SAMPLERS:
        raise StudyError(f"{where}: 'sampler' must be one of {SAMPLERS}, got {sampler!r}")
    if (sampler == "grid") != all_grid:
        raise StudyError(
            f"{where}: sampler 'grid' needs every param of type grid (and grid params need "
            f"sampler grid); got sampler {sampler!r} with types {[p.type for p in params]}"
        )
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise StudyError(f"{where}: 'fixed' must be a mapping of dotted keys to values")
    cells = math.prod(len(p.choices) for p in params)
    if all_grid and cells > MAX_TRIALS:
        raise StudyError(f"{where}: 'params' is a grid of {cells} cells; expected at most "
                         f"{MAX_TRIALS} (split the study)")  # fmt: skip
    n_trials = _opt_int(where, data, "n_trials", 1, MAX_TRIALS)
    seed = _opt_int(where, data, "seed", 0, SAMPLER_SEED_MAX)
    preset = data.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise StudyError(f"{where}: 'preset' must be a preset name")
    pruner = data.get("pruner")
    check_pruner(pruner, f"{where}: 'pruner'")
    return StudySpec(
        name=name.strip(),
        params=params,
        direction=direction,
        sampler=sampler,
        n_trials=n_trials,
        preset=preset,
        fixed={str(k): v for k, v in fixed.items()},
        seed=seed,
        source=source,
        pruner=pruner,
    )


def check_pruner(pruner: str | None, what: str) -> None:
    """The one check of a pruner name (a study's ``pruner``, ``--pruner``); None is the default."""
    if pruner is not None and pruner not in PRUNERS:
        raise StudyError(f"{what} must be one of {PRUNERS}, got {pruner!r}")


def _opt_int(where: str, data: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StudyError(f"{where}: '{key}' must be an integer in [{low}, {high}], got {value!r}")
    return value


def _parse_param(where: str, name: str, spec: Any) -> ParamSpec:
    at = f"{where}: params.{name}"
    if not isinstance(spec, dict):
        raise StudyError(f"{at}: expected a mapping with 'type' and bounds or choices")
    unknown = sorted(set(spec) - _PARAM_KEYS)
    if unknown:
        raise StudyError(f"{at}: unknown key(s) {unknown}; expected {sorted(_PARAM_KEYS)}")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise StudyError(f"{at}: 'type' must be one of {PARAM_TYPES}, got {kind!r}")
    if kind in ("float", "int"):
        return _parse_range(at, name, kind, spec)
    return _parse_choices(at, name, kind, spec.get("choices"))


def _parse_range(at: str, name: str, kind: str, spec: dict[str, Any]) -> ParamSpec:
    low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
    num = int if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, num):
            raise StudyError(
                f"{at}: '{key}' must be a {'n integer' if kind == 'int' else ' number'}, got {value!r}"
            )
        if not math.isfinite(value):  # Optuna would sample nan / inf into the config
            raise StudyError(f"{at}: '{key}' must be a finite number, got {value!r}")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, num) or not 0 < step < math.inf
    ):
        raise StudyError(f"{at}: 'step' must be a positive number, got {step!r}")
    if low >= high:
        raise StudyError(f"{at}: 'low' must be below 'high', got low={low!r} high={high!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise StudyError(f"{at}: 'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise StudyError(f"{at}: a log scale needs low > 0, got low={low!r}")
    if log and step is not None:
        raise StudyError(f"{at}: 'step' and 'log' cannot be combined")
    if kind == "float":
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return ParamSpec(name=name, type=kind, low=low, high=high, log=log, step=step)


def _parse_choices(at: str, name: str, kind: str, choices: Any) -> ParamSpec:
    if isinstance(choices, dict):
        if not choices:
            raise StudyError(f"{at}: 'choices' is empty")
        mapped: dict[str, dict[str, Any]] = {}
        for label, over in choices.items():
            over = over or {}
            if not isinstance(over, dict):
                raise StudyError(
                    f"{at}: choice '{label}' must map to dotted overrides, got {over!r}"
                )
            mapped[str(label)] = {str(k): v for k, v in over.items()}
        return ParamSpec(name=name, type=kind, choices=tuple(mapped), choice_overrides=mapped)
    if not isinstance(choices, list) or not choices:
        raise StudyError(
            f"{at}: 'choices' must be a non-empty list (or a mapping label → overrides)"
        )
    bad = [c for c in choices if not isinstance(c, _SCALAR)]
    if bad:
        raise StudyError(f"{at}: choices must be numbers, strings or booleans, got {bad!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise StudyError(f"{at}: choices contain duplicates: {choices!r}")
    return ParamSpec(name=name, type=kind, choices=tuple(choices))


def check_space(spec: StudySpec, base: Config) -> None:
    """Apply every bound and every choice to a copy of ``base`` and validate it.

    So an out-of-range space (e.g. ``data.mask_ratio`` up to 1.5) fails before any trial
    starts and before the storage is touched.
    """
    for p in spec.params:
        for value in p.edge_values():
            cfg = copy.deepcopy(base)
            try:
                apply_overrides(cfg, p.overrides(value))
                validate_config(cfg)
            except CMCRError as exc:
                raise StudyError(
                    f"study '{spec.name}' ({spec.source}): params.{p.name} = {value!r} "
                    f"is not a valid config: {exc}"
                ) from None


def searched_keys(spec: StudySpec) -> set[str]:
    """Every dotted config key the study's params may set."""
    keys: set[str] = set()
    for p in spec.params:
        if p.choice_overrides is None:
            keys.add(p.name)
        else:
            for over in p.choice_overrides.values():
                keys.update(over)
    return keys
