"""The seed noise where a sweep speaks (issue 27): ``--add-seeds K --top N`` adds seeds to the
N best configurations only (a kill mid-way resumes), ``--top`` is validated before any store is
touched, ``--status`` shows the seed SD, and the closing lines name the trials
indistinguishable from the best instead of crowning one.

Sweeps run with the stand-in trial function (test_sweep_runner.Recorder): no training.
"""

from __future__ import annotations

import argparse
import socket
import statistics
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_add_seeds import _seed_runs, _sweep
from test_sweep_runner import STAND_IN, Recorder, SimulatedKill, load

from cmcr.names import Attr
from cmcr.results import stats as S
from cmcr.sweep import cli, options, runner, seeds, summary


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow sqlite store for the module (its schema takes seconds to create)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def by_seed(cfg, n) -> float:  # noqa: ANN001
    """val mIoU = mask ratio + 0.1 · seed: every configuration's seed SD is 0.1 exactly."""
    return cfg.data.mask_ratio + 0.1 * cfg.train.seed


def _ratios(study: optuna.Study) -> dict[int, float]:
    """{trial: its value} of the study's own trials (one seed each: the mask ratio)."""
    return {t.number: t.value for t in study.trials if not seeds.is_added(t)}


def _keys(study: optuna.Study) -> dict[int, str]:
    return {t.number: seeds.params_key(t.params) for t in study.trials}


def test_top_adds_seeds_to_the_best_configurations_only(tmp_path, store):
    assert _sweep(tmp_path, store, "top", "--n-trials", "4", rec=Recorder(value=by_seed)) == 0
    ratios = _ratios(load(tmp_path, "top"))
    best_two = sorted(ratios, key=ratios.get, reverse=True)[:2]
    more = Recorder(value=by_seed)
    assert _sweep(tmp_path, store, "top", "--add-seeds", "2", "--top", "2", rec=more) == 0
    assert sorted(c["seed"] for c in more.calls) == [1, 1, 2, 2]
    study = load(tmp_path, "top")
    added = [t for t in study.trials if seeds.is_added(t)]
    assert sorted(t.user_attrs[Attr.SEEDS_OF] for t in added) == sorted(best_two)
    assert all(t.state == TrialState.COMPLETE for t in added)
    runs, keys = _seed_runs(store, study), _keys(study)
    for number in ratios:
        assert sorted(runs[keys[number]]) == ([0, 1, 2] if number in best_two else [0])


def test_top_killed_mid_way_resumes_the_same_configurations(tmp_path, store):
    assert _sweep(tmp_path, store, "tkill", "--n-trials", "3", rec=Recorder(value=by_seed)) == 0
    ratios = _ratios(load(tmp_path, "tkill"))
    best_two = sorted(sorted(ratios, key=ratios.get, reverse=True)[:2])
    # the first unit's seed 1 finishes, its seed 2 is killed (the trial stays RUNNING)
    rec = Recorder(value=by_seed, fail_on={1: SimulatedKill()})
    with pytest.raises(SimulatedKill):
        _sweep(tmp_path, store, "tkill", "--add-seeds", "2", "--top", "2", rec=rec)
    study = load(tmp_path, "tkill")
    assert sorted(u["trial"] for u in seeds.requested(study).values()) == best_two
    unit = next(t for t in study.trials if t.state == TrialState.RUNNING)
    dead = f"{socket.gethostname()}:999999999:123.00"
    study._storage.set_trial_user_attr(unit._trial_id, Attr.WORKER, dead)

    again = Recorder(value=by_seed)
    assert _sweep(tmp_path, store, "tkill", "--resume", rec=again) == 0
    # seed 2 of the killed unit continues its run, then the other unit's seeds; nothing else
    assert [c["seed"] for c in again.calls] == [2, 1, 2]
    assert again.calls[0]["run_id"] == rec.calls[1]["run_id"]
    study = load(tmp_path, "tkill")
    runs, keys = _seed_runs(store, study), _keys(study)
    for number in ratios:
        assert sorted(runs[keys[number]]) == ([0, 1, 2] if number in best_two else [0])


def test_status_shows_the_seed_sd_once_measured(tmp_path, store, capsys):
    assert _sweep(tmp_path, store, "sd", "--n-trials", "2", rec=Recorder(value=by_seed)) == 0
    capsys.readouterr()
    assert _sweep(tmp_path, store, "sd", "--status") == 0
    out = capsys.readouterr().out
    assert "seed noise: unknown (no configuration has ≥ 2 finished seeds); measure it with " \
        f"{S.ADD_SEEDS_HINT}" in out  # fmt: skip
    assert f"; no seed noise measured yet: {S.ADD_SEEDS_HINT}" in out  # the best line
    assert _sweep(tmp_path, store, "sd", "--add-seeds", "2", rec=Recorder(value=by_seed)) == 0
    closing = capsys.readouterr().out
    assert _sweep(tmp_path, store, "sd", "--status") == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("seed noise:"))
    # seeds 0, 1, 2 of each configuration are ratio + 0, 0.1, 0.2: SD 10 points, df 2 + 2
    assert line.startswith(
        "seed noise: seed SD 10.00 points (pooled over 2 configuration(s) with ≥ 2 seeds, df 4) "
        "beside a spread of "
    ), line
    # the sweep's own closing lines said it too: each seed moves every configuration alike,
    # so the paired differences have no spread and the best stands apart
    assert (
        "; no other configuration is within the seed noise of it (seed SD 10.00 points" in closing
    )


def _plan(tmp_path: Path) -> runner.Plan:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    args = parser.parse_args(["--study", "mask_ratio", "--preset", "smoke", "--storage",
                              f"sqlite:///{tmp_path / 'o.db'}", "--set",
                              f"tracking.output_dir={tmp_path / 'runs'}"])  # fmt: skip
    return runner.plan_sweep(options.sweep_options(args))


def _study(results: list[dict[int, float]]) -> optuna.Study:
    """In memory: one ordinary trial per configuration (mask ratio 0.1, 0.2, ...) with its
    per-seed results, valued at their mean."""
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    for i, by in enumerate(results):
        attrs = {Attr.SLOT: i, Attr.SEED_RESULTS: {str(s): v for s, v in by.items()}}
        study.add_trial(optuna.trial.create_trial(
            params={"data.mask_ratio": 0.1 * (i + 1)}, distributions={"data.mask_ratio": dist},
            value=sum(by.values()) / len(by), user_attrs=attrs))  # fmt: skip
    return study


def _closing(tmp_path: Path, study: optuna.Study) -> tuple[str, str]:
    best = study.best_trial
    done = {"study": "s", "COMPLETE": len(study.trials), "done": True, "parent_run_id": "p",
            "best_trial": best.number, "best_value": best.value, "best_params": best.params}  # fmt: skip
    done = summary.with_noise(done, study)
    return summary.summary_line(done), summary.where_to_look(_plan(tmp_path), done,
                                                             build_report=False)[0]  # fmt: skip


def _spread(*means: float) -> str:
    """The SD of the configuration means in points, as the closing line writes it."""
    return f"{statistics.stdev(means) * 100:.2f}"


def test_closing_lines_name_the_trials_within_the_noise_of_the_best(tmp_path):
    a = {0: 0.40, 1: 0.44, 2: 0.36}
    b = {0: 0.41, 1: 0.37, 2: 0.45}  # the best mean; paired with a: differences ±8 points
    # #2 is 21 points below b with one seed, #3 two: s = 4 points (df 4), t · s · √(4/3) = 12.8
    line, best = _closing(tmp_path, _study([a, b, {0: 0.20}, {0: 0.39}]))
    assert best.startswith("best: trial #1 val mIoU 41.00 % (mask_ratio=0.2); ")
    assert best.endswith("trials #0, #3 are indistinguishable from it at these seeds "
                         f"(seed SD 4.00 points vs spread {_spread(0.40, 0.41, 0.20, 0.39)})")  # fmt: skip
    assert "best val mIoU 41.00 % (trial 1, mask_ratio=0.2); 2 other configuration(s) within " \
        "the seed noise of it" in line  # fmt: skip
    # the spread below the seed SD, and none tied: said as such
    _, best = _closing(tmp_path, _study([a, b, {0: 0.38}]))
    assert best.endswith("trials #0, #2 are indistinguishable from it at these seeds "
                         f"(seed SD 4.00 points > spread {_spread(0.40, 0.41, 0.38)})")  # fmt: skip
    clear = {s: v + 0.2 + 0.001 * s for s, v in a.items()}  # 20 points above on every seed
    pooled = ((statistics.variance(a.values()) + statistics.variance(clear.values())) / 2) ** 0.5
    _, best = _closing(tmp_path, _study([a, clear]))
    assert best.endswith(
        f"no other configuration is within the seed noise of it (seed SD {pooled * 100:.2f} "
        f"points vs spread {_spread(0.40, statistics.fmean(clear.values()))})"
    )
    line, best = _closing(tmp_path, _study([{0: 0.4}, {0: 0.5}]))
    assert best.endswith(f"; no seed noise measured yet: {S.ADD_SEEDS_HINT}")
    assert line.endswith(f"; no seed noise measured yet: {S.ADD_SEEDS_HINT}")


def _main(tmp_path: Path, *argv: str) -> int:
    return cli.main(
        [
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--preset", "smoke", "--study", "mask_ratio",
            "--set", f"tracking.output_dir={tmp_path / 'runs'}", *argv,
        ],
        trial_fn=Recorder(),
        extras=STAND_IN,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--add-seeds", "2", "--top", "0"), "--top: expected an integer >= 1, got 0"),
        (("--add-seeds", "2", "--top", "-3"), "--top: expected an integer >= 1, got -3"),
        (("--top", "2"), "--top 2: picks the configurations --add-seeds K adds seeds to"),
    ],
)
def test_bad_top_is_one_line_exit_2_before_any_store(tmp_path, capsys, argv, expected):
    assert _main(tmp_path, *argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeps/run.py: error: --top"), lines
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()
