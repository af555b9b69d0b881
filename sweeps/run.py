#!/usr/bin/env python
"""Resumable, parallel Optuna sweeps: a thin wrapper around ``cmcr.sweep.cli`` (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without `pip install -e .`

from cmcr.sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
