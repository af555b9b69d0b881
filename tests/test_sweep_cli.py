"""sweeps/run.py on bad input: one clear line, exit code 2, and the storage left untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "sweeps" / "run.py")


def _run(tmp_path: Path, *argv: str, storage: str | None = None) -> subprocess.CompletedProcess:
    storage = storage or f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, RUN, "--storage", storage, "--preset", "smoke", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def _study_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"study{len(list(tmp_path.glob('study*.yaml')))}.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown", "unknown study"),
        ("malformed", "not valid YAML"),
        ("mask_ratio_1.5", "data.mask_ratio"),
        ("unknown_key", "unknown config key"),
        ("bad_set", "train.nope"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_storage(tmp_path, case, expected):
    files = {
        "malformed": "name: x\nparams: {a: [1,\n",
        "mask_ratio_1.5": "name: m\nparams:\n  data.mask_ratio: {type: float, low: 0.2, high: 1.5}\n",
        "unknown_key": "name: k\nparams:\n  loss.weights.nope: {type: float, low: 0.1, high: 1}\n",
    }
    argv = {
        "unknown": ["--study", "no_such_study"],
        "bad_set": ["--study", "loss_weights", "--set", "train.nope=1"],
    }.get(case) or ["--study", _study_file(tmp_path, files[case])]
    out = _run(tmp_path, *argv)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeps/run.py: error:") and expected in lines[0]
    assert not (tmp_path / "optuna.db").exists()  # nothing was created
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_storage_is_one_line_with_the_password_hidden(tmp_path, smoke_world):
    # a real world: the data is checked first, before any store is touched (issue 14)
    out = _run(
        tmp_path,
        "--study",
        "loss_weights",
        "--set",
        f"data.dataroot={smoke_world}",
        storage="postgresql://postgres:s3cret@127.0.0.1:1/x",
    )
    assert out.returncode == 69  # UNAVAILABLE_EXIT: a server down is not a usage error (issue 29)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0]
    assert "s3cret" not in out.stderr + out.stdout and "postgres:***@" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()


def test_list_shows_the_builtin_spaces(tmp_path):
    out = _run(tmp_path, "--list")
    assert out.returncode == 0
    for text in ("loss_weights", "mask_ratio", "codebook_size", "components", "loss.weights.mim"):
        assert text in out.stdout
    assert "variant = cmcr-orth" in out.stdout


def test_status_of_a_missing_study_fails_cleanly(tmp_path):
    out = _run(tmp_path, "--study", "loss_weights", "--status")
    assert out.returncode == 2 and "no such database file" in out.stderr
    assert not (tmp_path / "optuna.db").exists()


def test_main_gives_the_callers_sigterm_handler_back() -> None:
    """The sweep turns SIGTERM into Ctrl-C while it runs, then restores the caller's handler: a
    caller in the same process (a test, a notebook) must not inherit it (a fork pool started
    later once inherited it and hung at its exit)."""
    import signal

    from cmcr.sweep import cli

    def mine(signum, frame):  # pragma: no cover - never called
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        assert cli.main(["--list"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
