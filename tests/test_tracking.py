"""RunLogger against a throwaway sqlite store: create, resume, end states, redaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmcr.configs import flatten_config, load_config
from cmcr.errors import TrackingError
from cmcr.tracking.inputs import config_params, run_spec
from cmcr.tracking.runs import RunLogger, last_logged_step
from cmcr.tracking.store import resolve_tracking_uri
from cmcr.uris import redact


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module (creating the schema costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _cfg(store: str, **overrides):
    over = {"tracking.tracking_uri": store, **overrides}
    return load_config("smoke", over)


def test_redact_url_hides_passwords_only():
    assert redact("postgresql://bob:s3cr%40t@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert redact("sqlite:///runs/mlflow.db") == "sqlite:///runs/mlflow.db"
    assert redact("http://host:5000/path") == "http://host:5000/path"
    text = "a=postgresql://u:p@h/db b=mysql+pymysql://v:q@h2/db"
    assert "p@" not in redact(text).replace("***@", "") and redact(text).count("***") == 2


def test_resolve_tracking_uri_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config("smoke")
    assert resolve_tracking_uri(cfg) == "sqlite:///runs/mlflow.db"
    assert (tmp_path / "runs").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_tracking_uri(cfg) == "http://example:5000"
    cfg.tracking.tracking_uri = "sqlite:///other/x.db"
    assert resolve_tracking_uri(cfg) == "sqlite:///other/x.db"


def test_start_logs_contract_tags_params_and_metrics(store):
    cfg = _cfg(store, **{"method.mim": False, "method.gemim": True, "train.seed": 7})
    with RunLogger.start(run_spec(cfg, kind="pretrain", tags={"extra": 1})) as log:
        log.log_metrics({"train/loss": 1.5, "train/lr": 0.1}, step=1)
        log.log_metrics({"train/loss": 1.0}, step=2)
        log.log_text("hello", "notes/a.txt")
        run_id = log.run_id
    client = log.client
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["cmcr.kind"] == "pretrain"
    assert tags["cmcr.variant"] == "cmcr-mim"
    assert tags["cmcr.preset"] == "smoke" and tags["cmcr.seed"] == "7"
    assert tags["cmcr.git_commit"] and tags["cmcr.dataset_fingerprint"]
    assert tags["extra"] == "1"
    assert set(run.data.params) == set(flatten_config(cfg))
    assert run.data.params["method.mim"] == "false"
    assert last_logged_step(run_id, "train/loss", uri=store) == 2
    assert last_logged_step(run_id, "train/nothing", uri=store) is None
    assert "notes/a.txt" in [f.path for f in client.list_artifacts(run_id, "notes")]
    assert os.environ.get("MLFLOW_RUN_ID") is None


def test_resume_continues_same_run_and_unknown_id_fails(store):
    cfg = _cfg(store)
    first = RunLogger.start(run_spec(cfg, kind="pretrain"))
    first.log_metrics({"train/loss": 3.0}, step=1)
    first.end("KILLED")
    again = RunLogger.start(run_spec(cfg, kind="pretrain"), run_id=first.run_id)
    assert again.client.get_run(first.run_id).info.status == "RUNNING"
    assert again.last_logged_step("train/loss") == 1
    again.end()
    assert again.client.get_run(first.run_id).info.status == "FINISHED"
    with pytest.raises(TrackingError, match="no-such-run"):
        RunLogger.start(run_spec(cfg, kind="pretrain"), run_id="no-such-run")
    other = _cfg(store, **{"train.lr": 0.5})
    with pytest.raises(TrackingError, match="train.lr"):
        RunLogger.start(run_spec(other, kind="pretrain"), run_id=first.run_id)
    assert again.client.get_run(first.run_id).info.status == "FINISHED"  # refused: untouched
    # machine-local keys (names.LOCAL_KEYS) may differ on resume: another machine's dataroot
    moved = _cfg(store, **{"data.num_workers": 7, "tracking.system_metrics": False})
    RunLogger.start(run_spec(moved, kind="pretrain"), run_id=first.run_id).end()
    assert again.client.get_run(first.run_id).data.params["data.num_workers"] != "7"


def test_context_manager_failure_and_interrupt_states(store):
    cfg = _cfg(store)
    with pytest.raises(RuntimeError), RunLogger.start(run_spec(cfg, kind="probe")) as log:
        raise RuntimeError("boom at step 3")
    run = log.client.get_run(log.run_id)
    assert run.info.status == "FAILED"
    assert "boom at step 3" in run.data.tags["cmcr.status_reason"]
    with pytest.raises(KeyboardInterrupt), RunLogger.start(run_spec(cfg, kind="probe")) as log2:
        raise KeyboardInterrupt
    assert log2.client.get_run(log2.run_id).info.status == "KILLED"


def test_credentials_never_logged(store, tmp_path):
    cfg = _cfg(store, **{"data.dataroot": "postgresql://alice:hunter2@db/data"})
    assert "hunter2" not in str(config_params(cfg))
    with RunLogger.start(
        run_spec(cfg, kind="pretrain", tags={"src": "http://u:hunter2@h/"})
    ) as log:
        log.log_text("uri: postgresql://alice:hunter2@db/x", "config.yaml")
    run = log.client.get_run(log.run_id)
    assert "hunter2" not in str(run.data.params) + str(run.data.tags)
    local = log.client.download_artifacts(log.run_id, "config.yaml", str(tmp_path))
    assert "hunter2" not in Path(local).read_text()


def test_non_main_logger_is_noop(store):
    cfg = _cfg(store)
    log = RunLogger.start(run_spec(cfg, kind="pretrain"), run_id="whatever", is_main=False)
    log.log_metrics({"a": 1.0}, step=1)
    log.set_tags({"b": "c"})
    log.end("FAILED", reason="x")
    assert log.client is None and log.run_id == "whatever"


def test_log_figure_plotly_and_matplotlib(store):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    cfg = _cfg(store)
    with RunLogger.start(run_spec(cfg, kind="study", log_params=False)) as log:
        log.log_figure(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])), "figs/curve.html")
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        log.log_figure(fig, "figs/curve.png")
        plt.close(fig)
    names = {f.path for f in log.client.list_artifacts(log.run_id, "figs")}
    assert names == {"figs/curve.html", "figs/curve.png"}


def test_run_life_by_id_end_mark_reopen(store):
    """The facade the sweep uses: end with a redacted reason, tag the Optuna state without
    touching a finished run, end one left RUNNING, reopen a run (issue 15)."""
    from cmcr.tracking.runs import end_run, mark_state, reopen, set_tag_shared

    cfg = _cfg(store, **{"tracking.system_metrics": False})
    done = RunLogger.start(run_spec(cfg, kind="trial", log_params=False))
    done.end("FINISHED")
    left = RunLogger.start(
        run_spec(cfg, kind="trial", log_params=False)
    )  # a trainer that never ended it
    mark_state(store, done.run_id, "FAIL", "FAILED", "seed 1 failed")
    mark_state(store, left.run_id, "FAIL", "FAILED", "ValueError: postgresql://u:pw1@h/db")
    runs = {r: done.client.get_run(r) for r in (done.run_id, left.run_id)}
    assert runs[done.run_id].info.status == "FINISHED"  # a finished seed stays finished
    assert runs[left.run_id].info.status == "FAILED"
    assert {r.data.tags["optuna.state"] for r in runs.values()} == {"FAIL"}
    assert (
        runs[left.run_id].data.tags["cmcr.status_reason"] == "ValueError: postgresql://u:***@h/db"
    )
    reopen(store, left.run_id, {"cmcr.n_trials": "3"})
    run = done.client.get_run(left.run_id)
    assert run.info.status == "RUNNING" and run.data.tags["cmcr.n_trials"] == "3"
    set_tag_shared(store, left.run_id, "optuna.best_trial", "2")
    end_run(store, left.run_id, "KILLED", "pruned by optuna: at epoch 1")
    run = done.client.get_run(left.run_id)
    assert run.info.status == "KILLED" and run.data.tags["optuna.best_trial"] == "2"
    assert run.data.tags["cmcr.status_reason"] == "pruned by optuna: at epoch 1"
    with pytest.raises(ValueError):
        end_run(store, left.run_id, "DONE")


def test_clients_switch_off_mlflows_view_run_line(store, monkeypatch):
    """MLflow prints "View run ... at: <tracking URI>" when a run on a server ends; the URI can
    carry a password. Its public switch is set by every client the facade makes."""
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    from cmcr.tracking.store import make_client

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is False
    make_client(store)
    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is True


@pytest.mark.parametrize("preset", ["official", "paper", "demo", "smoke"])
def test_params_read_back_as_the_config_they_came_from(preset):
    """Every logged param parses back to its value (the results module rebuilds configs from
    params): a list of strings such as KITTI's sequences ["00"] must not come back as [0]."""
    from cmcr.configs import config_from_flat, flatten_config, load_config
    from cmcr.tracking.inputs import config_params

    cfg = load_config(preset)
    flat = flatten_config(cfg)
    back = flatten_config(config_from_flat(config_params(cfg)))
    lists = {k: v for k, v in flat.items() if isinstance(v, list)}
    assert lists and {k: back[k] for k in lists} == lists


def test_log_inputs_tries_again_after_a_concurrent_create_and_never_fails_the_run(caplog):
    """Two workers creating the same dataset row at once (MLflow server + PostgreSQL) made one
    of them fail its trial with a unique-key violation; the second try finds the row."""
    from mlflow.exceptions import MlflowException

    from cmcr.tracking.inputs import log_inputs as _log_inputs

    class Client:
        def __init__(self, failures: int) -> None:
            self.failures, self.calls = failures, 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.calls <= self.failures:
                raise MlflowException("duplicate key value violates unique constraint dataset_pk")

    once = Client(failures=1)
    _log_inputs(once, "r1", [])
    assert once.calls == 2
    always = Client(failures=99)
    with caplog.at_level("WARNING", logger="cmcr.tracking"):
        _log_inputs(always, "r2", [])  # no exception: a warning
    assert always.calls == 3 and "datasets not logged" in caplog.text
