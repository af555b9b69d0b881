"""``cmcr dashboard --study NAME``: optuna-dashboard on the study's storage, on 127.0.0.1.

A live view of a running sweep (history, importances, each trial's params and intermediate
values) straight from Optuna's storage. The storage URL may hold a password, so it never goes on
a command line (``ps`` shows argv to every local user) nor into a log line: it comes from
``--storage`` or ``$CMCR_SWEEP_STORAGE`` (the environment, preferred for URLs with credentials),
else the embedded default, and the server runs in this process (``optuna_dashboard.wsgi`` under
the standard library's WSGI server) instead of as an ``optuna-dashboard URL`` child.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from cmcr.errors import StudyError
from cmcr.names import DEFAULT_STORAGE, STORAGE_ENV
from cmcr.results.ui import is_loopback
from cmcr.tracking.optuna_store import open_storage
from cmcr.uris import redact, sqlite_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cmcr dashboard``."""
    parser.add_argument("--study", required=True, help="Optuna study name")
    parser.add_argument("--storage", default="",
                        help=f"Optuna storage (default: ${STORAGE_ENV}, else {DEFAULT_STORAGE}; "
                             "a URL with a password belongs in the environment)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes the study)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")


def storage_url(arg: str) -> str:
    """--storage, else $CMCR_SWEEP_STORAGE, else the embedded default."""
    return arg or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def open_study(url: str, name: str) -> tuple[Any, int]:
    """(storage, study id) of study ``name``; StudyError naming the study and the storage
    (password redacted) before any server starts."""
    db = sqlite_path(url)
    if db is not None and not db.is_file():
        raise StudyError(f"--storage: '{db}' does not exist (run a sweep first)")
    storage = open_storage(url, create=False)
    import optuna

    summaries = optuna.get_all_study_summaries(storage=storage, include_best_trial=False)
    studies = sorted(s.study_name for s in summaries)
    if name not in studies:
        shown = ", ".join(studies[:10]) or "none"
        raise StudyError(f"--study: no study '{name}' in {redact(url)} (studies: {shown})")
    return storage, storage.get_study_id_from_name(name)


class _QuietHandler(WSGIRequestHandler):
    """No line per request: the terminal stays readable while the page polls."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        return


def make_dashboard(storage: Any, host: str, port: int) -> Any:
    """The optuna-dashboard WSGI app served on ``host:port`` (``serve_forever`` runs it)."""
    from optuna_dashboard import wsgi

    return make_server(host, port, wsgi(storage), handler_class=_QuietHandler)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM."""
    if not 0 < args.port < 65536:
        raise StudyError(f"--port: expected 1..65535, got {args.port}")
    url = storage_url(args.storage)
    storage, study_id = open_study(url, args.study)
    if not is_loopback(args.host):
        print(f"warning: --host {args.host} is not loopback: anyone who can reach this machine "
              "can read (and annotate) the study; there is no authentication", file=sys.stderr)  # fmt: skip
    server = make_dashboard(storage, args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"optuna-dashboard: http://{host}:{server.server_port}/dashboard/studies/{study_id}  "
          f"(study {args.study}, storage {redact(url)}; Ctrl-C stops)", flush=True)  # fmt: skip
    serve(server)
    return 0


def serve(server: Any) -> None:
    """``server.serve_forever()`` until SIGINT or SIGTERM, then close the socket.

    The handlers ask the server to stop (its loop checks between requests) instead of raising
    KeyboardInterrupt: a signal landing while a request is served would raise inside wsgiref's
    handler, whose bare ``except`` turns it into a 500 page and keeps the server running (a CI
    run saw the dashboard outlive SIGTERM by a minute that way). ``shutdown()`` waits for the
    loop to notice, so it runs on a thread, never inside the handler on the serving thread."""

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.server_close()
