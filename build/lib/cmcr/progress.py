"""One owner for the progress of long work: pre-training steps, downstream epochs, world making.

Loops say what they do and how far they are (``task(phase, total)`` → ``update()``); who shows
it depends on who listens:

- in a sweep, the trial's progress record in the Optuna storage (``listen(sink)``, installed by
  the objective), which the live sweep view of every machine reads;
- else, on a terminal, a tqdm bar on stderr;
- else (output piped to a file), one plain line per 10 % or per 30 s, never a ``\\r`` line.

Records are small dicts (``Record``): phase, step, total, rate (steps/s) and ETA (s), with the
wall time they were taken at, so a reader can tell a stale record from a live one.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

Record = dict[str, Any]
Sink = Callable[[Record], None]

PRETRAIN = "pre-training"
PROBE = "probe"
FINETUNE = "fine-tune"
WORLD = "synthetic world"

_sink: Sink | None = None
_lock = threading.Lock()
LINE_EVERY_S = 30.0  # piped output: at most one line per this many seconds ...
LINE_EVERY_FRACTION = 0.1  # ... unless another tenth of the work is done


@contextlib.contextmanager
def listen(sink: Sink, *, every_s: float = 2.0) -> Iterator[None]:
    """Send every task's records to ``sink`` (at most one per ``every_s``, and the last one)
    instead of the terminal, while the block runs."""
    global _sink
    throttled = _Throttled(sink, every_s)
    with _lock:
        previous, _sink = _sink, throttled
    try:
        yield
    finally:
        with _lock:
            _sink = previous


class _Throttled:
    def __init__(self, sink: Sink, every_s: float) -> None:
        self.sink, self.every_s, self.last = sink, every_s, 0.0

    def __call__(self, record: Record, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            with contextlib.suppress(Exception):  # a busy store must never stop the work
                self.sink(record)


class Task:
    """Progress of one phase; ``update(n)`` after each unit of work, ``close()`` at the end."""

    def __init__(
        self, phase: str, total: int, initial: int = 0, *, enabled: bool = True, unit: str = "step"
    ) -> None:
        self.phase, self.total, self.step, self.unit = phase, max(int(total), 0), initial, unit
        self.enabled = enabled
        self._t0, self._s0 = time.monotonic(), initial
        self._sink = _sink if enabled else None
        self._bar: Any = None
        self._last_line = (-1.0, -1.0)  # (time, fraction) of the last plain line
        if self._sink is not None:
            self._sink(self.record())  # where it starts (a resumed run: at its checkpoint)
        elif enabled:
            if sys.stderr.isatty():
                from tqdm.auto import tqdm

                self._bar = tqdm(total=self.total, initial=initial, desc=phase, unit=unit)
            else:
                self._line(force=True)

    def record(self) -> Record:
        """Where the task stands now."""
        elapsed = time.monotonic() - self._t0
        done = self.step - self._s0
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        eta = (self.total - self.step) / rate if rate else None
        return {
            "phase": self.phase,
            "step": self.step,
            "total": self.total,
            "unit": self.unit,
            "rate": rate,
            "eta_s": eta,
            "t": time.time(),
        }

    def update(self, n: int = 1) -> None:
        self.step += n
        if not self.enabled:
            return
        if self._sink is not None:
            self._sink(self.record(), force=self.step >= self.total)
        elif self._bar is not None:
            self._bar.update(n)
        else:
            self._line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._sink is None and self._last_line[1] < 1.0:
            self._line(force=True)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _line(self, *, force: bool = False) -> None:
        now = time.monotonic()
        frac = self.step / self.total if self.total else 1.0
        last_t, last_f = self._last_line
        if not force and now - last_t < LINE_EVERY_S and frac - last_f < LINE_EVERY_FRACTION:
            return
        self._last_line = (now, frac)
        print(line(self.record()), file=sys.stderr, flush=True)


def task(
    phase: str, total: int, initial: int = 0, *, enabled: bool = True, unit: str = "step"
) -> Task:
    """A progress handle for ``total`` units of ``phase`` (``enabled=False`` on other ranks)."""
    return Task(phase, total, initial, enabled=enabled, unit=unit)


def fmt_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def pct_value(fraction: float) -> float:
    """A stored mIoU as the number MLflow's runs table shows (``val/miou_pct``): 7.62."""
    return round(100 * fraction, 2)


def fmt_pct(fraction: float | None) -> str:
    """A stored mIoU (a fraction) as a person reads it: ``7.62`` (percent, 2 decimals)."""
    return "-" if fraction is None else f"{100 * fraction:.2f}"


def fmt_rate(rate: float | None, unit: str = "step") -> str:
    """``2.31 step/s`` or ``14.2 s/step``."""
    if not rate:
        return "-"
    return f"{rate:.2f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}"


def line(record: Record) -> str:
    """One plain line for a record: ``pre-training 40/150 (27 %) 1.9 s/step, ETA 3m29s``."""
    total = record.get("total") or 0
    step = record.get("step", 0)
    pct = f" ({100 * step // total} %)" if total else ""
    head = f"{record.get('phase', '?')} {step}/{total}{pct}"
    if not record.get("rate"):
        return head
    rate = fmt_rate(record["rate"], record.get("unit", "step"))
    return f"{head} {rate}, ETA {fmt_duration(record.get('eta_s'))}"
