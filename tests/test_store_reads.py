"""Reads never create or change a store (issue 28, part E).

``sweeps/run.py --status``, ``cmcr dashboard``, ``cmcr ui`` and the report open the stores a
sweep wrote. A store file that is empty, not SQLite, or another program's SQLite database is one
line naming the file (exit 2), and the file is left byte for byte as it was: before, Optuna built
its schema into a 0-byte ``optuna.db`` on ``--status`` and a random ``mlflow.db`` gave an
80-line traceback. An MLflow server that answers 401/403 is "refused" (credentials), not
"unreachable"; a plain ``postgresql://`` MLflow store works with the psycopg2 the project has.

Each command is its ``main`` called in this process (as tests/test_validation_cli.py's ``_run``
does), in a fresh folder, with stdout and stderr read at the file-descriptor level.
"""

from __future__ import annotations

import http.server
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _run(main: Callable[[list[str]], int], argv: list[str], tmp: Path, monkeypatch, capfd):
    """(exit code, stdout, stderr) of ``main(argv)`` run in ``tmp`` with no store settings."""
    monkeypatch.chdir(tmp)
    for key in ("MLFLOW_TRACKING_URI", "CMCR_SWEEP_STORAGE", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 16)  # 4 KiB that no program reads as a database


def _foreign(path: Path) -> None:
    con = sqlite3.connect(path)  # a valid SQLite file of some other program
    con.execute("CREATE TABLE notes (text TEXT)")
    con.commit()
    con.close()


BAD_FILES = {"empty": (_empty, "is empty"), "garbage": (_garbage, "is not an SQLite database"),
             "foreign": (_foreign, "is an SQLite database but not")}  # fmt: skip


def _sweep_main(argv: list[str]) -> int:
    from cmcr.sweep.cli import main

    return main(argv)


def _cmcr_main(argv: list[str]) -> int:
    from cmcr.cli import main

    return main(argv)


def _report_main(argv: list[str]) -> int:
    from cmcr.results.report import main

    return main(argv)


OPTUNA_READS = {
    "status": (_sweep_main, ["--study", "components", "--status"]),
    "dashboard": (_cmcr_main, ["dashboard", "--study", "components", "--port", "1"]),
}
MLFLOW_READS = {
    "report": (_report_main, ["--study", "components", "--no-log"]),
    "ui": (_cmcr_main, ["ui", "--print-command"]),
}


def _refused_in_one_line(code: int, err: str, name: str, expect: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err  # one line, no traceback
    assert f"'runs/{name}'" in lines[0] and expect in lines[0], lines[0]


# (the store file, the command that reads it): Optuna's for --status and the dashboard, MLflow's
# for the report and the UI
READS = [("optuna.db", c) for c in OPTUNA_READS] + [("mlflow.db", c) for c in MLFLOW_READS]


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize(("store", "command"), READS)
def test_a_bad_store_is_one_line_naming_the_file_and_left_as_it_was(
    store: str, command: str, kind: str, tmp_path: Path, monkeypatch, capfd
) -> None:
    make, expect = BAD_FILES[kind]
    (tmp_path / "runs").mkdir()
    db = tmp_path / "runs" / store
    make(db)
    before = db.read_bytes()
    main, argv = {**OPTUNA_READS, **MLFLOW_READS}[command]
    code, _, err = _run(main, argv, tmp_path, monkeypatch, capfd)
    _refused_in_one_line(code, err, store, expect)
    assert db.read_bytes() == before  # before the fix: a 0-byte optuna.db got Optuna's schema
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [store]


def test_list_creates_no_store(tmp_path: Path, monkeypatch, capfd) -> None:
    code, out, _ = _run(_sweep_main, ["--list"], tmp_path, monkeypatch, capfd)
    assert code == 0 and "components" in out
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def refusing_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering every request with ``request.param`` (401/403)."""
    status = request.param

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            body = b"You are not authenticated."
            self.send_response(status)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:s3cret@127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("refusing_server", [401, 403], indirect=True)
def test_a_server_refusing_the_credentials_is_not_unreachable(refusing_server: str) -> None:
    from cmcr.engine.preflight import check_tracking_reachable
    from cmcr.errors import TrackingError

    with pytest.raises(TrackingError) as info:
        check_tracking_reachable(refusing_server, wait_s=5)
    line = str(info.value)
    assert "refused" in line and "credentials" in line and "unreachable" not in line, line
    assert "s3cret" not in line and "\n" not in line


@pytest.fixture
def fresh_pg_db() -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped after the test); its plain ``postgresql://``
    URL, as a user writes it."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from cmcr.tracking.optuna_store import driver_url  # the admin side only: the test's own

    admin = sqlalchemy.create_engine(driver_url(PG_ADMIN), isolation_level="AUTOCOMMIT",
                                     connect_args={"connect_timeout": 3})  # fmt: skip
    name = f"cmcr_reads_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL on 127.0.0.1:5432 unreachable in CI: {exc}")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 unreachable")
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_a_plain_postgresql_mlflow_store_works(fresh_pg_db: str) -> None:
    """``postgresql://`` without ``+psycopg2``: MLflow's default driver (psycopg 3) is not
    installed; the client gets the mapped URL, the experiment the user's."""
    from cmcr.tracking.store import get_or_create_experiment, make_client

    client = make_client(fresh_pg_db)
    exp = get_or_create_experiment(client, "reads", fresh_pg_db)
    assert client.get_experiment(exp).name == "reads"


@pytest.mark.postgres
def test_a_database_refusing_the_user_says_refused() -> None:
    """A PostgreSQL server that is up but turns the user away is "refused", not "unreachable"."""
    from cmcr.tracking.optuna_store import StorageError, open_storage

    url = f"postgresql://no_such_role_{uuid.uuid4().hex[:6]}:pw@127.0.0.1:5432/test"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    line = str(info.value)
    if "Connection refused" in line or "could not connect" in line:
        pytest.skip("PostgreSQL on 127.0.0.1:5432 unreachable")
    assert "refused the connection" in line and "unreachable" not in line, line
    assert ":pw@" not in line


READ_ON_RO_MOUNT = """
from cmcr.results.collect import load_optuna_study
print(len(load_optuna_study("s", "sqlite:///runs/optuna.db").trials))
"""


def test_the_report_reads_a_study_on_a_read_only_mount(tmp_path: Path) -> None:
    """A study database on a read-only mount (no ``-shm`` beside it, none can be made): the
    report reads it (SQLite ``mode=ro``, ``immutable``) instead of "unable to open"; checked in
    a private mount namespace, skipped where this machine gives none (not root)."""
    import shutil
    import subprocess
    import sys

    import optuna

    from cmcr.tracking.optuna_store import open_storage

    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip("no private mount namespace here (unshare -m)")
    runs = tmp_path / "runs"
    storage = open_storage(f"sqlite:///{runs / 'optuna.db'}")
    optuna.create_study(study_name="s", storage=storage).enqueue_trial({})
    storage.engine.dispose()
    before = (runs / "optuna.db").read_bytes()
    root = Path(__file__).resolve().parents[1]
    script = (f"mount --bind runs runs && mount -o remount,ro,bind runs && "
              f"{sys.executable} -c '{READ_ON_RO_MOUNT}'")  # fmt: skip
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(root)},
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr[-2000:]
    assert (runs / "optuna.db").read_bytes() == before


def _stand_in(cfg, *, run_id=None, parent_run_id=None, tags=None, report=None):  # noqa: ANN001, ANN202
    """A trial that reads no data: its value is the mim weight (a real MLflow parent run)."""
    from cmcr.engine.downstream import DownstreamResult

    value = cfg.loss.weights.mim / 10
    return DownstreamResult(run_id, value, value, {})


def test_status_of_a_finished_study_creates_and_changes_no_store(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    """--status of a study whose MLflow store is gone: the table, no links, and no new
    ``mlflow.db`` (the links' lookup used the creating resolver); ``optuna.db`` unchanged."""
    import argparse

    from cmcr.sweep import cli, options

    optuna_db, mlflow_db = tmp_path / "optuna.db", tmp_path / "mlflow.db"
    argv = ["--study", "loss_weights", "--preset", "smoke", "--storage", f"sqlite:///{optuna_db}",
            "--tracking-uri", f"sqlite:///{mlflow_db}", "--set",
            f"tracking.output_dir={tmp_path / 'runs'}"]  # fmt: skip
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    stand_in = cli.Extras(check_data=False, estimate=False, build_report=False)
    monkeypatch.chdir(tmp_path)
    ran = cli.run(
        parser.parse_args([*argv, "--n-trials", "1"]), trial_fn=_stand_in, extras=stand_in
    )
    assert ran == 0
    mlflow_db.unlink()
    before = optuna_db.read_bytes()
    code, out, err = _run(_sweep_main, [*argv, "--status"], tmp_path, monkeypatch, capfd)
    assert code == 0, err
    assert "COMPLETE" in out.upper() or "complete" in out
    assert not mlflow_db.exists()  # no store made by a read
    assert optuna_db.read_bytes() == before
