"""Waits for tests that hold up on a loaded machine: poll a condition with a generous bound,
stop processes with SIGKILL after the bound (never leave one running), pick free ports.

A bound is a ceiling, not a pause: a wait returns as soon as its condition holds, so a generous
bound costs nothing on an idle machine. ``scaled`` stretches a bound by the machine's load (the
1-minute load average per core, at least 1) and by ``CMCR_TEST_WAIT_SCALE`` (default 1), so the
same test holds with a benchmark or two `yes > /dev/null` beside it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def scaled(seconds: float) -> float:
    """``seconds`` stretched by the load per core (>= 1) and ``CMCR_TEST_WAIT_SCALE``."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        load = 1.0
    return seconds * max(1.0, load) * float(os.environ.get("CMCR_TEST_WAIT_SCALE", "1"))


def wait_until(check: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy (returned); AssertionError naming
    ``what`` after ``scaled(timeout)`` seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.0f} s waiting for {what}")
        time.sleep(every)


def stop_process(
    proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 60, group: bool = True
) -> bool:
    """Send ``sig`` (to the process group when ``group``) and wait up to ``scaled(grace)`` s,
    then SIGKILL and reap. True when it exited on ``sig`` alone, so a test whose point is the
    graceful exit asserts it; the process is gone either way (its group too, when it leads one:
    started with start_new_session)."""
    if proc.poll() is not None:
        return True
    leads = _leads_group(proc)
    _signal(proc, sig, group and leads)
    try:
        proc.wait(timeout=scaled(grace))
        graceful = True
    except subprocess.TimeoutExpired:
        graceful = False
    if leads or not graceful:
        _signal(proc, signal.SIGKILL, leads)  # the group's stragglers too
    proc.wait()
    return graceful


def communicate_or_kill(proc: subprocess.Popen, timeout: float) -> tuple:
    """``proc.communicate()`` bounded by ``scaled(timeout)``; past it, SIGKILL (its group when
    it leads one) and return what it wrote: the caller's returncode assertion then fails with
    the output, and nothing is left running."""
    leads = _leads_group(proc)
    try:
        return proc.communicate(timeout=scaled(timeout))
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL, leads)
        return proc.communicate()


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> int:
    """``proc.wait()`` bounded by ``scaled(timeout)``; past it, SIGKILL. The return code."""
    communicate_or_kill(proc, timeout)
    return proc.returncode


def _leads_group(proc: subprocess.Popen) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (a group whose members all exited)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it: two workers never get the same)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
