"""Optuna storage: the embedded SQLite default, PostgreSQL for several machines, Optuna's
journal file for clusters without a database server, a study lock.

Why SQLite with ``BEGIN IMMEDIATE``: Optuna claims a queued trial by reading it (WAITING)
and then writing RUNNING. In SQLite's default deferred transactions two processes can both
hold the read lock and then fail the upgrade with "database is locked" at once, without
waiting for the busy timeout. Starting every transaction with ``BEGIN IMMEDIATE`` takes the
write lock first, so concurrent workers queue on the 60 s busy timeout instead of failing.
Measured with ``--workers 2`` (tests/test_sweep_parallel.py): no lock errors, no lost or
duplicated trial.

PostgreSQL (``--storage postgresql://…``) lets workers on different machines share a study;
every worker records a heartbeat, so a trial whose worker died is failed and retried by any
live worker after the grace period (or at once by the next start on the dead worker's host).

Optuna's journal storage (``--storage journal:///shared/fs/study.journal``, or a path ending
in ``.journal`` / ``.log``) is for clusters where no database server may run: an append-only
operation log on the shared filesystem, written under Optuna's own file lock (a symlink, which
works on NFS). Its limits: no heartbeat (a worker killed without warning is found by its host
and pid, or by its SLURM job, cmcr.sweep.slurm, not by a stale heartbeat), every process
replays the whole log, and concurrent writers queue on one lock, so hundreds of workers that
write often are better served by PostgreSQL.

A new SQLite database is created atomically: Optuna's schema is built in a temporary file
beside the target and moved into place with ``os.replace``, so a kill during the very first
start leaves either no database or a complete one, never half a schema.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmcr.errors import CMCRError, Unavailable, first_line
from cmcr.names import DEFAULT_STORAGE, REACH_WAIT_S
from cmcr.tracking.databases import driver_url, read_only_connect, sqlite_problem
from cmcr.uris import create_sqlite_atomically, redact, sqlite_path

SQLITE_TIMEOUT_S = 60


class StorageError(CMCRError):
    """The Optuna storage cannot be reached or used as asked."""


class StorageUnreachable(StorageError, Unavailable):
    """The storage's server or file does not answer now (exit UNAVAILABLE_EXIT, not 2)."""


JOURNAL_SCHEME = "journal:///"
JOURNAL_SUFFIXES = (".journal", ".log")


def journal_path(url: str) -> Path | None:
    """The file of a journal storage (``journal:///abs/path`` or a ``*.journal`` / ``*.log``
    path), or None for a database URL."""
    if url.startswith(JOURNAL_SCHEME):
        return Path("/" + url[len(JOURNAL_SCHEME) :].lstrip("/"))
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return Path(url)
    return None


def check_url(url: str) -> None:
    """Reject URLs Optuna cannot use, before anything is created."""
    path = journal_path(url)
    if path is not None:
        if path.is_dir() or url.endswith("/"):
            raise StorageError(f"--storage '{url}': a journal storage is a file, not a folder")
        return
    if url.startswith("journal:"):
        raise StorageError(f"--storage '{redact(url)}': expected journal:///absolute/path")
    if "://" not in url:
        raise StorageError(
            f"--storage '{redact(url)}': expected a URL such as {DEFAULT_STORAGE}, "
            "postgresql://user@host:5432/db or journal:///shared/path/study.journal"
        )
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(
            f"--storage '{redact(url)}': unsupported scheme '{scheme}' "
            "(sqlite, postgresql, mysql or journal)"
        )
    if scheme == "sqlite" and sqlite_path(url) is None:
        raise StorageError(f"--storage '{redact(url)}': in-memory SQLite cannot be shared")


def open_storage(
    url: str,
    *,
    heartbeat_s: int | None = None,
    create: bool = True,
    read_only: bool = False,
) -> Any:
    """An ``RDBStorage`` on ``url``; unreachable or unusable storage raises StorageError.

    ``create=False``: the store must already be an Optuna database; a missing, empty or foreign
    SQLite file is refused in one line before it is opened, and no table is created (``--add-
    seeds``, ``--cancel``). ``read_only``: that, and SQLite is opened read-only, so a read
    (``--status``, the report) changes nothing, not even the journal mode. Trials whose
    heartbeat goes stale are failed and retried by cmcr.sweep.recovery, not by a callback.
    """
    check_url(url)
    create = create and not read_only
    journal = journal_path(url)
    if journal is not None:
        return open_journal(journal, create=create)
    import optuna
    import sqlalchemy.exc

    db = sqlite_path(url)
    if db is not None and not create:
        if not db.is_file():
            raise StorageError(f"--storage '{redact(url)}': no such database file")
        problem = sqlite_problem(db, "an Optuna study database", _OPTUNA_TABLE)
        if problem:
            raise StorageError(redact(f"--storage '{url}': {problem}"))
    kwargs = _engine_kwargs(url, db, read_only)
    hb = {"heartbeat_interval": heartbeat_s, "grace_period": 3 * heartbeat_s} if heartbeat_s else {}
    try:
        if db is not None and create and not db.is_file():
            create_sqlite_atomically(db, _build_optuna_schema)
        lock = _schema_lock(url, kwargs) if create else contextlib.nullcontext()
        with quiet_experimental(), lock:
            storage = optuna.storages.RDBStorage(
                driver_url(url), engine_kwargs=kwargs, skip_table_creation=not create, **hb
            )
    except ImportError as exc:
        raise StorageError(
            redact(f"--storage '{url}': its database driver is not installed ({exc})")
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        raise _open_error(url, db, exc) from None
    except optuna.exceptions.StorageInternalError as exc:  # its first query, wrapped by Optuna
        raise _open_error(url, db, exc.__cause__ or exc) from None
    if db is not None and not read_only:
        _immediate_transactions(storage.engine)
    return storage


_OPTUNA_TABLE = "studies"  # Optuna's table of studies: an SQLite file without it is not Optuna's
# what a database server says when it is up but turns these credentials away (libpq, MySQL)
_REFUSALS = ("authentication failed", "no password supplied", "access denied",
             "permission denied", "not authorized", "pg_hba.conf", "role \"")  # fmt: skip


def _engine_kwargs(url: str, db: Path | None, read_only: bool) -> dict[str, Any]:
    """SQLAlchemy's engine arguments: SQLite's busy timeout (its read-only connection when
    ``read_only``), else a bounded connect wait and a liveness check for a server."""
    if db is not None:
        if read_only:
            return {"creator": read_only_connect(db, SQLITE_TIMEOUT_S)}
        db.parent.mkdir(parents=True, exist_ok=True)
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": REACH_WAIT_S}
    return kwargs


def _writable(db: Path) -> bool:
    """SQLite writes the file and its journal beside it: both must be writable."""
    return os.access(db, os.W_OK) and os.access(db.resolve().parent, os.W_OK)


def _open_error(url: str, db: Path | None, exc: Exception) -> StorageError:
    """The one line for a storage SQLAlchemy could not open: refused (credentials), unreachable
    (a server that does not answer, an SQLite file that cannot be opened) or unusable."""
    import sqlalchemy.exc

    first = first_line(getattr(exc, "orig", None) or exc, empty=type(exc).__name__)
    if any(r in first.lower() for r in _REFUSALS):
        what = "refused the connection (check the user name and password)"
    elif db is not None and db.is_file() and not _writable(db):
        what = "cannot be written here (a read-only file, folder or mount)"
    elif isinstance(exc, (sqlalchemy.exc.OperationalError, OSError)) and db is None:
        what = f"is unreachable after {REACH_WAIT_S} s"  # a server: down, not mistyped
        return StorageUnreachable(redact(f"--storage '{url}' {what}: {first}"))
    elif isinstance(exc, (sqlalchemy.exc.OperationalError, OSError)):
        what = "is unreachable"  # an SQLite file that cannot be opened: the path is wrong
    else:
        what = "cannot be used"
    return StorageError(redact(f"--storage '{url}' {what}: {first}"))


def open_journal(path: Path, *, create: bool = True) -> Any:
    """A ``JournalStorage`` on the file ``path`` (Optuna's file backend and its symlink lock)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if not create and not path.is_file():
        raise StorageError(f"--storage '{path}': no such journal file")
    try:
        if create:  # a read leaves the file alone (touch would change its time)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise StorageError(f"--storage '{path}' is unusable: {exc.strerror or exc}") from None


def _build_optuna_schema(url: str) -> None:
    import optuna

    with quiet_experimental():
        optuna.storages.RDBStorage(url).engine.dispose()


@contextlib.contextmanager
def _schema_lock(url: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates its tables.

    ``RDBStorage`` runs ``CREATE TABLE`` for a missing schema; two workers starting together on
    an empty database both see the tables missing and one fails with a unique violation on
    ``pg_type_typname_nsp_index`` (seen in tests/test_sweep_parallel.py on a fresh server).
    The lock is per database, taken on its own connection, and released on exit; SQLite
    creation is serialised by the file lock, other backends are left as they are.
    """
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(driver_url(url), **engine_kwargs)
    key = _lock_key("cmcr.optuna-schema")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Heartbeat APIs are marked experimental; the warning says nothing actionable."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _immediate_transactions(engine: Any) -> None:
    """SQLAlchemy's recipe: pysqlite must not BEGIN on its own; we BEGIN IMMEDIATE."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        # WAL: readers (the progress view, --status) never block a worker's write; NORMAL
        # sync keeps the file consistent and skips an fsync per commit (~17 ms each here)
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the hooks (table creation) are dropped


def _lock_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable across processes."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@functools.lru_cache(maxsize=4)
def _lock_engine(url: str) -> Any:
    """An engine for the advisory lock when the caller holds Optuna's wrapped storage only."""
    import sqlalchemy

    return sqlalchemy.create_engine(driver_url(url), pool_pre_ping=True, pool_size=1)


@contextlib.contextmanager
def study_lock(storage: Any, url: str, study_name: str) -> Iterator[None]:
    """Serialise study setup (create, top-up of the trial queue, parent run) across processes.

    SQLite: an flock beside the database file (same machine); journal: the same beside the
    journal (Linux takes flock on NFS as a POSIX lock of the server). PostgreSQL: an advisory lock,
    so setup is safe from several machines. Other backends: no lock (documented race).
    """
    db = sqlite_path(url) or journal_path(url)
    if db is not None:  # journal: Optuna's lock file is <file>.lock, ours another name
        lock_path = db.with_name(db.name + (".lock" if sqlite_path(url) else ".study-lock"))
        try:
            fh = open(lock_path, "a+")  # noqa: SIM115 - closed by the with below
        except OSError as exc:  # a read-only mount, a folder we may not write (issue 29)
            raise StorageError(redact(f"--storage '{url}' cannot be written here (a read-only "
                                      f"file, folder or mount): {exc.strerror}")) from None  # fmt: skip
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    if url.startswith("postgresql"):
        from sqlalchemy import text

        key = _lock_key(f"cmcr.sweep:{study_name}")
        engine = getattr(storage, "engine", None) or _lock_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    yield
