"""Split records cached per table set: a second process reads them without the devkit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmcr.configs import load_config
from cmcr.data.records import load_records
from cmcr.data.records_cache import cached_records
from cmcr.errors import DataError
from cmcr.names import CACHE_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]


def _cfg(world: Path):
    return load_config("smoke", {"data.dataroot": str(world)}).data


def _same(a, b) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for k, v in vars(x).items():
            if isinstance(v, np.ndarray):
                assert v.dtype == getattr(y, k).dtype
                np.testing.assert_array_equal(v, getattr(y, k))
            else:
                assert v == getattr(y, k), k


def test_a_second_process_reads_the_records_without_importing_the_devkit(
    world, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    cfg = _cfg(world)
    first = cached_records(cfg, cfg.train_split)  # through the devkit, then written
    _same(first, load_records(cfg, cfg.train_split))
    code = (
        "import json, sys\n"
        "from cmcr.configs import load_config\n"
        "from cmcr.data.records_cache import cached_records\n"
        f"cfg = load_config('smoke', {{'data.dataroot': {str(world)!r}}}).data\n"
        "recs = cached_records(cfg, cfg.train_split)\n"
        "print(json.dumps([len(recs), 'nuscenes' in sys.modules, recs[0].cam_paths]))\n"
    )
    env = {**os.environ, CACHE_DIR_ENV: str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    n, devkit, paths = json.loads(out.stdout.strip().splitlines()[-1])
    assert (n, devkit, paths) == (len(first), False, first[0].cam_paths)


def test_a_changed_table_is_read_through_the_devkit_again(world, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    cfg = _cfg(world)
    before = cached_records(cfg, cfg.train_split)
    table = world / cfg.version / "calibrated_sensor.json"
    rows = json.loads(table.read_text())
    for row in rows:
        row["translation"] = [t + 1.0 for t in row["translation"]]  # every sensor moves 1 m
    table.write_text(json.dumps(rows))
    after = cached_records(cfg, cfg.train_split)
    _same(after, load_records(cfg, cfg.train_split))
    assert not np.allclose(after[0].lidar_to_ego, before[0].lidar_to_ego)


def test_a_broken_table_set_is_never_cached(world, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    cfg = _cfg(world)
    (world / cfg.version / "sample.json").write_text("[{")
    for _ in range(2):  # the second call fails the same way: nothing was cached
        with pytest.raises(DataError, match="sample.json"):
            cached_records(cfg, cfg.train_split)
    assert not list((tmp_path / "cache").rglob("*.json"))
