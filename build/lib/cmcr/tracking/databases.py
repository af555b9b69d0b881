"""Database stores as both MLflow and Optuna open them: the SQLAlchemy URL with the installed
PostgreSQL driver, and an embedded SQLite file checked before a read opens it.

One owner for both stores: ``driver_url`` maps the URL handed to SQLAlchemy (never the URL a
user wrote, which params, tags and messages keep, redacted); ``sqlite_problem`` says in one line
why a file cannot be read as the store it should be (missing, empty, not SQLite, another
program's database), so that a read refuses it before a library opens it (and would build its
schema into it, or fail with a page of traceback).
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def driver_url(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 (and MLflow through it)
    defaults to psycopg 3, while the project depends on psycopg2; an explicit ``+driver`` and
    every other URL are kept as given."""
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _ro_target(db: Path) -> str:
    """SQLite's URI filename opening ``db`` read-only (``?``, ``#``, ``%`` in the path quoted).

    A database in WAL mode needs its ``-shm`` file, which SQLite creates beside it; where it
    cannot (a read-only mount or folder) and none is there, the file is opened ``immutable``:
    no lock and no WAL, right for media nobody here can write (else "unable to open")."""
    target = f"file:{quote(str(db.resolve()))}?mode=ro"
    shm = db.with_name(db.name + "-shm")
    if not shm.exists() and not os.access(db.resolve().parent, os.W_OK):
        target += "&immutable=1"
    return target


def read_only_connect(db: Path, timeout_s: float) -> Callable[[], sqlite3.Connection]:
    """A SQLAlchemy ``creator`` for ``db`` opened read-only (``mode=ro``): nothing a reader
    does can write the file, not even a journal-mode pragma. A database in WAL mode still
    gets SQLite's ``-wal`` / ``-shm`` companions beside it (its readers need them)."""
    target = _ro_target(db)

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(target, uri=True, timeout=timeout_s, check_same_thread=False)

    return connect


def sqlite_problem(db: Path, what: str, table: str | None) -> str | None:
    """Why ``db`` cannot be read as ``what`` (e.g. "an Optuna study database", which holds
    ``table``; None: any SQLite database will do), in one line naming the file; None when it
    can. Reads 16 bytes and, for ``table``, the table list through a read-only connection:
    nothing is written."""
    if not db.is_file():
        return f"'{db}' does not exist" + (" (a folder)" if db.is_dir() else "")
    try:
        with open(db, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        return f"'{db}' cannot be read: {exc.strerror or exc}"
    if not head:
        return f"'{db}' is empty (0 bytes): expected {what}"
    if head != SQLITE_MAGIC:
        return f"'{db}' is not an SQLite database: expected {what}"
    if table is None:
        return None
    try:
        con = sqlite3.connect(_ro_target(db), uri=True, timeout=5)
        try:
            found = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return f"'{db}' cannot be read as {what}: {exc}"
    if found is None:
        return f"'{db}' is an SQLite database but not {what} (it has no '{table}' table)"
    return None
