"""MLflow's embedded SQLite store made from a cached schema template, not by ~50 migrations.

Why the public API is not enough: MLflow creates a store's schema only by running its alembic
migrations (``SqlAlchemyStore(url, artifact_root)``): about 1.1 s per new database, paid by
every sweep, ``cmcr pretrain`` and most tests. MLflow has no API to create a store from a
template, so the first store builds the schema the normal way into a template file in the
cache folder (``mlflow-schema-<MLflow version>-<alembic head>.db``, made atomically), and each
new store is a copy of that file with the rows a direct build makes path- or time-specific
rewritten here, and nowhere else.

What a direct build writes (checked with sqlite3 against MLflow 3.17.2, alembic head
``dc11669786a5``): the schema, one row in ``alembic_version`` (the head), one in ``workspaces``
('default', no path or time), and the default experiment (id 0, 'Default') whose
``artifact_location`` is ``<artifact root>/0`` and whose ``creation_time`` /
``last_update_time`` are the build's time. The copy gets that row's location from MLflow's own
helpers (as ``SqlAlchemyStore._get_artifact_location`` does) and now as both times. A template
whose alembic revision is not MLflow's head (the one ``_verify_schema`` checks on every open)
is rebuilt. tests/test_mlflow_schema_cache.py pins the copy against a direct build.

Any failure of the cache (a read-only cache folder, a broken template) falls back to the
direct build: the cache never fails a run.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sqlite3
import time
from pathlib import Path

from cmcr.uris import create_sqlite_atomically

_LOG = logging.getLogger(__name__)
_TEMPLATE_ROOT = "file:///cmcr-schema-template/artifacts"  # rewritten in every copy
_DEFAULT_EXPERIMENT_ID = 0


def build_direct(url: str, artifact_root: str | None) -> None:
    """MLflow's own build: every migration into the new SQLite database ``url``."""
    # lazy: mlflow's store takes seconds to import, and only a new store needs it
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(url, artifact_root).engine.dispose()


def build_schema(url: str, artifact_root: str | None, cache: Path | None) -> None:
    """MLflow's schema in the new SQLite database ``url`` (``sqlite:///<file>``, a file not yet
    there): a copy of the template in ``cache``, else (no cache, or any failure of it) the
    direct build. ``artifact_root`` is what ``SqlAlchemyStore`` would be given."""
    if cache is not None:
        db = Path(url.removeprefix("sqlite:///"))
        try:
            if _from_template(db, artifact_root, cache):
                return
        except Exception as exc:  # the cache is an optimisation: never fail a run on it
            _LOG.debug("MLflow schema template in %s not used: %s", cache, exc)
        for suffix in ("", "-journal"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
    build_direct(url, artifact_root)


@functools.cache
def schema_head() -> str:
    """The alembic revision MLflow's migrations end at (what an opened store must record)."""
    from mlflow.store.db.utils import _get_latest_schema_revision  # lazy: mlflow is slow

    return _get_latest_schema_revision()


def template_path(cache: Path) -> Path:
    """The template for the installed MLflow and its alembic head in ``cache``."""
    from mlflow.version import VERSION  # lazy: mlflow is slow to import

    return cache / f"mlflow-schema-{VERSION}-{schema_head()}.db"


def _from_template(db: Path, artifact_root: str | None, cache: Path) -> bool:
    """Copy the template to ``db`` and fix its rows; False when no good template could be had."""
    template = template_path(cache)
    for _ in range(2):  # a bad template is replaced once
        if not template.is_file():
            build = functools.partial(build_direct, artifact_root=_TEMPLATE_ROOT)
            create_sqlite_atomically(template, build)
        shutil.copyfile(template, db)
        if _fix_rows(db, artifact_root):
            return True
        db.unlink(missing_ok=True)
        template.unlink(missing_ok=True)  # bogus or stale: the next pass rebuilds it
    return False


def _fix_rows(db: Path, artifact_root: str | None) -> bool:
    """The copy's default experiment as a direct build makes it; False if ``db`` is not a
    complete template of MLflow's head schema (then nothing is trusted)."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        revisions = con.execute("SELECT version_num FROM alembic_version").fetchall()
        if revisions != [(schema_head(),)]:
            return False
        now = int(time.time() * 1000)  # MLflow's get_current_time_millis
        cur = con.execute(
            "UPDATE experiments SET artifact_location = ?, creation_time = ?, "
            "last_update_time = ? WHERE experiment_id = ?",
            (_default_location(artifact_root), now, now, _DEFAULT_EXPERIMENT_ID),
        )
        return cur.rowcount == 1
    except sqlite3.DatabaseError:
        return False
    finally:
        con.close()


def _default_location(artifact_root: str | None) -> str:
    """The default experiment's artifact location, as ``SqlAlchemyStore`` derives it."""
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local  # lazy: slow import

    return str(append_to_uri_path(resolve_uri_if_local(artifact_root), str(_DEFAULT_EXPERIMENT_ID)))
