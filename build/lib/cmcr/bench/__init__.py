"""Benchmarks: ``python -m cmcr.bench [NAME ...] [--json PATH]``.

Each benchmark is a module ``cmcr.bench.<name>`` with ``add_arguments(parser)`` (optional) and
``run(args) -> dict`` returning flat figures; this package runs them, prints a table and writes
JSON. Heavy runs live here, not in the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from cmcr.adapters.malloc import keep_freed_memory

BENCHES = ("synth", "data", "losses", "step", "sweep", "report")
LONG = ("pruning",)  # tens of minutes: run by name only (python -m cmcr.bench pruning)
OFFLINE = ("replay",)  # reads a finished study's logs (--trials-json or --study): by name only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cmcr bench`` / ``python -m cmcr.bench``."""
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all of {', '.join(BENCHES)}; by name only: "
        f"{', '.join(LONG + OFFLINE)})",
    )
    parser.add_argument("--json", default="bench_results/bench.json", help="where to write figures")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a quick look)")
    for name in BENCHES + LONG + OFFLINE:  # each benchmark may add its own options
        try:
            module = importlib.import_module(f"cmcr.bench.{name}")
        except ModuleNotFoundError:
            continue
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser.add_argument_group(f"bench {name}"))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meta() -> dict[str, Any]:
    """Where and on what the figures were measured: they only mean something with this."""
    import torch

    # lazy: git_commit sits beside mlflow (tracking.inputs): only the JSON's meta loads it
    from cmcr.tracking.inputs import git_commit

    return {
        "started_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": git_commit(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        # as in every process that loads data (cmcr/adapters/malloc.py): the same allocator
        # for the floor, the pipeline, the losses and the step
        "glibc_keeps_freed_memory": keep_freed_memory(),
    }


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmarks, print a table, write JSON."""
    names = args.names or list(BENCHES)
    results: dict[str, dict] = {"meta": meta()}
    for name in names:
        module = importlib.import_module(f"cmcr.bench.{name}")
        t0 = time.perf_counter()
        print(f"== bench {name}", flush=True)
        results[name] = module.run(args)
        results[name]["bench_wall_s"] = round(time.perf_counter() - t0, 2)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print()
    print(f"{'benchmark':<10} {'figure':<40} value")
    for name, figures in results.items():
        for key, value in figures.items():
            print(f"{name:<10} {key:<40} {value}")
    print(f"\nfigures written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m cmcr.bench``."""
    parser = argparse.ArgumentParser(prog="python -m cmcr.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
