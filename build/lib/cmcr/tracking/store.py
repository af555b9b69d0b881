"""The MLflow store: the tracking URI (creating the embedded store), clients, experiments, and
the text limits every value sent to MLflow is clipped to.

Two names, two meanings: ``cmcr.uris.tracking_uri`` only resolves the URI (results read a
store and must never create one); ``resolve_tracking_uri`` here resolves it for a run that
will write, creating a missing embedded sqlite store first.

Credentials in storage URLs never reach MLflow: every param, tag and text value goes through
``cmcr.uris.redact``, and MLflow's own "View run at <url>" line (which prints the tracking URI)
is switched off through its public setting ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import yaml

from cmcr.adapters.mlflow_schema import build_schema
from cmcr.configs import Config
from cmcr.errors import TrackingError
from cmcr.names import DEFAULT_ARTIFACTS, EXPERIMENT_KIND_TRAINING, ExpTag, cache_folder
from cmcr.tracking.databases import driver_url, sqlite_problem
from cmcr.uris import create_sqlite_atomically, redact, sqlite_path, tracking_uri

# MLflow prints "View run <name> at: <tracking URI>/..." when a run on a server ends: the URI
# may carry credentials, and the line interleaves with the sweep's progress view
_QUIET_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
# MLflow limits: 250 chars for a param value in old stores, 6000 in new ones; tags 8000.
PARAM_MAX = 6000
TAG_MAX = 8000


def resolve_tracking_uri(cfg: Config) -> str:
    """cfg.tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else the embedded sqlite store.

    A missing embedded store is created here, atomically: a kill during MLflow's schema
    migrations must not leave half a schema ("table logged_models already exists" next time).
    Its schema is a copy of a template cached per MLflow version (``names.cache_folder``,
    ``cmcr.adapters.mlflow_schema``): milliseconds, where MLflow's migrations take ~1 s.
    An existing file that is empty or not SQLite is refused (TrackingError), never written.
    Only resolving, never creating: ``cmcr.uris.tracking_uri``.
    """
    uri = tracking_uri(cfg.tracking.tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        create_sqlite_atomically(db, functools.partial(_build_mlflow_schema, artifacts=uri))
    elif db is not None and (problem := sqlite_problem(db, _MLFLOW_DB, None)):
        raise TrackingError(f"tracking store {problem}")
    return uri


_MLFLOW_DB = "an MLflow tracking database"
_MLFLOW_TABLE = "experiments"  # MLflow's table of experiments: a store without it is not MLflow's


def check_readable(uri: str) -> str:
    """``uri`` when a read can open it: an embedded SQLite store must exist and be MLflow's
    (TrackingError in one line naming the file otherwise, before MLflow opens it and builds its
    schema into it or fails with a traceback). Other stores are MLflow's to open."""
    db = sqlite_path(uri)
    if db is None:
        return uri
    if not db.is_file() and not db.is_dir():
        raise TrackingError(f"tracking store '{db}' does not exist (run a sweep or pretrain "
                            "first, or set --tracking-uri)")  # fmt: skip
    problem = sqlite_problem(db, _MLFLOW_DB, _MLFLOW_TABLE)
    if problem:
        raise TrackingError(f"tracking store {problem}")
    return uri


def _build_mlflow_schema(tmp_uri: str, *, artifacts: str) -> None:
    build_schema(tmp_uri, artifact_location(artifacts), cache_folder())


def artifact_location(uri: str) -> str | None:
    """Artifacts of an embedded sqlite store live beside it (``names.DEFAULT_ARTIFACTS``)."""
    db = sqlite_path(uri)
    if db is None:
        return None  # a server or other store decides its own artifact root
    return (db.resolve().parent / Path(DEFAULT_ARTIFACTS).name).as_uri()


def make_client(uri: str) -> Any:
    """An ``MlflowClient`` bound to ``uri`` (imported lazily: mlflow is slow to import).

    A plain ``postgresql://`` store goes to MLflow with the installed driver (``driver_url``);
    ``uri`` itself, as the user wrote it, is what params and tags record (redacted)."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow takes seconds to import

    if redact(uri) != uri:  # the URL MLflow would print carries a secret: never print it
        os.environ[_QUIET_URL_ENV] = "true"
    else:
        os.environ.setdefault(_QUIET_URL_ENV, "true")
    return MlflowClient(tracking_uri=driver_url(uri))


@functools.lru_cache(maxsize=8)
def client_for(uri: str) -> Any:
    """One shared MlflowClient per tracking URI for the process (building one costs ~0.2 s)."""
    return make_client(uri)


def get_or_create_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with the embedded artifact root) if missing."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

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


# ---- values as MLflow stores them ------------------------------------------------------------
def clip(text: str, limit: int) -> str:
    """``text`` cut to MLflow's ``limit`` characters (the end marked ``...``)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_text(value: Any) -> str:
    """A param or tag value as text; lists keep YAML-readable form so ``config_from_flat`` can
    parse them back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_item_text(v) for v in value) + "]"
    return str(value)


def _item_text(value: Any) -> str:
    """A list item: bare when YAML reads it back as itself (``CAM_FRONT``), else quoted (the
    SemanticKITTI sequence ``"00"``, which bare would read back as the integer 0)."""
    text = as_text(value)
    if isinstance(value, str):
        try:
            same = yaml.safe_load(f"[{text}]") == [value]
        except yaml.YAMLError:
            same = False
        return text if same else json.dumps(value)
    return text


def param_text(value: Any) -> str:
    """A param value as MLflow receives it: text, credentials redacted, clipped."""
    return clip(redact(as_text(value)), PARAM_MAX)


def tag_text(value: Any) -> str:
    """A tag value as MLflow receives it: text, credentials redacted, clipped."""
    return clip(redact(as_text(value)), TAG_MAX)
