"""Failure classes by cause (issue 29): a full disk, however the writer phrases it, and a busy
or lost database are the environment's failures: they never spend a trial's retries, and a
plain ``--resume`` runs the slot again once the cause is gone."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cmcr.engine import disk
from cmcr.errors import UNAVAILABLE_EXIT
from cmcr.sweep import recovery
from cmcr.sweep.worker import fault_kind

ROOT = Path(__file__).resolve().parents[1]
WITH_TRIAL_FN = str(ROOT / "tests" / "sweep_with_trial_fn.py")
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 1152 vs 1040"


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4096))


def test_torchs_full_disk_error_is_the_environments(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError) as plain, disk.full_disk_named(tmp_path, "a checkpoint"):
        raise RuntimeError(TORCH_FULL)  # space left: the error is what it says
    assert fault_kind(plain.value) == recovery.OWN
    _full_disk(monkeypatch)
    with pytest.raises(OSError) as full, disk.full_disk_named(tmp_path, "a checkpoint"):
        raise RuntimeError(TORCH_FULL)
    assert full.value.errno == errno.ENOSPC and "unexpected pos" in str(full.value)
    assert fault_kind(full.value) == recovery.ENVIRONMENT
    with pytest.raises(OSError, match="no space left") as early:
        disk.check_free(tmp_path / "not" / "made" / "yet", "a checkpoint")
    assert fault_kind(early.value) == recovery.ENVIRONMENT


def test_a_busy_or_lost_database_is_the_environments():
    import sqlalchemy.exc

    locked = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))
    stored = optuna.exceptions.StorageInternalError("An exception is raised during the commit")
    stored.__cause__ = locked
    gone = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
    for exc in (locked, stored, gone):
        assert fault_kind(exc) == recovery.ENVIRONMENT, exc


# the stand-in trial: the real pipeline, with torch.save failing as on a full disk (and the
# disk reporting no space) while the file ``disk_full`` exists in the sweep's folder
FULL_DISK_TRIAL = f'''
import shutil
from pathlib import Path

import torch

from cmcr.engine.pipeline import run_trial

FLAG = Path("disk_full").resolve()
_save, _usage = torch.save, shutil.disk_usage


def _full_save(*args, **kwargs):
    if FLAG.exists():
        raise RuntimeError("{TORCH_FULL}")
    return _save(*args, **kwargs)


def _full_usage(path):
    usage = _usage(path)
    return usage._replace(free=4096) if FLAG.exists() else usage


torch.save, shutil.disk_usage = _full_save, _full_usage


def run(cfg, **kwargs):
    return run_trial(cfg, **kwargs)
'''


def test_a_full_disk_during_a_checkpoint_spends_no_retry(tmp_path, smoke_world):
    (tmp_path / "full_disk_trial.py").write_text(FULL_DISK_TRIAL)
    (tmp_path / "disk_full").touch()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    env.pop("MLFLOW_RUN_ID", None)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = [
        sys.executable, WITH_TRIAL_FN, "full_disk_trial:run", "--study", "mask_ratio",
        "--name", "full", "--n-trials", "1", "--preset", "smoke", "--storage", storage,
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-report",
        "--set", f"data.dataroot={smoke_world}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
        "--set", "downstream.probe_epochs=1", "--max-retries", "1",
    ]  # fmt: skip

    def sweep(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *extra], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=300)  # fmt: skip

    full = sweep()
    assert full.returncode == UNAVAILABLE_EXIT, full.stderr[-2000:]
    assert "no space left on device" in full.stderr and "without spending a retry" in full.stderr
    (tmp_path / "disk_full").unlink()  # space freed
    freed = sweep("--resume")  # no --retry-failed
    assert freed.returncode == 0, freed.stderr[-2000:]
    trials = optuna.load_study(study_name="full", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["cmcr.fail_kind"] == recovery.ENVIRONMENT
    assert trials[1].user_attrs["cmcr.slot"] == 0


def test_a_storage_hiccup_at_the_end_of_a_trial_keeps_its_result(tmp_path, monkeypatch):
    """The storage locked when the trial stores its seed result and when it is told complete:
    the writes are retried, the evaluation is not run again, no retry is spent."""
    import sqlalchemy.exc
    from test_sweep_runner import Recorder, load, run_sweep

    from cmcr.names import Attr
    from cmcr.sweep import trials

    monkeypatch.setattr(trials, "STORE_RETRY_S", (0.01,) * 3, raising=False)
    locked = sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("database is locked"))
    hiccups = {"results": 2, "tell": 2}
    set_attr, tell = optuna.trial.Trial.set_user_attr, optuna.Study.tell

    def flaky_set(self, key, value):  # noqa: ANN001, ANN202
        if key == Attr.SEED_RESULTS and hiccups["results"]:
            hiccups["results"] -= 1
            raise optuna.exceptions.StorageInternalError("commit failed") from locked
        return set_attr(self, key, value)

    def flaky_tell(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if hiccups["tell"]:
            hiccups["tell"] -= 1
            raise optuna.exceptions.StorageInternalError("commit failed") from locked
        return tell(self, *args, **kwargs)

    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", flaky_set)
    monkeypatch.setattr(optuna.Study, "tell", flaky_tell)
    rec = Recorder()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_sweep(tmp_path, store, "--study", "mask_ratio", "--name", "hiccup",
                     "--n-trials", "1", "--pruner", "none", trial_fn=rec) == 0  # fmt: skip
    assert hiccups == {"results": 0, "tell": 0}
    assert len(rec.calls) == 1  # evaluated once
    assert [t.state for t in load(tmp_path, "hiccup").trials] == [TrialState.COMPLETE]


def test_a_tracking_server_down_at_start_is_not_a_usage_error(tmp_path, capsys):
    """Exit codes mean one thing each: 2 is bad input; a server that does not answer is
    UNAVAILABLE_EXIT (69), one line, before any study exists."""
    from cmcr.sweep import cli

    extras = cli.Extras(check_data=False, estimate=False, build_report=False)
    argv = ["--study", "mask_ratio", "--preset", "smoke", "--n-trials", "1",
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
            "--tracking-uri", "http://127.0.0.1:9"]  # fmt: skip
    assert cli.main(argv, trial_fn=lambda *a, **k: None, extras=extras) == UNAVAILABLE_EXIT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreachable" in err and "error:" not in err
    assert not (tmp_path / "optuna.db").exists()
    assert cli.main([*argv[:-2], "--n-trials", "0"], extras=extras) == 2  # usage stays 2


def test_a_storage_folder_that_cannot_be_written_is_one_line(tmp_path):
    """The study lock beside an SQLite file on a read-only mount (left -wal/-shm files let the
    database itself open) was a traceback; now one line naming the storage."""
    from cmcr.tracking.optuna_store import StorageError, study_lock

    url = f"sqlite:///{tmp_path / 'gone' / 'optuna.db'}"  # a folder that cannot hold the lock
    with pytest.raises(StorageError, match="cannot be written here"), study_lock(None, url, "s"):
        pass
