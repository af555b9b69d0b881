"""Screenshots of what a researcher reads (issue 32), by headless Chromium: docs/figures/.

    python dashboards/reader_screenshots.py [--out docs/figures] [--keep DIR]

Scratch stores (``cmcr.results.fake_runs``): a finished ``components`` sweep in its own
experiment, and a smoke-sized ``smoke_ties`` study whose values lie 6e-6 apart (0.3196-0.3202 %)
with two configurations tied. Pictures: each study's report page (``dashboards/build.py``: the
header's experiment, the narrow ablation table, the per-class table, the sentences on ties and
noise, the optimisation history's y-axis), and optuna-dashboard as ``cmcr dashboard`` serves it
(the objective named ``val/miou``, a trial's note linking its MLflow runs), and the MLflow UI
opened on the link ``cmcr ui --study smoke_ties`` prints once the server answers. Chromium:
``dashboards/ensure_chromium.sh``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import optuna
from mlflow.tracking import MlflowClient
from mlflow_screenshots import free_port, run_script, screenshot  # this folder: run as a script

from cmcr.configs import apply_overrides, load_config
from cmcr.names import Attr, Metric
from cmcr.results import dashboard, fake_runs, ui
from cmcr.results.collect import Selection
from cmcr.results.report import build
from cmcr.tracking.study import prepare_study_experiment

TIES = {0.5: (0.003196, 0.003199), 1.0: (0.003201, 0.003203), 1.5: (0.0032, 0.003204)}


def smoke_ties(client: MlflowClient, storage: str) -> None:
    """Three configurations × 2 seeds at 0.32 %, the last two tied (same means)."""
    exp_id, parent = fake_runs.start_study(client, "smoke_ties", "smoke_ties")
    study = optuna.create_study(study_name="smoke_ties", storage=storage, direction="maximize")
    dist = {"loss.weights.mim": optuna.distributions.FloatDistribution(0.1, 2.0)}
    rng = np.random.default_rng(0)
    for trial, (mim, values) in enumerate(TIES.items()):
        runs = {}
        for seed, miou in enumerate(values):
            cfg = apply_overrides(
                load_config("smoke"), {"loss.weights.mim": mim, "train.seed": seed}
            )
            runs[str(seed)] = fake_runs.log_run(client, exp_id, cfg, study="smoke_ties",
                                                trial=trial, parent_run_id=parent, miou=miou,
                                                rng=rng)  # fmt: skip
            # the exact value as the run's last (fake_runs adds noise): a tie to the digit
            client.log_metric(runs[str(seed)], Metric.VAL_MIOU, miou, step=10_000)
        study.add_trial(optuna.trial.create_trial(
            params={"loss.weights.mim": mim}, distributions=dist, value=float(np.mean(values)),
            user_attrs={Attr.RUN_IDS: runs, Attr.RUN_ID: runs["0"],
                        Attr.SEED_RESULTS: dict(zip(runs, values, strict=True))}))  # fmt: skip
    fake_runs.end_study(client, parent)


def mlflow_view(uri: str, folder: Path, out: Path) -> Path:
    """The MLflow UI, started as ``cmcr ui`` starts it, on the link it prints for smoke_ties."""
    import os
    import signal
    import subprocess

    prepare_study_experiment(uri, "smoke_ties", study="smoke_ties", objective=Metric.VAL_MIOU,
                             direction="maximize", params=["loss.weights.mim"])  # fmt: skip
    port = free_port()
    cmd = ui.server_command("127.0.0.1", port, str(folder / "art"), workers=1)
    proc = subprocess.Popen(cmd, start_new_session=True, env=ui.server_env(uri),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        ui.wait_until_answers(f"http://127.0.0.1:{port}/health", proc)
        (_, link), *_ = ui.study_links(uri, f"http://127.0.0.1:{port}", "smoke_ties")
        screenshot(link, out / "mlflow_study_link.png", wait_ms=15000, window=(1400, 800))
        return out / "mlflow_study_link.png"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def take(out: Path, folder: Path) -> list[Path]:
    """Stores, reports, dashboard; the PNGs written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    uri, storage = f"sqlite:///{folder / 'mlflow.db'}", f"sqlite:///{folder / 'optuna.db'}"
    client = MlflowClient(uri)
    for name in ("cmcr", "components", "smoke_ties"):
        client.create_experiment(name, artifact_location=str(folder / "art"))
    fake_runs.log_components_sweep(client, "components", seeds=(0, 1, 2), storage=storage)
    smoke_ties(client, storage)
    shots = []
    for study, height in (("components", 2300), ("smoke_ties", 2600)):
        rep = folder / f"rep_{study}"
        build(Selection(tracking_uri=uri, study=study, storage=storage), rep, log=False)
        shots.append(out / f"report_{study}.png")
        screenshot((rep / "index.html").resolve().as_uri(), shots[-1], window=(1400, height))
    handle, study_id = dashboard.open_study(storage, "smoke_ties")
    dashboard.label_study(handle, "smoke_ties", "http://127.0.0.1:5000")
    server = dashboard.make_dashboard(handle, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/dashboard/studies/{study_id}"
        shots.append(out / "optuna_dashboard_study.png")
        screenshot(base, shots[-1], window=(1400, 1000))
        shots.append(out / "optuna_dashboard_trial.png")
        screenshot(f"{base}/trials?numbers=1", shots[-1], window=(1400, 1000))
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    shots.append(mlflow_view(uri, folder, out))
    return shots


def main(argv: list[str] | None = None) -> int:
    shots = run_script(argv, __doc__, take)
    if shots is None:
        return 2
    for path in shots:
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
