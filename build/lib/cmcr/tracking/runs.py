"""A run's life: start (or resume) one from its spec, log into it, end it with a reason, find a
sweep's runs. One ``RunLogger`` per run, explicit run ids, main process only.

Why not the fluent API (``mlflow.start_run``)? It keeps a process-global active run and
reads/writes ``MLFLOW_RUN_ID``; sweep trials running in one process would leak into each
other. ``MlflowClient`` with explicit run ids has no hidden state, so every call here names
its run.

Resume and metric history: a resumed run continues the SAME MLflow run. Steps between the
last checkpoint and the interruption were already logged and are re-run after resuming; the
trainer asks ``last_logged_step`` once and skips logging for steps already in the history, so
each step appears exactly once (the first value logged wins; nothing is deleted).

This module owns a run's life for engine, sweep and results alike: ``RunLogger.start`` creates
a run WITH its params from a ``RunSpec`` (``cmcr.tracking.inputs.run_spec``) or resumes one;
runs are ended through verbs (``end_study``, ``end_killed``, ``mark_pruned``, ...), which
choose the MLflow status; nobody else calls ``set_terminated``, ``update_run`` or ``set_tag``
on a run. ``find_child_run`` and
``running_children`` find a sweep's runs by tag and status.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cmcr import fence
from cmcr.errors import TrackingError
from cmcr.names import Kind, Tag, is_local_key
from cmcr.tracking.inputs import RunSpec, log_inputs
from cmcr.tracking.store import (
    TAG_MAX,
    client_for,
    clip,
    get_or_create_experiment,
    make_client,
    param_text,
    search_value,
    tag_text,
)
from cmcr.uris import redact, tracking_uri

STATUSES = ("FINISHED", "FAILED", "KILLED")


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
    def start(cls, spec: RunSpec, *, run_id: str | None = None, is_main: bool = True) -> RunLogger:
        """Create the run ``spec`` describes, or resume ``run_id`` (which must exist)."""
        if not is_main:
            return cls(None, run_id, spec.uri, is_main=False)
        client = make_client(spec.uri)
        exp_id = get_or_create_experiment(client, spec.experiment, spec.uri)
        resumed = run_id is not None
        if run_id is None:
            # tags in the same request: a run killed right after creation can still be found
            # by them (a sweep's child run by study, slot and seed), never an untagged orphan
            run_id = create_run(client, exp_id, name=spec.name, tags=spec.tags)
            params = spec.params
        else:
            require_run(client, run_id, spec.uri)
            # checked before the run is touched: a refused resume leaves its status alone
            params = _new_params(client, run_id, spec.params) if spec.params is not None else None
            reopen(spec.uri, run_id, client=client)
        logger = cls(client, run_id, spec.uri, is_main=True)
        try:
            logger.set_tags(spec.tags)
            if not resumed and spec.inputs:
                log_inputs(client, run_id, spec.inputs)
            if params:
                logger.log_params(params)
            if spec.system_metrics:
                logger._start_system_metrics(resumed)
        except BaseException as exc:
            logger.end("FAILED", reason=f"could not start tracking: {exc}")
            raise
        return logger

    def _start_system_metrics(self, resumed: bool) -> None:
        # lazy: the monitor pulls in psutil/pynvml, only for runs that ask for it
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
        fence.check(f"metrics at step {step}")
        from mlflow.entities import Metric  # lazy: mlflow takes seconds to import

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        # log_batch accepts at most 1000 metrics per call
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000], synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as text, credentials redacted), batched."""
        if not self.is_main or not params:
            return
        fence.check("params")
        from mlflow.entities import Param  # lazy: mlflow takes seconds to import

        items = [Param(k, param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as text, credentials redacted)."""
        if not self.is_main or not tags:
            return
        fence.check("tags")
        from mlflow.entities import RunTag  # lazy: mlflow takes seconds to import

        items = [RunTag(k, tag_text(v)) for k, v in tags.items()]
        self.client.log_batch(self.run_id, tags=items, synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file or folder into the run's artifacts."""
        if not self.is_main:
            return
        fence.check("artifact upload")
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, file: str) -> None:
        """Store ``text`` as the artifact ``file`` (credentials redacted)."""
        if not self.is_main:
            return
        fence.check("artifact upload")
        self.client.log_text(self.run_id, redact(text), file)

    def log_figure(self, fig: Any, file: str) -> None:
        """Store a plotly (as .html) or matplotlib figure as the artifact ``file``."""
        if not self.is_main:
            return
        fence.check("artifact upload")
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
        self._stop_monitor()
        fence.check("end of the run")  # a fenced attempt leaves the run to its retry
        end_run(self.uri, self.run_id, status, reason, client=self.client)

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            finally:
                self._monitor = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.ended:
            return
        if isinstance(exc, fence.Fenced):  # the run is the retry's now: leave it as it is
            self.ended = True
            self._stop_monitor()
            return
        if exc is None:
            self.end("FINISHED")
        elif isinstance(exc, KeyboardInterrupt):
            self.end("KILLED", reason="interrupted (KeyboardInterrupt)")
        elif _is_pruned(exc):  # the sweep's pruner stopped it: not a failure
            self.end("KILLED", reason=f"pruned by optuna: {exc}")
        else:
            self.end("FAILED", reason=f"{type(exc).__name__}: {exc}")


def create_run(
    client: Any, experiment_id: str, *, name: str | None, tags: Mapping[str, str]
) -> str:
    """Create a run with its tags in the creating request; its id. ``RunLogger.start`` (and
    ``cmcr.results.fake_runs``, which logs in bulk through its own client) create runs here."""
    return client.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id


def _is_pruned(exc: BaseException) -> bool:
    """An ``optuna.TrialPruned`` (optuna is imported whenever one can have been raised)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exc, optuna.TrialPruned)


def _is_plotly(fig: Any) -> bool:
    return type(fig).__module__.startswith("plotly")


def require_run(client: Any, run_id: str, uri: str) -> None:
    """TrackingError unless ``run_id`` exists (and is not deleted) in the store at ``uri``."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"run id '{run_id}' does not exist in {redact(uri)}") from None
    if run.info.lifecycle_stage == "deleted":
        raise TrackingError(f"run id '{run_id}' is deleted in {redact(uri)}")


def _new_params(client: Any, run_id: str, params: Mapping[str, str]) -> dict[str, str]:
    """The config params ``run_id`` lacks; TrackingError if any recorded value differs."""
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


# ---- a run's life by id (sweep and results: no RunLogger needed) ---------------------------
def end_run(
    uri: str, run_id: str, status: str, reason: str | None = None, *, client: Any = None
) -> None:
    """End ``run_id`` with ``status``; ``reason`` (redacted) goes to tag ``cmcr.status_reason``.
    The primitive under the verbs below; callers outside this module use the verbs."""
    if status not in STATUSES:
        raise ValueError(f"status: expected one of {STATUSES}, got {status!r}")
    client = client or client_for(uri)
    if reason:
        client.set_tag(run_id, Tag.STATUS_REASON, clip(redact(reason), TAG_MAX))
    client.set_terminated(run_id, status=status)


def end_complete(uri: str, run_id: str, reason: str | None = None, *, client: Any = None) -> None:
    """End ``run_id`` as done (FINISHED)."""
    end_run(uri, run_id, "FINISHED", reason, client=client)


def end_killed(uri: str, run_id: str, reason: str | None = None, *, client: Any = None) -> None:
    """End ``run_id`` as stopped before its end, not by its own fault (KILLED): interrupted,
    pruned, or a run no trial holds any more."""
    end_run(uri, run_id, "KILLED", reason, client=client)


def end_failed(uri: str, run_id: str, reason: str | None = None, *, client: Any = None) -> None:
    """End ``run_id`` as failed (FAILED) with ``reason``."""
    end_run(uri, run_id, "FAILED", reason, client=client)


def end_study(uri: str, parent_run_id: str, failures: list[str], *, client: Any = None) -> None:
    """End a study's parent run: FINISHED, or FAILED naming ``failures`` (one text per slot
    failed for good)."""
    if failures:
        reason = f"{len(failures)} slot(s) failed: {'; '.join(failures)}"
        end_run(uri, parent_run_id, "FAILED", reason, client=client)
    else:
        end_run(uri, parent_run_id, "FINISHED", client=client)


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
        client.set_tag(run_id, Tag.STATUS_REASON, clip(redact(reason), TAG_MAX))


# the end of a sweep trial's runs, by the trial's Optuna outcome (a finished seed stays FINISHED)
def mark_complete(uri: str, run_id: str) -> None:
    """The trial completed: tag its run COMPLETE (the trainer ended it)."""
    mark_state(uri, run_id, "COMPLETE")


def mark_pruned(uri: str, run_id: str, reason: str, tags: Mapping[str, str] | None) -> None:
    """The pruner stopped the trial: tag its run PRUNED (and where), end it KILLED if open."""
    mark_state(uri, run_id, "PRUNED", "KILLED", reason, tags)


def mark_failed(uri: str, run_id: str, reason: str) -> None:
    """The trial failed: tag its run FAIL, end it FAILED if open."""
    mark_state(uri, run_id, "FAIL", "FAILED", reason)


def mark_lost(uri: str, run_id: str, reason: str) -> None:
    """The trial's worker was lost: tag its run FAIL, end it KILLED if open."""
    mark_state(uri, run_id, "FAIL", "KILLED", reason)


def set_tag_shared(uri: str, run_id: str, key: str, value: str, attempts: int = 5) -> None:
    """Set a tag that several workers may write at the same moment.

    MLflow's SQL store upserts a tag as select-then-insert, so two workers finishing together
    can both insert and one gets a unique-key violation; the retry finds the row and updates it.
    (tenacity is not a dependency; five tries in a loop do.)
    """
    from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

    client = client_for(uri)
    for attempt in range(attempts):
        try:
            client.set_tag(run_id, key, clip(redact(value), TAG_MAX))
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


# ---- finding a sweep's runs ----------------------------------------------------------------
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


def find_study_run(uri: str, experiment: str, study: str, storage: str) -> str | None:
    """The oldest parent run of sweep ``study`` on Optuna ``storage`` (its tags), in
    ``experiment`` (created if missing), or None."""
    client = client_for(uri)
    exp = get_or_create_experiment(client, experiment, uri)
    query = (
        f"tags.`{Tag.KIND}` = '{Kind.STUDY}' "
        f"and tags.`{Tag.STUDY}` = {search_value(study)} "
        f"and tags.`{Tag.STORAGE}` = {search_value(storage)}"
    )
    runs = client.search_runs(
        [exp], filter_string=query, max_results=1, order_by=["start_time ASC"]
    )
    return runs[0].info.run_id if runs else None
