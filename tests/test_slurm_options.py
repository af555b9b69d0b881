"""The SLURM launcher's options and job script (no cluster needed; tests/test_slurm_cluster.py
runs them on a real one)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import pytest

from cmcr.names import Attr
from cmcr.sweep import slurm, slurm_job
from cmcr.sweep.launcher import LocalLauncher
from cmcr.sweep.options import add_option_arguments, from_args, worker_args, worker_env
from cmcr.tracking.optuna_store import StorageError, check_url, journal_path


def _opts(*argv: str):
    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    return from_args(parser.parse_args(["--study", "mask_ratio", *argv]))


def test_flags_make_the_sbatch_directives():
    s = slurm.check(
        _opts("--launcher", "slurm", "--partition", "gpu", "--account", "lab", "--time",
              "2-00:00:00", "--gpus-per-worker", "8", "--cpus-per-worker", "32", "--mem", "256G",
              "--signal", "USR1@300")
    )  # fmt: skip
    lines = slurm.directives(s, 4, "cmcr-x", Path("/shared/logs"))
    assert lines == [
        "#SBATCH --job-name=cmcr-x",
        "#SBATCH --array=0-3",
        "#SBATCH --output=/shared/logs/%A_%a.log",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --signal=USR1@300",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --mem=256G",
        "#SBATCH --gpus-per-task=8",
    ]


def test_the_yaml_section_fills_what_the_flags_leave(tmp_path):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        "slurm:\n  partition: a100\n  time: '24:00:00'\n  gpus_per_worker: 8\n  mem: 64G\n"
    )
    s = slurm.check(_opts("--launcher", "slurm", "--slurm-config", str(cfg), "--mem", "128G"))
    assert (s.partition, s.time, s.gpus_per_worker, s.mem) == ("a100", "24:00:00", 8, "128G")
    assert (s.cpus_per_worker, s.signal) == (1, slurm.DEFAULT_SIGNAL)


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--time", "tomorrow"), "--time 'tomorrow'"),
        (("--mem", "lots"), "--mem 'lots'"),
        (("--partition", "gpu;rm -rf"), "--partition"),
        (("--cpus-per-worker", "0"), "--cpus-per-worker: expected an integer >= 1"),
        (("--gpus-per-worker", "-1"), "--gpus-per-worker: expected an integer >= 0"),
        (("--signal", "B:USR1@60"), "batch shell only"),
        (("--signal", "KILL@60"), "cannot be caught"),
        (("--signal", "NOPE"), "unknown signal"),
        (("--signal", "TERM@soon"), "SIG@seconds"),
    ],
)
def test_bad_options_are_one_clear_error(argv, message):
    with pytest.raises(slurm.SlurmError, match=message.replace("(", r"\(")):
        slurm.check(_opts("--launcher", "slurm", *argv))


def test_slurm_options_need_the_slurm_launcher(tmp_path):
    with pytest.raises(slurm.SlurmError, match="--partition: only with --launcher slurm"):
        slurm.check(_opts("--partition", "gpu"))
    bad = tmp_path / "c.yaml"
    bad.write_text("slurm:\n  gpus: 8\n")
    with pytest.raises(slurm.SlurmError, match=r"unknown key\(s\) \['gpus'\]"):
        slurm.check(_opts("--launcher", "slurm", "--slurm-config", str(bad)))


def test_signal_forms():
    assert slurm.parse_signal("TERM@120") == (signal.SIGTERM, 120)
    assert slurm.parse_signal("R:SIGUSR1@90") == (signal.SIGUSR1, 90)
    assert slurm.parse_signal("10") == (10, None)
    assert slurm.signal_spec(slurm.SlurmSettings(signal="USR2")) == "USR2@120"


def test_the_script_holds_no_store_url_and_requeues_on_the_mark():
    opts = _opts(
        "--launcher", "slurm", "--storage", "postgresql://alice:S3cr3tPW@db/optuna",
        "--tracking-uri", "http://bob:S3cr3tPW@mlflow:5000", "--set", "train.max_steps=3",
    )  # fmt: skip
    s = slurm.check(opts)
    script = slurm.job_script(s, 2, "cmcr-x", Path("/l"), worker_args(opts))
    assert "S3cr3tPW" not in script and "postgresql" not in script and "mlflow:5000" not in script
    assert "srun --ntasks=1 " in script and " -m cmcr.sweep " in script
    assert "--launcher slurm" in script and "--worker" in script
    assert 'scontrol requeue "$task"' in script and slurm.MARK_ENV in script
    env = worker_env(opts, base={})
    assert env["CMCR_SWEEP_STORAGE"].endswith("@db/optuna")
    multi = slurm.job_script(
        slurm.SlurmSettings(gpus_per_worker=4), 1, "cmcr-x", Path("/l"), ["--worker"]
    )
    assert "-m torch.distributed.run --standalone --nproc_per_node 4 -m cmcr.sweep" in multi


def test_journal_storage_urls(tmp_path):
    assert journal_path("journal:///shared/s.journal") == Path("/shared/s.journal")
    assert journal_path("runs/study.log") == Path("runs/study.log")
    assert journal_path("sqlite:///runs/optuna.db") is None
    check_url("journal:///shared/s.journal")
    with pytest.raises(StorageError, match="journal:///absolute/path"):
        check_url("journal://relative")
    with pytest.raises(StorageError, match="a file, not a folder"):
        check_url(f"journal://{tmp_path}")


def test_a_journal_study_is_shared_between_storages(tmp_path):
    """Two processes' worth of storage objects on one journal file see each other's trials."""
    import optuna

    from cmcr.tracking.optuna_store import open_storage

    url = f"journal://{tmp_path / 's.journal'}"
    with pytest.raises(StorageError, match="no such journal file"):
        open_storage(url, create=False)
    a = optuna.create_study(study_name="j", storage=open_storage(url))
    a.enqueue_trial({"x": 1.0})
    b = optuna.load_study(study_name="j", storage=open_storage(url, create=False))
    assert [t.state.name for t in b.get_trials()] == ["WAITING"]


def test_outside_a_slurm_job_the_worker_launcher_is_local(monkeypatch):
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    assert isinstance(slurm_job.worker_launcher(_opts("--launcher", "slurm")), LocalLauncher)
    monkeypatch.setenv("SLURM_JOB_ID", "12")  # a local launch inside some job: still local
    assert isinstance(slurm_job.worker_launcher(_opts()), LocalLauncher)


def test_the_slurm_launcher_records_its_job_and_leaves_for_a_requeue(monkeypatch, tmp_path):
    monkeypatch.setenv(slurm.MARK_ENV, str(tmp_path / "requeue.7_1"))
    launcher = slurm_job.SlurmLauncher("7_1")
    attrs: dict[str, str] = {}

    class Trial:
        def set_user_attr(self, key: str, value: str) -> None:
            attrs[key] = value

    launcher.claimed(Trial())
    assert attrs == {Attr.SLURM_JOB: "7_1"}
    leaving = launcher.leave("trial 3 stopped")
    assert isinstance(leaving, slurm_job.Preempted) and leaving.code == slurm.REQUEUE_EXIT
    assert (tmp_path / "requeue.7_1").exists()  # the job script requeues on this mark
