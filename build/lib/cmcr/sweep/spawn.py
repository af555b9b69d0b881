"""``--workers K`` on this machine: K worker processes on the study's storage, and a wait.

Each worker is ``python -m cmcr.sweep … --worker`` (``WORKER_CMD``; a test passes its own
command that injects a stand-in trial function), its output in
``<output_dir>/sweep-logs/<study>/worker<k>.log``. A worker that dies has its trials re-queued at
once (``runner.heal`` with its pid); if the last ones were killed after the others had left, the
sweep's own process runs what is still queued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cmcr.sweep import runner
from cmcr.sweep.options import with_checkout, worker_args, worker_env
from cmcr.sweep.trials import queued
from cmcr.sweep.worker import work
from cmcr.uris import redact

WORKER_LOG_DIR = "sweep-logs"
# how a spawned worker starts: this package's entry point (tests pass their own command that
# injects a stand-in trial function; production code never reads code names from anywhere)
WORKER_CMD = (sys.executable, "-m", "cmcr.sweep")


def run_here(
    plan: Any, study: Any, parent: str, trial_fn: Any, group: Any, worker_cmd: Sequence[str]
) -> int:
    """The sweep's workers on this machine: this process (``--workers 1``) or K spawned ones."""
    if plan.opts.workers == 1:
        work(plan, study, parent, trial_fn, group)
        return 0
    deaths: list[int] = []

    def requeue(pid: int, code: int) -> None:
        deaths.append(code)
        runner.heal(plan, study, pid=pid)  # its trials are retried now, not after grace

    rc = run_workers(plan, worker_cmd, on_death=requeue)
    if all(code < 0 for code in deaths) and queued(study):
        # a worker was killed after the others had left: its trials run here
        work(plan, study, parent, trial_fn, group)
    return rc


def run_workers(
    plan: Any,
    worker_cmd: Sequence[str] = WORKER_CMD,
    on_death: Callable[[int, int], Any] | None = None,
) -> int:
    """Start ``--workers`` subprocesses on the same storage and wait; 1 if any failed.

    ``on_death(pid, exit code)`` runs as soon as a worker exits non-zero or by a signal, while
    the others still run (the sweep re-queues the trials it held).
    """
    log_dir = Path(plan.base.tracking.output_dir) / WORKER_LOG_DIR / plan.study_name
    log_dir.mkdir(parents=True, exist_ok=True)
    env = with_checkout(worker_env(plan.opts))
    # K workers share the cores: without this each torch would start one thread per core
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.opts.workers)))
    procs = []
    for k in range(plan.opts.workers):
        log_file = open(log_dir / f"worker{k}.log", "w")  # noqa: SIM115 - closed below
        cmd = [*worker_cmd, *worker_args(plan.opts)]
        procs.append(
            (subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env), log_file)
        )
    try:
        _wait_for(procs, on_death)
    except KeyboardInterrupt:
        for p, _ in procs:
            p.send_signal(signal.SIGINT)
        for p, _ in procs:
            p.wait()
        raise
    finally:
        for _, fh in procs:
            fh.close()
    return _report_failed(procs, log_dir)


def _report_failed(procs: list[tuple[Any, Any]], log_dir: Path) -> int:
    """Each failed worker's exit code and last log lines on stderr; 1 if any failed."""
    rc = 0
    for k, (p, _) in enumerate(procs):
        if p.returncode != 0:
            tail = (log_dir / f"worker{k}.log").read_text().strip().splitlines()[-5:]
            tail_text = redact(" | ".join(tail))
            print(f"worker {k} exited with code {p.returncode}: {tail_text}", file=sys.stderr)
            rc = 1
    return rc


def _wait_for(procs: list[tuple[Any, Any]], on_death: Callable[[int, int], Any] | None) -> None:
    """Poll the workers until all have exited, reporting each failed one once."""
    reported: set[int] = set()
    while True:
        running = 0
        for p, _ in procs:
            code = p.poll()
            if code is None:
                running += 1
            elif code != 0 and p.pid not in reported:
                reported.add(p.pid)
                if on_death is not None:
                    on_death(p.pid, code)
        if not running:
            return
        time.sleep(0.5)
