"""Store URLs: resolution of the defaults, the SQLite file behind a URL, and redaction.

A new embedded SQLite store (MLflow's or Optuna's) is created atomically by
``create_sqlite_atomically``, called where each store's URL is resolved.

One implementation each (engine, sweep and results all call these). Redaction hides both
forms a secret takes in a URL: the userinfo password (``scheme://user:PW@host``) and
password-like query parameters (``?password=PW``, ``&token=PW``, ...). It works on any text,
so a whole traceback or log line can be passed through it. A link printed for a browser drops
the credentials instead (``public_url``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cmcr.names import DEFAULT_TRACKING_URI, TRACKING_URI_ENV

MASK = "***"
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+):[^@\s/]*@")
# query or fragment parameters whose value is a secret (libpq, SQLAlchemy, MLflow servers)
_SECRET_PARAMS = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|pass|secret|token|access_token|api_key|apikey"
    r"|sslpassword|auth)=)[^&#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every URL password (userinfo or query parameter) replaced by ``***``."""
    text = _USERINFO.sub(rf"\g<head>:{MASK}@", str(text))
    return _SECRET_PARAMS.sub(rf"\g<head>{MASK}", text)


def public_url(uri: str) -> str:
    """A server's address for a browser: no user, password, query or fragment (a printed link;
    the browser asks for the credentials itself). ``redact`` masks; this drops."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def tracking_uri(explicit: str | None = None) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store."""
    return explicit or os.environ.get(TRACKING_URI_ENV, "") or DEFAULT_TRACKING_URI


def create_sqlite_atomically(db: Path, build: Callable[[str], object]) -> None:
    """Create SQLite database ``db`` whole or not at all: ``build(tmp_url)`` writes the schema
    into a temporary file beside it, which then replaces ``db`` in one rename.

    Several processes starting together take an flock beside ``db``; the loser finds it made.
    A kill leaves at most a stray ``.tmp`` file, never a half-built ``db``.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".create.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if db.is_file():
                return
            tmp = db.with_name(f".{db.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                build(f"sqlite:///{tmp}")
                # a WAL left by a deleted database of the same name would be replayed into ours
                for stale in ("-wal", "-shm", "-journal"):
                    db.with_name(db.name + stale).unlink(missing_ok=True)
                os.replace(tmp, db)
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's final message (and drops its args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; never drops it."""
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        record.msg, record.args = redact(text), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_logging() -> None:
    """Redact every line the root logger's handlers write (library warnings included)."""
    logging.captureWarnings(True)  # warnings.warn text reaches stderr through logging, redacted
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def print_traceback(prog: str) -> None:
    """The current exception's traceback on stderr, credentials redacted (an unexpected error)."""
    print(f"{prog}: unexpected error, traceback follows", file=sys.stderr)
    print(redact(traceback.format_exc()).rstrip(), file=sys.stderr)
