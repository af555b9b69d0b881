"""``python sweeps/run.py``: resumable, parallel Optuna sweeps over the CMCR config.

Examples::

    python sweeps/run.py --list
    python sweeps/run.py --study loss_weights --preset smoke --n-trials 3
    python sweeps/run.py --study components --workers 2          # the 8-cell ablation grid
    python sweeps/run.py --study loss_weights --resume           # after a crash or kill
    python sweeps/run.py --study loss_weights --status
    python sweeps/run.py --study my_study.yaml --storage postgresql://user@db:5432/optuna

Several machines share a study by pointing ``--storage`` at one PostgreSQL database and
running the same command on each.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cmcr.errors import CMCRError

PROG = "sweeps/run.py"
WORKER_LOG_DIR = "sweep-logs"
# Test and benchmark hook, read here only: "module:function" replaces run_trial in this
# process (spawned workers inherit it), so storage concurrency can be tested without
# training. Never set it for real sweeps.
TRIAL_FN_ENV = "CMCR_SWEEP_TEST_TRIAL_FN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep CLI's arguments."""
    from cmcr.sweep.storage import DEFAULT_STORAGE

    a = parser.add_argument
    a("--study", help="built-in study name (see --list) or a study .yaml file")
    a(
        "--n-trials",
        type=int,
        default=None,
        help="trials the study should have (default: the study's; grid: its size)",
    )
    a("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    a("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    a("--preset", default=None, help="config preset (default: the study's, else demo)")
    a("--seeds", type=int, default=1, help="seeds per trial: 0..S-1, objective = mean val mIoU")
    a(
        "--resume",
        action="store_true",
        help="fail and retry trials whose worker died, then continue",
    )
    a("--list", action="store_true", help="list the built-in studies and their search spaces")
    a(
        "--status",
        action="store_true",
        help="print the study's trials by state with their MLflow runs",
    )
    a("--max-retries", type=int, default=2, help="retries of a failed trial (default 2)")
    a("--pruner", default="median", choices=("median", "hyperband", "none"))
    a(
        "--objective",
        default="probe",
        choices=("probe", "finetune"),
        help="downstream.mode of the objective",
    )
    a(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override (repeatable)",
    )
    a(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)",
    )
    a("--name", default=None, help="study name in the storage (default: the study's name)")
    a(
        "--heartbeat",
        type=int,
        default=10,
        metavar="S",
        help="heartbeat interval; a trial silent for 3×S is failed and retried",
    )
    a("--worker", action="store_true", help=argparse.SUPPRESS)  # set on spawned workers


def options(args: argparse.Namespace) -> Any:
    """SweepOptions from parsed arguments."""
    from cmcr.sweep.runner import SweepOptions

    return SweepOptions(
        study=args.study,
        storage=args.storage,
        n_trials=args.n_trials,
        workers=args.workers,
        preset=args.preset,
        seeds=args.seeds,
        resume=args.resume,
        max_retries=args.max_retries,
        pruner=args.pruner,
        objective=args.objective,
        overrides=list(args.overrides),
        tracking_uri=args.tracking_uri,
        name=args.name,
        heartbeat_s=args.heartbeat,
    )


def run(args: argparse.Namespace, trial_fn: Any = None) -> int:
    """Dispatch --list / --status / a worker / a sweep."""
    _quiet_libraries()
    trial_fn = trial_fn or _trial_fn_from_env()
    if args.list:
        print(list_studies())
        return 0
    if not args.study:
        raise CMCRError("--study: required (a built-in name from --list, or a study .yaml)")
    if args.heartbeat < 1:
        raise CMCRError(f"--heartbeat: expected an integer >= 1, got {args.heartbeat}")
    from cmcr.sweep import runner

    plan = runner.plan_sweep(options(args))
    if args.status:
        return print_status(plan)
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
        return _run_worker_or_sweep(args, plan, trial_fn, group)
    finally:
        if group is not None:
            group.stop()
            group.close()


def _run_worker_or_sweep(args: argparse.Namespace, plan: Any, trial_fn: Any, group: Any) -> int:
    from cmcr.sweep import runner

    storage = runner.connect(plan)
    if args.worker:
        study = runner.load(plan, storage)
        runner.check_compatible(plan, study)
        runner.work(plan, study, study.user_attrs[runner.PARENT_ATTR], trial_fn, group)
        return 0
    return sweep(plan, storage, trial_fn, group)


def sweep(plan: Any, storage: Any, trial_fn: Any = None, group: Any = None) -> int:
    """Set up the study, run the workers with a progress view, summarise."""
    from cmcr.sweep import runner
    from cmcr.sweep.progress import ProgressView
    from cmcr.sweep.storage import redact

    study, parent = runner.setup(plan, storage)
    print(
        f"study '{plan.study_name}' in {redact(plan.opts.storage)}: {plan.n_trials} trial(s), "
        f"{plan.opts.workers} worker(s); MLflow parent run {parent}",
        flush=True,
    )
    if plan.opts.resume:
        failed = runner.resume(plan, study)
        if failed:
            print(f"resume: trial(s) {failed} had lost their worker; failed and queued for retry")
    rc = 0
    with ProgressView(study, plan.study_name, plan.n_trials):
        if plan.opts.workers == 1:
            runner.work(plan, study, parent, trial_fn, group)
        else:
            rc = run_workers(plan)
    summary = runner.finish(plan, study, parent)
    print(summary_line(summary), flush=True)
    return rc


def run_workers(plan: Any) -> int:
    """Start ``--workers`` subprocesses on the same storage and wait; 1 if any failed."""
    log_dir = Path(plan.base.tracking.output_dir) / WORKER_LOG_DIR / plan.study_name
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    # K workers share the cores: without this each torch would start one thread per core
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.opts.workers)))
    procs = []
    for k in range(plan.opts.workers):
        log_file = open(log_dir / f"worker{k}.log", "w")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "cmcr.sweep", *worker_argv(plan.opts)]
        procs.append(
            (subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env), log_file)
        )
    try:
        while any(p.poll() is None for p, _ in procs):
            time.sleep(0.5)
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
            print(
                f"worker {k} exited with code {p.returncode}: " + " | ".join(tail), file=sys.stderr
            )
            rc = 1
    return rc


def worker_argv(opts: Any) -> list[str]:
    """The arguments of one spawned worker: the same sweep, one process, no setup."""
    argv = [
        "--study", opts.study, "--storage", opts.storage, "--seeds", str(opts.seeds),
        "--max-retries", str(opts.max_retries), "--pruner", opts.pruner,
        "--objective", opts.objective, "--heartbeat", str(opts.heartbeat_s), "--worker",
    ]  # fmt: skip
    for flag, value in (
        ("--n-trials", opts.n_trials),
        ("--preset", opts.preset),
        ("--tracking-uri", opts.tracking_uri),
        ("--name", opts.name),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for override in opts.overrides:
        argv += ["--set", override]
    return argv


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
    from cmcr.sweep import runner
    from cmcr.sweep.trials import FAIL_REASON_ATTR, RETRY_REASON_ATTR

    storage = runner.connect(plan, create=False)
    study = runner.load(plan, storage)
    trials = study.get_trials(deepcopy=False)
    print(
        f"study '{plan.study_name}': {len(trials)} trial(s); MLflow parent run {study.user_attrs.get(runner.PARENT_ATTR)}"
    )
    for state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL"):
        group = [t for t in trials if t.state.name == state]
        if not group:
            continue
        print(f"{state} ({len(group)})")
        for t in group:
            value = "" if t.value is None else f" value={t.value:.4f}"
            run_id = t.user_attrs.get("mlflow_run_id", "-")
            extra = t.user_attrs.get(FAIL_REASON_ATTR) or t.user_attrs.get(RETRY_REASON_ATTR) or ""
            origin = t.system_attrs.get("failed_trial")
            retry = f" retry of #{origin}" if origin is not None else ""
            print(
                f"  #{t.number}{value} run={run_id}{retry} params={t.params}"
                + (f" [{extra}]" if extra else "")
            )
    return 0


def _trial_fn_from_env() -> Any:
    """The test hook's function, or None (the real run_trial)."""
    spec = os.environ.get(TRIAL_FN_ENV)
    if not spec:
        return None
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _quiet_libraries() -> None:
    """Optuna's per-trial INFO lines would interleave with the progress view."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors as one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    from cmcr.sweep.group import GroupBroken

    try:
        return run(args)
    except GroupBroken as exc:  # not a usage error: the launch ends so it can be restarted
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except CMCRError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; re-run with --resume to continue", file=sys.stderr)
        return 130
