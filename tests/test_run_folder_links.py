"""Run folders are ours (issue 28): no symbolic link is followed when writing, deleting or
uploading inside ``runs/<id>``.

A finished 2-step run (a checkpoint after each step) is copied for each test and has its
``backbone.pt`` removed, so that a resume would train again (drop partial checkpoints, load,
save, rotate, write the log, upload it). A link is planted, and the resume must be refused with
one line before anything is written or deleted: a listing (paths, sizes, mtimes) of the link's
target and of the run folder is the same before and after, and the MLflow run is untouched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cmcr.cli import main as cli_main
from cmcr.configs import load_config
from cmcr.engine.checkpoint import (
    TrainState,
    drop_partial_checkpoints,
    load_latest,
    own_run_dir,
    save_backbone,
    save_checkpoint,
)
from cmcr.engine.pipeline import run_pretrain
from cmcr.guard import RunFolderError, check_run_folder, no_links
from cmcr.runlog import attached
from cmcr.tracking.store import make_client

SECRET = "db.example:5432:*:me:hunter2\n"


def listing(root: Path) -> list[tuple[str, int, int, bool]]:
    """Every path under ``root`` (``root`` too), with its size, mtime and whether it is a link."""
    out = []
    for here, dirs, files in os.walk(root):
        for path in [Path(here)] + [Path(here, n) for n in dirs + files]:
            st = path.lstat()
            out.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns, path.is_symlink()))
    return sorted(set(out))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def finished(smoke_world, tmp_path_factory):
    """(overrides, run id, the finished run's folder) of a 2-step run, checkpoints 0 and 1."""
    base = tmp_path_factory.mktemp("links")
    over = {
        "data.dataroot": str(smoke_world),
        "tracking.tracking_uri": f"sqlite:///{base / 'mlflow.db'}",
        "tracking.output_dir": str(base / "runs"),
        "data.cameras": ["CAM_FRONT"],
        "train.max_steps": 2,
        "train.checkpoint_every": 1,
        "train.keep_checkpoints": 3,
        "train.batch_size": 1,
        "data.num_workers": 0,
    }
    result = run_pretrain(load_config("smoke", over))
    return over, result.run_id, base / "runs" / result.run_id


@pytest.fixture
def resumable(finished, tmp_path):
    """(config, run id, run folder, MLflow client) on a copy of the run folder that would train."""
    over, run_id, source = finished
    run = tmp_path / "runs" / run_id
    shutil.copytree(source, run)
    (run / "backbone.pt").unlink()  # "pre-training done" needs backbone.pt: a resume retrains
    cfg = load_config("smoke", {**over, "tracking.output_dir": str(tmp_path / "runs")})
    return cfg, run_id, run, make_client(over["tracking.tracking_uri"])


def _mlflow_state(client, run_id: str) -> tuple:
    run = client.get_run(run_id)
    return run.info.status, run.info.end_time, sorted(run.data.tags.items())


def test_run_log_link_is_neither_appended_to_nor_uploaded(resumable, tmp_path) -> None:
    cfg, run_id, run, client = resumable
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pgpass").write_text(SECRET)
    (run / "run.log").unlink()
    (run / "run.log").symlink_to(home / ".pgpass")
    before, folder, tracked = listing(home), listing(run), _mlflow_state(client, run_id)

    with pytest.raises(RunFolderError) as exc:
        run_pretrain(cfg, run_id=run_id)
    assert one_line(exc) == (
        f"'{run / 'run.log'}' in run folder '{run}' is a symbolic link; expected a plain file or "
        "folder (cmcr never writes, deletes or uploads through a link in a run folder)"
    )
    assert listing(home) == before and listing(run) == folder
    assert (home / ".pgpass").read_text() == SECRET
    assert _mlflow_state(client, run_id) == tracked  # refused before the run was reopened
    uploaded = Path(client.download_artifacts(run_id, "logs/run.log", str(tmp_path / "dl")))
    assert "hunter2" not in uploaded.read_text()


def test_checkpoints_link_loses_nothing_in_its_target(resumable, tmp_path) -> None:
    cfg, run_id, run, client = resumable
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(run / "checkpoints", elsewhere / "ckpts")
    (elsewhere / "ckpts" / "checkpoint_9").mkdir()  # no COMPLETE marker: a resume drops it
    (elsewhere / "ckpts" / "checkpoint_9" / "notes.txt").write_text("keep me")
    (run / "checkpoints").symlink_to(elsewhere / "ckpts")
    before, folder, tracked = listing(elsewhere), listing(run), _mlflow_state(client, run_id)

    with pytest.raises(RunFolderError, match="checkpoints' in run folder .* symbolic link") as exc:
        run_pretrain(cfg, run_id=run_id)
    one_line(exc)
    assert listing(elsewhere) == before and listing(run) == folder
    assert _mlflow_state(client, run_id) == tracked


def test_linked_run_folder_is_one_line_at_the_cli(resumable, finished, tmp_path, capsys) -> None:
    cfg, run_id, run, client = resumable
    other = tmp_path / "other"
    other.mkdir()
    shutil.move(run, other / run_id)
    run.symlink_to(other / run_id, target_is_directory=True)
    before, tracked = listing(other), _mlflow_state(client, run_id)
    over = finished[0]
    sets = [f"tracking.tracking_uri={over['tracking.tracking_uri']}",
            f"tracking.output_dir={tmp_path / 'runs'}"]  # fmt: skip

    capsys.readouterr()
    assert cli_main(["pretrain", "--resume", run_id, "--set", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"run folder '{run}' is a symbolic link" in err[0], err
    assert listing(other) == before
    assert _mlflow_state(client, run_id) == tracked


# ---- each place that writes, deletes or uploads, reached while a run runs ------------------
def _accelerator(run: Path) -> SimpleNamespace:
    def save_state() -> str:
        raise AssertionError("save_state ran: its rotation deletes through the link")

    return SimpleNamespace(
        project_dir=str(run), process_index=0, is_main_process=True, save_state=save_state,
        wait_for_everyone=lambda: None,
    )  # fmt: skip


@pytest.mark.parametrize("link", ["checkpoints", "rejected", "checkpoints/checkpoint_0"])
@pytest.mark.parametrize("call", ["save", "drop_partial", "load"])
def test_checkpoint_steps_refuse_a_link(tmp_path, link: str, call: str) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    for i in (0, 1, 9):
        (elsewhere / f"checkpoint_{i}").mkdir(parents=True)
        (elsewhere / f"checkpoint_{i}" / "model.safetensors").write_bytes(b"weights")
    (run / link).parent.mkdir(parents=True)
    (run / link).symlink_to(elsewhere)
    before = listing(elsewhere)
    acc = _accelerator(run)
    steps = {
        "save": lambda: save_checkpoint(acc, TrainState()),
        "drop_partial": lambda: drop_partial_checkpoints(acc),
        "load": lambda: load_latest(acc, TrainState()),
    }
    with pytest.raises(RunFolderError, match="is a symbolic link") as exc:
        steps[call]()
    assert link in one_line(exc)
    assert listing(elsewhere) == before


@pytest.mark.parametrize("link", ["backbone.tmp", "nuscenes"])
def test_weights_are_never_written_through_a_link(tmp_path, link: str) -> None:
    run, target = tmp_path / "run", tmp_path / "target"
    run.mkdir()
    target.mkdir()
    (target / "backbone.tmp").write_text("theirs")
    (run / link).symlink_to(target / "backbone.tmp" if link.endswith(".tmp") else target)
    before = listing(target)
    path = run / ("backbone.pt" if link.endswith(".tmp") else "nuscenes/backbone.tmp")
    with pytest.raises(RunFolderError, match="symbolic link") as exc:
        save_backbone({"w": torch.zeros(2)}, path, run)
    one_line(exc)
    assert listing(target) == before


class _Logger:
    is_main = True

    def __init__(self) -> None:
        self.uploaded: list[Path] = []

    def log_artifact(self, path, artifact_path=None) -> None:
        self.uploaded.append(Path(path))


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_run_log_is_opened_without_following(tmp_path, plant: str) -> None:
    run, home = tmp_path / "run", tmp_path / "home"
    run.mkdir()
    home.mkdir()
    (home / ".pgpass").write_text(SECRET)
    {
        "symlink": lambda: (run / "run.log").symlink_to(home / ".pgpass"),
        "hardlink": lambda: (run / "run.log").hardlink_to(home / ".pgpass"),
        "fifo": lambda: os.mkfifo(run / "run.log"),
    }[plant]()
    before, logger = listing(home), _Logger()
    with pytest.raises(RunFolderError) as exc, attached(logger, run):
        raise AssertionError("the block ran: the log was opened")
    assert "run.log" in one_line(exc)
    assert listing(home) == before and logger.uploaded == []


def test_run_log_linked_while_the_run_ran_is_not_uploaded(tmp_path, caplog) -> None:
    run, logger = tmp_path / "run", _Logger()
    run.mkdir()
    (tmp_path / ".pgpass").write_text(SECRET)
    with attached(logger, run) as path:
        path.unlink()
        path.symlink_to(tmp_path / ".pgpass")
    assert logger.uploaded == [] and "run log not uploaded" in caplog.text
    with attached(logger, tmp_path / "clean") as path:
        pass
    assert logger.uploaded == [path]  # a plain log is uploaded as before


def test_guard_paths(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "a").mkdir(parents=True)
    (run / "a" / "b").symlink_to(tmp_path)
    assert no_links(run, run / "a" / "new.txt") == run / "a" / "new.txt"
    assert check_run_folder(tmp_path / "missing") == tmp_path / "missing"
    with pytest.raises(RunFolderError, match="is outside the run folder"):
        no_links(run, run / ".." / "x")
    with pytest.raises(RunFolderError, match=r"'.*a/b' in run folder .* symbolic link"):
        no_links(run, run / "a" / "b" / "c")
    with pytest.raises(RunFolderError, match=r"a/b' in run folder"):
        check_run_folder(run)
    cfg = load_config("smoke", {"tracking.output_dir": str(tmp_path)})
    with pytest.raises(RunFolderError, match="expected one folder name"):
        own_run_dir(cfg, "../etc")
