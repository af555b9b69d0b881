"""Two CPU processes (gloo): ranks end identical, only the main process talks to MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from cmcr.tracking.store import make_client

# runs `cmcr` and dumps each rank's final state (a test-only wrapper of the loop)
LAUNCHER = Path(__file__).with_name("dist_pretrain.py")


def test_two_process_cpu_run_keeps_ranks_identical(smoke_world, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dump = tmp_path / "dump"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    }
    # torchrun starts the ranks; Accelerate sees WORLD_SIZE=2 without CUDA and uses gloo
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(LAUNCHER), str(dump), "pretrain", "--config", "smoke", "--set",
        f"data.dataroot={smoke_world}", f"tracking.tracking_uri={store}",
        f"tracking.output_dir={tmp_path / 'runs'}", "data.cameras=[CAM_FRONT]",
        "train.max_steps=2", "train.batch_size=1",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]

    r0 = torch.load(dump / "rank0.pt", weights_only=True)
    r1 = torch.load(dump / "rank1.pt", weights_only=True)
    assert set(r0) == set(r1)
    codebook = [k for k in r0 if k.startswith("codebook.")]
    assert codebook, "the smoke config trains a codebook"
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert differ == [], differ  # weights, BatchNorm stats and codebook EMA buffers
    assert r0["codebook.cluster_size"].sum() > 0  # the EMA actually ran

    client = make_client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("cmcr").experiment_id])
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == [1, 2]  # logged once per step, by the main process only
