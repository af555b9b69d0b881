"""MLflow tracking: one ``RunLogger`` per run, explicit run ids, main process only.

Why not the fluent API (``mlflow.start_run``)? It keeps a process-global active run and
reads/writes ``MLFLOW_RUN_ID``; sweep trials running in one process would leak into each
other. ``MlflowClient`` with explicit run ids has no hidden state, so every call here names
its run.

Resume and metric history: a resumed run continues the SAME MLflow run. Steps between the
last checkpoint and the interruption were already logged and are re-run after resuming; the
trainer asks ``last_logged_step`` once and skips logging for steps already in the history, so
each step appears exactly once (the first value logged wins; nothing is deleted).

Credentials in storage URLs never reach MLflow: every param, tag and text value goes through
``cmcr.uris.redact``, and MLflow's own "View run at <url>" line (which prints the tracking URI)
is switched off through its public setting ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``.

This module owns a run's life for engine, sweep and results alike: ``RunLogger.start`` creates
a run WITH its params (or resumes one), and ``end_run`` / ``mark_state`` / ``reopen`` /
``set_tag_shared`` end, tag and reopen runs by id (``find_child_run`` and
``running_children`` find a sweep's runs by tag and status); nobody else calls ``set_terminated``,
``update_run`` or ``set_tag`` on a run. (That is why this module is ~510 lines, over the usual
400: splitting a run's life across modules is the two-owner problem issue 15 removed.)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cmcr.configs import Config, config_to_dict, flatten_config, variant_name
from cmcr.errors import TrackingError
from cmcr.names import (
    DEFAULT_ARTIFACTS,
    DEFAULT_EXPERIMENT,
    EXPERIMENT_KIND_TRAINING,
    ExpTag,
    Kind,
    Tag,
    is_local_key,
)
from cmcr.uris import create_sqlite_atomically, redact, sqlite_path, tracking_uri

_log = logging.getLogger("cmcr.tracking")

# MLflow prints "View run <name> at: <tracking URI>/..." when a run on a server ends: the URI
# may carry credentials, and the line interleaves with the sweep's progress view
_QUIET_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
STATUSES = ("FINISHED", "FAILED", "KILLED")
# MLflow limits: 250 chars for a param value in old stores, 6000 in new ones; tags 8000.
_PARAM_MAX = 6000
_TAG_MAX = 8000
# Files above this size enter the dataset fingerprint by size and mtime instead of contents.
_FINGERPRINT_CONTENT_MAX = 8 << 20


def resolve_tracking_uri(cfg: Config) -> str:
    """cfg.tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else the embedded sqlite store.

    A missing embedded store is created here, atomically: a kill during MLflow's schema
    migrations must not leave half a schema ("table logged_models already exists" next time).
    """
    uri = tracking_uri(cfg.tracking.tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        create_sqlite_atomically(db, functools.partial(_build_mlflow_schema, artifacts=uri))
    return uri


def _build_mlflow_schema(tmp_uri: str, *, artifacts: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(tmp_uri, artifact_location(artifacts)).engine.dispose()


def artifact_location(uri: str) -> str | None:
    """Artifacts of an embedded sqlite store live beside it (``names.DEFAULT_ARTIFACTS``)."""
    db = sqlite_path(uri)
    if db is None:
        return None  # a server or other store decides its own artifact root
    return (db.resolve().parent / Path(DEFAULT_ARTIFACTS).name).as_uri()


def make_client(uri: str) -> Any:
    """An ``MlflowClient`` bound to ``uri`` (imported lazily: mlflow is slow to import)."""
    from mlflow.tracking import MlflowClient

    if redact(uri) != uri:  # the URL MLflow would print carries a secret: never print it
        os.environ[_QUIET_URL_ENV] = "true"
    else:
        os.environ.setdefault(_QUIET_URL_ENV, "true")
    return MlflowClient(tracking_uri=uri)


@functools.lru_cache(maxsize=8)
def client_for(uri: str) -> Any:
    """One shared MlflowClient per tracking URI for the process (building one costs ~0.2 s)."""
    return make_client(uri)


def get_or_create_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with the embedded artifact root) if missing."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"tracking.experiment '{name}' is deleted in {redact(uri)}; "
                "restore it or choose another name"
            )
        if ExpTag.KIND not in exp.tags:  # made before issue 16: mark it now, once
            client.set_experiment_tag(exp.experiment_id, ExpTag.KIND, EXPERIMENT_KIND_TRAINING)
        return exp.experiment_id
    try:
        # the kind in the creating request: MLflow 3 opens a model-training experiment on its
        # runs table, not on the GenAI views (traces, token usage)
        return client.create_experiment(name, artifact_location=artifact_location(uri),
                                        tags={ExpTag.KIND: EXPERIMENT_KIND_TRAINING})  # fmt: skip
    except MlflowException:
        # another process (a parallel sweep worker) created it between our two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def study_experiment(cfg: Config, study: str) -> str:
    """The MLflow experiment a sweep of ``study`` records into: ``cfg.tracking.experiment`` when
    it was changed from the default, else one named after the study (issue 16). A study begun
    before that, whose parent run lives in the default experiment, stays there (its resumed
    trials beside its earlier ones); looked up only in stores on this machine, never over http
    before the preflight check has bounded MLflow's retries."""
    if cfg.tracking.experiment != DEFAULT_EXPERIMENT:
        return cfg.tracking.experiment
    uri = tracking_uri(cfg.tracking.tracking_uri)
    db = sqlite_path(uri)
    if uri.startswith(("http://", "https://")) or (db is not None and not db.is_file()):
        return study
    client = client_for(uri)
    if client.get_experiment_by_name(study) is not None:
        return study
    legacy = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    if legacy is None:
        return study
    query = f"tags.`{Tag.KIND}` = '{Kind.STUDY}' and tags.`{Tag.STUDY}` = {search_value(study)}"
    found = client.search_runs([legacy.experiment_id], filter_string=query, max_results=1)
    return DEFAULT_EXPERIMENT if found else study


def prepare_study_experiment(
    uri: str,
    experiment: str,
    *,
    study: str,
    objective: str,
    direction: str,
    params: list[str],
    note: str = "",
) -> str:
    """Create or mark ``experiment`` for sweep ``study``: model-training kind, a saved view of its
    runs table (the objective and the swept ``params`` as columns, sorted by the objective, the
    trials only) and its description. Returns the experiment id."""
    from cmcr.adapters.mlflow_views import runs_view

    client = client_for(uri)
    exp_id = get_or_create_experiment(client, experiment, uri)
    key, value = runs_view(f"study {study}", [objective],
                           sorted(params), order_by=objective, ascending=direction == "minimize",
                           filter_string=f"tags.`{Tag.KIND}` = '{Kind.TRIAL}' and "
                                         f"tags.`{Tag.STUDY}` = {search_value(study)}")  # fmt: skip
    client.set_experiment_tag(exp_id, key, value)
    client.set_experiment_tag(exp_id, ExpTag.STUDY, _clip(redact(study), _TAG_MAX))
    if note:
        client.set_experiment_tag(exp_id, ExpTag.NOTE, _clip(redact(note), _TAG_MAX))
    return exp_id


def study_note(
    study: str,
    *,
    objective: str,
    direction: str,
    params: list[str],
    best: Mapping[str, Any] | None = None,
    report: str | None = None,
) -> str:
    """The markdown description of a study's experiment and parent run: what is swept and
    optimised, where the table view and the report are, and the best trial with its run."""
    from cmcr.adapters.mlflow_views import view_query

    lines = [
        f"**Optuna study `{study}`**: {direction} `{objective}` (trial value: mean over seeds).",
        "",
        f"Swept: {', '.join(f'`{p}`' for p in sorted(params)) or 'nothing (a grid of variants)'}.",
        "",
        f"Runs table with these columns, sorted by `{objective}`: *Views → study {study}* above "
        f"the table, or this page's address with `?{view_query()}`.",
    ]
    if best:
        lines += ["", f"Best so far: trial {best['trial']}, `{objective}` = {best['value']:.4f}, "
                      f"run [{best['run_id']}](#/experiments/{best['experiment_id']}/runs/"
                      f"{best['run_id']})."]  # fmt: skip
    if report:
        lines += ["", f"Report: [{report}]({report})"]
    return "\n".join(lines)


def describe_study(
    uri: str, experiment_id: str, parent_run_id: str | None, note: str, *, shared: bool = False
) -> None:
    """Write ``note`` (markdown) as the description of the experiment and of the study's parent
    run (tag ``mlflow.note.content``: the UI shows it on their pages)."""
    client = client_for(uri)
    text = _clip(redact(note), _TAG_MAX)
    client.set_experiment_tag(experiment_id, ExpTag.NOTE, text)
    if parent_run_id:
        set_tag_shared(uri, parent_run_id, Tag.NOTE, text) if shared else client.set_tag(
            parent_run_id, Tag.NOTE, text
        )


def ui_urls(base: str, experiment_id: str, run_ids: Mapping[str, str] | None = None) -> dict:
    """Links into the MLflow UI at ``base`` (``http://127.0.0.1:5000``): the experiment's runs
    table in its saved study view, and each run's page (``{label: run id}``), all opening the
    model-training side of MLflow 3's UI."""
    from cmcr.adapters.mlflow_views import view_query
    from cmcr.names import UI_WORKFLOW_QUERY

    root = f"{base.rstrip('/')}/#/experiments/{experiment_id}"
    out = {"runs": f"{root}/runs?{view_query()}&{UI_WORKFLOW_QUERY}"}
    for label, run_id in (run_ids or {}).items():
        out[label] = f"{root}/runs/{run_id}?{UI_WORKFLOW_QUERY}"
    return out


def _log_inputs(client: Any, run_id: str, datasets: list[Any], tries: int = 3) -> None:
    """``log_inputs``, tried again when another process created the same dataset meanwhile:
    MLflow's server finds-or-creates the dataset row without a lock, so two workers starting
    runs on one world at once can hit its unique key (seen with PostgreSQL behind a server);
    the second try finds the row. The Dataset column is a convenience: a store that still
    refuses is logged as a warning, not a failed run."""
    from mlflow.exceptions import MlflowException

    for attempt in range(tries):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as exc:
            if attempt == tries - 1:
                first = (str(exc).strip().splitlines() or ["(no message)"])[0]
                _log.warning(redact(f"run {run_id}: datasets not logged ({first})"))
                return
            time.sleep(0.2 * (attempt + 1))


def dataset_inputs(cfg: Config, kind: str, fingerprint: str) -> list[Any]:
    """The MLflow dataset inputs of a run (the UI's Dataset column): the world's splits it reads,
    named ``<world>/<split>``, digest = the dataset fingerprint, context train / validation."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    root = Path(cfg.data.dataroot)
    world = root.resolve().name or str(root)
    source = json.dumps({"uri": redact(str(root.resolve())), "version": cfg.data.version})
    splits = [("train", cfg.data.train_split)]
    if kind != Kind.PRETRAIN:  # pre-training validates on held-out scenes of its train split
        splits.append(("validation", cfg.data.val_split))
    return [
        DatasetInput(Dataset(name=f"{world}/{split}", digest=fingerprint, source_type="local",
                             source=source), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for context, split in splits
    ]  # fmt: skip


def git_commit() -> str:
    """``git rev-parse HEAD`` of the source tree, or "unknown" outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def dataset_fingerprint(cfg: Config) -> str:
    """A short hash of the dataroot's table files (contents if small, else size + mtime)."""
    folder = Path(cfg.data.dataroot) / cfg.data.version
    if not folder.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.json")):
        st = f.stat()
        h.update(f.name.encode())
        if st.st_size <= _FINGERPRINT_CONTENT_MAX:
            h.update(f.read_bytes())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def config_params(cfg: Config) -> dict[str, str]:
    """``flatten_config(cfg)`` as MLflow params: string values, credentials redacted."""
    return {k: _clip(redact(_as_text(v)), _PARAM_MAX) for k, v in flatten_config(cfg).items()}


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML (the ``config.yaml`` artifact), credentials redacted."""
    import yaml

    return redact(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _as_text(value: Any) -> str:
    # lists keep YAML-readable form so config_from_flat can parse them back
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_item_text(v) for v in value) + "]"
    return str(value)


def _item_text(value: Any) -> str:
    """A list item: bare when YAML reads it back as itself (``CAM_FRONT``), else quoted (the
    SemanticKITTI sequence ``"00"``, which bare would read back as the integer 0)."""
    import json

    import yaml

    text = _as_text(value)
    if isinstance(value, str):
        try:
            same = yaml.safe_load(f"[{text}]") == [value]
        except yaml.YAMLError:
            same = False
        return text if same else json.dumps(value)
    return text


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def standard_tags(cfg: Config, kind: str, parent_run_id: str | None) -> dict[str, str]:
    """The contract tags every run carries (docs/architecture.md, MLflow names)."""
    tags = {
        Tag.KIND: kind,
        Tag.VARIANT: variant_name(cfg),
        Tag.PRESET: cfg.preset,
        Tag.SEED: str(cfg.train.seed),
        Tag.GIT_COMMIT: git_commit(),
        Tag.DATASET_FINGERPRINT: dataset_fingerprint(cfg),
    }
    if parent_run_id:
        tags[Tag.PARENT_RUN] = parent_run_id
    return tags


def last_logged_step(
    run_id: str, key: str, *, uri: str | None = None, client: Any = None
) -> int | None:
    """The largest step of metric ``key`` in run ``run_id``, or None if never logged."""
    client = client or make_client(tracking_uri(uri))
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=None)


class RunLogger:
    """Logs one MLflow run by explicit id; every method is a no-op when ``is_main`` is False."""

    def __init__(self, client: Any, run_id: str | None, uri: str, *, is_main: bool = True) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.is_main = is_main
        self.ended = False
        self._monitor: Any = None

    # ---- creation ---------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        cfg: Config,
        *,
        kind: str,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        log_params: bool = True,
        is_main: bool = True,
        params: Mapping[str, Any] | None = None,
    ) -> RunLogger:
        """Create a run in cfg.tracking.experiment, or resume ``run_id`` (which must exist).

        ``params``: what a new run records instead of ``config_params(cfg)`` (a sweep creates
        a trial's run with the config the trainer will see, before the trainer runs).
        """
        uri = resolve_tracking_uri(cfg)
        if not is_main:
            return cls(None, run_id, uri, is_main=False)
        client = make_client(uri)
        exp_id = get_or_create_experiment(client, cfg.tracking.experiment, uri)
        all_tags = standard_tags(cfg, kind, parent_run_id)
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        if run_id is None:
            # tags in the same request: a run killed right after creation can still be found
            # by them (a sweep's child run by study, slot and seed), never an untagged orphan
            run = client.create_run(exp_id, run_name=run_name, tags=_tag_text(all_tags))
            run_id = run.info.run_id
            resumed = False
        else:
            _require_run(client, run_id, uri)
            # checked before the run is touched: a refused resume leaves its status alone
            new_params = _new_params(client, run_id, cfg) if log_params else {}
            reopen(uri, run_id, client=client)
            resumed = True
        logger = cls(client, run_id, uri, is_main=True)
        try:
            logger.set_tags(all_tags)
            if not resumed and kind != Kind.STUDY:  # the study's parent run reads no data
                fingerprint = all_tags[Tag.DATASET_FINGERPRINT]
                _log_inputs(client, run_id, dataset_inputs(cfg, kind, fingerprint))
            if log_params:
                fresh = config_params(cfg) if params is None else params
                logger.log_params(new_params if resumed else fresh)
            if cfg.tracking.system_metrics:
                logger._start_system_metrics(resumed)
        except BaseException as exc:
            logger.end("FAILED", reason=f"could not start tracking: {exc}")
            raise
        return logger

    def _start_system_metrics(self, resumed: bool) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(
            self.run_id, resume_logging=resumed, tracking_uri=self.uri
        )
        self._monitor.start()

    # ---- logging ----------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log several metrics at one step in one request."""
        if not self.is_main or not metrics:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        # log_batch accepts at most 1000 metrics per call
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000], synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as text, credentials redacted), batched."""
        if not self.is_main or not params:
            return
        from mlflow.entities import Param

        items = [Param(k, _clip(redact(_as_text(v)), _PARAM_MAX)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as text, credentials redacted)."""
        if not self.is_main or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _tag_text(tags).items()]
        self.client.log_batch(self.run_id, tags=items, synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file or folder into the run's artifacts."""
        if not self.is_main:
            return
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, file: str) -> None:
        """Store ``text`` as the artifact ``file`` (credentials redacted)."""
        if not self.is_main:
            return
        self.client.log_text(self.run_id, redact(text), file)

    def log_figure(self, fig: Any, file: str) -> None:
        """Store a plotly (as .html) or matplotlib figure as the artifact ``file``."""
        if not self.is_main:
            return
        if _is_plotly(fig) and not file.endswith(".html"):
            # MLflow writes plotly figures as HTML only; keep the name honest
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / (Path(file).stem + ".html")
                fig.write_html(str(out), include_plotlyjs="cdn")
                parent = str(Path(file).parent)
                self.client.log_artifact(self.run_id, str(out), None if parent == "." else parent)
            return
        self.client.log_figure(self.run_id, fig, file)

    def last_logged_step(self, key: str) -> int | None:
        """The largest logged step of metric ``key`` in this run (None on non-main processes)."""
        if not self.is_main:
            return None
        return last_logged_step(self.run_id, key, client=self.client)

    # ---- ending -----------------------------------------------------------------------
    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Mark the run ended with ``status``; ``reason`` goes to tag ``cmcr.status_reason``."""
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, got {status!r}")
        if not self.is_main or self.ended:
            self.ended = True
            return
        self.ended = True
        if self._monitor is not None:
            try:
                self._monitor.finish()
            finally:
                self._monitor = None
        end_run(self.uri, self.run_id, status, reason, client=self.client)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.ended:
            return
        if exc is None:
            self.end("FINISHED")
        elif isinstance(exc, KeyboardInterrupt):
            self.end("KILLED", reason="interrupted (KeyboardInterrupt)")
        elif _is_pruned(exc):  # the sweep's pruner stopped it: not a failure
            self.end("KILLED", reason=f"pruned by optuna: {exc}")
        else:
            self.end("FAILED", reason=f"{type(exc).__name__}: {exc}")


def _is_pruned(exc: BaseException) -> bool:
    """An ``optuna.TrialPruned`` (optuna is imported whenever one can have been raised)."""
    import sys

    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exc, optuna.TrialPruned)


# ---- a run's life by id (sweep and results: no RunLogger needed) ---------------------------
def end_run(
    uri: str, run_id: str, status: str, reason: str | None = None, *, client: Any = None
) -> None:
    """End ``run_id`` with ``status``; ``reason`` (redacted) goes to tag ``cmcr.status_reason``."""
    if status not in STATUSES:
        raise ValueError(f"status: expected one of {STATUSES}, got {status!r}")
    client = client or client_for(uri)
    if reason:
        client.set_tag(run_id, Tag.STATUS_REASON, _clip(redact(reason), _TAG_MAX))
    client.set_terminated(run_id, status=status)


def reopen(
    uri: str, run_id: str, tags: Mapping[str, Any] | None = None, *, client: Any = None
) -> None:
    """Mark ``run_id`` RUNNING again (a resumed run, a study's parent while workers run)."""
    client = client or client_for(uri)
    client.update_run(run_id, status="RUNNING")
    if tags:
        RunLogger(client, run_id, uri).set_tags(tags)


def mark_state(
    uri: str,
    run_id: str,
    state: str,
    status: str | None = None,
    reason: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Tag ``run_id`` with its Optuna ``state`` (and ``tags``); with ``status``, end it if
    still open.

    A seed that finished stays FINISHED; a run the trainer left RUNNING (or FAILED by an earlier
    attempt, now pruned or killed) is ended with ``status`` and ``reason``.
    """
    client = client_for(uri)
    client.set_tag(run_id, Tag.STATE, state)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    if status is None:
        return
    current = client.get_run(run_id).info.status
    if current == "RUNNING" or (current == "FAILED" and status != "FAILED"):
        end_run(uri, run_id, status, reason, client=client)
    elif reason:
        client.set_tag(run_id, Tag.STATUS_REASON, _clip(redact(reason), _TAG_MAX))


def set_tag_shared(uri: str, run_id: str, key: str, value: str, attempts: int = 5) -> None:
    """Set a tag that several workers may write at the same moment.

    MLflow's SQL store upserts a tag as select-then-insert, so two workers finishing together
    can both insert and one gets a unique-key violation; the retry finds the row and updates it.
    (tenacity is not a dependency; five tries in a loop do.)
    """
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    for attempt in range(attempts):
        try:
            client.set_tag(run_id, key, _clip(redact(value), _TAG_MAX))
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def search_value(text: str) -> str:
    """``text`` as a string literal for an MLflow search filter (``it's`` → ``"it's"``).

    MLflow strips the quotes of a literal but never unescapes it (``'it\\'s'`` matches the text
    ``it\\'s``), so the text is wrapped in the quote it does not contain; with both it cannot
    be written at all (TrackingError).
    """
    text = str(text)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise TrackingError(f"{text!r}: a name with both ' and \" cannot be searched in MLflow")


def _require_run(client: Any, run_id: str, uri: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"run id '{run_id}' does not exist in {redact(uri)}") from None
    if run.info.lifecycle_stage == "deleted":
        raise TrackingError(f"run id '{run_id}' is deleted in {redact(uri)}")


def _new_params(client: Any, run_id: str, cfg: Config) -> dict[str, str]:
    """The config params ``run_id`` lacks; TrackingError if any recorded value differs."""
    params = config_params(cfg)
    old = client.get_run(run_id).data.params
    # machine-local keys (tracking.*, the dataroot) say where a run is recorded and read its
    # data, not what it computes: they may differ on resume
    changed = sorted(
        k for k, v in params.items() if k in old and old[k] != v and not is_local_key(k)
    )
    if changed:
        raise TrackingError(
            f"run {run_id} was recorded with a different config "
            f"({', '.join(f'{k}: {old[k]} -> {params[k]}' for k in changed)}); "
            "resume it with the same config"
        )
    return {k: v for k, v in params.items() if k not in old}


def _tag_text(tags: Mapping[str, Any]) -> dict[str, str]:
    return {k: _clip(redact(_as_text(v)), _TAG_MAX) for k, v in tags.items()}


def find_child_run(
    uri: str, experiment: str, parent_run_id: str, tags: Mapping[str, str]
) -> str | None:
    """The oldest RUNNING run under ``parent_run_id`` that carries every tag in ``tags``.

    How a sweep makes a seed's run idempotently: a worker killed between creating the run and
    storing its id on the trial left it behind, RUNNING; the next attempt finds and reuses it.
    Ended runs are not matched: they belong to an earlier study of the same name (its Optuna
    storage was replaced, the parent run found again by tag) and keep their own results.
    """
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(
        f"tags.`{k}` = {search_value(v)}"
        for k, v in {Tag.PARENT_RUN: parent_run_id, **tags}.items()
    )
    query += " and attributes.status = 'RUNNING'"
    runs = client.search_runs(
        [exp.experiment_id], filter_string=query, max_results=1, order_by=["start_time ASC"]
    )
    return runs[0].info.run_id if runs else None


def running_children(uri: str, experiment: str, parent_run_id: str) -> list[Any]:
    """The RUNNING runs under ``parent_run_id`` (``mlflow.entities.Run``: id and tags)."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    query = f"tags.`{Tag.PARENT_RUN}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    return list(client.search_runs([exp.experiment_id], filter_string=query, max_results=10000))


def _is_plotly(fig: Any) -> bool:
    return type(fig).__module__.startswith("plotly")


def get_run_status(run_id: str, *, uri: str) -> str:
    """The MLflow status of ``run_id`` (RUNNING, FINISHED, FAILED, KILLED)."""
    return make_client(uri).get_run(run_id).info.status
