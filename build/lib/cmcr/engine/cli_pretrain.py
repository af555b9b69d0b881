"""``cmcr pretrain``: pre-train a LiDAR backbone (``--resume RUN_ID`` continues the same run)."""

from __future__ import annotations

import argparse

from cmcr.configs import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_flat,
    list_presets,
    load_config,
    set_values,
)
from cmcr.configs import validate_config as _validate
from cmcr.tracking.runs import require_run
from cmcr.tracking.store import make_client, resolve_tracking_uri
from cmcr.uris import redact_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config PRESET_OR_YAML [--set key=value ...] [--resume RUN_ID]``."""
    parser.add_argument(
        "--config",
        help=f"preset name ({', '.join(list_presets())}) or YAML file; with --resume the run's "
        "recorded config is used (its preset and overrides; --config may only repeat its preset)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, e.g. train.lr=5e-4 (repeatable)",
    )
    parser.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run")


def _recorded_config(run_id: str, base: Config) -> Config:
    """The config a run was started with (its params); tracking settings stay the caller's."""
    from cmcr.engine.preflight import check_tracking  # lazy: keeps `cmcr --help` fast

    check_tracking(base)  # the lookup below would retry an unanswered server for minutes
    uri = resolve_tracking_uri(base)
    client = make_client(uri)
    require_run(client, run_id, uri)
    params = {
        k: v for k, v in client.get_run(run_id).data.params.items() if not k.startswith("tracking.")
    }
    try:
        cfg = config_from_flat(params)
    except ConfigError as exc:
        raise ConfigError(f"run {run_id}: recorded config cannot be read ({exc})") from None
    cfg.tracking = base.tracking
    return cfg


def build_config(args: argparse.Namespace) -> Config:
    """Config from --config/--set; with --resume, the run's recorded config (its preset and
    the overrides it was started with) plus this call's --set. A --config naming another
    preset than the recorded one is refused, naming the stored preset."""
    sets = set_values(args.overrides)
    if not args.resume:
        if not args.config:
            raise ConfigError("--config: required (a preset name or a YAML file) unless --resume")
        return load_config(args.config, sets)
    # the overrides may name the store (tracking.*), so they apply before the lookup too
    cfg = _recorded_config(args.resume, load_config(None, sets))
    if args.config:
        asked = load_config(args.config, sets).preset
        if asked != cfg.preset:
            raise ConfigError(
                f"--config {args.config}: run {args.resume} was recorded with preset "
                f"{cfg.preset!r}; --resume continues it with its recorded config (drop --config)"
            )
    return _validate(apply_overrides(cfg, sets))


def resume_line(run_id: str, cfg: Config, overrides: list[str]) -> str:
    """What a resume reused, said before it starts."""
    extra = f"; with --set {' '.join(overrides)}" if overrides else ""
    return f"resuming run {run_id} with its recorded config (preset {cfg.preset}){extra}"


def run(args: argparse.Namespace) -> int:
    """Pre-train; prints the run id first (for --resume) and the weights path at the end."""
    # lazy: torch, spconv and accelerate load only when pre-training runs (`cmcr --help` fast)
    from cmcr.engine.pipeline import run_pretrain
    from cmcr.runlog import setup_console

    setup_console()  # the cmcr lines (the run id, for --resume); library chatter to run.log
    redact_logging()
    cfg = build_config(args)
    if args.resume:
        print(resume_line(args.resume, cfg, set_values(args.overrides)), flush=True)
    from cmcr.engine.preflight import before_pretrain  # lazy: keeps `cmcr --help` fast

    before_pretrain(cfg)  # a tracking server that is down: one line, before any run exists
    result = run_pretrain(cfg, run_id=args.resume)
    from cmcr.engine.pipeline import process_state  # lazy: torch (see above)

    if process_state().is_main_process:
        print(f"run {result.run_id}: {result.steps} steps, weights {result.backbone_path}")
    return 0
