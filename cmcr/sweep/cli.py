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
import logging
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
    if args.status:
        return print_status(plan)
    from cmcr.sweep import slurm  # --launcher slurm, --cancel: cmcr/sweep/slurm.py

    if args.cancel:
        return slurm.cancel(plan)
    slurm_settings = None if args.worker else slurm.check(plan.opts)
    if plan.opts.add_seeds is not None and not args.worker:
        plan = runner.check_add_seeds(plan)  # before anything is written to any store
    elif plan.opts.resume and plan.opts.n_trials is None:
        plan = runner.resume_size(plan)
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
    """Set up the study, run the workers with a progress view, summarise."""
    from cmcr.sweep import runner
    from cmcr.sweep.progress import ProgressView
    from cmcr.sweep.worker import work

    lost: list[Any] = []
    study, parent = runner.setup(plan, storage, lost)
    total = runner.n_units(plan, study)
    units = total - runner.n_slots(plan, study)
    adding = f" + {units} adding seeds" if units else ""
    print(
        f"study '{plan.study_name}' in {redact(plan.opts.storage)}: {plan.n_trials} trial(s)"
        f"{adding}, {plan.opts.workers} worker(s); MLflow parent run {parent}",
        flush=True,
    )
    if lost:
        numbers = [t.number for t in lost]
        print(f"trial(s) {numbers} had lost their worker; queued again (no retry spent)")
    rc = 0
    with ProgressView(study, plan.study_name, total):
        if plan.opts.workers == 1:
            work(plan, study, parent, trial_fn, group)
        else:
            deaths: list[int] = []

            def requeue(pid: int, code: int) -> None:
                deaths.append(code)
                runner.heal(plan, study, pid=pid)  # its trials are retried now, not after grace

            rc = run_workers(plan, worker_cmd, on_death=requeue)
            if all(code < 0 for code in deaths) and _queued(study):
                # a worker was killed after the others had left: its trials run here
                work(plan, study, parent, trial_fn, group)
    runner.heal(plan, study)
    summary = runner.finish(plan, study, parent)
    print(summary_line(summary), flush=True)
    if summary.get("tracking_error"):
        print(f"{PROG}: {summary['tracking_error']}", file=sys.stderr)
    for slot, number, reason in summary["failed_slots"]:
        print(f"{PROG}: trial {number} (slot {slot}) failed: {redact(reason)}", file=sys.stderr)
        rc = rc or 1
    return rc


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
        parts.append(
            f"best val mIoU {summary['best_value']:.4f} (trial {summary['best_trial']}, {summary['best_params']})"
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


def print_status(plan: Any) -> int:
    """Trials of the stored study by state, with their MLflow run ids."""
    from cmcr.sweep import runner, seeds

    storage = runner.connect(plan, create=False)
    study = runner.load(plan, storage)
    trials = study.get_trials(deepcopy=False)
    parent = study.user_attrs.get(Attr.PARENT_RUN)
    print(f"study '{plan.study_name}': {len(trials)} trial(s); MLflow parent run {parent}")
    from cmcr.sweep.slurm import status_notes

    jobs = status_notes(trials)  # `` job=<id> (<state>)`` of trials run by SLURM workers
    for state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL"):
        group = [t for t in trials if t.state.name == state]
        if not group:
            continue
        print(f"{state} ({len(group)})")
        for t in group:
            value = "" if t.value is None else f" value={t.value:.4f}"
            run_id = t.user_attrs.get(Attr.RUN_ID, "-")
            extra = t.user_attrs.get(Attr.FAIL_REASON) or t.user_attrs.get(Attr.RETRY_REASON) or ""
            if Attr.FAIL_KIND in t.user_attrs:
                extra = f"{t.user_attrs[Attr.FAIL_KIND]}: {extra}"
            origin = t.system_attrs.get(Attr.FAILED_TRIAL)
            retry = f" retry of #{origin}" if origin is not None else ""
            print(
                f"  #{t.number}{value} run={run_id}{jobs.get(t.number, '')}{retry}{_adds(t)}"
                f" params={t.params}" + (f" [{redact(extra)}]" if extra else "")
            )
    for line in seeds.status_lines(study, plan.opts.seeds):
        print(line)
    return 0


def _adds(trial: Any) -> str:
    """`` adds seeds 1,2 to #0`` for a trial queued by --add-seeds."""
    if Attr.SEEDS_OF not in trial.user_attrs:
        return ""
    added = ",".join(str(s) for s in trial.user_attrs[Attr.TRIAL_SEEDS])
    return f" adds seeds {added} to #{trial.user_attrs[Attr.SEEDS_OF]}"


def _quiet_libraries() -> None:
    """Optuna's per-trial INFO lines would interleave with the progress view."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
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
        return run(args, trial_fn, worker_cmd)
    except (GroupBroken, WorkerStopped) as exc:  # not a usage error: start again once fixed
        print(f"{PROG}: {redact(str(exc))}", file=sys.stderr)
        return 1
    except CMCRError as exc:
        print(f"{PROG}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again to continue", file=sys.stderr)
        return 130
    except Exception:  # a bug or a library error: its traceback, without credentials
        print_traceback(PROG)
        return 1


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM → KeyboardInterrupt: the trial is failed as interrupted (no retry spent) and
    re-queued, its runs marked, the workers stopped, as with Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")
