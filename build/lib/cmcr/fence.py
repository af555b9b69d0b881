"""Fencing: a sweep attempt writes only while it still owns its trial (issue 29).

A worker that is paused (SIGSTOP, Ctrl-Z, a frozen VM, heavy swapping) for longer than the
heartbeat grace period has its trial failed as lost and retried by another worker, which
continues the same MLflow run. When the paused worker comes back it must not write another
step, checkpoint or state into that run. So every attempt holds a token (its Optuna trial
number) and a check that asks the study whether the trial is still RUNNING; the writers below
the sweep (``cmcr.tracking.runs.RunLogger``, ``cmcr.engine.checkpoint``, the progress sink)
call ``check()`` before each write and the attempt stops at once, writing nothing, when the
answer is no (``Fenced``).

Like ``cmcr.progress``, the holder is process-wide: ``hold`` is entered by the sweep worker
around one attempt; outside a sweep (``cmcr pretrain``) nothing is held and ``check`` is free.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_lock = threading.Lock()
_token: int | None = None
_owned: Callable[[], bool] | None = None


class Fenced(BaseException):
    """This attempt no longer owns its trial: stop without writing anything.

    A BaseException (like KeyboardInterrupt): the broad ``except Exception`` of best-effort
    code must not swallow it and let the attempt write on."""


@contextlib.contextmanager
def hold(token: int, owned: Callable[[], bool]) -> Iterator[None]:
    """Fence the block's writes by ``owned()`` (True while attempt ``token`` owns its trial)."""
    global _token, _owned
    with _lock:
        previous = (_token, _owned)
        _token, _owned = token, owned
    try:
        yield
    finally:
        with _lock:
            _token, _owned = previous


def token() -> int | None:
    """The attempt this process works for (a trial number), or None outside a sweep."""
    return _token


def check(what: str = "write") -> None:
    """Raise ``Fenced`` unless the attempt held here still owns its trial (a no-op outside
    a sweep). A storage error while asking counts as owned: the heartbeat decides then."""
    owned = _owned
    if owned is None:
        return
    try:
        ok = owned()
    except Exception:
        return
    if not ok:
        raise Fenced(f"attempt {_token} no longer owns its trial: {what} skipped")
