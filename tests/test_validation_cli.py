"""Bad input, end to end (issue 14): ``cmcr pretrain`` / ``cmcr probe`` / ``sweeps/run.py`` exit 2
with ONE line on stderr naming the key or file, no traceback, and the MLflow and Optuna stores
left as they were (here: never created). An unreachable tracking server or storage is the same
kind of line, after a bounded wait it states, before any run, study or trial exists, with exit
code 69 (the environment unavailable, not bad input: issue 29).

Each entry point is run once as a user runs it (a new Python process: ``real=True``); the rest
of the matrix calls the same ``main`` in this process, on the same arguments, environment and
working folder, with stdout and stderr read at the file-descriptor level (a process start costs
about 3 s of imports, which the refusal itself does not need: the matrix took 130 s of the
suite's CPU as processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_data_check import CASES  # the breakers of the data-check unit tests

from cmcr.configs import load_config
from cmcr.data.pretrain import select_records
from cmcr.errors import UNAVAILABLE_EXIT

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "sweeps" / "run.py")
FAST = ["train.max_steps=2", "downstream.probe_epochs=1", "tracking.system_metrics=false"]
DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
WAIT_LINE = f"MLflow tracking server {DOWN} unreachable after 10 s"


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    for key in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "CMCR_SWEEP_STORAGE"):
        env.pop(key, None)
    return env


_HARNESS: dict = {}  # monkeypatch and capfd of the running test (the autouse fixture below)


@pytest.fixture(autouse=True)
def _harness(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> Iterator[None]:
    _HARNESS.update(monkeypatch=monkeypatch, capfd=capfd)
    yield
    _HARNESS.clear()


def _run(cmd: list[str], tmp: Path, timeout: float, real: bool) -> subprocess.CompletedProcess:
    """``cmd`` (``python -m cmcr.cli ...`` or ``python sweeps/run.py ...``) as a process when
    ``real``, else its ``main`` in this process with the same environment and folder."""
    if real:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=_env(),
                              timeout=timeout)  # fmt: skip
    from cmcr.cli import main as cmcr_main
    from cmcr.sweep.cli import main as sweep_main

    monkeypatch, capfd = _HARNESS["monkeypatch"], _HARNESS["capfd"]
    monkeypatch.chdir(tmp)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_env())
    main, argv = (cmcr_main, cmd[3:]) if cmd[1] == "-m" else (sweep_main, cmd[2:])
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(cmd, code, out, err)


def _sets(tmp: Path, world: Path, sets: list[str]) -> list[str]:
    base = [f"data.dataroot={world}", f"tracking.output_dir={tmp / 'runs'}", *FAST]
    return [*base, *sets]


def _cmcr(
    tmp: Path,
    world: Path,
    command: str,
    *sets: str,
    extra: tuple = (),
    config: str = "smoke",
    real: bool = False,
) -> tuple:
    """``cmcr COMMAND --config smoke`` on the tmp stores; (completed process, seconds)."""
    all_sets = _sets(tmp, world, [f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", *sets])
    cmd = [sys.executable, "-m", "cmcr.cli", command, *extra]
    cmd += ["--config", config] if config else []
    for item in all_sets:
        cmd += ["--set", item]
    start = time.monotonic()
    out = _run(cmd, tmp, 300, real)
    return out, time.monotonic() - start


def _sweep(
    tmp: Path, world: Path, *argv: str, sets: tuple = (), tracking: str = "", real: bool = False
) -> tuple:
    """``sweeps/run.py`` with one smoke trial on the tmp stores."""
    cmd = [sys.executable, RUN, "--preset", "smoke", "--n-trials", "1", "--pruner", "none",
           "--storage", f"sqlite:///{tmp / 'optuna.db'}",
           "--tracking-uri", tracking or f"sqlite:///{tmp / 'mlflow.db'}", *argv]  # fmt: skip
    for item in _sets(tmp, world, list(sets)):
        cmd += ["--set", item]
    start = time.monotonic()
    out = _run(cmd, tmp, 600, real)
    return out, time.monotonic() - start


def _assert_refused(
    out: subprocess.CompletedProcess, tmp: Path, *fragments: str, code: int = 2
) -> str:
    """Exit ``code`` (2: bad input; 69: a server down, issue 29), one line naming what is
    wrong, no traceback, and no store written."""
    assert out.returncode == code, out.stdout[-1500:] + out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp / "mlflow.db").exists(), "an MLflow store was created"
    assert not (tmp / "optuna.db").exists(), "an Optuna store was created"
    return lines[0]


# ---- config values ------------------------------------------------------------------------------
BAD_VALUES = [
    ("train.log_every=0", "train.log_every", "integer >= 1"),
    ("train.seed=-1", "train.seed", "non-negative integer"),
    ("data.voxel_size=inf", "data.voxel_size", "finite"),
    ("downstream.batch_size=0", "downstream.batch_size", "integer >= 1"),
    ("data.max_samples=-1", "data.max_samples", "non-negative integer"),
]


@pytest.mark.parametrize(("override", "key", "expected"), BAD_VALUES)
@pytest.mark.parametrize("entry", ["pretrain", "sweep"])
def test_bad_value_is_refused(tmp_path, smoke_world, entry, override, key, expected) -> None:
    real = override == BAD_VALUES[0][0]  # each entry point once as a process
    if entry == "pretrain":
        out, _ = _cmcr(tmp_path, smoke_world, "pretrain", override, real=real)
    else:
        out, _ = _sweep(tmp_path, smoke_world, "--study", "mask_ratio", sets=(override,), real=real)
    _assert_refused(out, tmp_path, key, expected)


def test_sweep_with_a_missing_data_root_is_refused(tmp_path) -> None:
    out, _ = _sweep(tmp_path, tmp_path / "no-world", "--study", "mask_ratio")
    _assert_refused(out, tmp_path, "data.dataroot", "no-world")


def test_study_with_a_nan_bound_is_refused(tmp_path, smoke_world) -> None:
    study = tmp_path / "nan.yaml"
    study.write_text("name: nan\nparams:\n  data.mask_ratio: {type: float, low: .nan, high: 0.8}\n")
    out, _ = _sweep(tmp_path, smoke_world, "--study", str(study))
    _assert_refused(out, tmp_path, "nan.yaml", "data.mask_ratio", "finite")


# ---- bad data in the world ------------------------------------------------------------------
DATA_CASES = [  # (breaker in test_data_check.CASES, entry points that must refuse it)
    ("truncated lidar", ("pretrain", "sweep")),
    ("nan points", ("pretrain", "sweep")),
    ("missing image", ("pretrain", "sweep")),
    ("wrong image size", ("pretrain",)),
    ("corrupt lidarseg", ("probe", "sweep")),
]


@pytest.mark.parametrize(("case", "entry"), [(c, e) for c, entries in DATA_CASES for e in entries])
def test_bad_data_is_refused(tmp_path, world, case, entry) -> None:
    cfg = load_config(
        "smoke", {"data.dataroot": str(world), "downstream.probe_label_fraction": 1.0}
    )
    rec = select_records(cfg, cfg.data.train_split)[-1]  # the last sample a run would read
    path, fragment = CASES[case][0](rec, tmp_path)
    if entry == "sweep":
        out, _ = _sweep(tmp_path, world, "--study", "mask_ratio")
    elif entry == "probe":
        out, _ = _cmcr(tmp_path, world, "probe", extra=("--pretrained", "none"))
    else:
        out, _ = _cmcr(tmp_path, world, "pretrain")
    _assert_refused(out, tmp_path, Path(path).name, fragment)


@pytest.mark.parametrize("entry", ["pretrain", "sweep"])
def test_missing_image_weights_are_refused(tmp_path, smoke_world, entry) -> None:
    weights = "model.image_weights=/no/such/moco.pth"
    if entry == "pretrain":
        out, _ = _cmcr(tmp_path, smoke_world, "pretrain", weights)
    else:
        out, _ = _sweep(tmp_path, smoke_world, "--study", "mask_ratio", sets=(weights,))
    _assert_refused(out, tmp_path, "model.image_weights", "/no/such/moco.pth")


# ---- unreachable stores ---------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["pretrain", "probe", "resume", "sweep"])
def test_unreachable_tracking_server_is_one_line(tmp_path, smoke_world, entry) -> None:
    server = f"tracking.tracking_uri={DOWN}"
    real = entry in ("probe", "resume")  # their one run as a process (pretrain, sweep: above)
    if entry == "sweep":
        out, seconds = _sweep(tmp_path, smoke_world, "--study", "mask_ratio", tracking=DOWN)
    elif entry == "probe":
        out, seconds = _cmcr(tmp_path, smoke_world, "probe", server, extra=("--pretrained", "none"),
                             real=real)  # fmt: skip
    elif entry == "resume":
        out, seconds = _cmcr(
            tmp_path,
            smoke_world,
            "pretrain",
            server,
            extra=("--resume", "ab12"),
            config="",
            real=real,
        )  # the recorded config is looked up on the server first
    else:
        out, seconds = _cmcr(tmp_path, smoke_world, "pretrain", server)
    _assert_refused(out, tmp_path, WAIT_LINE, code=UNAVAILABLE_EXIT)
    assert seconds < 60  # MLflow alone retries for minutes


def test_unreachable_server_line_hides_the_password(tmp_path, smoke_world) -> None:
    uri = "http://user:pw14secret@127.0.0.1:9"
    out, _ = _cmcr(tmp_path, smoke_world, "pretrain", f"tracking.tracking_uri={uri}")
    line = _assert_refused(
        out, tmp_path, "http://***@127.0.0.1:9 unreachable after 10 s", code=UNAVAILABLE_EXIT
    )
    assert "pw14secret" not in line


def test_unreachable_storage_states_its_wait(tmp_path, smoke_world) -> None:
    out, _ = _sweep(
        tmp_path, smoke_world, "--study", "mask_ratio", "--storage",
        "postgresql://postgres:pw14@127.0.0.1:1/x",
    )  # fmt: skip
    line = _assert_refused(
        out, tmp_path, "unreachable after 10 s", "postgres:***@", code=UNAVAILABLE_EXIT
    )
    assert "pw14" not in line


# ---- a name MLflow filters must escape --------------------------------------------------------
def test_a_study_named_with_a_quote_runs(tmp_path, smoke_world) -> None:
    import optuna

    out, _ = _sweep(tmp_path, smoke_world, "--study", "mask_ratio", "--name", "it's", real=True)
    assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-3000:]
    assert "study 'it's':" in out.stdout and "complete 1" in out.stdout
    study = optuna.load_study(study_name="it's", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    # setup looked for an existing parent run with the name in an MLflow filter, then made one
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("it's")  # one experiment per study, for model training
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = client.search_runs([exp.experiment_id], "tags.`cmcr.kind` = 'study'")
    assert len(parents) == 1 and parents[0].data.tags["optuna.study"] == "it's"
