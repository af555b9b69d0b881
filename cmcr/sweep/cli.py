"""``python sweeps/run.py``: resumable, parallel Optuna sweeps over the CMCR config.

Examples::

    python sweeps/run.py --list
    python sweeps/run.py --study loss_weights --preset smoke --n-trials 3
    python sweeps/run.py --study components --workers 2          # the 8-cell ablation grid
    python sweeps/run.py --study loss_weights --resume           # after a crash or kill
    python sweeps/run.py --study loss_weights --status
    python sweeps/run.py --study loss_weights --add-seeds 2      # seeds S, S+1 of every config
    python sweeps/run.py --study my_study.yaml --storage postgresql://user@db:5432/optuna

Several machines share a study by pointing ``--storage`` at one PostgreSQL database and
running the same command on each.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cmcr.errors import CMCRError
from cmcr.names import STORAGE_ENV, SWEEP_TRACKING_ENV, TRACKING_URI_ENV, Attr
from cmcr.sweep.options import SweepOptions, add_option_arguments, from_args, worker_argv
from cmcr.uris import print_traceback, redact, redact_logging

PROG = "sweeps/run.py"
WORKER_LOG_DIR = "sweep-logs"
# how a spawned worker starts: this package's entry point (tests pass their own command that
# injects a stand-in trial function; production code never reads code names from anywhere)
WORKER_CMD = (sys.executable, "-m", "cmcr.sweep")
_URI_KEY = "tracking.tracking_uri"  # an override that may hold credentials: sent in the env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep CLI's arguments: the SweepOptions fields, then the actions."""
    add_option_arguments(parser)
    a = parser.add_argument
    a("--list", action="store_true", help="list the built-in studies and their search spaces")
    a(
        "--status",
        action="store_true",
        help="print the study's trials by state with their MLflow runs",
    )
    a("--cancel", action="store_true", help="cancel the study's SLURM worker jobs")
    a("--worker", action="store_true", help=argparse.SUPPRESS)  # set on spawned workers


def options(args: argparse.Namespace) -> SweepOptions:
    """SweepOptions from parsed arguments; a spawned worker takes its URLs from the environment."""
    opts = from_args(args)
    if args.worker:
        opts.storage = os.environ.get(STORAGE_ENV) or opts.storage
        opts.tracking_uri = os.environ.get(SWEEP_TRACKING_ENV) or opts.tracking_uri
    return opts


def worker_args(opts: SweepOptions) -> list[str]:
    """A spawned worker's argv: ``worker_argv`` without the URLs, which may hold passwords."""
    kept = [o for o in opts.overrides if not o.startswith(f"{_URI_KEY}=")]
    return worker_argv(dataclasses.replace(opts, storage=None, tracking_uri=None, overrides=kept))


def worker_env(opts: SweepOptions, base: dict[str, str] | None = None) -> dict[str, str]:
    """A spawned worker's environment: ``base`` (default os.environ) plus both store URLs."""
    env = dict(os.environ if base is None else base)
    env[STORAGE_ENV] = opts.storage
    env.pop(SWEEP_TRACKING_ENV, None)
    # --tracking-uri wins over --set tracking.tracking_uri=..., as in runner.plan_sweep
    set_uri = [o.split("=", 1)[1] for o in opts.overrides if o.startswith(f"{_URI_KEY}=")]
    uri = opts.tracking_uri or (set_uri[-1] if set_uri else None)
    if uri:  # the worker's explicit URI; MLFLOW_TRACKING_URI for anything that reads only it
        env[SWEEP_TRACKING_ENV] = env[TRACKING_URI_ENV] = uri
    return env


def run(
    args: argparse.Namespace, trial_fn: Any = None, worker_cmd: Sequence[str] = WORKER_CMD
) -> int:
    """Dispatch --list / --status / a worker / a sweep.

    ``trial_fn`` replaces ``run_trial`` in this process; ``worker_cmd`` starts each spawned
    worker (a test passes one that injects its trial function there too).
    """
    _quiet_libraries()
    if args.list:
        print(list_studies())
        return 0
    if not args.study:
        raise CMCRError("--study: required (a built-in name from --list, or a study .yaml)")
    if args.heartbeat_s < 1:
        raise CMCRError(f"--heartbeat: expected an integer >= 1, got {args.heartbeat_s}")
    from cmcr.sweep import runner

    plan = runner.plan_sweep(options(args))
    if args.add_seeds is not None and args.status:
        raise CMCRError("--add-seeds: not with --status (run it, then ask for the status)")
    if args.status:  # the stored study's size, not the study file's default
        return print_status(runner.resume_size(plan) if plan.opts.n_trials is None else plan)
    from cmcr.sweep import slurm  # --launcher slurm, --cancel: cmcr/sweep/slurm.py

    if args.cancel:
        return slurm.cancel(plan)
    slurm_settings = None if args.worker else slurm.check(plan.opts)
    if plan.opts.add_seeds is not None and not args.worker:
        plan = runner.check_add_seeds(plan)  # before anything is written to any store
    elif plan.opts.n_trials is None and not args.worker:
        # a stored study keeps its size: only --n-trials grows it (never the file's default)
        plan = runner.resume_size(plan)
        finished = runner.finished_size(plan)
        if finished is not None and not (plan.opts.resume or plan.opts.retry_failed):
            print(
                f"study '{plan.study_name}' has finished its {finished} trial(s): nothing to "
                f"run. Grow it with --n-trials N (N > {finished}); --status shows it"
            )
            return 0
    if not args.worker:  # before the study exists (a spawned worker's parent checked already)
        from cmcr.engine.preflight import before_sweep

        # a caller's own trial function decides what it reads: only run_trial's data is checked
        before_sweep(plan.base, data=trial_fn is None)
        if slurm_settings is not None:
            return slurm.submit(plan, slurm_settings)
    from cmcr.sweep import group as launch

    if launch.world_size() > 1 and plan.opts.workers != 1:
        raise CMCRError(
            f"--workers {plan.opts.workers}: under accelerate launch/torchrun "
            f"(WORLD_SIZE={launch.world_size()}) one launch is one worker; scale by starting "
            "more launches"
        )
    launch.group_timeout()  # a bad CMCR_GROUP_TIMEOUT_MIN fails here, before the group starts
    group = launch.group_from_env()
    if group is not None and not group.is_main:
        if trial_fn is None:
            from cmcr.sweep.objective import default_trial_fn

            trial_fn = default_trial_fn()
        group.follow(trial_fn, plan.base)
        group.close()
        return 0
    try:
        return _run_worker_or_sweep(args, plan, trial_fn, group, worker_cmd)
    finally:
        if group is not None:
            group.stop()
            group.close()


def _run_worker_or_sweep(
    args: argparse.Namespace, plan: Any, trial_fn: Any, group: Any, worker_cmd: Sequence[str]
) -> int:
    from cmcr.sweep import runner
    from cmcr.sweep.worker import work

    storage = runner.connect(plan)
    if args.worker:
        study = runner.load(plan, storage)
        runner.check_compatible(plan, study)
        work(plan, study, study.user_attrs[Attr.PARENT_RUN], trial_fn, group)
        return 0
    return sweep(plan, storage, trial_fn, group, worker_cmd)


def sweep(
    plan: Any,
    storage: Any,
    trial_fn: Any = None,
    group: Any = None,
    worker_cmd: Sequence[str] = WORKER_CMD,
) -> int:
    """Set up the study, say what will run and for how long, run the workers under the live
    view, summarise with where to look. Ctrl-C / SIGTERM: the interrupted trials are failed
    as interrupted (no retry spent) and the parent run ends KILLED with the reason."""
    from cmcr.sweep import runner
    from cmcr.sweep.estimate import estimate
    from cmcr.sweep.progress import ProgressView

    lost: list[Any] = []
    before = _stored_trials(plan, storage)
    study, parent = runner.setup(plan, storage, lost)
    total = runner.n_units(plan, study)
    est = estimate(plan.base, study, plan.opts.seeds) if trial_fn is None else None
    print(start_lines(plan, study, parent, before, est), flush=True)
    if lost:
        numbers = [t.number for t in lost]
        print(f"trial(s) {numbers} had lost their worker; queued again (no retry spent)")
    rc = 0
    view = ProgressView(
        study,
        plan.study_name,
        total,
        estimate_s=est.trial_s if est else None,
        workers=plan.opts.workers,
    )
    try:
        with view:
            rc = _run_workers_here(plan, study, parent, trial_fn, group, worker_cmd)
    except KeyboardInterrupt:
        _interrupted(plan, study, parent)
        raise
    runner.heal(plan, study)
    summary = runner.finish(plan, study, parent)
    print(summary_line(summary), flush=True)
    if summary.get("tracking_error"):
        print(f"{PROG}: {summary['tracking_error']}", file=sys.stderr)
    for slot, number, reason in summary["failed_slots"]:
        print(f"{PROG}: trial {number} (slot {slot}) failed: {redact(reason)}", file=sys.stderr)
        rc = rc or 1
    if summary["done"] and "best_value" in summary:
        # a stand-in objective (tests, benchmarks) made no real runs to report on
        for line in where_to_look(plan, summary, build_report=trial_fn is None):
            print(line, flush=True)
    return rc


def _run_workers_here(
    plan: Any, study: Any, parent: str, trial_fn: Any, group: Any, worker_cmd: Sequence[str]
) -> int:
    from cmcr.sweep import runner
    from cmcr.sweep.worker import work

    if plan.opts.workers == 1:
        work(plan, study, parent, trial_fn, group)
        return 0
    deaths: list[int] = []

    def requeue(pid: int, code: int) -> None:
        deaths.append(code)
        runner.heal(plan, study, pid=pid)  # its trials are retried now, not after grace

    rc = run_workers(plan, worker_cmd, on_death=requeue)
    if all(code < 0 for code in deaths) and _queued(study):
        # a worker was killed after the others had left: its trials run here
        work(plan, study, parent, trial_fn, group)
    return rc


def _interrupted(plan: Any, study: Any, parent: str) -> None:
    """After Ctrl-C / SIGTERM: heal (the interrupted trials keep their retry budget: the worker
    failed them as ``interrupted``), then end the parent run KILLED with the reason, unless
    another machine still runs trials of the study (its sweep finishes the parent run)."""
    from cmcr.sweep import parent as parent_runs
    from cmcr.sweep import runner

    try:
        runner.heal(plan, study)
        if _count(study, "RUNNING"):
            return
        done = runner.finished_size(plan)
        left = "" if done is not None else "; resume with --resume"
        parent_runs.end_interrupted(
            plan.base, parent, f"sweep interrupted by the user (Ctrl-C or SIGTERM){left}"
        )
    except Exception as exc:  # the stores may be what broke: the next start fixes the records
        print(f"{PROG}: could not end the parent run: {redact(str(exc))}", file=sys.stderr)


def _count(study: Any, state: str) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == state)


def _stored_trials(plan: Any, storage: Any) -> int:
    """Slots the stored study had before this start (0 for a new study)."""
    from cmcr.sweep import runner

    try:
        study = runner.load(plan, storage)
    except CMCRError:
        return 0
    return int(study.user_attrs.get(Attr.N_TRIALS, 0))


def start_lines(plan: Any, study: Any, parent: str, before: int, est: Any) -> str:
    """What the sweep will do, said before it starts: preset, trials, workers, time."""
    from cmcr.progress import fmt_duration
    from cmcr.sweep import runner
    from cmcr.sweep.progress import trial_seconds

    slots = runner.n_slots(plan, study)
    units = runner.n_units(plan, study) - slots
    trials = study.get_trials(deepcopy=False)
    todo = sum(1 for t in trials if t.state.name in ("WAITING", "RUNNING"))
    grown = f", grown from {before}" if before and slots > before else ""
    adding = f" + {units} adding seeds" if units else ""
    seeds = f" × {plan.opts.seeds} seeds" if plan.opts.seeds > 1 else ""
    lines = [
        f"study '{plan.study_name}': preset {plan.base.preset}, {slots} trial(s){seeds}{grown}"
        f"{adding}; {todo} to run now on {plan.opts.workers} worker(s) "
        f"({len(trial_seconds(trials))} finished before)",
        f"  storage {redact(plan.opts.storage)}; MLflow parent run {parent}",
    ]
    if est is not None:
        total = est.total_s(todo, plan.opts.workers)
        if total is None:
            lines.append(f"  time: no estimate yet ({est.source}); the view shows one later")
        else:
            lines.append(
                f"  estimated time: {fmt_duration(total)} ({fmt_duration(est.trial_s)} per "
                f"trial: {est.source})"
            )
    return "\n".join(lines)


def where_to_look(plan: Any, summary: dict[str, Any], *, build_report: bool) -> list[str]:
    """The best trial, the report's file:// path, ``cmcr ui`` and the MLflow URLs."""
    from cmcr.sweep.progress import short_params

    lines = [
        f"best: trial #{summary['best_trial']} val mIoU {summary['best_value']:.4f} "
        f"({short_params(summary['best_params'], 200)})"
    ]
    report = _report(plan, build_report)
    if report:
        lines.append(report)
    urls = _mlflow_urls(plan, summary)
    if urls and urls[0][1].startswith("http://127.0.0.1:5000/"):
        lines.append("MLflow: start the UI with `cmcr ui`, then open")
    elif urls:
        lines.append("MLflow (the tracking server):")
    lines += [f"  {label}: {url}" for label, url in urls]
    return lines


def _report(plan: Any, build: bool) -> str | None:
    """Build the study's report (best effort) and say where it is."""
    out = report_dir(plan)
    if not build:
        page = out / "index.html"
        if page.is_file():
            return f"report: {page.resolve().as_uri()}"
        return f"report: none yet (python dashboards/build.py --study {plan.study_name})"
    try:
        from cmcr.results.collect import Selection
        from cmcr.results.report import build as build_report
        from cmcr.tracking.store import resolve_tracking_uri

        sel = Selection(
            tracking_uri=resolve_tracking_uri(plan.base),
            study=plan.study_name,
            storage=plan.opts.storage,
        )
        info = build_report(sel, out)
    except Exception as exc:
        return f"report: not built ({redact(str(exc)).splitlines()[0]}); try dashboards/build.py"
    return f"report: {(Path(info['out']) / 'index.html').resolve().as_uri()}"


def report_dir(plan: Any) -> Path:
    """``reports/<study>`` beside the runs folder (``runs`` → ``./reports/<study>``, where
    ``dashboards/build.py --study`` writes it too)."""
    import re

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", plan.study_name)  # as cmcr.results.report names it
    return Path(plan.base.tracking.output_dir).parent / "reports" / slug


def _public_base(uri: str) -> str:
    """A tracking server's address for a browser: no user, password or query (a link is
    printed, and a browser asks for the credentials itself)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _mlflow_urls(plan: Any, summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Direct links into ``cmcr ui`` (127.0.0.1:5000, or the tracking server itself): the
    study's runs table in its saved view, the parent run and the best run."""
    from cmcr.tracking.store import client_for, resolve_tracking_uri
    from cmcr.tracking.study import ui_urls

    try:
        uri = resolve_tracking_uri(plan.base)
        remote = uri.startswith(("http://", "https://"))
        base = _public_base(uri) if remote else "http://127.0.0.1:5000"
        parent = summary["parent_run_id"]
        exp = client_for(uri).get_run(parent).info.experiment_id
        runs = {"parent run": parent}
        if summary.get("best_run_id"):
            runs["best run"] = summary["best_run_id"]
        urls = ui_urls(base, exp, runs)
        return [("runs table", urls["runs"])] + [(k, urls[k]) for k in runs]
    except Exception:
        return []


def _queued(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


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
    env = worker_env(plan.opts)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
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


def summary_line(summary: dict[str, Any]) -> str:
    """The closing line of a sweep."""
    parts = [f"study '{summary['study']}':"]
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"):
        if summary.get(state):
            parts.append(f"{state.lower()} {summary[state]}")
    if "best_value" in summary:
        from cmcr.sweep.progress import short_params

        params = short_params(summary["best_params"], 160)
        parts.append(
            f"best val mIoU {summary['best_value']:.4f} (trial {summary['best_trial']}, {params})"
        )
    if not summary["done"]:
        parts.append("(trials still queued or running elsewhere)")
    return " ".join(parts)


def list_studies() -> str:
    """The built-in studies with their search spaces."""
    from cmcr.sweep.space import builtin_studies, parse_study_file

    lines = []
    for name, path in builtin_studies().items():
        spec = parse_study_file(path)
        n = spec.default_n_trials()
        lines.append(
            f"{name}  ({spec.sampler}, {spec.direction} val mIoU, {n} trials by default; {path})"
        )
        for p in spec.params:
            if p.type in ("float", "int"):
                lines.append(
                    f"    {p.name}: {p.type} [{p.low}, {p.high}]" + (" log" if p.log else "")
                )
            elif p.choice_overrides is not None:
                for label, over in p.choice_overrides.items():
                    lines.append(f"    {p.name} = {label}: {over or '(defaults)'}")
            else:
                lines.append(f"    {p.name}: {p.type} {list(p.choices)}")
        for key, value in spec.fixed.items():
            lines.append(f"    fixed {key} = {value}")
    return "\n".join(lines) if lines else "no built-in studies found"


def print_status(plan: Any, now: Any = None) -> int:
    """The stored study as one table: a row per slot (its latest attempt; retries are counted as
    retries of the slot, not as trials), finished ones sorted by value, parameters rounded,
    durations, step progress of running trials; then the best trial and where to look."""
    from cmcr.sweep import runner, seeds

    storage = runner.connect(plan, create=False)
    study = runner.load(plan, storage)
    print(status_table(plan, study, now))
    for line in seeds.status_lines(study, plan.opts.seeds):
        print(line)
    best = _best(study)
    if best is not None:
        summary = {
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": best.params,
            "best_run_id": best.user_attrs.get(Attr.RUN_ID),
            "parent_run_id": study.user_attrs.get(Attr.PARENT_RUN),
        }
        for line in where_to_look(plan, summary, build_report=False):
            print(line)
    return 0


_ORDER = {"COMPLETE": 0, "RUNNING": 1, "WAITING": 2, "PRUNED": 3, "FAIL": 4}


def _best(study: Any) -> Any:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: (t.value, -t.number))


def status_table(plan: Any, study: Any, now: Any = None) -> str:
    """``--status``'s table (``now``: the time running trials' durations count to)."""
    import datetime

    from cmcr.progress import fmt_duration
    from cmcr.sweep import recovery, runner
    from cmcr.sweep.progress import clip, running_trial, short_params
    from cmcr.sweep.slurm import status_notes

    now = now or datetime.datetime.now()
    trials = study.get_trials(deepcopy=False)
    jobs = status_notes(trials)  # ``job=<id> (<state>)`` of trials run by SLURM workers
    slots = recovery.by_slot(trials)
    latest = {slot: attempts[-1] for slot, attempts in slots.items()}
    counts: dict[str, int] = {}
    for t in latest.values():
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    retries = sum(len(a) - 1 for a in slots.values())
    sign = -1 if study.direction.name == "MAXIMIZE" else 1

    def key(t: Any) -> tuple:
        value = sign * t.value if t.value is not None else 0.0
        return (_ORDER.get(t.state.name, 9), value, t.number)

    names = ("COMPLETE", "RUNNING", "WAITING", "PRUNED", "FAIL")
    labels = {"WAITING": "queued", "FAIL": "failed"}
    parts = [f"{counts.get(n, 0)} {labels.get(n, n.lower())}" for n in names]
    retry_text = f"; {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
    parent = study.user_attrs.get(Attr.PARENT_RUN)
    out = [
        f"study '{plan.study_name}' (preset {study.user_attrs.get(Attr.PRESET, '?')}, "
        f"{study.direction.name.lower()} val mIoU): {runner.n_units(plan, study)} trial(s): "
        + ", ".join(parts)
        + retry_text,
        f"MLflow parent run {parent}",
    ]
    rows = [("trial", "state", "value", "time", "params", "run", "note")]
    for t in sorted(latest.values(), key=key):
        end = t.datetime_complete or (now if t.state.name == "RUNNING" else None)
        seconds = (end - t.datetime_start).total_seconds() if t.datetime_start and end else None
        value = "-" if t.value is None else f"{t.value:.4f}"
        note = [jobs.get(t.number, "").strip()]
        if t.state.name == "RUNNING":
            r = running_trial(t, now)
            if r.phase:
                note.append(f"{r.progress()}, ETA {'stale' if r.stale else fmt_duration(r.eta_s)}")
        attempts = slots[t.user_attrs[Attr.SLOT]]
        if len(attempts) > 1:
            prev = attempts[-2]
            why = prev.user_attrs.get(Attr.FAIL_REASON) or recovery.STALE_REASON
            note.append(
                f"attempt {len(attempts)}, retry of #{prev.number} "
                f"({recovery.kind_of(prev)}: {redact(why)})"
            )
        if t.state.name == "FAIL":
            reason = t.user_attrs.get(Attr.FAIL_REASON) or recovery.STALE_REASON
            note.append(f"{recovery.kind_of(t)}: {redact(reason)}")
        note.append(_adds(t).strip())
        rows.append(
            (
                f"#{t.number}",
                t.state.name,
                value,
                fmt_duration(seconds) if seconds is not None else "-",
                short_params(t.params, 60),
                str(t.user_attrs.get(Attr.RUN_ID, "-")),
                "; ".join(n for n in note if n),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {0, 2, 3}
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=False))
        ]
        out.append(clip(("  " + "  ".join(cells) + "  " + r[-1]).rstrip()))
    return "\n".join(out)


def _adds(trial: Any) -> str:
    """`` adds seeds 1,2 to #0`` for a trial queued by --add-seeds."""
    if Attr.SEEDS_OF not in trial.user_attrs:
        return ""
    added = ",".join(str(s) for s in trial.user_attrs[Attr.TRIAL_SEEDS])
    return f" adds seeds {added} to #{trial.user_attrs[Attr.SEEDS_OF]}"


def _quiet_libraries() -> None:
    """Optuna's per-trial INFO lines would interleave with the progress view."""
    import optuna

    from cmcr.runlog import setup_console

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup_console()  # library chatter goes to each run's run.log artifact (cmcr.runlog)
    redact_logging()


def main(
    argv: list[str] | None = None,
    *,
    trial_fn: Any = None,
    worker_cmd: Sequence[str] = WORKER_CMD,
) -> int:
    """Entry point: user errors as one line on stderr and exit code 2.

    ``trial_fn`` / ``worker_cmd``: see ``run`` (tests/sweep_with_trial_fn.py passes both).
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    from cmcr.sweep.group import GroupBroken
    from cmcr.sweep.worker import WorkerStopped

    signal.signal(signal.SIGTERM, _interrupt)  # a stop request takes the Ctrl-C path
    try:
        code = run(args, trial_fn, worker_cmd)
    except (GroupBroken, WorkerStopped) as exc:  # not a usage error: start again once fixed
        print(f"{PROG}: {redact(str(exc))}", file=sys.stderr)
        code = 1
    except CMCRError as exc:
        print(f"{PROG}: error: {redact(str(exc))}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again to continue", file=sys.stderr)
        code = 130
    except Exception:  # a bug or a library error: its traceback, without credentials
        print_traceback(PROG)
        code = 1
    return _leave_launch(code)


def _leave_launch(code: int) -> int:
    """A rank of a multi-process launch ends here with ``code``, skipping the interpreter's
    teardown: after the process group is destroyed, torch's C++ threads still abort it now and
    then while static objects are destroyed ("terminate called without an active exception",
    SIGABRT, seen in CI on 2026-12-02 after a two-rank study had completed), and the launcher
    then reports the launch failed. Everything is recorded by then; logs and streams are
    flushed first. A single process returns normally."""
    import logging
    import os

    from cmcr.sweep.group import world_size

    try:
        several = world_size() > 1
    except CMCRError:
        several = False
    if not several:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM → KeyboardInterrupt: the trial is failed as interrupted (no retry spent) and
    re-queued, its runs marked, the workers stopped, as with Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")
