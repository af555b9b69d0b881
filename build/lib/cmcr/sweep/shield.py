"""Signals while a sweep cleans up (issue 29): the first SIGTERM/SIGINT interrupts, the next wait.

The first SIGTERM or Ctrl-C becomes a KeyboardInterrupt, as before: the trial is failed as
interrupted (no retry spent), its runs and the study's parent run are ended with the reason;
not inside a database client, though (see ``_LIBRARIES``): there it is raised a moment later.
That cleanup takes a moment (a few storage and MLflow writes); a second signal used to raise
another KeyboardInterrupt in the middle of it and leave the parent run or the trial RUNNING.
Now every later signal only says that the cleanup is finishing: the process exits when it is
done, or after ``CLEANUP_BOUND_S`` at most (then the next start heals what is left).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

CLEANUP_BOUND_S = 30.0
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# a KeyboardInterrupt raised inside a database client can leave this process's own connection
# holding SQLite's write lock (its transaction never rolled back): the clean-up's writes then
# wait on that lock. The first signal is delivered again a moment later while the main thread
# is inside one of these, for at most DEFER_MAX_S.
_LIBRARIES = ("sqlalchemy", "sqlite3", "optuna.storages", "mlflow", "alembic", "filelock")
_DEFER_S, DEFER_MAX_S = 0.02, 5.0


class _Shield:
    def __init__(self, prog: str, bound_s: float) -> None:
        self.prog, self.bound_s = prog, bound_s
        self.done = threading.Event()
        self.watchdog: threading.Thread | None = None
        self.deferred = 0

    def first(self, signum: int, frame: Any) -> None:
        if _in_library(frame) and self.deferred < DEFER_MAX_S / _DEFER_S:
            self.deferred += 1
            threading.Timer(_DEFER_S, os.kill, (os.getpid(), signum)).start()
            return
        for sig in _SIGNALS:  # from now on a signal waits for the cleanup
            signal.signal(sig, self.again)
        raise KeyboardInterrupt(f"signal {signum}")

    def again(self, signum: int, frame: Any) -> None:
        if self.watchdog is not None:
            return
        print(
            f"{self.prog}: signal {signum} again: finishing the clean-up first "
            f"(at most {self.bound_s:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        self.watchdog = threading.Thread(target=self._bounded, daemon=True, name="cmcr-shield")
        self.watchdog.start()

    def _bounded(self) -> None:
        if not self.done.wait(self.bound_s):
            print(f"{self.prog}: clean-up still running after {self.bound_s:.0f} s; leaving it to "
                  "the next start", file=sys.stderr, flush=True)  # fmt: skip
            os._exit(INTERRUPTED_EXIT)


def _in_library(frame: Any) -> bool:
    """Whether the interrupted main thread is inside a database or tracking client."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_LIBRARIES):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def shielded(prog: str, bound_s: float = CLEANUP_BOUND_S) -> Iterator[None]:
    """SIGTERM and SIGINT interrupt the block once (KeyboardInterrupt); later ones wait for
    its cleanup (bounded). The caller's handlers come back after the block (a caller in the
    same process, e.g. a test, must not inherit ours)."""
    shield = _Shield(prog, bound_s)
    previous = {sig: signal.signal(sig, shield.first) for sig in _SIGNALS}
    try:
        yield
    finally:
        shield.done.set()
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
