"""What a researcher sees during and after a sweep (issue 16).

- under a pseudo-terminal the live view shows each running trial's number, parameters, phase,
  step, rate and ETA, and the study's counts, best and ETA;
- piped to a file (a real smoke trial): no line over 300 characters and no library chatter,
  which goes to the run's ``logs/run.log`` artifact instead;
- SIGINT ends the parent run KILLED with its reason and spends no retry of the trial;
- a finished study is not grown without ``--n-trials``;
- ``--status`` of a constructed study is the expected sorted, rounded table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_sweep_runner import STAND_IN, Recorder, load, run_sweep
from waiting import communicate_or_kill, scaled, wait_or_kill

from cmcr.names import Attr, Tag
from cmcr.sweep import options, runner, summary

ROOT = Path(__file__).resolve().parents[1]
WITH_TRIAL_FN = str(ROOT / "tests" / "sweep_with_trial_fn.py")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")

# a stand-in trial that reports pre-training progress the way the trainer does
STEPPING = (
    "import time\n"
    "from cmcr import progress\n"
    "from cmcr.engine.downstream import DownstreamResult\n"
    "def run(cfg, *, run_id=None, parent_run_id=None, tags=None, report=None):\n"
    "    with progress.task(progress.PRETRAIN, {steps}) as bar:\n"
    "        for _ in range({steps}):\n"
    "            time.sleep({sleep})\n"
    "            bar.update(1)\n"
    "    return DownstreamResult(run_id, cfg.data.mask_ratio, 0.0, {{}})\n"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _cmd(tmp_path: Path, hook: str, *argv: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "COLUMNS": "160"}
    env["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [
        sys.executable, WITH_TRIAL_FN, hook, "--study", "mask_ratio", "--preset", "smoke",
        "--storage", f"sqlite:///{tmp_path / 'o.db'}",
        "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
        "--set", f"tracking.output_dir={tmp_path / 'runs'}", *argv,
    ]  # fmt: skip
    return cmd, env


def test_live_view_under_a_pseudo_terminal_shows_every_field(tmp_path):
    (tmp_path / "stepping.py").write_text(STEPPING.format(sleep=0.6, steps=8))
    cmd, env = _cmd(tmp_path, "stepping:run", "--n-trials", "2")
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=slave, stdin=slave, cwd=tmp_path, env=env)
    # the slave stays open here until the output is drained: Linux drops what the master has
    # not read yet once the last slave descriptor closes
    chunks = []
    deadline = time.monotonic() + scaled(150)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            chunks.append(os.read(master, 65536))
        elif proc.poll() is not None:
            break
    wait_or_kill(proc, 30)
    os.close(slave)
    os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    assert proc.returncode == 0, text[-3000:]
    # the study: counts, best with its trial, ETA
    for field in ("sweep mask_ratio", "done", "running", "queued", "failed", "pruned"):
        assert field in text, field
    assert re.search(r"best \d+\.\d\d % \(trial #\d\)", text), text[-3000:]  # mIoU in %
    assert "study ETA" in text
    # a running trial: number, rounded params, phase, step, rate, ETA
    assert re.search(r"#[01]\s.*mask_ratio=0\.\d{1,3}\b", text), text[-3000:]
    assert "pre-training" in text
    assert re.search(r"\b[1-8]/8\b", text), text[-3000:]
    assert re.search(r"\d+(\.\d+)? (s/step|step/s)", text), text[-3000:]
    # the end: where to look
    assert "best: trial #" in text and "/#/experiments/" in text


def test_piped_output_is_short_lines_and_no_library_chatter(tmp_path, smoke_world):
    """A real smoke trial (pre-training with checkpoints, the probe), output to a file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    env.pop("MLFLOW_RUN_ID", None)
    log = tmp_path / "out.txt"
    cmd = [
        sys.executable, str(ROOT / "sweeps" / "run.py"), "--study", "mask_ratio", "--preset",
        "smoke", "--n-trials", "1", "--storage", f"sqlite:///{tmp_path / 'o.db'}",
        "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
        "--set", f"tracking.output_dir={tmp_path / 'runs'}", "--set", f"data.dataroot={smoke_world}",
    ]  # fmt: skip
    with open(log, "w") as fh:
        rc = subprocess.run(
            cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
        ).returncode
    text = log.read_text()
    assert rc == 0, text[-3000:]
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 300, max(lines, key=len)
    assert "\r" not in text  # no bar redrawn in place
    for chatter in ("[RANK", "Saving current state", "INFO mlflow", "is_fx_tracing", "Warning"):
        assert chatter not in text, chatter
    # the preset, the trials and the estimate before work; the phases; where to look after
    assert "preset smoke" in text and "estimated time" in text
    assert "pre-training" in text and "probe" in text
    assert re.search(r"report: file://\S+/reports/mask_ratio/index\.html", text), text[-2000:]
    assert (tmp_path / "reports" / "mask_ratio" / "index.html").is_file()
    # the chatter is in the run's log artifact
    study = optuna.load_study(study_name="mask_ratio", storage=f"sqlite:///{tmp_path / 'o.db'}")
    run_id = study.trials[0].user_attrs[Attr.RUN_ID]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    local = client.download_artifacts(run_id, "logs/run.log", str(tmp_path / "dl"))
    assert "[RANK 0]" in Path(local).read_text()


# a launcher that sets SIGINT to its default, then execs the command: no Python runs between the
# fork and the exec in this (threaded) process, as it would with preexec_fn, whose child hung on
# a lock another thread held (a 4-minute hang in the suite, 2026-12-06)
_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def test_sigint_ends_the_parent_run_and_spends_no_retry(tmp_path):
    # an 8 min trial that only the SIGINT ends: with 24 s, then 96 s, a loaded machine
    # (2026-12-02 18:30; 2026-12-06, load 7 on 2 cores) saw it RUNNING only as it finished,
    # and the sweep ended 0
    (tmp_path / "stepping.py").write_text(STEPPING.format(sleep=2.0, steps=240))
    cmd, env = _cmd(tmp_path, "stepping:run", "--n-trials", "1", "--max-retries", "0")
    # SIGINT at its default in the sweep, as a terminal gives it: a suite started in the
    # background (`make test &`) ignores SIGINT, which its children inherit, and the sweep then
    # never saw the signal (three fresh-clone runs started with `&`, 2026-12-06)
    proc = subprocess.Popen(
        [sys.executable, "-c", _DEFAULT_SIGINT, *cmd], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
    )  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    deadline = time.monotonic() + scaled(90)
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name="mask_ratio", storage=storage)
            # in training: RUNNING with its MLflow run recorded (a SIGINT between the two once
            # left a failed trial without a run, and the run's checks below had nothing to read)
            if any(t.state == TrialState.RUNNING and Attr.RUN_ID in t.user_attrs
                   for t in study.trials):  # fmt: skip
                break
        except (KeyError, Exception):
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the trial never started")
    proc.send_signal(signal.SIGINT)
    out, _ = communicate_or_kill(proc, 60)
    assert proc.returncode == 130, out[-2000:]
    study = optuna.load_study(study_name="mask_ratio", storage=storage)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.user_attrs[Attr.FAIL_KIND] for t in failed] == ["interrupted"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    parent = client.get_run(study.user_attrs[Attr.PARENT_RUN])
    assert parent.info.status == "KILLED"
    assert "interrupted" in parent.data.tags[Tag.STATUS_REASON]
    child = client.get_run(failed[0].user_attrs[Attr.RUN_ID])
    assert child.info.status != "RUNNING"
    # --max-retries 0 and yet the slot runs again: the interrupt spent no retry
    (tmp_path / "stepping.py").write_text(STEPPING.format(sleep=0.0, steps=8))
    cmd, env = _cmd(tmp_path, "stepping:run", "--resume", "--max-retries", "0")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    study = optuna.load_study(study_name="mask_ratio", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert client.get_run(study.user_attrs[Attr.PARENT_RUN]).info.status == "FINISHED"
    # said as an interruption, never as a failure (issue 32: 'fail 1', 'failed (...); retrying')
    said = out.stdout + out.stderr
    assert "interrupted 1" in said and "fail 1" not in said and "failed 1" not in said, said


def test_an_interrupted_attempt_is_not_counted_as_a_failure() -> None:
    from cmcr.sweep.progress import Snapshot
    from cmcr.sweep.trials import count_states

    class T:
        def __init__(self, number: int, state: str, kind: str | None = None) -> None:
            self.number, self.state = number, TrialState[state]
            self.user_attrs = {Attr.FAIL_KIND: kind} if kind else {}
            self.system_attrs = {Attr.RETRY_HISTORY: [0]} if number == 1 else {}

    c = count_states([T(0, "FAIL", "interrupted"), T(1, "COMPLETE"), T(2, "FAIL", "own")])
    assert c["FAIL"] == 2 and c["interrupted"] == 1 and c["retried"] == 1
    snap = Snapshot(3, 1, 0, 2, 1, 0, 0, 0.5, 1, interrupted=1)
    assert "failed 1 (1 retried), interrupted 1" in snap.line("s")
    only = Snapshot(2, 1, 0, 1, 1, 0, 0, 0.5, 1, interrupted=1)
    assert "failed 0, interrupted 1" in only.line("s") and "retried" not in only.line("s")


def test_a_finished_study_is_not_grown_without_n_trials(tmp_path, store, capsys):
    rec = Recorder()
    assert (
        run_sweep(tmp_path, store, "--study", "loss_weights", "--n-trials", "2", trial_fn=rec) == 0
    )
    capsys.readouterr()
    assert run_sweep(tmp_path, store, "--study", "loss_weights", trial_fn=rec) == 0
    out = capsys.readouterr().out
    assert "has finished its 2 trial(s)" in out and "--n-trials" in out
    assert len(rec.calls) == 2 and len(load(tmp_path, "loss_weights").trials) == 2
    # --status counts the study's 2 trials, not the study file's default of 12
    assert run_sweep(tmp_path, store, "--study", "loss_weights", "--status", trial_fn=rec) == 0
    assert "2 trial(s): 2 complete" in capsys.readouterr().out
    # asked explicitly, it grows
    assert (
        run_sweep(tmp_path, store, "--study", "loss_weights", "--n-trials", "3", trial_fn=rec) == 0
    )
    assert len(rec.calls) == 3


def _plan(tmp_path: Path) -> runner.Plan:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    args = parser.parse_args(
        ["--study", "loss_weights", "--preset", "smoke", "--storage",
         f"sqlite:///{tmp_path / 'o.db'}", "--n-trials", "4"]
    )  # fmt: skip
    return runner.plan_sweep(options.sweep_options(args))


def test_status_of_a_constructed_study_is_sorted_and_rounded(tmp_path):
    plan = _plan(tmp_path)
    study = optuna.create_study(
        study_name="loss_weights", storage=plan.opts.storage, direction="maximize"
    )
    runner._define(plan, study)
    study.set_user_attr(Attr.N_TRIALS, 4)
    study.set_user_attr(Attr.PARENT_RUN, "p0")
    dist = optuna.distributions.FloatDistribution(0.01, 4.0, log=True)
    names = ("loss.weights.mim", "loss.weights.occ", "loss.weights.orth", "loss.weights.cmcm")
    t0 = datetime.datetime(2026, 12, 2, 10, 0, 0)
    now = t0 + datetime.timedelta(minutes=10)

    def add(number_slot, state, value, minutes, weights, **attrs):
        start = t0 + datetime.timedelta(minutes=number_slot)
        end = start + datetime.timedelta(seconds=minutes * 60) if state.is_finished() else None
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=0, trial_id=0, state=state, value=value, values=None,
                datetime_start=start if state != TrialState.WAITING else None,
                datetime_complete=end, params=dict(zip(names, weights, strict=True)),
                distributions=dict.fromkeys(names, dist), user_attrs=attrs,
                system_attrs={}, intermediate_values={},
            )
        )  # fmt: skip

    w = (0.123456, 1.98765, 0.0123456, 2.5)
    add(0, TrialState.COMPLETE, 0.251234, 2.1, w, **{Attr.SLOT: 0, Attr.RUN_ID: "r0"})
    add(
        1,
        TrialState.COMPLETE,
        0.31,
        1.5,
        (3.3333, 0.5, 0.1, 1.0),
        **{Attr.SLOT: 1, Attr.RUN_ID: "r1"},
    )
    add(2, TrialState.FAIL, None, 0.5, w, **{Attr.SLOT: 2, Attr.RUN_ID: "r2",
        Attr.FAIL_KIND: "own", Attr.FAIL_REASON: "RuntimeError: flaky"})  # fmt: skip
    progress = {"phase": "pre-training", "step": 40, "total": 150, "unit": "step",
                "rate": 0.5, "eta_s": 220.0, "t": time.time()}  # fmt: skip
    add(3, TrialState.RUNNING, None, 0, w, **{Attr.SLOT: 2, Attr.RUN_ID: "r2",
        Attr.PROGRESS: progress})  # fmt: skip
    add(4, TrialState.WAITING, None, 0, (1.0, 1.0, 1.0, 1.0), **{Attr.SLOT: 3})
    expected = [
        "study 'loss_weights' (preset smoke, maximize val mIoU): 4 trial(s): 2 complete, "
        "1 running, 1 queued, 0 pruned, 0 failed; 1 retry",
        "MLflow parent run p0",
        "  trial  state     mIoU %   time  params                                   run  note",
        "     #1  COMPLETE   31.00  1m30s  mim=3.33 occ=0.5 orth=0.1 cmcm=1         r1",
        "     #0  COMPLETE   25.12  2m06s  mim=0.123 occ=1.99 orth=0.0123 cmcm=2.5  r0",
        "     #3  RUNNING        -  7m00s  mim=0.123 occ=1.99 orth=0.0123 cmcm=2.5  r2   "
        "pre-training 40/150 (26 %), ETA 3m40s; attempt 2, retry of #2 (own: RuntimeError: flaky)",
        "     #4  WAITING        -      -  mim=1 occ=1 orth=1 cmcm=1                -",
    ]
    got = summary.status_table(plan, study, now).splitlines()
    assert got == expected, "\n".join(got)


def test_the_estimate_comes_from_finished_trials_else_the_presets_measured_cost(
    tmp_path, smoke_world
):
    from cmcr.configs import load_config
    from cmcr.sweep.estimate import MEASURED, estimate, planned_work

    cfg = load_config("smoke", {"data.dataroot": str(smoke_world)})
    steps, work = planned_work(cfg)
    assert steps == cfg.train.max_steps and list(work) == ["nuscenes/probe"]
    scan_epochs = work["nuscenes/probe"]
    assert scan_epochs > 0
    cost = MEASURED["smoke"]
    by_preset = estimate(cfg, seeds=2)
    each = cost.scan_epoch_s["nuscenes/probe"]
    expected = 2 * (cost.start_s + steps * cost.step_s + scan_epochs * each)
    assert by_preset.trial_s == pytest.approx(expected) and "preset smoke" in by_preset.source
    # the preset's cost is one trial on the whole machine: local workers share its cores
    assert by_preset.total_s(trials=4, workers=2) == pytest.approx(4 * expected)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    t0 = datetime.datetime(2026, 12, 2, 10, 0, 0)
    for seconds in (30, 50, 400):
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=0, trial_id=0, state=TrialState.COMPLETE, value=0.1, values=None,
                datetime_start=t0, datetime_complete=t0 + datetime.timedelta(seconds=seconds),
                params={}, distributions={}, user_attrs={}, system_attrs={},
                intermediate_values={},
            )
        )  # fmt: skip
    by_study = estimate(cfg, study)
    assert by_study.trial_s == 50 and "3 finished" in by_study.source  # the median
    assert by_study.total_s(trials=4, workers=2) == 100
    unknown = load_config("official")
    assert estimate(unknown).trial_s is None


def test_the_estimate_is_said_before_a_trial_is_queued(tmp_path, capsys, monkeypatch):
    """``--n-trials 10000`` must show its cost before 10,000 trials sit in the store."""
    from cmcr.sweep import cli
    from cmcr.sweep.estimate import Estimate

    plan = _plan(tmp_path)  # 4 trials of loss_weights
    storage = runner.connect(plan)
    monkeypatch.setattr(cli, "estimate", lambda *a, **k: Estimate(90.0, "measured", True))
    monkeypatch.setattr(cli, "under_load", lambda est: (est, None))  # not this machine's load
    seen: list[str] = []

    def setup(*args, **kwargs):  # what the user had read when the queueing began
        seen.append(capsys.readouterr().out)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "setup", setup)
    with pytest.raises(KeyboardInterrupt):
        cli.sweep(plan, storage)
    assert seen == ["study 'loss_weights': queueing 4 new trial(s), about 6m00s on 1 worker(s)\n"]
    assert optuna.get_all_study_summaries(storage) == []  # nothing was queued before it


def test_resume_takes_the_stored_preset_seeds_and_overrides(tmp_path, monkeypatch, capsys):
    """Ctrl-C of a smoke sweep, then `--study loss_weights --resume` and no other flag (the
    stores from the environment, as a user's defaults): it completes with what was stored
    (it failed: 'created with a different preset ('smoke', now 'demo')')."""
    from cmcr.sweep import cli

    monkeypatch.setenv("CMCR_SWEEP_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    rec = Recorder(fail_on={1: KeyboardInterrupt()})  # Ctrl-C in the second trial

    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser()
        options.add_arguments(parser)
        return cli.run(parser.parse_args(argv), trial_fn=rec, extras=STAND_IN)

    first = ("--study", "loss_weights", "--preset", "smoke", "--n-trials", "3", "--seeds", "2",
             "--set", "train.max_steps=3", f"tracking.output_dir={tmp_path / 'runs'}")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run(*first)
    capsys.readouterr()
    assert run("--study", "loss_weights", "--resume") == 0
    out = capsys.readouterr().out
    assert "--resume: the stored study's preset smoke; seeds 2; objective probe" in out
    assert "train.max_steps=3" in out
    study = optuna.load_study(study_name="loss_weights", storage=f"sqlite:///{tmp_path}/optuna.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and all(c["cfg"].train.max_steps == 3 for c in rec.calls)
    assert {c["cfg"].preset for c in rec.calls} == {"smoke"}
    # a flag that conflicts with the stored value: one line naming the stored one
    with pytest.raises(Exception, match=r"different preset \('smoke', now 'demo'\)"):
        run("--study", "loss_weights", "--resume", "--preset", "demo")
