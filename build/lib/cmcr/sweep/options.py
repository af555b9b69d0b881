"""The sweep's options, declared once: the dataclass, its argparse flags, a worker's argv and env.

Each field of ``SweepOptions`` carries its command-line flag and help in its metadata;
``add_option_arguments`` builds the parser from them and ``worker_argv`` writes them back for a
spawned worker, so a new option is one field here (mark ``worker=False`` when a spawned worker
must not inherit it). ``worker_args`` and ``worker_env`` are what every launcher hands a worker
(local processes, cmcr.sweep.spawn; SLURM jobs, cmcr.sweep.slurm): the argv without the store
URLs and without any ``--set`` that holds a secret or a tracking URI, in whatever spelling
(``tracking.tracking_uri=...``, `` tracking.tracking_uri =...``, ``tracking={tracking_uri: ...}``,
a YAML-escaped value): those travel in the environment, which only the user can read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcr.configs import parse_override, set_values
from cmcr.configs.schema import DOWNSTREAM_MODES
from cmcr.errors import ConfigError
from cmcr.names import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    STORAGE_ENV,
    SWEEP_SETS_ENV,
    SWEEP_TRACKING_ENV,
    TRACKING_URI_ENV,
    Attr,
)
from cmcr.sweep.space import MAX_TRIALS, PRUNERS
from cmcr.uris import redact

PROG = "sweeps/run.py"
LAUNCHERS = ("local", "slurm")
MAX_INTERRUPTIONS = 50  # cmcr.sweep.recovery's cap on re-queues that spend no retry
# ceilings of the count flags (issue 28), checked by runner.plan_sweep before any store exists
MAX_SEEDS, MAX_WORKERS, MAX_RETRIES = 100, 1024, 100  # workers: a SLURM array of 1024 tasks
OBJECTIVES = DOWNSTREAM_MODES  # what --objective may score: the schema's downstream modes
_URI_KEY = "tracking.tracking_uri"  # an override that may hold credentials: sent in the env
_URI_SECTION, _URI_FIELD = _URI_KEY.split(".")


def _opt(
    default: Any,
    flag: str,
    help: str,
    *,
    worker: bool = True,
    env: str | None = None,
    **argparse_kw: Any,
) -> Any:
    """A dataclass field with its CLI flag (``worker``: passed on to spawned workers; ``env``:
    the variable that stands in for an absent flag, the way to give a URL with a password)."""
    meta = {"flag": flag, "help": help, "worker": worker, "env": env, "argparse": argparse_kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SweepOptions:
    """Everything the CLI decides (see ``python sweeps/run.py --help``)."""

    study: str = _opt(None, "--study", "built-in study name (see --list) or a study .yaml file")
    storage: str = _opt(
        DEFAULT_STORAGE,
        "--storage",
        f"Optuna storage URL (default: ${STORAGE_ENV}, else {DEFAULT_STORAGE}); a URL with a "
        f"password belongs in ${STORAGE_ENV}, not on a command line (ps shows it to all users)",
        env=STORAGE_ENV,
    )
    n_trials: int | None = _opt(
        None,
        "--n-trials",
        f"trials the study should have, 1 to {MAX_TRIALS} (default: the study's; grid: its size)",
    )
    workers: int = _opt(
        1,
        "--workers",
        f"worker processes on this machine, 1 to {MAX_WORKERS} (default 1)",
        worker=False,
    )
    preset: str | None = _opt(None, "--preset", "config preset (default: the study's, else demo)")
    seeds: int = _opt(
        1, "--seeds", f"seeds per trial, 1 to {MAX_SEEDS}: 0..S-1, objective = mean val mIoU"
    )
    add_seeds: int | None = _opt(
        None,
        "--add-seeds",
        f"add K seeds (1 to {MAX_SEEDS}: S..S+K-1) to every configuration the stored study has "
        "finished (--top N: the N best), as new trials under the same parent run; nothing finished runs again",
        worker=False,
        metavar="K",
    )
    top: int | None = _opt(
        None,
        "--top",
        "with --add-seeds: add the seeds to the N best configurations only (by their mean val "
        "mIoU over every finished seed), e.g. --add-seeds 2 --top 3 to measure the seed noise "
        "where it decides the best",
        worker=False,
        metavar="N",
    )
    resume: bool = _opt(
        False,
        "--resume",
        "continue a stored study (every start also retries trials whose worker died)",
        worker=False,
    )
    retry_failed: bool = _opt(
        False,
        "--retry-failed",
        "re-open slots that failed for good; their retry count starts again",
        worker=False,
    )
    max_retries: int = _opt(
        2,
        "--max-retries",
        f"retries of a trial that failed by itself, 0 to {MAX_RETRIES} (default 2); divergence "
        "and bad input are not retried; a trial interrupted (Ctrl-C, SIGTERM, a lost worker, disk full, MLflow "
        f"down) is re-queued without spending one, at most {MAX_INTERRUPTIONS} times",
    )
    pruner: str | None = _opt(
        None,
        "--pruner",
        "what stops poor trials early (default: the study's 'pruner', else none when "
        "sweep.eval_every > 0, else median): median, asha (successive halving), hyperband or "
        "none; with sweep.eval_every > 0 it sees the representation probe during pre-training "
        "(rungs at fractions of each trial's budget, sweep.first_rung), else the downstream "
        "epochs",
        choices=PRUNERS,
    )
    objective: str = _opt(
        "probe", "--objective", "downstream.mode of the objective", choices=OBJECTIVES
    )
    overrides: list[str] = _opt(
        [], "--set", "config override(s), repeatable (e.g. train.max_steps=20)", metavar="KEY=VALUE"
    )
    tracking_uri: str | None = _opt(
        None,
        "--tracking-uri",
        f"MLflow tracking URI (default: ${TRACKING_URI_ENV}, else {DEFAULT_TRACKING_URI}); a "
        f"URI with a password belongs in ${TRACKING_URI_ENV}, not on a command line",
    )
    name: str | None = _opt(None, "--name", "study name in the storage (default: the study's name)")
    launcher: str = _opt(
        "local",
        "--launcher",
        "local: --workers processes here; slurm: --workers SLURM jobs (a job array) that run "
        "the workers against the study's shared storage (docs/scaling.md, SLURM cluster)",
        choices=LAUNCHERS,
    )
    # SLURM (cmcr.sweep.slurm): unset flags come from --slurm-config's `slurm:` section, then
    # from the defaults there; the worker jobs get the resolved --signal
    slurm_config: str | None = _opt(
        None,
        "--slurm-config",
        "YAML file with a `slurm:` section of the options below",
        worker=False,
    )
    partition: str | None = _opt(None, "--partition", "SLURM partition", worker=False)
    account: str | None = _opt(None, "--account", "SLURM account to charge", worker=False)
    time: str | None = _opt(
        None, "--time", "SLURM time limit per worker job (e.g. 24:00:00, 2-00:00:00)", worker=False
    )
    gpus_per_worker: int | None = _opt(
        None,
        "--gpus-per-worker",
        "GPUs per worker job (default 0); > 1: one torchrun launch of that many processes",
        worker=False,
    )
    cpus_per_worker: int | None = _opt(
        None, "--cpus-per-worker", "CPUs per worker job (default 1)", worker=False
    )
    mem: str | None = _opt(
        None, "--mem", "memory per worker job (SLURM --mem, e.g. 64G)", worker=False
    )
    signal: str | None = _opt(
        None,
        "--signal",
        "the scheduler's warning before a time limit or preemption, SIG[@seconds] (default "
        "TERM@120): the worker checkpoints at the next step, its trial is re-queued and the job "
        "requeued",
    )
    heartbeat_s: int = _opt(
        10,
        "--heartbeat",
        "heartbeat interval; a trial silent for 3×S is failed and retried",
        metavar="S",
    )


# what `--resume` takes from the stored study when the call does not name it (with --preset,
# which defaults to None anyway, and --set): field -> the study's user attr
STORED_SETTINGS = {"seeds": Attr.SEEDS, "objective": Attr.OBJECTIVE}


def reuse_stored(
    args: argparse.Namespace, stored: dict[str, Any], fixed: dict[str, Any]
) -> list[str]:
    """``--resume``: fill ``args`` from the stored study's attrs where the call names nothing
    (its preset, seeds, objective and --set overrides; ``fixed``: the study file's own keys,
    not repeated as overrides); returns what was reused, for the line that says so. A flag
    the call does name is kept: check_compatible then names the stored value if they differ."""
    reused = []
    if args.preset is None and stored.get(Attr.PRESET):
        args.preset = stored[Attr.PRESET]
        reused.append(f"preset {args.preset}")
    for name, attr in STORED_SETTINGS.items():
        if getattr(args, name) is None and stored.get(attr) is not None:
            setattr(args, name, stored[attr])
            reused.append(f"{name} {stored[attr]}")
    overrides = {k: v for k, v in (stored.get(Attr.OVERRIDES) or {}).items()
                 if k not in fixed and k != "downstream.mode"}  # fmt: skip
    if not args.overrides and overrides:
        args.overrides = [[f"{k}={json.dumps(v)}" for k, v in overrides.items()]]
        reused.append("--set " + " ".join(args.overrides[0]))
    return reused


def _fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(SweepOptions))


# --help's groups, in this order (fields not named: the first); SLURM's options stand apart, so
# a local user reads the first screen only
HELP_GROUPS = {
    "what to run": (),
    "continue or grow a stored study": ("resume", "retry_failed", "max_retries", "add_seeds", "top"),
    "stores": ("storage", "tracking_uri"),
    "workers": ("workers", "heartbeat_s", "launcher"),
    "SLURM (with --launcher slurm; docs/scaling.md)": (
        "slurm_config", "partition", "account", "time", "gpus_per_worker", "cpus_per_worker",
        "mem", "signal",
    ),
}  # fmt: skip


def add_option_arguments(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """One argparse argument per SweepOptions field (dest = the field name), in --help's
    groups (``HELP_GROUPS``); returns the groups by title."""
    made = {title: parser.add_argument_group(title) for title in HELP_GROUPS}
    first = next(iter(made.values()))
    for f in _fields():
        group = next((made[t] for t, names in HELP_GROUPS.items() if f.name in names), first)
        meta = f.metadata
        kw: dict[str, Any] = {"dest": f.name, **meta["argparse"]}
        if meta["help"]:
            kw["help"] = meta["help"]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if isinstance(default, bool):
            kw.update(action="store_true", default=default)
        elif isinstance(default, list):  # --set K=V [K=V ...], repeatable, as in cmcr's commands
            kw.update(action="append", nargs="+", default=[])
        else:  # a flag with an env stand-in, or one --resume may take from the stored study,
            # defaults to None: from_args tells them apart
            unset = meta["env"] or f.name in STORED_SETTINGS
            kw.update(default=None if unset else default, type=_scalar_type(f))
        group.add_argument(meta["flag"], **kw)
    return made


def _scalar_type(f: dataclasses.Field) -> type:
    return int if str(f.type).startswith("int") else str


def from_args(args: argparse.Namespace) -> SweepOptions:
    """SweepOptions from arguments parsed by a parser built with ``add_option_arguments``."""
    values = {f.name: getattr(args, f.name) for f in _fields()}
    values["overrides"] = set_values(values["overrides"])
    for f in _fields():
        if f.name in STORED_SETTINGS and values[f.name] is None:
            values[f.name] = f.default
        if f.metadata["env"] and values[f.name] is None:  # the flag, else its env, else default
            values[f.name] = os.environ.get(f.metadata["env"]) or f.default
    return SweepOptions(**values)


def worker_argv(opts: SweepOptions) -> list[str]:
    """The arguments of one spawned worker: the same sweep, one process, no setup."""
    argv: list[str] = []
    for f in _fields():
        value, flag = getattr(opts, f.name), f.metadata["flag"]
        if not f.metadata["worker"] or value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return [*argv, "--worker"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep CLI's arguments: the SweepOptions fields, then the actions."""
    parser.usage = f"{PROG} --study STUDY [options]  |  --list  |  --study STUDY --status"
    groups = add_option_arguments(parser)
    a = parser.add_argument_group("instead of a sweep").add_argument
    a("--list", action="store_true", help="list the built-in studies: space, pruner, cost here")
    a(
        "--status",
        action="store_true",
        help="print the study's trials by state with their MLflow runs",
    )
    slurm = list(groups.values())[-1]
    slurm.add_argument("--cancel", action="store_true", help="cancel the study's SLURM jobs")
    a("--no-report", action="store_true",
      help="do not build the study's report at the end (scripted sweeps; build it later with "
           "python dashboards/build.py --study NAME)")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # spawned workers


def sweep_options(args: argparse.Namespace) -> SweepOptions:
    """SweepOptions from parsed arguments; a spawned worker takes its URLs (and, when one was
    private, its overrides) from the environment."""
    opts = from_args(args)
    if args.worker:
        opts.tracking_uri = os.environ.get(SWEEP_TRACKING_ENV) or opts.tracking_uri
        if os.environ.get(SWEEP_SETS_ENV):
            opts.overrides = [str(o) for o in json.loads(os.environ[SWEEP_SETS_ENV])]
    return opts


def _parsed(override: str) -> tuple[str, Any]:
    """``override`` as (key stripped, YAML value), as the config reads it; ("", text) if bad."""
    try:
        return parse_override(override)
    except ConfigError:
        return "", override


def _set_uri(override: str) -> str | None:
    """The tracking URI ``override`` sets, in either spelling: ``tracking.tracking_uri=URI`` or
    ``tracking={tracking_uri: URI, ...}`` (keys stripped, the value read as YAML)."""
    key, value = _parsed(override)
    if key == _URI_KEY:
        return str(value)
    if key == _URI_SECTION and isinstance(value, dict) and _URI_FIELD in value:
        return str(value[_URI_FIELD])
    return None


def _private(override: str) -> bool:
    """Whether ``override`` must stay off a command line: it sets the tracking URI, or holds a
    secret in its text or in its value once read as YAML (``"http\\x3a//u:pw@h"``)."""
    texts = (override, str(_parsed(override)[1]))
    return _set_uri(override) is not None or any(redact(t) != t for t in texts)


def worker_args(opts: SweepOptions) -> list[str]:
    """A spawned worker's argv: ``worker_argv`` without the URLs and the private overrides."""
    kept = [o for o in opts.overrides if not _private(o)]
    return worker_argv(dataclasses.replace(opts, storage=None, tracking_uri=None, overrides=kept))


def worker_env(opts: SweepOptions, base: dict[str, str] | None = None) -> dict[str, str]:
    """A spawned worker's environment: ``base`` (default os.environ) plus both store URLs and,
    when one is private, every override in order (``worker_args`` leaves those out)."""
    env = dict(os.environ if base is None else base)
    env[STORAGE_ENV] = opts.storage
    for key in (SWEEP_TRACKING_ENV, SWEEP_SETS_ENV):
        env.pop(key, None)
    if any(map(_private, opts.overrides)):
        env[SWEEP_SETS_ENV] = json.dumps(list(opts.overrides))
    # --tracking-uri wins over --set tracking.tracking_uri=..., as in runner.plan_sweep
    set_uri = [uri for uri in map(_set_uri, opts.overrides) if uri is not None]
    uri = opts.tracking_uri or (set_uri[-1] if set_uri else None)
    if uri:  # the worker's explicit URI; MLFLOW_TRACKING_URI for anything that reads only it
        env[SWEEP_TRACKING_ENV] = env[TRACKING_URI_ENV] = uri
    return env


def with_checkout(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout first on PYTHONPATH: a worker imports this very ``cmcr``,
    installed or not (both launchers call it)."""
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


# the pruning audit the notice quotes (python -m cmcr.bench replay ..., its replay.json)
LAST_AUDIT = Path(__file__).resolve().parents[2] / "docs" / "bench" / "replay_2026-12-06.json"
ALPHA = 0.05  # a signal beats chance when its interval vs the shuffled null is above 0 and p < this


def audit_notice(pruner: str, signal: str, audit: Path = LAST_AUDIT) -> str | None:
    """The one line a sweep prints when it prunes in pre-training: how the last audited study's
    replay (``audit``) rated ``pruner`` on ``signal``, with its figures. None when it does not
    prune; a line saying so when the audit is missing or did not replay that pair."""
    if pruner == "none":
        return None
    where = f"{audit.parent.parent.name}/{audit.parent.name}/{audit.name}"
    try:
        data = json.loads(audit.read_text())
    except (OSError, ValueError):
        return f"note: pruner {pruner} in pre-training is unaudited ({where} is missing)"
    row = data.get("results", {}).get(signal, {}).get(pruner)
    trials = data.get("trials")
    if row is None:
        return (
            f"note: pruner {pruner} on the probe's '{signal}' was not replayed by the last "
            f"audit ({where}, {trials} trials); check it: python -m cmcr.bench replay"
        )
    low, high = row["diff_shuffled_ci"]
    beat = low > 0 and row["p_deal"] < ALPHA
    verdict = "better than chance" if beat else "no better than chance"
    return (
        f"note: on the last audited study ({where}, {trials} trials) pruner {pruner} on the "
        f"probe's '{signal}' was {verdict}: expected best kept {100 * row['best_kept']:.2f} % "
        f"vs the shuffled null {100 * (row['best_kept'] - row['diff_shuffled']):.2f} % "
        f"(difference 95 % CI [{100 * low:+.2f}, {100 * high:+.2f}] points, p {row['p_deal']:.2f})"
        f", at {row['step_ratio']:.2f}x fewer pre-training steps"
    )
