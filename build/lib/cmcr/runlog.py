"""Library chatter goes to the run's own log file, not to the terminal.

While a run trains, Accelerate announces every checkpoint file (``[RANK 0] ... saved``), MLflow
logs its store set-up at INFO, torch warns about internals, Python ``warnings`` fire. Those
lines matter when something goes wrong, so they are kept, in ``<run dir>/run.log``, which the
run carries as the MLflow artifact ``logs/run.log``; the terminal keeps the platform's own lines
(the ``cmcr`` loggers) and the live progress view.

``console_filter`` is what the terminal's handler lets through; ``capture(path)`` routes the
libraries' loggers (several of which have handlers of their own and do not propagate: torch,
mlflow) and Python warnings to the file while a run is open, and restores them after.

The run folder is ours (``cmcr.guard``): ``run.log`` is opened with ``O_NOFOLLOW`` and must be
a plain file with no other hard link, and it is uploaded only while no link leads to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmcr.guard import RunFolderError, no_links, open_nofollow
from cmcr.uris import RedactingFilter

# loggers whose INFO/WARNING lines are chatter for a researcher watching a run
CHATTER = (
    "accelerate",
    "mlflow",
    "torch",
    "alembic",
    "matplotlib",
    "PIL",
    "py.warnings",
    "urllib3",
)
LOG_FILE = "run.log"
ARTIFACT_DIR = "logs"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _is_chatter(name: str) -> bool:
    return any(name == c or name.startswith(c + ".") for c in CHATTER)


def console_filter(record: logging.LogRecord) -> bool:
    """The terminal shows the platform's lines and other libraries' errors, not their chatter."""
    if record.name == "cmcr" or record.name.startswith("cmcr."):
        return True
    if _is_chatter(record.name):
        return record.levelno >= logging.ERROR
    return record.levelno >= logging.WARNING


class StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time of the record, so a
    live display that redirects stderr (rich's ``Live``) prints log lines above itself."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging's __init__ sets it; sys.stderr wins
        pass

    def emit(self, record: logging.LogRecord) -> None:
        """A line above a live tqdm bar, not inside it (``cmcr pretrain`` printed
        ``...17.23s/step]p`` / ``robe at step 7``): tqdm.write clears the bars, prints,
        redraws them. Without tqdm loaded (no bar can be open) the plain stream write."""
        tq = sys.modules.get("tqdm")
        if tq is None:
            super().emit(record)
            return
        try:
            tq.tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_console(level: int = logging.INFO) -> None:
    """The process's terminal logging: the platform's lines at ``level``, libraries quiet."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, StderrHandler):
            root.removeHandler(h)
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(console_filter)
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level))
    logging.getLogger("cmcr").setLevel(level)
    logging.captureWarnings(True)  # warnings.warn → the py.warnings logger → filtered above
    # MLflow configures its own handler when imported, at this level (its store set-up lines
    # are INFO); a run's capture lowers it again for the run's log file
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # libraries that print through handlers of their own (torch, mlflow): no INFO chatter
    # outside runs (their handlers are left alone: a test harness may share them)
    for name in CHATTER:
        lg = logging.getLogger(name)
        if lg.level < logging.WARNING:
            lg.setLevel(logging.WARNING)
    quiet_torch()


def quiet_torch() -> None:
    """torch's own handler prints its internal warnings (``is_fx_tracing will return true ...``
    from spconv's tracing check) outside any run, e.g. in `cmcr evaluate`: errors only there (a
    run's capture routes its warnings to run.log as before). Importing torch resets its
    loggers' levels, so a command calls this again once torch is imported."""
    torch_logger = logging.getLogger("torch")
    if torch_logger.level < logging.ERROR:
        torch_logger.setLevel(logging.ERROR)


@contextlib.contextmanager
def capture(path: Path | str) -> Iterator[Path]:
    """Append every library's log records (INFO and up) and warnings to ``path`` while the
    block runs; the terminal's handlers do not see the libraries' chatter meanwhile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open_nofollow(path, "a")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactingFilter())  # an artifact: no credentials, whoever logged them
    saved: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []
    for lg in _chatter_loggers():
        saved.append((lg, list(lg.handlers), lg.propagate, lg.level))
        lg.handlers = [handler]
        lg.propagate = False
        if lg.name in CHATTER and (lg.level == logging.NOTSET or lg.level > logging.INFO):
            lg.setLevel(logging.INFO)
    cmcr_log = logging.getLogger("cmcr")
    cmcr_log.addHandler(handler)  # the platform's own lines too, so the file reads in order
    was_capturing = _capturing_warnings()
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        logging.captureWarnings(was_capturing)
        cmcr_log.removeHandler(handler)
        for lg, handlers, propagate, level in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
        handler.close()
        stream.close()


@contextlib.contextmanager
def attached(logger: Any, directory: Path | str) -> Iterator[Path | None]:
    """``capture`` into ``directory/run.log`` while the block runs, then upload it as the run's
    ``logs/run.log`` artifact (a resumed run appends and re-uploads); main process only.

    Enter it inside the run's ``with logger:`` so the upload happens before the run ends.
    A link at or inside the run folder is a RunFolderError before anything is written."""
    if not logger.is_main:
        yield None
        return
    path = no_links(directory, Path(directory) / LOG_FILE)
    opened = False
    try:
        with capture(path):
            opened = True
            yield path
    finally:
        if opened:
            _upload(logger, Path(directory), path)


def _upload(logger: Any, directory: Path, path: Path) -> None:
    """Upload the run's log unless a link now leads to it (planted while the run ran)."""
    try:
        no_links(directory, path)
    except RunFolderError as exc:
        logging.getLogger("cmcr").warning(f"cmcr: run log not uploaded: {exc}")
        return
    with contextlib.suppress(Exception):  # the log is a convenience: never fail a run for it
        logger.log_artifact(path, ARTIFACT_DIR)


def _chatter_loggers() -> list[logging.Logger]:
    """The libraries' top loggers, and every descendant with handlers of its own (torch gives
    several of its loggers, e.g. ``torch._inductor``, a stderr handler that does not propagate)."""
    out = [logging.getLogger(name) for name in CHATTER]
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        mine = isinstance(lg, logging.Logger) and lg.handlers and name not in CHATTER
        if mine and _is_chatter(name):
            out.append(lg)
    return out


def _capturing_warnings() -> bool:
    import warnings

    return getattr(warnings.showwarning, "__name__", "") == "_showwarning"
