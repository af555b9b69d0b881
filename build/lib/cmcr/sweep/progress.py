"""The live sweep view (main process only): one rich ``Live`` table on a terminal, plain lines
when the output goes to a file.

It reads the storage, so it shows the combined progress of every worker on the study, local
subprocesses and other machines alike: per running trial its number, parameters (rounded),
phase, step, rate and ETA (the trial's ``cmcr.progress`` record, written by the trainer through
``cmcr.progress``); for the study the done / running / queued / failed / pruned counts, the best
value so far with its trial, and an ETA from the measured trial times (before any trial has
finished: the estimate ``sweeps/run.py`` printed at the start).

The trainers draw no bar of their own meanwhile (the objective installs the storage as their
progress sink), so the two never fight; piped output stays line-oriented, one line per change
of the counts and at most one per running trial every ``LINE_EVERY_S`` seconds.
"""

from __future__ import annotations

import contextlib
import datetime
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cmcr.names import Attr
from cmcr.progress import fmt_duration, fmt_pct, fmt_rate
from cmcr.sweep.trials import count_states

LINE_EVERY_S = 30.0
MAX_LINE = 300  # piped output: no line longer than this
STALE_S = 120.0  # a progress record older than this is shown as such


@dataclass(frozen=True)
class Running:
    """One running trial as the view shows it."""

    number: int
    params: str
    phase: str
    step: int
    total: int
    rate: str
    eta_s: float | None
    elapsed_s: float
    stale: bool = False
    trial_eta_s: float | None = None  # every phase and seed left (cmcr.sweep.estimate)
    slowdown: float | None = None  # live seconds per unit over the preset's measured ones

    @property
    def left_s(self) -> float | None:
        """The trial's time left: over every phase when known, else the current phase's."""
        return self.trial_eta_s if self.trial_eta_s is not None else self.eta_s

    def progress(self) -> str:
        if not self.phase:
            return "starting"
        pct = f" ({100 * self.step // self.total} %)" if self.total else ""
        return f"{self.phase} {self.step}/{self.total}{pct}"

    def line(self) -> str:
        head = f"  #{self.number} {self.params} | {self.progress()}"
        if not self.phase:
            return clip(head)
        eta = "stale" if self.stale else f"ETA {fmt_duration(self.left_s)}"
        return clip(f"{head} {self.rate}, {eta}")


@dataclass(frozen=True)
class Snapshot:
    """One poll of the study."""

    total: int
    complete: int
    pruned: int
    failed: int
    retried: int
    running: int
    waiting: int
    best: float | None
    best_trial: int | None = None
    eta_s: float | None = None
    interrupted: int = 0  # FAIL attempts that spent no retry (an interruption, a lost worker)
    trials: tuple[Running, ...] = field(default=())

    @property
    def done(self) -> int:
        """Trials that reached an end state and will not be retried."""
        return self.complete + self.pruned + self.failed - self.retried

    def counts(self) -> tuple[int, ...]:
        return (self.complete, self.pruned, self.failed, self.retried, self.running, self.waiting)

    def line(self, name: str) -> str:
        """The study's plain-text progress line."""
        best = "-" if self.best is None else f"{fmt_pct(self.best)} % (#{self.best_trial})"
        failed = _failed_text(self, "failed ")
        return clip(
            f"[sweep {name}] {self.done}/{self.total} done | running {self.running} | "
            f"queued {self.waiting} | complete {self.complete} | pruned {self.pruned} | "
            f"{failed} | best {best} | ETA {fmt_duration(self.eta_s)}"
        )


def _failed_text(snap: Snapshot, head: str) -> str:
    """``failed 1 (1 retried), interrupted 2``: an interrupted attempt is not a failure."""
    own = snap.failed - snap.interrupted
    text = f"{head}{own}" + (f" ({snap.retried} retried)" if snap.retried and own else "")
    return text + (f", interrupted {snap.interrupted}" if snap.interrupted else "")


def clip(text: str, n: int = MAX_LINE) -> str:
    """``text`` cut to ``n`` characters (with an ellipsis)."""
    return text if len(text) <= n else text[: n - 1] + "…"


def short_params(params: dict[str, Any], width: int = 110) -> str:
    """``mim=0.52 occ=1.3 orth=0.041``: the last part of each key, 3 significant digits."""
    last = [k.rsplit(".", 1)[-1] for k in params]
    keys = last if len(set(last)) == len(last) else list(params)
    parts = []
    for key, value in zip(keys, params.values(), strict=True):
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return clip(" ".join(parts), width) if parts else "-"


def _seconds(start: Any, end: Any) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def trial_seconds(trials: list[Any]) -> list[float]:
    """Wall times of the trials that completed."""
    out = []
    for t in trials:
        if t.state.name == "COMPLETE":
            s = _seconds(t.datetime_start, t.datetime_complete)
            if s is not None and s > 0:
                out.append(s)
    return out


def running_trial(t: Any, now: datetime.datetime) -> Running:
    rec = t.user_attrs.get(Attr.PROGRESS) or {}
    elapsed = _seconds(t.datetime_start, now) or 0.0
    # stale: no record for 3 units' expected time (a 3-minute epoch is slow, not a dead worker)
    unit = 1.0 / rec["rate"] if rec.get("rate") else float(rec.get("unit_s") or 0.0)
    stale = bool(rec) and time.time() - float(rec.get("t", 0)) > max(STALE_S, 3 * unit)
    return Running(
        number=t.number,
        params=short_params(t.params),
        phase=str(rec.get("phase", "")),
        step=int(rec.get("step", 0)),
        total=int(rec.get("total", 0)),
        rate=fmt_rate(rec.get("rate"), str(rec.get("unit", "step"))),
        eta_s=rec.get("eta_s"),
        elapsed_s=elapsed,
        stale=stale,
        trial_eta_s=rec.get("trial_eta_s"),
        slowdown=rec.get("slowdown"),
    )


def study_eta(
    per_trial_s: float | None,
    running: tuple[Running, ...],
    waiting: int,
    workers: int,
    *,
    measured: bool = True,
    idle_s: float | None = None,
    waiting_idle: list[float] | None = None,
    done_slowdown: float | None = None,
) -> float | None:
    """Seconds until the queue is empty: each running trial's time left from its live rate
    (``Running.left_s``; else ``per_trial_s`` less its elapsed time) and the queued trials.

    ``measured``: ``per_trial_s`` is the median of finished trials, run at the sweep's
    parallelism, so the queue is shared by ``workers``. Else it is the preset's estimate for
    one trial on the whole machine (the local workers share its cores: not divided); once a
    running trial measured its slowdown, the queue is ``idle_s`` (the preset's idle-machine
    figure) times the median slowdown, at the sweep's parallelism again.

    ``waiting_idle``: each queued trial's own idle-machine figure (a grid's cells differ: a
    random-init row pre-trains nothing), which then prices the queue instead of one figure for
    all: times the running trials' slowdown, else times the preset's load factor; a median of
    finished trials would price the queue of a grid by whichever rows happened to finish. Until
    a running trial has measured its rate, ``done_slowdown`` (the finished cells' seconds over
    their own idle costs) stands in for the live slowdown."""
    slow = sorted(r.slowdown for r in running if r.slowdown)
    k = slow[len(slow) // 2] if slow else (done_slowdown if waiting_idle is not None else None)
    parallel = measured
    own = waiting_idle if waiting_idle is not None and len(waiting_idle) == waiting else None
    if k is not None and idle_s is not None and (not measured or own is not None):
        per_trial_s, parallel = idle_s * k, True
    left = 0.0
    for r in running:
        if r.left_s is not None and (r.trial_eta_s is not None or per_trial_s is None):
            left += r.left_s
        elif per_trial_s is not None:
            left += max(per_trial_s - r.elapsed_s, r.eta_s or 0.0)
        else:
            return None
    if waiting and per_trial_s is None:
        return None
    queue = waiting * per_trial_s if waiting and per_trial_s is not None else 0.0
    if own is not None and idle_s and (k is not None or not measured):
        queue = sum(own) * (k if k is not None else (per_trial_s or idle_s) / idle_s)
    shared = max(workers, len(running), 1)
    return (left + queue) / shared if parallel else left / shared + queue


def _done_slowdown(complete: list[Any], slot_idle: dict[int, float]) -> float | None:
    """The median of the finished grid cells' wall seconds over their own idle costs."""
    ratios = sorted(
        s / slot_idle[t.user_attrs.get(Attr.SLOT)]
        for t in complete
        if slot_idle.get(t.user_attrs.get(Attr.SLOT))
        and (s := _seconds(t.datetime_start, t.datetime_complete))
    )
    return ratios[len(ratios) // 2] if ratios else None


def snapshot(
    study: Any,
    total: int,
    *,
    estimate_s: float | None = None,
    workers: int = 1,
    idle_s: float | None = None,
    slot_idle: dict[int, float] | None = None,
) -> Snapshot:
    """Poll the storage once; ``slot_idle``: a grid's idle-machine seconds per slot
    (``estimate.slot_costs``), which price the queued trials one by one."""
    trials = study.get_trials(deepcopy=False)
    c = count_states(trials)
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    best = best_trial = None
    if complete:
        pick = max if study.direction.name == "MAXIMIZE" else min
        top = pick(complete, key=lambda t: t.value)
        best, best_trial = top.value, top.number
    now = datetime.datetime.now()
    running = tuple(running_trial(t, now) for t in trials if t.state.name == "RUNNING")
    times = trial_seconds(trials)
    per_trial = statistics.median(times) if times else estimate_s
    waiting = c.get("WAITING", 0)
    own, done_k = None, None
    if slot_idle:
        slots = [t.user_attrs.get(Attr.SLOT) for t in trials if t.state.name == "WAITING"]
        own = [slot_idle[s] for s in slots if s in slot_idle]
        done_k = _done_slowdown(complete, slot_idle)
    return Snapshot(
        total=total,
        complete=c.get("COMPLETE", 0),
        pruned=c.get("PRUNED", 0),
        failed=c.get("FAIL", 0),
        retried=c.get("retried", 0),
        interrupted=c.get("interrupted", 0),
        running=c.get("RUNNING", 0),
        waiting=c.get("WAITING", 0),
        best=best,
        best_trial=best_trial,
        eta_s=study_eta(
            per_trial,
            running,
            waiting,
            workers,
            measured=bool(times),
            idle_s=idle_s,
            waiting_idle=own,
            done_slowdown=done_k,
        ),
        trials=running,
    )


class ProgressView:
    """Polls the study every ``interval`` s in a thread and shows it (``live``: rich, else
    lines; default: whether stdout is a terminal)."""

    def __init__(
        self,
        study: Any,
        name: str,
        total: int,
        *,
        interval: float = 1.0,
        live: bool | None = None,
        estimate_s: float | None = None,
        workers: int = 1,
        idle_s: float | None = None,
        slot_idle: dict[int, float] | None = None,
    ) -> None:
        self.study = study
        self.slot_idle = slot_idle
        self.name = name
        self.total = total
        self.interval = interval
        self.live = sys.stdout.isatty() if live is None else live
        self.estimate_s, self.idle_s = estimate_s, idle_s
        self.workers = workers
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[int, ...] | None = None
        self._trial_lines: dict[int, tuple[float, str]] = {}  # number → (time, phase) printed

    def __enter__(self) -> ProgressView:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sweep-progress")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def poll(self) -> Snapshot:
        return snapshot(self.study, self.total, estimate_s=self.estimate_s,
                        workers=self.workers, idle_s=self.idle_s,
                        slot_idle=self.slot_idle)  # fmt: skip

    def _loop(self) -> None:
        if self.live:
            self._loop_live()
            return
        while True:
            self._print_changes()
            if self._stop.wait(self.interval):
                self._print_changes()
                return

    def _print_changes(self) -> None:
        try:
            snap = self.poll()
        except Exception:  # a busy storage must not stop the sweep; try again next tick
            return
        for line in self.lines(snap):
            print(line, flush=True)

    def lines(self, snap: Snapshot) -> list[str]:
        """The plain lines this poll adds: the study's when its counts changed, a running
        trial's when it changed phase or ``LINE_EVERY_S`` passed since its last line."""
        out = []
        if snap.counts() != self._last:
            out.append(snap.line(self.name))
            self._last = snap.counts()
        now = time.monotonic()
        for r in snap.trials:
            last_t, last_phase = self._trial_lines.get(r.number, (-1e9, None))
            due = r.phase != last_phase or now - last_t >= LINE_EVERY_S
            if due and (r.phase or last_phase is None):
                out.append(r.line())
                self._trial_lines[r.number] = (now, r.phase)
        return out

    def _loop_live(self) -> None:
        from rich.live import Live

        with Live(self.table(None), refresh_per_second=4, transient=False) as live:
            while True:
                with contextlib.suppress(Exception):
                    live.update(self.table(self.poll()))
                if self._stop.wait(self.interval):
                    with contextlib.suppress(Exception):
                        live.update(self.table(self.poll()))
                    return

    def table(self, snap: Snapshot | None) -> Any:
        """The rich table: a row per running trial, the study's counts in the title/caption."""
        from rich.table import Table

        if snap is None:
            return Table(title=f"sweep {self.name}: reading the study…")
        best = "-" if snap.best is None else f"{fmt_pct(snap.best)} % (trial #{snap.best_trial})"
        failed = _failed_text(snap, "")
        title = (
            f"sweep {self.name}: {snap.done}/{snap.total} done · running {snap.running} · "
            f"queued {snap.waiting} · failed {failed} · pruned {snap.pruned}"
        )
        caption = (
            f"best {best} · study ETA {fmt_duration(snap.eta_s)} · {time.strftime('%H:%M:%S')}"
        )
        # as wide as its title, so the counts stay on one line above an empty table
        table = Table(title=title, caption=caption, expand=False, min_width=len(title) + 2)
        for col, justify in (
            ("trial", "right"),
            ("params", "left"),
            ("phase", "left"),
            ("step", "right"),
            ("rate", "right"),
            ("ETA", "right"),
            ("elapsed", "right"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for r in snap.trials:
            step = f"{r.step}/{r.total}" if r.total else "-"
            table.add_row(
                f"#{r.number}",
                r.params,
                r.phase or "starting",
                step,
                r.rate,
                "stale" if r.stale else fmt_duration(r.left_s),
                fmt_duration(r.elapsed_s),
            )
        return table
