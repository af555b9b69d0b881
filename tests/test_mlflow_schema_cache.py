"""A new embedded MLflow store is a copy of a cached schema template (cmcr.adapters.mlflow_schema):
the same database a direct build makes, MLflow works on it, milliseconds instead of MLflow's
~1 s of migrations, a stale or bogus template is never used, and a cache that cannot be written
falls back to the direct build."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from cmcr.adapters.mlflow_schema import build_direct, schema_head, template_path
from cmcr.configs import load_config
from cmcr.names import CACHE_DIR_ENV, cache_folder
from cmcr.tracking.store import artifact_location, resolve_tracking_uri


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own cache folder (never the user's or the session's)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def built_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template made the normal way, once for the module (a build costs ~1 s)."""
    folder = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_DIR_ENV, str(folder / "cache"))
        _new_store(folder / "first" / "mlflow.db")
        return template_path(folder / "cache")


def _with_template(cache: Path, template: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, template_path(cache))


def _new_store(db: Path) -> str:
    """A new embedded store at ``db`` the way a run makes it; its URI."""
    uri = f"sqlite:///{db}"
    assert resolve_tracking_uri(load_config("smoke", {"tracking.tracking_uri": uri})) == uri
    assert db.is_file()
    return uri


def _direct(db: Path, artifact_root: str | None) -> Path:
    build_direct(f"sqlite:///{db}", artifact_root)
    return db


def _clauses(sql: str | None) -> list[str]:
    """A CREATE statement's lines (columns, constraints) as a sorted list: two direct builds by
    MLflow 3.17 differ in the order of the runs table's CHECK constraints (its alembic batch
    migrations; seen between two builds in one process), never in the constraints."""
    return sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())


def _dump(db: Path) -> tuple[list, dict, tuple]:
    """Schema SQL of every object, every table's rows (sorted), and the default experiment's
    creation / last update times (the only values two builds may differ in)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        schema = sorted(
            (*r[:3], _clauses(r[3]))
            for r in con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
        )
        rows = {}
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cur = con.execute(f'SELECT * FROM "{table}"')
            cols = [d[0] for d in cur.description]
            got = [dict(zip(cols, r, strict=True)) for r in cur]
            rows[table] = sorted(map(repr, got))
        times = con.execute("SELECT creation_time, last_update_time FROM experiments "
                            "WHERE experiment_id = 0").fetchone()  # fmt: skip
    finally:
        con.close()
    rows["experiments"] = [r for r in rows["experiments"] if "'experiment_id': 0," not in r]
    return schema, rows, times


def _default_experiment(db: Path) -> tuple:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT name, artifact_location, lifecycle_stage, workspace "
                           "FROM experiments WHERE experiment_id = 0").fetchone()  # fmt: skip


def _revision(db: Path) -> list:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT version_num FROM alembic_version").fetchall()


def test_a_store_from_the_template_equals_a_direct_build(tmp_path: Path, cache: Path) -> None:
    _new_store(tmp_path / "first" / "mlflow.db")  # makes the template
    assert template_path(cache).is_file()
    start = int(time.time() * 1000)
    copy = tmp_path / "a b" / "mlflow.db"  # a space: the location is a URI, quoted as MLflow does
    uri = _new_store(copy)
    end = int(time.time() * 1000)
    direct = _direct(tmp_path / "direct.db", artifact_location(uri))

    (schema, rows, times), (d_schema, d_rows, _) = _dump(copy), _dump(direct)
    assert schema == d_schema
    assert _revision(copy) == _revision(direct) == [(schema_head(),)]
    assert rows == d_rows  # every row of every table but the default experiment
    assert _default_experiment(copy) == _default_experiment(direct)
    assert _default_experiment(copy)[1] == artifact_location(uri) + "/0"
    assert times[0] == times[1] and start <= times[0] <= end  # made now, not when the template was
    assert sorted(p.name for p in copy.parent.iterdir()) == ["mlflow.db", "mlflow.db.create.lock"]


def test_mlflow_works_on_a_store_from_the_template(
    tmp_path: Path, cache: Path, built_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    _with_template(cache, built_template)
    uri = _new_store(tmp_path / "store" / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment("0").artifact_location == artifact_location(uri) + "/0"
    exp = client.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val/miou", 0.5, step=3)
    client.set_terminated(run.info.run_id)
    (metric,) = client.get_metric_history(run.info.run_id, "val/miou")
    assert (metric.value, metric.step) == (0.5, 3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # mlflow.search_runs reads the global URI
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    found = mlflow.search_runs(experiment_ids=[exp])
    assert list(found["run_id"]) == [run.info.run_id]
    assert list(found["metrics.val/miou"]) == [0.5]


def test_the_second_store_costs_a_fraction_of_a_direct_build(
    tmp_path: Path, cache: Path, built_template: Path
) -> None:
    _with_template(cache, built_template)
    t0 = time.perf_counter()
    _direct(tmp_path / "direct.db", artifact_location(f"sqlite:///{tmp_path / 'direct.db'}"))
    t1 = time.perf_counter()
    _new_store(tmp_path / "second" / "mlflow.db")
    t2 = time.perf_counter()
    direct, copied = t1 - t0, t2 - t1
    assert copied < 0.3 * direct, f"from the template {copied:.3f} s, direct {direct:.3f} s"


def _marked_template(source: Path, target: Path, revision: str | None = None) -> None:
    """A copy of a good template with a marker experiment (and another alembic revision)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    with sqlite3.connect(target) as con:
        con.execute("INSERT INTO experiments (name, lifecycle_stage, workspace) "
                    "VALUES ('from-a-bogus-template', 'active', 'default')")  # fmt: skip
        if revision is not None:
            con.execute("UPDATE alembic_version SET version_num = ?", (revision,))


def test_a_template_of_another_mlflow_or_schema_is_not_used(
    tmp_path: Path, cache: Path, built_template: Path
) -> None:
    import mlflow

    good = built_template
    template = template_path(cache)
    assert template.parent == cache
    assert mlflow.__version__ in template.name and schema_head() in template.name
    # another MLflow version's template under its own key: never read
    _marked_template(good, cache / template.name.replace(mlflow.__version__, "0.0.1"))
    # this key's file, but recording another alembic revision: replaced
    _marked_template(good, template, revision="0123456789ab")

    db = tmp_path / "store" / "mlflow.db"
    _new_store(db)
    assert _revision(db) == [(schema_head(),)]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT name FROM experiments").fetchall() == [("Default",)]
    assert _revision(template) == [(schema_head(),)]  # rebuilt

    template.write_bytes(b"not SQLite at all")  # a broken template: replaced too
    db = tmp_path / "store2" / "mlflow.db"
    _new_store(db)
    assert _revision(db) == _revision(template) == [(schema_head(),)]


def test_an_unwritable_cache_falls_back_to_the_direct_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # no folder can be made under it, even by root
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    db = tmp_path / "store" / "mlflow.db"
    uri = _new_store(db)
    assert _revision(db) == [(schema_head(),)]
    assert _default_experiment(db)[1] == artifact_location(uri) + "/0"
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.create.lock"]


def test_the_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "c"))
    assert cache_folder() == tmp_path / "c"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "cmcr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder() == tmp_path / "home" / ".cache" / "cmcr"
