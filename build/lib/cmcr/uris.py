"""Store URLs: resolution of the defaults, the SQLite file behind a URL, and redaction.

A new embedded SQLite store (MLflow's or Optuna's) is created atomically by
``create_sqlite_atomically``, called where each store's URL is resolved.

One implementation each (engine, sweep and results all call these). Redaction (issue 28) parses
each URL it finds in a text (``scheme://`` up to the next whitespace or URL, so a whole
traceback or log line can be passed through it) and masks every form a secret takes there:

- the userinfo, read the way the stores read it: up to the last ``@`` of the authority
  (``urlsplit``), or, once a ``user:`` opens it, up to the last ``@`` of the URL (SQLAlchemy's
  password ends at an ``@``, so it may hold ``/``, ``?`` or ``#``: ``postgresql://u:pa/ss@h``).
  A database URL keeps a plain user name (``postgresql://alice@db``, ``alice:***@db``); any
  other scheme loses the whole userinfo (``http://TOKEN@host`` is a credential);
- secret query or fragment parameters (``password``, ``token``, ``api_key``, ``sig``, ...,
  names percent-decoded first: ``pass%77ord``);
- the same URL percent-encoded inside another (``?next=postgresql%3A%2F%2Fu%3Apw%40h``).

Over-masking is the failure it accepts (``http://h:1/x?to=a@b`` loses ``h:1/x?to=a``): a
redacted text is for reading, never for connecting. A link printed for a browser drops the
credentials instead (``public_url``).
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
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

from cmcr.names import DEFAULT_TRACKING_URI, TRACKING_URI_ENV

MASK = "***"
# where a URL starts (the scheme's length bounded: a long run of letters stays linear)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}://")
_ENCODED = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}%3A%2F%2F[^\s&;#'\"<>]*", re.IGNORECASE)
_SPACE = re.compile(r"\s")
_OPENS_PASSWORD = re.compile(r"[^:/?#@]*:")  # ``user:`` (SQLAlchemy: the user holds no ':' '/')
# schemes whose plain user name is no secret (the password is): SQLAlchemy's dialects
_DB_SCHEMES = frozenset(
    ("postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle", "cockroachdb", "sqlite")
)
# a parameter: its name, then its value up to the next separator (or a quote around the URL)
_PARAM = re.compile(r"(?P<head>[?&;#](?P<key>[^=&;#?\s]{1,64})=)(?P<value>[^&;#\s'\"<>]*)")
# the same outside a URL: after a separator, or ``password=`` after a space (libpq's conninfo)
_FREE_PARAM = re.compile(
    r"(?P<head>(?:[?&;#]|(?:^|(?<=[\s,(]))(?=[A-Za-z_]*(?:pass|pwd)))(?P<key>[A-Za-z0-9_.%\-]{1,64})=)"
    r"(?P<value>[^&;#\s'\"<>]*)"
)
_SECRET_WORDS = ("password", "passwd", "secret", "token", "apikey", "credential", "signature")
_SECRET_NAMES = frozenset(("pwd", "pass", "pw", "sig", "auth", "key", "privatekey", "accesskey"))


def _secret_key(name: str) -> bool:
    """Whether a parameter called ``name`` (percent-encoded or not) holds a secret."""
    flat = re.sub(r"[\s_.\-]", "", unquote_plus(name)).lower()
    return flat in _SECRET_NAMES or any(word in flat for word in _SECRET_WORDS)


def _mask_params(text: str, pattern: re.Pattern[str] = _PARAM) -> str:
    def mask(m: re.Match[str]) -> str:
        return m["head"] + MASK if _secret_key(m["key"]) else m[0]

    return pattern.sub(mask, text)


def _userinfo(rest: str) -> tuple[int, int]:
    """(end of the userinfo, length of the ``@`` after it) in ``rest`` (a URL after its
    ``://``); (-1, 0) when it has none."""
    try:
        cut = len(urlsplit(f"x://{rest}").netloc)  # the authority, as RFC 3986 reads it
    except ValueError:  # a malformed [IPv6] host: cut where urlsplit would have
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, cut)  # urlsplit's userinfo ends at the authority's last '@'
    if _OPENS_PASSWORD.match(rest):
        at = max(at, rest.rfind("@"))  # the password runs to an '@': it may hold '/', '?', '#'
    if at >= 0:
        return at, 1
    encoded = rest.lower().rfind("%40", 0, cut)  # the '@' itself percent-encoded
    return (encoded, 3) if encoded >= 0 else (-1, 0)


def _split(url: str) -> tuple[str, str | None, str]:
    """``url`` as (scheme, userinfo or None, the rest after the userinfo and its ``@``)."""
    scheme, _, rest = url.partition("://")
    end, width = _userinfo(rest)
    if end < 0:
        return scheme, None, rest
    return scheme, rest[:end], rest[end + width :]


def _redact_url(url: str) -> str:
    """One URL (``scheme://`` to its end), every secret in it masked."""
    scheme, userinfo, rest = _split(url)
    if userinfo is not None:
        at = url[len(scheme) + 3 + len(userinfo) : len(url) - len(rest)]  # '@' or '%40'
        user, colon, _ = userinfo.partition(":")
        plain_user = (
            scheme.lower().split("+")[0] in _DB_SCHEMES and user and ":" not in unquote(user)
        )
        if not plain_user:
            userinfo = MASK
        elif colon:
            userinfo = f"{user}:{MASK}"
        rest = f"{userinfo}{at}{rest}"
    return f"{scheme}://{_mask_params(rest)}"


def _redact_urls(text: str) -> str:
    """Each URL of ``text`` (from its scheme to the next whitespace or URL) redacted."""
    starts = [m.start() for m in _SCHEME.finditer(text)]
    bounds = [*starts, len(text)]
    out = [text[: bounds[0]]]
    for start, nxt in zip(bounds, bounds[1:], strict=False):
        space = _SPACE.search(text, start, nxt)
        end = space.start() if space else nxt
        out += [_redact_url(text[start:end]), text[end:nxt]]
    return "".join(out)


def _redact_encoded(m: re.Match[str]) -> str:
    plain = unquote(m[0])
    masked = redact(plain)
    return m[0] if masked == plain else quote(masked, safe="*")


def redact(text: str) -> str:
    """``text`` with every secret of every URL in it (userinfo, secret parameters, encoded
    URLs) replaced by ``***``; text outside URLs keeps only its ``?password=``-like values."""
    text = str(text)
    if "://" in text:
        text = _redact_urls(text)
    if "%3a%2f%2f" in text.lower():
        text = _ENCODED.sub(_redact_encoded, text)
    return _mask_params(text, _FREE_PARAM)


def redact_tree(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, scalars) with every string in it redacted, its shape
    kept: what is stored as a structure (an Optuna attribute) rather than as text."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value


def public_url(uri: str) -> str:
    """A server's address for a browser: no user, password, query or fragment (a printed link;
    the browser asks for the credentials itself). ``redact`` masks; this drops."""
    scheme, _, rest = _split(uri)
    parts = urlsplit(f"{scheme}://{rest}")
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:  # not a number: not a port a browser could use
        port = None
    if port:
        netloc += f":{port}"
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
