"""Benchmark: build the study report for 1,000 synthetic runs (target: under 10 s).

The runs are logged straight into a scratch sqlite store (``cmcr.results.fake_runs``); the
timed part is ``cmcr.results.report.build`` (collect with one search_runs call, tables,
figures, page, artifacts on the parent run), in-process, and the whole CLI as a subprocess
(Python and library imports included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: argparse.Namespace) -> dict:
    """Log N synthetic trials, then time the report build; return the figures."""
    # lazy: cmcr.bench imports every benchmark to read its options; mlflow loads only when
    # this one runs
    from mlflow.tracking import MlflowClient

    from cmcr.results import fake_runs
    from cmcr.results.collect import Selection
    from cmcr.results.report import build

    n = 200 if getattr(args, "quick", False) else 1000
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        client = MlflowClient(uri)
        client.create_experiment("cmcr", artifact_location=str(Path(tmp) / "artifacts"))
        t0 = time.perf_counter()
        fake_runs.log_random_sweep(client, "cmcr", study="bench", n_runs=n)
        log_s = time.perf_counter() - t0
        info = build(Selection(tracking_uri=uri, study="bench"), Path(tmp) / "rep")
        t0 = time.perf_counter()
        cli = subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parents[2] / "dashboards" / "build.py"),
             "--study", "bench", "--tracking-uri", uri, "--out", str(Path(tmp) / "rep_cli"),
             "--no-log"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        cli_s = time.perf_counter() - t0
    del cli
    return {
        "runs": n,
        "log_s": round(log_s, 2),
        "build_s": info["total_s"],
        "collect_s": info["collect_s"],
        "cli_wall_s": round(cli_s, 2),
        "under_10s": info["total_s"] < 10.0,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
