"""Runs → one tidy pandas table: one row per run, typed params, final metrics, a state.

One ``mlflow.search_runs`` call fetches params, tags and the final (last-step) metrics of every
selected run; metric histories are fetched separately, only for the few runs a figure needs.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cmcr.configs import Config, config_from_flat
from cmcr.errors import ConfigError, TrackingError, first_line
from cmcr.names import (
    DEFAULT_EXPERIMENT,
    DEFAULT_STORAGE,
    Attr,
    Kind,
    Metric,
    Tag,
    current_metric,
    dataset_key,
    legacy_metric,
)
from cmcr.registry import DATASETS
from cmcr.tracking.databases import driver_url
from cmcr.tracking.optuna_store import open_storage  # bounded connect wait, the driver
from cmcr.tracking.store import check_readable, make_client, search_value
from cmcr.uris import redact, sqlite_path, tracking_uri

# DEFAULT_STORAGE, redact and sqlite_path are imported from here by results/report.py and ui.py
__all__ = ["DEFAULT_STORAGE", "redact", "sqlite_path", "Selection", "RunTable", "collect"]
TARGET = Metric.VAL_MIOU
# Columns of the tidy table that are not params or metrics.
META = ("run_id", "run_name", "status", "state", "kind", "study", "trial", "variant", "seed",
        "start_time", "end_time", "status_reason", "pruned_at_step", "pruned_phase")  # fmt: skip
PRUNED = "PRUNED"  # the state of a run whose trial Optuna's pruner stopped
# Params that never define a configuration: the seed is what we average over.
NOT_SWEPT_PREFIXES = ("train.seed", "tracking.")


class ReportError(TrackingError):
    """The selection of runs cannot be reported (unknown study, nothing matched, bad filter)."""


@dataclass
class Selection:
    """Which runs to report: an experiment, optionally a study tag and an MLflow filter."""

    tracking_uri: str = ""
    # None: the study's own experiment (named after it) and the default one (ad-hoc runs and
    # studies begun before one experiment per study), else the default alone
    experiment: str | None = None
    study: str | None = None
    filter_string: str = ""
    storage: str | None = None  # Optuna storage URL; None = the default when it exists


@dataclass
class RunTable:
    """The tidy table and what the report needs to know about it."""

    runs: pd.DataFrame  # one row per trial run; columns META + params + metrics
    params: list[str]  # dotted config keys (typed)
    metrics: list[str]  # final-value metric keys ("val/miou", "train/loss", ...)
    experiment_id: str
    tracking_uri: str
    parent_run_id: str | None = None
    study: Any = None  # optuna.Study when one was found
    notes: list[str] = field(default_factory=list)
    study_error: str = ""  # why the Optuna study could not be read (storage down, bad URL)
    experiments: list[str] = field(default_factory=list)  # names of those holding the runs

    @property
    def complete(self) -> pd.DataFrame:
        """Runs that count: finished, with the target metric, not pruned."""
        return self.runs[self.runs["state"] == "COMPLETE"]

    @property
    def incomplete(self) -> pd.DataFrame:
        """Running, scheduled, failed, killed or pruned runs: listed, never averaged."""
        return self.runs[self.runs["state"] != "COMPLETE"]

    @property
    def pruned(self) -> pd.DataFrame:
        """Runs of trials Optuna's pruner stopped (the study's state, else the run's tag)."""
        return self.runs[self.runs["state"] == PRUNED]

    def swept(self) -> list[str]:
        """Params whose value differs across the complete runs (seeds and tracking excluded)."""
        df = self.complete
        out = []
        for p in self.params:
            if p.startswith(NOT_SWEPT_PREFIXES) or p not in df:
                continue
            if df[p].astype(str).nunique(dropna=False) > 1:
                out.append(p)
        return out


def collect(sel: Selection) -> RunTable:
    """Fetch the selected runs (one search_runs call) into a RunTable; ReportError if none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    # resolved only, and refused in one line when missing, empty or not MLflow's: a report
    # never creates a store, nor lets MLflow build its schema into a file that is not one
    uri = check_readable(tracking_uri(sel.tracking_uri))
    client = make_client(uri)
    exps = _experiments(client, sel, uri)
    exp = exps[0]
    filters = [f for f in (sel.filter_string.strip(),) if f]
    if sel.study:
        filters.append(_study_filter(sel.study))
    mlflow.set_tracking_uri(driver_url(uri))  # psycopg2 for a plain postgresql:// store
    try:
        raw = mlflow.search_runs(
            experiment_ids=[e.experiment_id for e in exps],
            filter_string=" and ".join(filters),
            max_results=1_000_000,
            output_format="pandas",
        )
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(f"--filter '{sel.filter_string}' is not valid: {first}") from None
    study, study_error = None, ""
    try:
        study = load_optuna_study(sel.study, sel.storage) if sel.study else None
    except ReportError as exc:  # the runs can still be reported; the page says what is missing
        study_error = f"study figures unavailable: {exc}"
    if raw.empty:
        raise ReportError(_nothing_matched(sel, uri, study, [e.experiment_id for e in exps]))
    kind = raw.get(f"tags.{Tag.KIND}", pd.Series(index=raw.index, dtype=object))
    parents = raw[kind == Kind.STUDY]
    trials = raw[kind != Kind.STUDY]
    if trials.empty:
        raise ReportError(_nothing_matched(sel, uri, study, [e.experiment_id for e in exps]))
    table = _tidy(trials)
    parent = parents["run_id"].iloc[0] if sel.study and not parents.empty else None
    names = {e.experiment_id: e.name for e in exps}
    held = [names[i] for i in dict.fromkeys(trials["experiment_id"]) if i in names]
    rt = RunTable(table, _param_cols(table), _metric_cols(table), exp.experiment_id, uri,
                  parent_run_id=parent, study=study, study_error=study_error,
                  experiments=held)  # fmt: skip
    _merge_optuna(rt)
    return rt


def _experiments(client: Any, sel: Selection, uri: str) -> list[Any]:
    """The experiments to search, the study's own first; ReportError when none exists."""
    names = [sel.experiment] if sel.experiment else [sel.study, DEFAULT_EXPERIMENT]
    found = [e for n in dict.fromkeys(n for n in names if n)
             if (e := client.get_experiment_by_name(n)) is not None]  # fmt: skip
    if not found:
        shown = " or ".join(f"'{n}'" for n in names if n)
        known = known_studies(client, sel.storage) if sel.study else ""
        raise ReportError(f"experiment {shown} does not exist in {redact(uri)}{known}")
    return found


def known_studies(client: Any, storage: str | None) -> str:
    """``' (studies: a, b)'``: the studies with a parent run in the MLflow store, and those in
    the Optuna storage when it exists; ``' (no study yet ...)'`` when there are none."""
    query = f"tags.`{Tag.KIND}` = '{Kind.STUDY}'"
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, query, max_results=1000) if exp_ids else []
    names = {r.data.tags.get(Tag.STUDY) for r in runs} - {None}
    url = storage or DEFAULT_STORAGE
    db = sqlite_path(url)
    if db is None or db.is_file():
        import optuna

        try:
            found = optuna.get_all_study_summaries(open_storage(url, read_only=True), False)
            names |= {s.study_name for s in found}
        except Exception:  # noqa: BLE001 (an unreadable storage only shortens the list)
            pass
    if not names:
        return " (no study has been run into it yet: python sweeps/run.py --study NAME)"
    shown = sorted(names)
    more = f", ... ({len(shown)} in all)" if len(shown) > 20 else ""
    return f" (studies: {', '.join(shown[:20])}{more})"


def _study_filter(study: str) -> str:
    """The MLflow filter selecting the runs of ``study`` (its name escaped)."""
    return f"tags.`{Tag.STUDY}` = {search_value(study)}"


def _nothing_matched(sel: Selection, uri: str, study: Any, exp_ids: list[str]) -> str:
    """Say which part of the selection matched nothing: the study, the filter or the experiment."""
    where = f"experiment '{sel.experiment or sel.study or DEFAULT_EXPERIMENT}' of {redact(uri)}"
    if sel.study and sel.filter_string and _study_has_runs(uri, exp_ids, sel.study):
        return f"--filter '{sel.filter_string}' matched no runs of study '{sel.study}' in {where}"
    if sel.study:
        if study is not None:
            extra = " (the Optuna study exists but logged no runs)"
        else:
            extra = known_studies(make_client(uri), sel.storage)
        return f"unknown study '{sel.study}': no runs tagged optuna.study in {where}{extra}"
    if sel.filter_string:
        return f"--filter '{sel.filter_string}' matched no runs in {where}"
    return f"{where} has no runs"


def _study_has_runs(uri: str, exp_ids: list[str], study: str) -> bool:
    found = make_client(uri).search_runs(exp_ids, _study_filter(study), max_results=1)
    return len(found) > 0


def load_optuna_study(name: str, storage: str | None) -> Any:
    """The Optuna study ``name`` when its storage exists and holds it, else None."""
    url = storage or DEFAULT_STORAGE
    db = sqlite_path(url)
    if db is not None and not db.is_file():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url, read_only=True))
    except KeyError:
        return None
    except Exception as exc:  # a bad URL must not hide the MLflow side; say it on the page
        raise ReportError(
            redact(f"Optuna storage {url} cannot be read: {first_line(exc)}")
        ) from None


def _tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """Rename MLflow's prefixed columns, cast params to config types, derive the state."""
    tag = lambda k: raw.get(f"tags.{k}", pd.Series([None] * len(raw), index=raw.index))  # noqa: E731
    meta = pd.DataFrame(
        {
            "run_id": raw["run_id"],
            "run_name": tag(Tag.RUN_NAME),
            "status": raw["status"],
            "kind": tag(Tag.KIND),
            "study": tag(Tag.STUDY),
            "trial": pd.to_numeric(tag(Tag.TRIAL), errors="coerce").astype("Int64"),
            "variant": tag(Tag.VARIANT),
            "seed": pd.to_numeric(tag(Tag.SEED), errors="coerce").astype("Int64"),
            "start_time": raw["start_time"],
            "end_time": raw["end_time"],
            "status_reason": tag(Tag.STATUS_REASON),
            "pruned_at_step": pd.to_numeric(tag(Tag.PRUNED_AT_STEP), errors="coerce").astype(
                "Int64"
            ),
            "pruned_phase": tag(Tag.PRUNED_PHASE),
        }
    )
    params = {c[len("params.") :]: cast_param(c[len("params.") :], raw[c])
              for c in raw.columns if c.startswith("params.")}  # fmt: skip
    metrics: dict[str, pd.Series] = {}
    for c in (c for c in raw.columns if c.startswith("metrics.")):
        key = current_metric(c[len("metrics.") :])  # an old run's probe/* under its new name
        values = raw[c].astype(float)
        metrics[key] = values if key not in metrics else metrics[key].fillna(values)
    df = pd.concat([meta, pd.DataFrame(params, index=raw.index),
                    pd.DataFrame(metrics, index=raw.index)], axis=1)  # fmt: skip
    if "seed" in df and "train.seed" in df:
        df["seed"] = df["seed"].fillna(pd.to_numeric(df["train.seed"], errors="coerce"))
    # a run is complete with any downstream dataset's mIoU (a SemanticKITTI-only fine-tune too)
    targets = [c for c in (dataset_key(d, TARGET) for d in DATASETS.names()) if c in df]
    has_target = df[targets].notna().any(axis=1) if targets else pd.Series(False, index=df.index)
    df["state"] = df["status"].where(df["status"] != "FINISHED", "COMPLETE")
    df.loc[(df["status"] == "FINISHED") & ~has_target, "state"] = "NO_METRIC"
    # the sweep tags a pruned trial's runs (they end KILLED): pruned even without the study
    df.loc[(tag(Tag.STATE) == PRUNED).to_numpy(), "state"] = PRUNED
    order = df["trial"].fillna(-1).astype(int).to_numpy() if "trial" in df else None
    return df.iloc[order.argsort(kind="stable")] if order is not None else df


def cast_param(key: str, values: pd.Series) -> pd.Series:
    """MLflow strings → the config's type (bool, int, float, str; lists become tuples)."""
    typ = config_types().get(key)
    present = values.dropna()
    if typ is None or present.empty:  # not a config key (something else logged it): strings
        return values
    if typ is float:
        return pd.to_numeric(values, errors="coerce").astype(float)
    if typ is int:
        return pd.to_numeric(values, errors="coerce").astype("Int64")
    if typ is str:
        return values
    # bools and lists: few distinct values, each cast by the config's own rules
    mapping = {v: _typed_or_text(key, v) for v in present.unique()}
    mapping = {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}
    return values.map(mapping).astype(object)


@functools.cache
def config_types() -> dict[str, type]:
    """Dotted config key → its annotated type (list[...] as list), from the schema."""
    out: dict[str, type] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            typ = hints[f.name]
            if dataclasses.is_dataclass(typ):
                walk(typ, f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = typing.get_origin(typ) or typ

    walk(Config, "")
    return out


def _typed_or_text(key: str, value: str) -> Any:
    """``_typed``, or the logged text itself when it does not parse as the key's type today
    (a run logged by an older version: a list of strings such as ``[00, 01]`` read as ints)."""
    try:
        return _typed(key, value)
    except ConfigError:
        return value


def _typed(key: str, value: str) -> Any:
    """The value of ``key`` after config_from_flat (the config's own casting rules)."""
    node: Any = config_from_flat({key: value})
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _param_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in META and "/" not in c and c != "state"]


def _metric_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if "/" in c]


def trial_runs(trial: Any) -> dict[str, int]:
    """Every MLflow run of an Optuna trial, as {run id: seed}: all seeds (``mlflow_run_ids``),
    else seed 0's ``mlflow_run_id`` (studies made before every seed was recorded)."""
    by_seed = trial.user_attrs.get(Attr.RUN_IDS) or {}
    runs = {run_id: int(seed) for seed, run_id in by_seed.items() if run_id}
    single = trial.user_attrs.get(Attr.RUN_ID)
    if single and single not in runs:
        runs[single] = 0
    return runs


def _merge_optuna(rt: RunTable) -> None:
    """Attach each run's Optuna trial (number and state); pruned trials leave the averages."""
    if rt.study is None:
        return
    by_run = {run_id: t for t in rt.study.get_trials(deepcopy=False) for run_id in trial_runs(t)}
    runs = rt.runs["run_id"]
    states = runs.map(lambda r: by_run[r].state.name if r in by_run else None)
    rt.runs["optuna_state"] = states
    numbers = runs.map(lambda r: by_run[r].number if r in by_run else None).astype("Int64")
    rt.runs["trial"] = rt.runs["trial"].fillna(numbers)  # runs made before the trial tag
    rt.runs.loc[states == PRUNED, "state"] = PRUNED
    missing = len(rt.runs) - int(states.notna().sum())
    if missing:
        rt.notes.append(
            f"{missing} run(s) have no Optuna trial linked by {Attr.RUN_IDS} or {Attr.RUN_ID}."
        )


def metric_histories(tracking_uri: str, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """Long table (run_id, key, step, value) for a few runs only: one request per run and key."""
    client = make_client(tracking_uri)
    rows = []
    for run_id in run_ids:
        for key in keys:
            history = client.get_metric_history(run_id, key)
            old = legacy_metric(key)
            if not history and old is not None:  # a run logged before the rename
                history = client.get_metric_history(run_id, old)
            rows += [(run_id, key, m.step, m.value) for m in history]
    df = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    return df.sort_values(["run_id", "key", "step"], kind="stable")


MODE_NAMES = {"probe": "LP", "finetune": "FT"}


def _mode_of(row: pd.Series, dataset: str) -> str | None:
    """The mode a run evaluated ``dataset`` in: its downstream.evaluations entry, else
    downstream.mode (a probe / fine-tune run, or a trial with one evaluation)."""
    listed = row.get("downstream.evaluations")
    if isinstance(listed, (list, tuple)) and listed:
        modes = [e.split("/", 1)[1] for e in listed if e.startswith(f"{dataset}/")]
        return modes[0] if modes else None
    mode = row.get("downstream.mode")
    return mode if isinstance(mode, str) else (row["kind"] if row["kind"] in MODE_NAMES else None)


def evaluations(rt: RunTable) -> pd.DataFrame:
    """One row per (complete run, downstream evaluation it logged): run_id, variant, seed,
    dataset, mode, fraction, evaluation (e.g. 'SemanticKITTI FT (1 %)') and miou.

    The results grouped by dataset: nuScenes LP, nuScenes 1 % FT and SemanticKITTI 1 % FT of
    the same configurations side by side (``cmcr.results.tables.evaluations_markdown``)."""
    df, rows = rt.complete, []
    for dataset, spec in DATASETS.items():  # its display name and where its fractions live
        col = dataset_key(dataset, TARGET)
        if col not in df:
            continue
        for _, row in df[df[col].notna()].iterrows():  # runs, not points: a few hundred at most
            mode = _mode_of(row, dataset)
            if mode is None:
                continue
            fraction = row.get(spec.fraction_key.format(mode=mode))
            label = f"{spec.display} {MODE_NAMES[mode]}"
            if fraction is not None and pd.notna(fraction):
                label += f" ({100 * float(fraction):g} %)"
            rows.append({"run_id": row["run_id"], "variant": row["variant"], "seed": row["seed"],
                         "dataset": dataset, "mode": mode, "fraction": fraction,
                         "evaluation": label, "miou": float(row[col])})  # fmt: skip
    cols = ["run_id", "variant", "seed", "dataset", "mode", "fraction", "evaluation", "miou"]
    return pd.DataFrame(rows, columns=cols)
