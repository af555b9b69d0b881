"""Test-only entry point: ``sweeps/run.py`` with a stand-in trial function.

    python tests/sweep_with_trial_fn.py MODULE:FUNCTION [sweeps/run.py arguments...]

Imports FUNCTION from MODULE (found on PYTHONPATH) and calls the sweep CLI's ``main`` with it as
the trial function; spawned ``--workers`` start through this script too, so every worker runs
the stand-in. A stand-in reads no data and makes no real runs: the sweep skips its data check,
time estimate and report (``Extras``). Production code has no such switch: this file is the only
place that turns a name into code.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's cmcr

from cmcr.sweep.cli import Extras, main  # noqa: E402


def load(spec: str):  # noqa: ANN201
    """The function named by ``module:function``."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


if __name__ == "__main__":
    spec, argv = sys.argv[1], sys.argv[2:]
    worker_cmd = (sys.executable, str(Path(__file__).resolve()), spec)
    extras = Extras(check_data=False, estimate=False, build_report=False)
    sys.exit(main(argv, trial_fn=load(spec), worker_cmd=worker_cmd, extras=extras))
