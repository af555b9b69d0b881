"""Benchmark figures carry where they were measured: commit, CPU, torch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from cmcr.bench import main, meta

ROOT = Path(__file__).resolve().parents[1]


def test_meta_names_the_commit_the_cpu_and_torch():
    m = meta()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert m["git_commit"] == (head or "unknown")
    assert m["cpu_model"] and m["cpus"] >= 1
    assert m["torch"] == torch.__version__
    assert m["started_utc"][:2] == "20"


def test_bench_json_starts_with_meta(tmp_path, monkeypatch):
    import cmcr.bench as bench

    out = tmp_path / "bench.json"
    monkeypatch.setattr(bench, "BENCHES", ())  # run no benchmark: the JSON still holds meta
    assert main(["--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data) == ["meta"]
    assert data["meta"]["torch"] == torch.__version__
