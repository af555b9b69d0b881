"""Shared fixtures and the suite's own checks.

- ``smoke_world``: a smoke-size synthetic world generated once per session, shared by the
  pytest-xdist workers through a file lock, read-only afterwards (checked at session end).
- xdist groups: tests on a shared service (PostgreSQL's `test` database, SLURM) run in one
  group each, on one worker; a module whose tests share a module-scoped fixture stays on one
  worker, so the fixture is built once.
- At session end: no process the tests started may still run (their command lines are listed,
  then they are killed), and the default run stays within ``tests/budget.json`` (its record,
  the slowest tests included, is written to ``.pytest_cache/cmcr-suite-record.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from filelock import FileLock

# One compute thread per process, before torch is imported here and in every process a test
# starts (they inherit the environment): the suite already runs one xdist worker per core, and
# torch's default of one thread per core on top of that oversubscribes the machine. Measured on
# the 2-core machine (2026-12-06), the two-process PostgreSQL sweep test alone: 30 CPU s and
# 23.5 s with the default, 19.5 CPU s and 17.3 s with one thread. A developer may set other values.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from cmcr.compat import patch_spconv_cpu  # noqa: E402 - after the thread settings above
from cmcr.names import CACHE_DIR_ENV  # noqa: E402

patch_spconv_cpu()
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

ROOT = Path(__file__).resolve().parents[1]
BUDGET_FILE = ROOT / "tests" / "budget.json"
RECORD_FILE = ROOT / ".pytest_cache" / "cmcr-suite-record.json"
# inherited by every process a test starts (tests pass {**os.environ, ...}): how the session-end
# check finds them, re-parented orphans of a killed process group included
SESSION_ENV = "CMCR_TEST_SESSION"
# library helpers that live as long as the process that started them, by design
HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
_STATE: dict = {}  # this process's session: start, per-test seconds, CPU seconds, survivors
_CPU_AT_START = pytest.StashKey[float]()


# ---- the synthetic world -------------------------------------------------------------------
def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's shared data lives: beside the workers' own basetemps under xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _fingerprint(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        st = p.stat()
        h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One cmcr cache folder for the run (not the user's, unless they set CMCR_CACHE_DIR): the
    workers and the processes they start copy one MLflow schema template, built once."""
    os.environ.setdefault(CACHE_DIR_ENV, str(_shared_dir(tmp_path_factory) / "cmcr-cache"))


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke-preset synthetic nuScenes world (v1.0-mini layout), made once per session and
    shared by all workers. Read-only: a test that changes it copies it first (shutil.copytree)."""
    from cmcr.synth import generate_world  # lazy: torch-free tests need no synth import

    shared = _shared_dir(tmp_path_factory)
    out = shared / "world" / "smoke"
    with FileLock(str(shared / "world.lock")):
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            generate_world(out, preset="smoke", seed=0)  # atomic: temp dir, then rename
    before = _fingerprint(out)
    yield out
    assert _fingerprint(out) == before, (
        f"a test changed the shared smoke world {out}: copy it (shutil.copytree) before changing it"
    )


@pytest.fixture
def world(smoke_world: Path, tmp_path: Path) -> Path:
    """A private copy of the smoke world that a test may break (5 MB: ~20 ms). A module may
    define a ``world`` of its own (tests/test_downstream_devkit.py does)."""
    copy = tmp_path / "world"
    shutil.copytree(smoke_world, copy)
    return copy


@pytest.fixture
def one_thread():
    """CPU spconv is bit-reproducible only single-threaded (resume and checkpoint tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- xdist groups --------------------------------------------------------------------------
SERVICE_GROUPS = ("slurm", "postgres")


def _group(item: pytest.Item) -> str | None:
    """One group per shared service; else the module, when a module-scoped fixture is used."""
    if item.get_closest_marker("slurm"):
        return "slurm"  # one single-node cluster: two studies at once would queue each other
    if item.get_closest_marker("postgres"):
        return "postgres"  # the `test` database on 127.0.0.1:5432
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        if defs and defs[-1].scope == "module":
            return item.module.__name__ if item.module else None
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns the markers into groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for xdist, and the long groups first: the scheduler hands work out in collection
    order, so a service group that came last would leave the other worker idle at the end."""
    rank = {}
    for item in items:
        group = _group(item) if not list(item.iter_markers("xdist_group")) else None
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        if getattr(config.option, "loadgroup", False) and group:
            _mark_group_in_nodeid(item, group)
        rank[item.nodeid] = 0 if group in SERVICE_GROUPS else 1 if group else 2
    items.sort(key=lambda item: rank[item.nodeid])  # stable: a module's order is kept


def _mark_group_in_nodeid(item: pytest.Item, group: str) -> None:
    """What xdist's loadgroup does (``nodeid@group``: its scheduler splits on the ``@``), done
    here because xdist 3.8 writes ``item._nodeid``, which pytest 9 no longer reads (its node ids
    live in ``_id``): without this every group is split across the workers. On pytest < 9 xdist
    appends the suffix again (``@g@g``), which names the same group."""
    nodeid = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id  # lazy: pytest >= 9 only

        item._id = coerce_node_id(nodeid)
    else:
        item._nodeid = nodeid


# ---- session-end checks --------------------------------------------------------------------
def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("dsession") and not _is_worker(config)


def pytest_configure(config: pytest.Config) -> None:
    _STATE.update(t0=time.monotonic(), durations={}, test_cpu={}, cpu_s=0.0, survivors=[])
    if not _is_controller(config):
        os.environ[SESSION_ENV] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _ours(proc: psutil.Process, mark: str) -> bool:
    try:
        return proc.environ().get(SESSION_ENV) == mark
    except (psutil.Error, OSError):
        return False  # another user's process, or gone


def _survivors() -> list[psutil.Process]:
    """Processes this session started that still run: our descendants, and processes carrying
    our session mark (orphans of a killed group are re-parented away from us)."""
    me = psutil.Process()
    mark = os.environ.get(SESSION_ENV)
    found = {p.pid: p for p in me.children(recursive=True)}
    if mark:
        found.update(
            {p.pid: p for p in psutil.process_iter() if p.pid != me.pid and _ours(p, mark)}
        )
    alive = []
    for p in found.values():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(h in " ".join(p.cmdline()) for h in HELPERS):
                continue
            alive.append(p)
        except psutil.Error:
            continue
    return alive


def _reap_survivors() -> list[str]:
    """Kill what the tests left running; their command lines, for the report."""
    lines = []
    for p in _survivors():
        try:
            lines.append(f"pid {p.pid}: {' '.join(p.cmdline())[:300]}")
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    return lines


def _cpu_s() -> float:
    """CPU seconds of this process and of the children it reaped (their own children too)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config, state = session.config, _STATE
    if _is_controller(config):
        own = resource.getrusage(resource.RUSAGE_SELF)  # the workers report their own
        state["cpu_s"] += own.ru_utime + own.ru_stime
    else:
        state["survivors"] += _reap_survivors()
        state["cpu_s"] += _cpu_s()
        if _is_worker(config):
            config.workeroutput["cmcr"] = {"survivors": state["survivors"], "cpu_s": state["cpu_s"]}
            return
    failed = False
    if state["survivors"]:
        failed = True
        _write(config, "processes left running after the tests (killed now):", state["survivors"])
    if _is_default_run(session, exitstatus):
        failed |= _check_budget(config, session, state)
    if failed and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - xdist's WorkerController
    out = getattr(node, "workeroutput", {}).get("cmcr")
    if out:
        _STATE["survivors"] += out["survivors"]
        _STATE["cpu_s"] += out["cpu_s"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_CPU_AT_START] = _cpu_s()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    """The teardown report carries the test's CPU seconds (its process and the children it
    reaped, setup to teardown) to the controller, as a user property (xdist sends those)."""
    outcome = yield
    if call.when == "teardown" and _CPU_AT_START in item.stash:
        report = outcome.get_result()
        report.user_properties.append(("cpu_s", _cpu_s() - item.stash[_CPU_AT_START]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's setup + call + teardown seconds and CPU seconds (under xdist: the workers'
    reports)."""
    d = _STATE["durations"]
    d[report.nodeid] = d.get(report.nodeid, 0.0) + report.duration
    cpu = dict(report.user_properties).get("cpu_s") if report.when == "teardown" else None
    if cpu is not None:
        _STATE["test_cpu"][report.nodeid] = float(cpu)


def _write(config: pytest.Config, title: str, lines: list[str]) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    tr.section("cmcr", sep="-", red=True)
    tr.write_line(title)
    for line in lines:
        tr.write_line(f"  {line}")


def _is_default_run(session: pytest.Session, exitstatus: int) -> bool:
    """The whole default selection ran (no file, -k or -m of one's own, not stopped early)."""
    config = session.config
    default_mark = "not slow and not gpu"
    return (
        exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
        and not session.shouldstop
        and not config.option.collectonly
        and not config.option.keyword
        and config.option.markexpr == default_mark
        and config.args in ([], ["tests"], [str(ROOT / "tests")], config.getini("testpaths"))
        and config.getoption("deselect", None) in (None, [])
    )


def _file_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def _group_of(nodeid: str) -> str | None:
    """The xdist group of ``nodeid@group``; None without one (or for an "@" inside a
    parameter's id)."""
    g = nodeid.rsplit("@", 1)[1] if "@" in nodeid else ""
    return g if g.isidentifier() else None


def _summed(
    seconds: dict[str, float], key: Callable[[str], str | None], top: int | None = None
) -> dict[str, float]:
    """``seconds`` per test summed by ``key(nodeid)`` (tests whose key is None left out),
    largest first, the ``top`` largest (all by default)."""
    sums: dict[str, float] = {}
    for nodeid, v in seconds.items():
        k = key(nodeid)
        if k is not None:
            sums[k] = sums.get(k, 0.0) + v
    return {k: round(v, 1) for k, v in sorted(sums.items(), key=lambda kv: -kv[1])[:top]}


def _check_budget(config: pytest.Config, session: pytest.Session, state: dict) -> bool:
    """Write this run's record; True (the run fails) when it went past the budget."""
    budget = json.loads(BUDGET_FILE.read_text())
    wall = time.monotonic() - state["t0"]
    slowest = sorted(state["durations"].items(), key=lambda kv: -kv[1])
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(wall, 1),
        "cpu_s": round(state["cpu_s"], 1),
        "tests": session.testscollected,
        "workers": getattr(config.option, "numprocesses", None) or 0,
        # the 15-minute load average per core at the end: the run's own load and its neighbours'
        "load_per_core": round(os.getloadavg()[2] / (os.cpu_count() or 1), 2),
        "slowest": {k: round(v, 1) for k, v in slowest[:30]},
        # CPU seconds of a test's process and the children it reaped (not of servers it used)
        "most_cpu": {
            k: round(v, 1) for k, v in sorted(state["test_cpu"].items(), key=lambda kv: -kv[1])[:30]
        },
        "cpu_by_file": _summed(state["test_cpu"], _file_of, top=25),
        # one worker runs a group's tests one after another
        "wall_by_group": _summed(state["durations"], _group_of),
    }
    RECORD_FILE.parent.mkdir(exist_ok=True)
    previous = json.loads(RECORD_FILE.read_text()) if RECORD_FILE.exists() else None
    RECORD_FILE.write_text(json.dumps(record, indent=1) + "\n")
    over = []
    if record["cpu_s"] > budget["suite_cpu_s"]:
        over.append(f"CPU time {record['cpu_s']:.0f} s > budget {budget['suite_cpu_s']} s")
    # wall-clock ceilings stretch with a load beyond the machine's cores (CPU seconds do not):
    # a busy neighbour does not fail the run, a slower suite does
    stretch = max(1.0, record["load_per_core"])
    if wall > budget["suite_wall_s"] * stretch:
        over.append(f"wall time {wall:.0f} s > budget {budget['suite_wall_s']} s x {stretch:.1f}")
    over += [
        f"{k}: {v:.0f} s > cap {budget['test_s']} s x {stretch:.1f}"
        for k, v in slowest
        if v > budget["test_s"] * stretch
    ]
    if previous:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(
                f"cmcr suite: wall {wall:.0f} s (previous {previous['wall_s']:.0f} s), "
                f"CPU {record['cpu_s']:.0f} s (previous {previous['cpu_s']:.0f} s), "
                f"budget {budget['suite_wall_s']} s wall / {budget['suite_cpu_s']} s CPU"
            )
    if over:
        _write(config, f"the suite went past {BUDGET_FILE.relative_to(ROOT)}:", over)
    return bool(over)
