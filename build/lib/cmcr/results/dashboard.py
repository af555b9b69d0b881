"""``cmcr dashboard --study NAME``: optuna-dashboard on the study's storage, on 127.0.0.1.

A live view of a running sweep (history, importances, each trial's params and intermediate
values) straight from Optuna's storage. The storage URL may hold a password, so it never goes on
a command line (``ps`` shows argv to every local user) nor into a log line: it comes from
``--storage`` or ``$CMCR_SWEEP_STORAGE`` (the environment, preferred for URLs with credentials),
else the embedded default, and the server runs in this process (``optuna_dashboard.wsgi`` under
the standard library's WSGI server) instead of as an ``optuna-dashboard URL`` child.

Before serving, the study is labelled for the dashboard (``label_study``): the objective's name
(Optuna's ``set_metric_names``: ``val/miou``, not "Objective 0") and, on each finished trial
that has none yet, a note (optuna-dashboard's ``save_note``) linking every seed's MLflow run in
the MLflow UI (``--mlflow-url``). Trial values are the stored fractions of ``val/miou``; the
notes give each seed's value in %.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from cmcr.errors import StudyError, first_line
from cmcr.names import DEFAULT_STORAGE, STORAGE_ENV, Attr, Metric, objective_name
from cmcr.results.ui import is_loopback
from cmcr.tracking.optuna_store import open_storage
from cmcr.uris import redact, sqlite_path

MLFLOW_UI = "http://127.0.0.1:5000"  # cmcr ui's default address
NOTED = "cmcr.run_notes"  # study system attr: trial numbers whose note we wrote (never twice)
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cmcr dashboard``."""
    parser.add_argument("--study", required=True, help="Optuna study name")
    parser.add_argument("--storage", default="",
                        help=f"Optuna storage (default: ${STORAGE_ENV}, else {DEFAULT_STORAGE}; "
                             "a URL with a password belongs in the environment)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes the study)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--mlflow-url", default=MLFLOW_UI,
                        help=f"the MLflow UI the trials' notes link to (default {MLFLOW_UI}: "
                             "cmcr ui)")  # fmt: skip


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


def label_study(storage: Any, name: str, mlflow_url: str) -> int:
    """Name the objective and link each finished trial's MLflow runs in a note (a trial that
    has a note of its own keeps it); return the notes written. A storage that refuses writes
    costs a warning, not the dashboard."""
    import optuna
    from optuna_dashboard import get_note, save_note

    try:
        study = optuna.load_study(study_name=name, storage=storage)
        objective = objective_name(study.user_attrs.get(Attr.OBJECTIVE))
        if study.metric_names is None:
            with warnings.catch_warnings():  # set_metric_names is experimental in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([objective])
        study_id = storage.get_study_id_from_name(name)
        noted = set(storage.get_study_system_attrs(study_id).get(NOTED, []))
        written = 0
        for t in study.get_trials(deepcopy=False):
            if t.number in noted or t.state.name not in FINISHED or not _run_ids(t):
                continue
            trial = optuna.trial.Trial(
                study, storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            )
            if not get_note(trial):
                save_note(trial, run_note(t, mlflow_url, objective))
                written += 1
            noted.add(t.number)
        storage.set_study_system_attr(study_id, NOTED, sorted(noted))
        return written
    except Exception as exc:  # noqa: BLE001 (labels are a courtesy; the dashboard still serves)
        print(f"warning: could not label study '{name}' for the dashboard: "
              f"{redact(first_line(exc))}", file=sys.stderr)  # fmt: skip
        return 0


def _run_ids(t: Any) -> dict[str, str]:
    """{seed: MLflow run id} of a trial (old studies: the one run of seed 0)."""
    ids = t.user_attrs.get(Attr.RUN_IDS) or {}
    if not ids and t.user_attrs.get(Attr.RUN_ID):
        ids = {"0": t.user_attrs[Attr.RUN_ID]}
    return {str(k): str(v) for k, v in ids.items()}


def run_note(t: Any, mlflow_url: str, objective: str = Metric.VAL_MIOU) -> str:
    """The markdown note of trial ``t``: each seed's MLflow run, linked, with its value (an
    mIoU in %)."""
    values = t.user_attrs.get(Attr.SEED_RESULTS) or {}
    pct = objective.endswith("miou")
    unit = "in %" if pct else "as stored"
    lines = [f"**MLflow runs of trial {t.number}** (each seed's {objective} {unit}; the trial's "
             f"Value is {objective} as stored{', a fraction' if pct else ''}, the mean over "
             "seeds):", ""]  # fmt: skip
    for seed, run_id in sorted(_run_ids(t).items()):
        v = values.get(seed, values.get(int(seed)) if seed.isdigit() else None)
        text = "" if not isinstance(v, int | float) else (
            f": {float(v) * 100:.2f} %" if pct else f": {float(v):.4g}")  # fmt: skip
        lines.append(f"- seed {seed}{text}: [{run_id}]({mlflow_url.rstrip('/')}/#/runs/{run_id})")
    return "\n".join(lines)


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
    label_study(storage, args.study, args.mlflow_url)
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
