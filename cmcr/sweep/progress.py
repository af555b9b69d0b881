"""Live progress of a sweep (main process only): a rich table on a terminal, plain lines else.

It reads the storage, so it shows the combined progress of every worker on the study, local
subprocesses and other machines alike.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from cmcr.sweep.trials import count_states


@dataclass(frozen=True)
class Snapshot:
    """Counts of one poll of the study."""

    total: int
    complete: int
    pruned: int
    failed: int
    retried: int
    running: int
    waiting: int
    best: float | None

    @property
    def done(self) -> int:
        """Trials that reached an end state and will not be retried."""
        return self.complete + self.pruned + self.failed - self.retried

    def line(self, name: str) -> str:
        """One plain-text progress line."""
        best = "-" if self.best is None else f"{self.best:.4f}"
        failed = f"failed {self.failed}" + (f" ({self.retried} retried)" if self.retried else "")
        return (
            f"[sweep {name}] {self.done}/{self.total} done | running {self.running} | "
            f"waiting {self.waiting} | complete {self.complete} | pruned {self.pruned} | "
            f"{failed} | best {best}"
        )


def snapshot(study: Any, total: int) -> Snapshot:
    """Poll the storage once."""
    trials = study.get_trials(deepcopy=False)
    c = count_states(trials)
    values = [t.value for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    best = None
    if values:
        best = max(values) if study.direction.name == "MAXIMIZE" else min(values)
    return Snapshot(
        total=total,
        complete=c.get("COMPLETE", 0),
        pruned=c.get("PRUNED", 0),
        failed=c.get("FAIL", 0),
        retried=c.get("retried", 0),
        running=c.get("RUNNING", 0),
        waiting=c.get("WAITING", 0),
        best=best,
    )


class ProgressView:
    """Polls the study every ``interval`` s in a thread and shows the counts."""

    def __init__(
        self, study: Any, name: str, total: int, *, interval: float = 1.0, live: bool | None = None
    ) -> None:
        self.study = study
        self.name = name
        self.total = total
        self.interval = interval
        self.live = sys.stdout.isatty() if live is None else live
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: Snapshot | None = None

    def __enter__(self) -> ProgressView:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sweep-progress")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        if self.live:
            self._loop_live()
            return
        while True:
            self._print_if_changed()
            if self._stop.wait(self.interval):
                self._print_if_changed()
                return

    def _print_if_changed(self) -> None:
        try:
            snap = snapshot(self.study, self.total)
        except Exception:  # a busy storage must not stop the sweep; try again next tick
            return
        if snap != self._last:
            print(snap.line(self.name), flush=True)
            self._last = snap

    def _loop_live(self) -> None:
        from rich.live import Live

        with Live(self._table(None), refresh_per_second=4, transient=False) as live:
            while True:
                with contextlib.suppress(Exception):
                    live.update(self._table(snapshot(self.study, self.total)))
                if self._stop.wait(self.interval):
                    with contextlib.suppress(Exception):
                        live.update(self._table(snapshot(self.study, self.total)))
                    return

    def _table(self, snap: Snapshot | None) -> Any:
        from rich.table import Table

        table = Table(title=f"sweep {self.name}", caption=time.strftime("%H:%M:%S"))
        for col in ("done", "running", "waiting", "complete", "pruned", "failed", "best"):
            table.add_column(col, justify="right")
        if snap is not None:
            best = "-" if snap.best is None else f"{snap.best:.4f}"
            table.add_row(
                f"{snap.done}/{snap.total}",
                str(snap.running),
                str(snap.waiting),
                str(snap.complete),
                str(snap.pruned),
                f"{snap.failed}" + (f" ({snap.retried} retried)" if snap.retried else ""),
                best,
            )
        return table
