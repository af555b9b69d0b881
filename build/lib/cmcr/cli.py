"""The ``cmcr`` command: one entry point, sub-commands implemented in their own modules.

Each sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; a module is
imported only when its command is named (for its arguments and its run), so ``cmcr synth`` does
not pay for importing torch and ``cmcr --help`` lists the commands from ``COMMANDS`` alone
(well under a second; importing every module took about 5 s).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cmcr.errors import UNAVAILABLE_EXIT, CMCRError, Unavailable
from cmcr.uris import print_traceback, redact

# name -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cmcr.synth.cli", "generate the synthetic nuScenes-format world"),
    "pretrain": ("cmcr.engine.cli_pretrain", "pre-train a LiDAR backbone with CMCR"),
    "probe": ("cmcr.engine.cli_downstream", "linear probing on nuScenes-lidarseg"),
    "finetune": ("cmcr.engine.cli_downstream", "fine-tuning on nuScenes-lidarseg"),
    "evaluate": ("cmcr.engine.cli_downstream", "evaluate a segmentation model, export lidarseg"),
    "ui": ("cmcr.results.ui", "start the MLflow UI on the embedded store (127.0.0.1)"),
    "dashboard": ("cmcr.results.dashboard", "optuna-dashboard on a study's storage (127.0.0.1)"),
    "bench": ("cmcr.bench", "benchmarks: data, step, sweep overhead, report build"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits with code 2 on bad arguments; keep its message on one line."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; ``command``'s sub-parser carries its module's arguments (the
    others are only listed: argparse parses the named one alone)."""
    parser = _Parser(prog="cmcr", description="CMCR Lab: pre-train, sweep and report CMCR.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name != command:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("cmcr"):
                p.set_defaults(_missing=str(exc))
                continue
            raise
        if hasattr(module, "add_arguments"):
            module.add_arguments(p, name) if _takes_name(module) else module.add_arguments(p)
    return parser


def _takes_name(module: object) -> bool:
    import inspect

    return len(inspect.signature(module.add_arguments).parameters) >= 2  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch, and turn user-facing errors into one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    named = next((a for a in argv if not a.startswith("-")), None)  # the top level has only -h
    parser = build_parser(named)
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        parser.error(f"command '{args.command}' is not available: {args._missing}")
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except Unavailable as exc:  # a server or the disk, not the input: its own code
        print(f"cmcr {args.command}: {redact(str(exc))}", file=sys.stderr)
        return UNAVAILABLE_EXIT
    except CMCRError as exc:
        print(f"cmcr {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cmcr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug or a library error: its traceback, without credentials
        print_traceback(f"cmcr {args.command}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
