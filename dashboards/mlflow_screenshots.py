"""Screenshots of the MLflow UI on a study, by headless Chromium: docs/figures/mlflow_*.png.

    python dashboards/mlflow_screenshots.py [--out docs/figures] [--keep STORE_DIR]

Makes a scratch store with a finished 12-trial loss-weight study (``cmcr.results.fake_runs``,
recorded the way a sweep records it: its own experiment, model-training kind, the saved runs
view, descriptions, dataset inputs), starts ``mlflow server`` on it the way ``cmcr ui`` does
(127.0.0.1, a free port, the store in the environment), and takes three pictures with the links
the sweep prints: the experiment's landing page, the runs table in the study's view (objective
and swept params as columns, sorted by the objective) and the parent run's page. Chromium:
``dashboards/ensure_chromium.sh``. tests/test_mlflow_experiments.py runs it.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cmcr.configs import load_config
from cmcr.names import UI_WORKFLOW_QUERY, Kind, Metric
from cmcr.results import fake_runs, ui
from cmcr.tracking.inputs import dataset_inputs, mlflow_inputs
from cmcr.tracking.store import resolve_tracking_uri
from cmcr.tracking.study import describe_study, prepare_study_experiment, study_note, ui_urls

CHROMIUM = Path("/usr/bin/chromium")
STUDY = "loss_weights"
PAGES = ("landing", "runs", "parent")
WINDOW = (1500, 1000)


def make_store(folder: Path, study: str = STUDY, n_runs: int = 12) -> dict:
    """A store holding one finished study recorded as a sweep records it; its ids and links."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    resolve_tracking_uri(load_config("smoke", {"tracking.tracking_uri": uri}))
    client = MlflowClient(uri)
    params = ["loss.weights.cmcm", "loss.weights.mim", "loss.weights.occ", "train.lr"]
    exp_id = prepare_study_experiment(uri, study, study=study, objective=Metric.VAL_MIOU,
                                      direction="maximize", params=params)  # fmt: skip
    info = fake_runs.log_random_sweep(client, study, study=study, n_runs=n_runs)
    runs = client.search_runs([exp_id], f"tags.`cmcr.kind` = '{Kind.TRIAL}'",
                              order_by=[f"metrics.`{Metric.VAL_MIOU}` DESC"])  # fmt: skip
    refs = dataset_inputs(load_config("smoke"), Kind.TRIAL, "3f9c1b7e0a2d4c55")
    for run in runs:
        client.log_inputs(run.info.run_id, datasets=mlflow_inputs(refs))
    best = runs[0]
    note = study_note(study, objective=Metric.VAL_MIOU, direction="maximize", params=params,
                      best={"trial": best.data.tags.get("optuna.trial"),
                            "value": best.data.metrics[Metric.VAL_MIOU],
                            "run_id": best.info.run_id, "experiment_id": exp_id},
                      report=(folder / "report" / "index.html").as_uri())  # fmt: skip
    describe_study(uri, exp_id, info["parent_run_id"], note)
    return {"uri": uri, "experiment_id": exp_id, "parent_run_id": info["parent_run_id"],
            "best_run_id": best.info.run_id}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri: str, port: int, artifacts: Path) -> subprocess.Popen:
    """``mlflow server`` as ``cmcr ui`` starts it; returns once it answers."""

    cmd = ui.server_command("127.0.0.1", port, str(artifacts), workers=1)
    proc = subprocess.Popen(cmd, env=ui.server_env(uri), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}") from None
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not answer within 120 s")


def urls(base: str, store: dict) -> dict[str, str]:
    """The three pages, by the links the sweep and the notes give."""

    links = ui_urls(base, store["experiment_id"], {"parent": store["parent_run_id"]})
    landing = f"{base}/#/experiments/{store['experiment_id']}?{UI_WORKFLOW_QUERY}"
    return {"landing": landing, "runs": links["runs"], "parent": links["parent"]}


def screenshot(url: str, out: Path, wait_ms: int = 12000, window: tuple[int, int] = WINDOW) -> None:
    """One PNG of ``url`` in headless Chromium, quantised to keep the file small."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as profile:
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-background-networking", "--disable-component-update", "--no-first-run",
               f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={out.resolve()}", url]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed on {url}: {proc.stderr[-1000:]}")
    Image.open(out).convert("RGB").quantize(colors=64).save(out, optimize=True)


def take(out: Path, folder: Path) -> dict[str, Path]:
    """Store, server, three screenshots into ``out``; returns {page: png}."""
    out.mkdir(parents=True, exist_ok=True)
    store = make_store(folder)
    port = free_port()
    proc = start_server(store["uri"], port, folder / "mlartifacts")
    try:
        pages = urls(f"http://127.0.0.1:{port}", store)
        shots = {}
        for name in PAGES:
            shots[name] = out / f"mlflow_{name}.png"
            screenshot(pages[name], shots[name])
        return shots
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_script(argv: list[str] | None, doc: str, take_shots: Any) -> Any:
    """The screenshot scripts' command line (this one, reader_screenshots.py): ``--out`` the
    PNGs' folder, ``--keep`` where the scratch stores are made (else a temporary folder);
    ``take_shots(out, folder)``'s result, or None when Chromium is missing (said on stderr)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default="docs/figures", help="folder of the PNGs")
    parser.add_argument("--keep", default=None, help="make the stores here (default: a temp dir)")
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"{CHROMIUM} missing: run dashboards/ensure_chromium.sh", file=sys.stderr)
        return None
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        return take_shots(Path(args.out), Path(args.keep))
    with tempfile.TemporaryDirectory() as tmp:
        return take_shots(Path(args.out), Path(tmp))


def main(argv: list[str] | None = None) -> int:
    shots = run_script(argv, __doc__, take)
    if shots is None:
        return 2
    for name, path in shots.items():
        print(f"{name}: {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
