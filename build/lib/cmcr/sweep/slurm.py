"""``--launcher slurm``: the sweep's workers as a SLURM job array of a generated sbatch script.

Why a generated script and not submitit: submitit pickles the function and its arguments to
the shared filesystem and unpickles them in the job (the storage URL, with its password, would
lie in a pickle; this project never unpickles), and its preemption support re-submits a pickled
checkpoint of the callable. A plain sbatch script runs the same worker command as every other
launcher (``python -m cmcr.sweep … --worker``), can be read, kept and re-submitted by hand,
and needs nothing but ``sbatch`` on the login node.

The submitting process (a login node) checks the options (``sbatch --test-only`` names a bad
partition or account before anything is stored), sets the study up (study, parent run, trial
queue) and submits one array of ``--workers`` tasks. Each task runs the worker loop against the
study's shared storage (its launcher: cmcr.sweep.slurm_job); the store URLs travel in the job's
environment (``sbatch --export``), never in the script or on a command line. A task with ``--gpus-per-worker`` K > 1 runs one
``torchrun`` launch of K processes (one launch is one worker, cmcr.sweep.group).

Preemption and time limits: ``--signal SIG@S`` asks SLURM to send SIG to the worker S seconds
before the end; the worker checkpoints at the next optimiser step (cmcr.engine.stop), fails
its trial as ``interrupted`` (its retry is queued without spending one, and resumes the same
MLflow run from that checkpoint), leaves a requeue mark and exits; the script then requeues
its own array task (``scontrol requeue``). A task killed without warning leaves its trial
RUNNING: the heartbeat (database storages) or the next worker's look at the queue
(``fail_lost``: the trial's job is no longer running) fails it as ``lost`` and queues its retry.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmcr.configs.yaml_io import read_yaml_file
from cmcr.errors import CMCRError
from cmcr.guard import CONTROL
from cmcr.names import Attr
from cmcr.sweep import parent as parent_runs
from cmcr.sweep import recovery, runner
from cmcr.sweep.options import PROG, with_checkout, worker_args, worker_env
from cmcr.uris import redact

log = logging.getLogger("cmcr.sweep")

DEFAULT_SIGNAL = "TERM@120"
REQUEUE_EXIT = 75  # EX_TEMPFAIL: the worker left for a requeue
MARK_ENV = "CMCR_SLURM_REQUEUE_MARK"  # the file a preempted worker creates (set by the script)
JOB_PREFIX = "cmcr-"
ALIVE = ("RUNNING", "COMPLETING", "SUSPENDED", "CONFIGURING", "STOPPED")
_NAME = re.compile(r"^[A-Za-z0-9_.,-]+$")
_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^\d+-\d+$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_PLAIN = re.compile(r"[A-Za-z0-9_.,:/%+=@-]+")  # needs no quoting for sbatch nor bash
_FIELDS = ("partition", "account", "time", "gpus_per_worker", "cpus_per_worker", "mem", "signal")


class SlurmError(CMCRError):
    """A SLURM option or command the launcher cannot use."""


@dataclass(frozen=True)
class SlurmSettings:
    """The resolved SLURM options of a submission (flags over --slurm-config over defaults)."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    gpus_per_worker: int = 0
    cpus_per_worker: int = 1
    mem: str | None = None
    signal: str = DEFAULT_SIGNAL


def check(opts: Any) -> SlurmSettings | None:
    """Validate the launcher options before anything runs; the settings for ``slurm``."""
    given = [f for f in _FIELDS if getattr(opts, f) is not None]
    if opts.launcher != "slurm":
        if given or opts.slurm_config:
            flag = "--" + (given[0].replace("_", "-") if given else "slurm-config")
            raise SlurmError(f"{flag}: only with --launcher slurm")
        return None
    return settings(opts)


def settings(opts: Any) -> SlurmSettings:
    """Merge --slurm-config's ``slurm:`` section under the flags; every value checked."""
    values: dict[str, Any] = {}
    if opts.slurm_config:
        values.update(_read_config(opts.slurm_config))
    values.update({f: getattr(opts, f) for f in _FIELDS if getattr(opts, f) is not None})
    merged = SlurmSettings(**values)
    for name in ("partition", "account"):
        value = getattr(merged, name)
        if value is not None and not _NAME.match(value):
            raise SlurmError(f"--{name} {value!r}: expected a SLURM name (letters, digits, _.,-)")
    if merged.time is not None and not _TIME.match(merged.time):
        raise SlurmError(
            f"--time {merged.time!r}: expected MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
        )
    if merged.mem is not None and not _MEM.match(merged.mem):
        raise SlurmError(f"--mem {merged.mem!r}: expected a size such as 4000, 16G or 512M")
    _at_least("--gpus-per-worker", merged.gpus_per_worker, 0)
    _at_least("--cpus-per-worker", merged.cpus_per_worker, 1)
    parse_signal(merged.signal)
    return merged


def _at_least(flag: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SlurmError(f"{flag}: expected an integer >= {low}, got {value!r}")


def _read_config(path: str) -> dict[str, Any]:
    data = read_yaml_file(path, f"--slurm-config {path}", SlurmError)
    section = data.get("slurm") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise SlurmError(f"--slurm-config {path}: expected a `slurm:` section of options")
    unknown = sorted(set(section) - set(_FIELDS))
    if unknown:
        raise SlurmError(f"--slurm-config {path}: unknown key(s) {unknown}; known: {list(_FIELDS)}")
    return {
        k: (str(v) if k in ("partition", "account", "time", "mem") else v)
        for k, v in section.items()
    }


def parse_signal(text: str) -> tuple[int, int | None]:
    """``SIG[@seconds]`` (``R:`` allowed) → (signal number, seconds before the end or None).

    ``B:`` is refused: it signals the batch shell only, and the worker would never hear it.
    """
    spec = text.strip()
    if spec.upper().startswith("B:") or spec.upper().startswith("RB:"):
        raise SlurmError(
            f"--signal {text!r}: B: sends the signal to the batch shell only; the worker runs "
            "in a job step (srun) and must receive it: drop the B:"
        )
    spec = spec[2:] if spec.upper().startswith("R:") else spec
    name, _, when = spec.partition("@")
    seconds = None
    if when:
        if not when.isdigit():
            raise SlurmError(f"--signal {text!r}: expected SIG@seconds, e.g. TERM@120")
        seconds = int(when)
    try:
        signum = (
            int(name)
            if name.isdigit()
            else signal.Signals["SIG" + name.upper().removeprefix("SIG")]
        )
        signum = signal.Signals(signum)
    except (KeyError, ValueError):
        raise SlurmError(
            f"--signal {text!r}: unknown signal {name!r} (TERM, USR1, USR2, ...)"
        ) from None
    if signum in (signal.SIGKILL, signal.SIGSTOP):
        raise SlurmError(f"--signal {text!r}: {signum.name} cannot be caught; use TERM or USR1")
    return int(signum), seconds


def signal_spec(s: SlurmSettings) -> str:
    """The sbatch ``--signal`` value (the default warning time when none was given)."""
    signum, seconds = parse_signal(s.signal)
    name = signal.Signals(signum).name.removeprefix("SIG")
    return f"{name}@{seconds if seconds is not None else 120}"


# ---- the job script ----------------------------------------------------------------------------
def job_name(study_name: str) -> str:
    return JOB_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)


def directive_value(what: str, value: str) -> str:
    """``value`` as one ``#SBATCH`` argument. bash reads the line as a comment up to its
    newline, so a control character is refused (a newline would start a shell line); sbatch
    splits at blanks and honours double quotes and backslashes (not single quotes), so a value
    with any of those is double-quoted, its backslashes, quotes and '#' escaped."""
    if CONTROL.search(value):
        raise SlurmError(
            f"{what} {value[:60]!r}: expected no control characters (newline, tab, ...)"
        )
    if not _PLAIN.fullmatch(value):
        value = '"' + re.sub(r'(["\\#])', r"\\\1", value) + '"'
    return value


def directives(s: SlurmSettings, workers: int, name: str, log_dir: Path) -> list[str]:
    """The ``#SBATCH`` lines: an array of ``workers`` requeueable tasks, one task each; every
    interpolated value through ``directive_value``."""
    lines = [
        f"--job-name={directive_value('job name', name)}",
        f"--array=0-{workers - 1}",
        f"--output={directive_value('tracking.output_dir', f'{log_dir}/%A_%a.log')}",
        "--open-mode=append",  # a requeued task appends to its log
        "--requeue",
        "--ntasks=1",
        f"--cpus-per-task={s.cpus_per_worker}",
        f"--signal={signal_spec(s)}",
    ]
    for flag, value in (("partition", s.partition), ("account", s.account), ("time", s.time)):
        if value is not None:
            lines.append(f"--{flag}={directive_value(f'--{flag}', value)}")
    if s.mem is not None:
        lines.append(f"--mem={directive_value('--mem', s.mem)}")
    if s.gpus_per_worker:
        lines.append(f"--gpus-per-task={s.gpus_per_worker}")
    return [f"#SBATCH {line}" for line in lines]


def job_script(s: SlurmSettings, workers: int, name: str, log_dir: Path, argv: list[str]) -> str:
    """The sbatch script: the worker under srun, then a requeue if the worker asked for one."""
    python = shlex.quote(sys.executable)
    if s.gpus_per_worker > 1:  # one launch is one worker: rank 0 claims, the others follow
        launch = (
            f"{python} -m torch.distributed.run --standalone --nproc_per_node {s.gpus_per_worker}"
        )
    else:
        launch = python
    worker = " ".join([launch, "-m", "cmcr.sweep", *map(shlex.quote, argv)])
    return "\n".join(
        [
            "#!/bin/bash",
            *directives(s, workers, name, log_dir),
            "# written by sweeps/run.py --launcher slurm; the store URLs come in the environment",
            "set -u",
            'task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
            f'export {MARK_ENV}={shlex.quote(str(log_dir))}/"requeue.$task"',
            f'rm -f "${MARK_ENV}"',
            'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
            'echo "worker $task (job $SLURM_JOB_ID) start $(date -u +%FT%TZ) on $(hostname)'
            ' restart ${SLURM_RESTART_COUNT:-0}"',
            f"srun --ntasks=1 {worker}",
            "rc=$?",
            f'if [ -e "${MARK_ENV}" ]; then',
            f'  rm -f "${MARK_ENV}"',
            '  echo "worker $task: preempted, requeueing"',
            '  scontrol requeue "$task"',
            "fi",
            'exit "$rc"',
            "",
        ]
    )


# ---- submit, cancel, the queue -----------------------------------------------------------------
def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(
            f"--launcher slurm: '{name}' is not on PATH (run this on a SLURM login node)"
        )
    return path


def submit(plan: Any, s: SlurmSettings) -> int:
    """Check with ``sbatch --test-only``, set the study up, submit the array; returns 0."""
    sbatch = _tool("sbatch")
    name = job_name(plan.study_name)
    log_dir = (Path(plan.base.tracking.output_dir) / "slurm" / plan.study_name).resolve()
    opts = dataclasses.replace(plan.opts, signal=s.signal)
    text = job_script(s, plan.opts.workers, name, log_dir, worker_args(opts))  # checks, first
    log_dir.mkdir(parents=True, exist_ok=True)
    script = log_dir / f"workers-{time.strftime('%Y%m%dT%H%M%S')}.sbatch"
    script.write_text(text)
    env = with_checkout(worker_env(opts))
    _sbatch(sbatch, ["--test-only"], script, env)  # a bad partition/account: before any store write
    storage = runner.connect(plan)
    study, parent = runner.setup(plan, storage)
    job = _sbatch(sbatch, ["--parsable"], script, env).split(";")[0]
    study.set_user_attr(Attr.SLURM_JOBS, [*study.user_attrs.get(Attr.SLURM_JOBS, []), job])
    print(
        f"study '{plan.study_name}' in {redact(plan.opts.storage)}: {runner.n_slots(plan, study)} "
        f"trial(s); MLflow parent run {parent}\nsubmitted SLURM job array {job}: "
        f"{plan.opts.workers} worker(s) ({script}; logs {log_dir}/{job}_<task>.log)\n"
        f"watch: {PROG} --study {plan.opts.study} --status   (add the same --storage)\n"
        f"stop:  {PROG} --study {plan.opts.study} --cancel",
        flush=True,
    )
    return 0


def _sbatch(sbatch: str, extra: list[str], script: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sbatch, *extra, "--export=ALL", str(script)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines() or [f"exit {out.returncode}"]
        raise SlurmError(f"sbatch refused the workers ({script.name}): {redact(lines[-1])}")
    return out.stdout.strip()


def queue(array_ids: list[str]) -> dict[str, str] | None:
    """{``<array>_<task>``: state} of this user's queued/running tasks of those arrays; None
    when squeue cannot answer (then nobody is declared lost)."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        out = subprocess.run(
            [squeue, "-h", "-r", "--me", "-o", "%F|%i|%T"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    wanted = set(array_ids)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in wanted:
            states[parts[1]] = parts[2]
    return states


def cancel(plan: Any, wait_s: float = 120.0) -> int:
    """``--cancel``: scancel the study's arrays, wait until none is queued, fail the trials
    their workers held (retries queued, no retry spent); 0, or 1 if jobs remain."""
    study = runner.load(plan, runner.connect(plan, create=False))
    arrays = list(study.user_attrs.get(Attr.SLURM_JOBS, []))
    if not arrays:
        print(f"study '{plan.study_name}': no SLURM jobs were submitted for it")
        return 0
    out = subprocess.run(
        [_tool("scancel"), *arrays], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise SlurmError(f"scancel {' '.join(arrays)}: {out.stderr.strip() or out.returncode}")
    deadline = time.monotonic() + wait_s
    left = queue(arrays)
    while left and time.monotonic() < deadline:
        time.sleep(1.0)
        left = queue(arrays)
    lost = fail_lost(plan, study)
    runner.heal(plan, study)
    held = f"; trial(s) {[t.number for t in lost]} re-queued" if lost else ""
    if left:
        print(
            f"study '{plan.study_name}': job(s) {sorted(left)} still in the queue after {wait_s:.0f} s"
        )
        return 1
    print(f"study '{plan.study_name}': cancelled SLURM job array(s) {', '.join(arrays)}{held}")
    return 0


# ---- a worker job's view of the queue (the rest of a worker job: cmcr.sweep.slurm_job) ----------
def current_job() -> str | None:
    """This process's array task (``<array id>_<task>``), its plain job id, or None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def fail_lost(plan: Any, study: Any) -> list[Any]:
    """Fail RUNNING trials whose SLURM job is no longer running (or is this job: a previous
    run of it, requeued); their retries come from the next heal. Nothing when squeue fails."""
    from optuna.trial import TrialState  # lazy: optuna is not needed by --help

    held = {
        t.number: t.user_attrs[Attr.SLURM_JOB]
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if Attr.SLURM_JOB in t.user_attrs
    }
    if not held:
        return []
    me = current_job()
    states = queue([job.split("_")[0] for job in held.values()])
    if states is None:
        return []
    lost = []
    for number, job in held.items():
        state = states.get(job)
        if job != me and state in ALIVE:
            continue
        why = "requeued" if job == me or state is not None else "gone"
        frozen = recovery.fail_running(study, number, recovery.LOST, f"SLURM job {job} {why}")
        if frozen is not None:
            parent_runs.runs_lost(plan.base, frozen, f"trial {number}: job {job} {why}")
            lost.append(frozen)
    return lost


# ---- --status ----------------------------------------------------------------------------------
def status_notes(trials: list[Any]) -> dict[int, str]:
    """{trial number: `` job=<id> (<state>)``} for trials run by a SLURM worker."""
    jobs = {
        t.number: t.user_attrs[Attr.SLURM_JOB] for t in trials if Attr.SLURM_JOB in t.user_attrs
    }
    if not jobs:
        return {}
    states = queue(sorted({j.split("_")[0] for j in jobs.values()}))
    notes = {}
    for number, job in jobs.items():
        state = "?" if states is None else states.get(job, "ended")
        notes[number] = f" job={job} ({state})"
    return notes
