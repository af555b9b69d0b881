"""Kill-then-resume: a SIGKILLed ``cmcr pretrain`` resumed with ``--resume`` ends where an
uninterrupted run ends (weights, codebook, metric history), in the same MLflow run.

CPU spconv is only bit-reproducible single-threaded (its multi-threaded scatter changes the
float summation order), so every process here runs with one torch thread.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cmcr.cli import main as cli_main
from cmcr.configs import load_config
from cmcr.engine.checkpoint import COMPLETE_MARKER
from cmcr.engine.pipeline import run_pretrain
from cmcr.tracking.store import make_client

# batch 1 over the 4 smoke samples: the checkpoint after step 2 is mid-epoch, so the resume
# exercises skip_first_batches; checkpoints after 2, 4 and 6 (keep 2)
STEPS = 6


def _overrides(world: Path, tmp: Path) -> list[str]:
    return [
        f"data.dataroot={world}",
        f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"tracking.output_dir={tmp / 'runs'}",
        "data.cameras=[CAM_FRONT, CAM_BACK]",
        f"train.max_steps={STEPS}",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=2",
        "train.seed=3",
        "train.batch_size=1",
        "data.num_workers=0",
    ]


def _newest(run_dir: Path) -> Path:
    return max((run_dir / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name[11:]))


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The full model (codebook buffers included) of the newest checkpoint."""
    return load_file(_newest(run_dir) / "model.safetensors")


def _wait_for_checkpoint(
    proc: subprocess.Popen, runs: Path, skip: set[str], timeout: float = 240
) -> Path:
    """The new run's folder once its first checkpoint is complete (polled)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = runs.glob(f"*/checkpoints/checkpoint_0/{COMPLETE_MARKER}")
        done = [p for p in found if p.parents[2].name not in skip]
        if done:
            return done[0].parents[2]
        if proc.poll() is not None:
            pytest.fail(f"pretrain exited ({proc.returncode}) before its first checkpoint")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no checkpoint within the timeout")


def test_sigkill_then_resume_matches_uninterrupted(smoke_world, tmp_path, one_thread, capsys):
    over = _overrides(smoke_world, tmp_path)
    ref = run_pretrain(load_config("smoke", over))  # the uninterrupted reference
    runs = tmp_path / "runs"

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    cmd = [sys.executable, "-m", "cmcr.cli", "pretrain", "--config", "smoke", "--set", *over]
    before = {p.name for p in runs.iterdir()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = _wait_for_checkpoint(proc, runs, before)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    run_id = run_dir.name
    assert run_id not in before and not (run_dir / "backbone.pt").exists()

    # a corrupt checkpoint: one clear line, exit 2, the run is not left RUNNING
    ckpt = _newest(run_dir)
    shutil.copytree(ckpt, tmp_path / "saved_ckpt")
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    capsys.readouterr()
    assert cli_main(["pretrain", "--resume", run_id, "--set", *over[1:3]]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and ckpt.name in err[0] and "cannot be loaded" in err[0], err
    client = make_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FAILED"
    shutil.rmtree(ckpt)
    shutil.copytree(tmp_path / "saved_ckpt", ckpt)

    # the real resume: config recovered from the run, same run id, same end state
    assert cli_main(["pretrain", "--resume", run_id, "--set", *over[1:3]]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(1, STEPS + 1)), steps  # every step exactly once
    exp = client.get_experiment_by_name("cmcr").experiment_id
    assert len(client.search_runs([exp])) == 2  # the reference and this one: no duplicate

    a = _final_state(runs / ref.run_id)
    b = _final_state(run_dir)
    assert set(a) == set(b) and any(k.startswith("codebook.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    wa = torch.load(ref.backbone_path, weights_only=True)
    wb = torch.load(run_dir / "backbone.pt", weights_only=True)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-6, msg=key)
    # the reference's logged losses are reproduced by the resumed run step for step
    ha = {m.step: m.value for m in client.get_metric_history(ref.run_id, "train/loss")}
    hb = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert ha.keys() == hb.keys()
    for s in ha:
        assert abs(ha[s] - hb[s]) <= 1e-5 * max(1.0, abs(ha[s])), (s, ha[s], hb[s])
