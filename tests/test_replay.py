"""The replay audit of pruning (``cmcr.bench.replay``, ``cmcr.bench.replay_study``, issue 27).

The proof that the replay is the live pruner: replaying the shipped benchmark's unpruned curves
in trial-number order prunes the same trials at the same steps as the live pruned studies did.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.entities import Metric as MlflowMetric
from mlflow.tracking import MlflowClient

from cmcr.bench import pruning
from cmcr.bench import replay as R
from cmcr.bench import replay_study as RS
from cmcr.names import Attr, Metric

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "docs" / "bench" / "pruning_2026-12-02_trials.json"


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads(SHIPPED.read_text())


@pytest.fixture(autouse=True)
def quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


@pytest.mark.parametrize("variant", ["asha", "asha_raw"])
def test_replay_reproduces_the_live_pruned_studies(shipped, variant):
    curves = RS.curves_from_rows(shipped["none"])
    kind, signal = RS.live_variants(shipped)[variant]
    check = RS.live_check(curves, shipped[variant], signal, kind)
    live = {t["number"]: (t["steps"] if t["state"] == "PRUNED" else 0) for t in shipped[variant]}
    replayed = {t["number"]: t["replay"] for t in check["trials"]}
    assert replayed == live  # trial for trial: pruned or not, and at which step
    assert check["same"]
    assert sum(1 for v in live.values() if v) == shipped[f"{variant}_pruned_trials"]


def test_oracle_never_prunes_the_best_trial_and_beats_random(shipped, command):
    """With the final value as the signal the best trial tops every rung and every median:
    no pruner may stop it, in any order; so the oracle keeps the best, random cannot do more."""
    curves = RS.curves_from_rows(shipped["none"])
    out = command["json"]  # the command's audit of the shipped study: 60 orders, seed 1
    assert out["orders"] == 60 and out["seed"] == 1
    oracle, random = out["results"][R.ORACLE], out["results"][R.RANDOM]
    for method in oracle:
        assert oracle[method]["p_best_trial_kept"] == 1.0
        assert oracle[method]["best_kept"] == pytest.approx(curves.final.max())
        assert oracle[method]["best_kept"] >= random[method]["best_kept"]
        assert oracle[method]["diff_random"] >= 0
    rng = np.random.default_rng(0)
    orders = R.random_orders(curves.n, 30, rng)
    oracle_curve = np.repeat(curves.final[:, None], len(curves.steps), axis=1)
    best = int(np.argmax(curves.final))
    for kind in R.PRUNERS:
        stopped = R.replay_pruner(curves, lambda r: oracle_curve, orders, kind)
        assert (stopped[:, best] == 0).all(), kind


def _synthetic(signal: np.ndarray, final: np.ndarray) -> RS.Curves:
    steps = np.array([5, 10, 15, 20])
    return RS.Curves(
        numbers=list(range(len(final))),
        steps=steps,
        final=final,
        budget=np.full(len(final), 20),
        signals={"s": np.repeat(signal[:, None], len(steps), axis=1)},
    )


def test_spearman_of_a_perfect_and_of_a_shuffled_signal():
    rng = np.random.default_rng(3)
    final = rng.random(12)
    perfect = R.spearman_by_step(np.repeat(final[:, None], 2, axis=1), final, np.array([1, 2]), rng)
    assert all(c["rho"] == pytest.approx(1.0) and c["p"] < 0.001 for c in perfect)
    # a signal dealt to the trials afresh in each order carries no information: the difference
    # to the shuffled null has a 95 % interval around 0 (seeded, so it is stable). Not so against
    # the i.i.d. random signal: a steady curve survives ASHA's later rungs more often, so it
    # spends more steps and keeps more (why the report has both nulls).
    curves = _synthetic(final, final)
    n_orders = 300
    orders = R.random_orders(curves.n, n_orders, rng)
    dealt = np.stack([rng.permutation(curves.signals["s"]) for _ in range(n_orders)])
    ref = {"best": float(final.max()), "steps": int(curves.budget.sum()), "seed_sd": None}
    for kind in ("asha", "median"):
        stopped = R.replay_pruner(curves, lambda r: dealt[r], orders, kind)
        null = {"shuffled": R.shuffled_best(stopped, final, rng)}
        lo, hi = R.summarise(stopped, curves, null, ref, rng)["diff_shuffled_ci"]
        assert lo < 0 < hi, (kind, lo, hi)
    # the same set with the signal equal to the final value: rho 1, kept best every time
    exact = R.audit(_synthetic(final, final), None, n_orders=50, seed=0, pruners=("asha",))
    assert exact["spearman"]["s"][0]["rho"] == pytest.approx(1.0)
    assert exact["results"]["s"]["asha"]["p_best_trial_kept"] == 1.0


def test_top_third_keeps_the_top_third_and_breaks_ties_by_order():
    orders = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    values = np.array([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]] * 2)
    stopped = R.top_third(values, orders, 7, 2)
    assert (stopped[0] == [0, 0, 7, 7, 7, 7]).all()
    assert (stopped[1] == [7, 0, 0, 7, 7, 7]).all()  # 2 and 1 came before 0 in that order
    curves = _synthetic(np.zeros(6), np.arange(6.0))
    assert R.steps_used(stopped, curves.budget).tolist() == [2 * 20 + 4 * 7] * 2
    assert R.best_kept(stopped, curves.final).tolist() == [1.0, 2.0]


def _study_from_rows(storage: str, uri: str, name: str, rows: list[dict]) -> None:
    """An Optuna study + MLflow runs as a sweep leaves them: each trial's run id in its user
    attributes, ``rep/probe_miou*`` histories and ``train/loss`` up to its last step."""
    client = MlflowClient(uri)
    exp = client.create_experiment(name)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for row in rows:
        run = client.create_run(exp).info.run_id
        history = [
            (key, v, int(step))
            for key, fit in ((Metric.PROBE_MIOU, "standardised"),
                             (f"{Metric.PROBE_MIOU}_standardised", "standardised"),
                             (f"{Metric.PROBE_MIOU}_raw", "raw"))
            for step, v in row["probe"][fit].items()
        ] + [(Metric.TRAIN_LOSS, 1.0, row["steps"])]  # fmt: skip
        # one batch per run: the same histories as a metric at a time, in a tenth of the time
        client.log_batch(run, metrics=[MlflowMetric(k, v, 0, s) for k, v, s in history])
        state = optuna.trial.TrialState[row["state"]]
        last = max(int(s) for s in row["probe"]["standardised"])
        study.add_trial(
            optuna.trial.create_trial(
                state=state, value=row["value"] if state.name == "COMPLETE" else None,
                params={}, distributions={}, user_attrs={Attr.RUN_ID: run},
                intermediate_values={last: row["value"]},
            )
        )  # fmt: skip


def test_replay_of_a_study_in_storage_reads_every_logged_curve(shipped, tmp_path):
    """``--study NAME --storage URL``: the curves come from MLflow (``pruning.collect_trials``),
    ``rep/probe_miou`` too; ``--live-study`` checks a pruned study against its replay."""
    storage, uri = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    _study_from_rows(storage, uri, "unpruned", shipped["none"])
    _study_from_rows(storage, uri, "live", shipped["asha"])
    args = argparse.Namespace(
        trials_json="", study="unpruned", storage=storage, tracking_uri=uri,
        live_study="live", live_pruner="asha",
    )  # fmt: skip
    curves, seed_sd, live = RS.load_input(args)
    assert set(curves.signals) == {"miou", "standardised", "raw"} and seed_sd is None
    np.testing.assert_allclose(curves.signals["miou"], curves.signals["standardised"])
    assert curves.final.tolist() == [t["value"] for t in shipped["none"]]
    assert live["live"]["same"], live["live"]
    # the pruning benchmark's own collection (its default fits) reads back what it wrote
    rows = pruning.collect_trials(storage, uri, "unpruned")
    assert [r["probe"] for r in rows] == [
        {f: {int(k): v for k, v in t["probe"][f].items()} for f in ("standardised", "raw")}
        for t in shipped["none"]
    ]
    assert [r["steps"] for r in rows] == [t["steps"] for t in shipped["none"]]


def _command(tmp_path: Path, orders: int, seed: int = 0) -> tuple[str, float, float]:
    """The command's stdout, wall seconds and CPU seconds (user + system)."""
    cmd = [
        sys.executable, "-m", "cmcr.bench", "replay", "--trials-json", str(SHIPPED),
        "--replay-orders", str(orders), "--replay-seed", str(seed),
        "--replay-out", str(tmp_path / "replay"), "--json", str(tmp_path / "bench.json"),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, wall, cpu


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The command run once for the module (a subprocess: its imports cost most of it)."""
    folder = tmp_path_factory.mktemp("command")
    stdout, _, _ = _command(folder, 60, seed=1)
    return {
        "stdout": stdout,
        "folder": folder / "replay",
        "json": json.loads((folder / "replay" / "replay.json").read_text()),
    }


def test_the_command_prints_the_table_and_writes_every_figure(command):
    stdout, out = command["stdout"], command["json"]
    assert "| standardised | asha |" in stdout and "| raw | top_third@21 |" in stdout
    assert "| oracle | +1.00 (p < 0.001)" in stdout
    assert stdout.count("same trials pruned at the same steps") == 2
    assert set(out["results"]) == {"random", "standardised", "raw", "oracle"}
    assert out["live"]["asha"]["same"] and out["live"]["asha_raw"]["same"]
    assert (command["folder"] / "replay.html").stat().st_size > 0


@pytest.mark.slow
def test_the_command_at_1000_orders_runs_in_under_a_minute(tmp_path):
    """CPU time, not wall time: on a shared machine the wall time measures the neighbours."""
    stdout, wall, cpu = _command(tmp_path, 1000)
    assert "1000 random orders" in stdout
    assert cpu < 60, (cpu, wall)


# -- studies with permille rungs (sweep.first_rung; the sweep since issue 27) -----------------
FIRST_RUNG, BUDGET, EVERY = 1 / 9, 42, 7  # rungs 111, 333, 999 permille: steps 5, 14, 42


def _permille_studies(tmp_path: Path, kind: str, n: int = 12) -> tuple[str, str]:
    """An unpruned study and a live one pruned by the sweep's own ``make_pruner(kind)``, as the
    sweep leaves them (stored preset and overrides; MLflow histories of every signal at every
    probe step and rung step), the live trials reporting through the objective's own
    ``report`` at the probe's rungs, in permille. No pre-training: the curves are drawn."""
    from cmcr.configs import load_config
    from cmcr.engine.probe import rungs
    from cmcr.sweep.objective import _pruning_report
    from cmcr.sweep.runner import make_pruner

    storage, uri = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {"sweep.eval_every": EVERY, "sweep.first_rung": FIRST_RUNG,
                 "sweep.probe_features": "raw", "train.max_steps": BUDGET}  # fmt: skip
    cfg = load_config("demo", overrides)
    rung_steps = [s for _, s in rungs(FIRST_RUNG, BUDGET)]
    steps = sorted(set(range(EVERY, BUDGET + 1, EVERY)) | set(rung_steps))
    rng = np.random.default_rng(5)
    final = rng.random(n)
    # a noisy view of the final value that sharpens with the steps (ties at the first rung)
    curve = {s: np.round(final + rng.normal(0, 0.6 * (1 - s / BUDGET), n), 1 if s < 7 else 3)
             for s in steps}  # fmt: skip
    client = MlflowClient(uri)
    exp = client.create_experiment("x")
    for name, pruner in (("unpruned", "none"), ("live", kind)):
        study = optuna.create_study(
            study_name=name, storage=storage, direction="maximize",
            pruner=make_pruner(pruner, cfg),
        )  # fmt: skip
        study.set_user_attr(Attr.PRESET, "demo")
        study.set_user_attr(Attr.OVERRIDES, overrides)
        for i in range(n):
            trial = study.ask()
            run = client.create_run(exp).info.run_id
            trial.set_user_attr(Attr.RUN_ID, run)
            report = _pruning_report(trial) if name == "live" else None
            last, pruned = BUDGET, False
            for s in steps:
                v = float(curve[s][i])
                client.log_batch(run, metrics=[
                    MlflowMetric(Metric.PROBE_MIOU, v, 0, s),
                    MlflowMetric(f"{Metric.PROBE_MIOU}_raw", v, 0, s),
                    MlflowMetric(f"{Metric.PROBE_MIOU}_standardised", -v, 0, s),
                ])  # fmt: skip
                try:
                    for r, rs in rungs(FIRST_RUNG, BUDGET) if report else []:
                        if rs == s:
                            report(s, v, phase="pretrain", resource=r)
                except optuna.TrialPruned:
                    last, pruned = s, True
                    break
            client.log_metric(run, Metric.TRAIN_LOSS, 1.0, step=last)
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, float(final[i]))
    return storage, uri


@pytest.mark.parametrize("kind", ["asha", "hyperband", "median"])
def test_replay_reproduces_a_live_study_with_permille_rungs(tmp_path, kind):
    """``--study --live-study`` on a study of the current sweep: the replay reads its
    ``sweep.first_rung`` and ``probe_features`` from the stored config, reports each rung in
    permille at the rung's step, and prunes the same trials at the same steps as the live
    pruner did; the trials JSON path (``first_rung`` in it) gives the same."""
    storage, uri = _permille_studies(tmp_path, kind)
    args = argparse.Namespace(
        trials_json="", study="unpruned", storage=storage, tracking_uri=uri,
        live_study="live", live_pruner=kind,
    )  # fmt: skip
    curves, _, live = RS.load_input(args)
    assert curves.first_rung == pytest.approx(FIRST_RUNG)
    resources, _, stop = curves.rung_grid()
    assert resources.tolist() == [111, 333, 999] and stop[0].tolist() == [5, 14, 42]
    check = live["live"]
    assert check["signal"] == "raw" and check["same"], check
    if kind != "median":  # ASHA and Hyperband prune here at the rungs (median: maybe not)
        assert {t["live"] for t in check["trials"]} - {0} <= {5, 14, 42}  # the rung steps
        assert any(t["live"] for t in check["trials"])
    rows = {v: pruning.collect_trials(storage, uri, v, None) for v in ("unpruned", "live")}
    path = tmp_path / "trials.json"
    path.write_text(json.dumps({"none": rows["unpruned"], "first_rung": FIRST_RUNG}))
    from_json = RS.curves_from_rows(json.loads(path.read_text())["none"])
    from_json.first_rung, from_json.study = FIRST_RUNG, "live"
    again = RS.live_check(from_json, rows["live"], "raw", kind)
    assert again["same"] and again["trials"] == check["trials"]


def test_hyperband_counts_each_trial_once_in_the_steps_used(tmp_path):
    """Steps used = each trial's stop step (or its budget), once: Hyperband puts a trial in one
    bracket, so a trial never counts in two (checked against the live study's own trials)."""
    storage, uri = _permille_studies(tmp_path, "hyperband", n=15)
    live = pruning.collect_trials(storage, uri, "live", None)
    curves = RS.curves_from_rows(pruning.collect_trials(storage, uri, "unpruned", None))
    curves.first_rung, curves.study = FIRST_RUNG, "live"
    order = np.asarray([curves.numbers.index(r["number"]) for r in live])
    stopped = R.replay_pruner(curves, lambda r: curves.signals["raw"], order[None, :], "hyperband")
    assert R.steps_used(stopped, curves.budget).tolist() == [sum(r["steps"] for r in live)]
    assert R.steps_used(stopped, curves.budget)[0] <= curves.budget.sum()


def test_sobol_configurations_are_a_grid_study_of_fixed_cells(tmp_path):
    """``--pruning-configs sobol``: n fixed configurations in the study's bounds, the same on
    every draw, as a grid study (slot k = cell k in every study, whatever the workers)."""
    from cmcr.sweep.space import load_study

    folder = pruning._study_dir(tmp_path, "sobol", 21)
    spec = load_study(str(folder / f"{pruning.STUDY}.yaml"))
    cells = spec.grid_cells()
    assert spec.is_grid and spec.default_n_trials() == 21 and len(cells) == 21
    values = [pruning.config_overrides(folder, c) for c in cells]
    assert len({tuple(sorted(v.items())) for v in values}) == 21
    for v in values:
        assert set(v) == {"loss.weights.mim", "loss.weights.occ", "loss.weights.orth",
                          "loss.weights.cmcm"}  # fmt: skip
        assert 0.01 <= v["loss.weights.orth"] <= 1.0 and 0.1 <= v["loss.weights.mim"] <= 4.0
    again = pruning._study_dir(tmp_path / "again", "sobol", 21)
    assert (again / "loss_weights.yaml").read_text() == (folder / "loss_weights.yaml").read_text()
    assert pruning.parse_variants("none,asha_raw") == ["none", "asha_raw"]
    for bad in ("asha,none", "none,none", "none,bogus", ""):
        with pytest.raises(SystemExit):
            pruning.parse_variants(bad)
