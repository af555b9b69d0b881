"""The objective's seed noise in a study's report (issue 27): the seed SD beside the spread
between configurations, the rows indistinguishable from the best marked, and a sentence when
the study cannot rank its configurations. Studies logged through cmcr.results.fake_runs (the
tracking verbs), with known values; the rule itself against hand-computed answers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from cmcr.configs import apply_overrides, load_config
from cmcr.results import fake_runs
from cmcr.results import stats as S
from cmcr.results.ablation import IS_BEST, TARGET, TIED, TIED_MARK
from cmcr.results.collect import Selection
from cmcr.results.report import build

NO_STORAGE = "sqlite:////nonexistent/optuna.db"  # never the cwd's runs/optuna.db
CANNOT_RANK = "the configurations are within the seed noise: this study cannot rank them"
ALL_WITHIN = (
    "All 3 configurations are within the seed noise of each other: this study cannot rank them"
)
# {mim weight: {seed: val mIoU}}: seeds swing by ±4 points, the means by 0.3 (fake_runs logs
# each with about ±1 point of its own)
WITHIN = {
    0.5: {0: 0.40, 1: 0.44, 2: 0.36},
    1.0: {0: 0.43, 1: 0.37, 2: 0.41},
    1.5: {0: 0.38, 1: 0.42, 2: 0.40},
}
# the same seeds, and one configuration 20 points above on every seed
CLEAR = {
    0.5: {0: 0.40, 1: 0.44, 2: 0.36},
    1.0: {0: 0.601, 1: 0.638, 2: 0.561},
    1.5: {0: 0.41, 1: 0.45, 2: 0.35},
}


def _log(tmp_path: Path, study: str, values: dict[float, dict[int, float]]) -> str:
    """Log one finished run per (configuration, seed) under a study's parent run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    if client.get_experiment_by_name("cmcr") is None:
        client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    exp_id, parent = fake_runs.start_study(client, "cmcr", study)
    rng = np.random.default_rng(0)
    trial = 0
    for mim, by_seed in values.items():
        for seed, miou in by_seed.items():
            cfg = apply_overrides(load_config("smoke"),
                                  {"loss.weights.mim": mim, "train.seed": seed})  # fmt: skip
            fake_runs.log_run(client, exp_id, cfg, study=study, trial=trial,
                              parent_run_id=parent, miou=miou, rng=rng)  # fmt: skip
            trial += 1
    fake_runs.end_study(client, parent)
    return uri


def _report(tmp_path: Path, study: str, values: dict[float, dict[int, float]]) -> Path:
    uri = _log(tmp_path, study, values)
    out = tmp_path / study
    build(Selection(tracking_uri=uri, study=study, storage=NO_STORAGE), out, log=False)
    return out


def _marks(md: str) -> dict[str, str]:
    """{configuration label: its '≈ best' cell} of ablation.md."""
    rows = [ln.split("|")[1:-1] for ln in md.splitlines() if ln.startswith("| ")]
    col = [c.strip() for c in rows[0]].index(f"{TIED_MARK} best")
    return {r[0].strip(): r[col].strip() for r in rows[1:]}


def test_a_study_within_the_noise_says_so_and_marks_every_row(tmp_path: Path) -> None:
    out = _report(tmp_path, "within", WITHIN)
    md = (out / "ablation.md").read_text()
    marks = _marks(md)
    assert sorted(marks.values()) == ["best", TIED_MARK, TIED_MARK], marks
    # the seed SD (pooled over the three configurations of 3 seeds each) and the spread, in
    # points, from the logged values (fake_runs adds a little per-class noise to each)
    csv = pd.read_csv(out / "ablation.csv")
    sd = math.sqrt((csv[f"{TARGET}_std"] ** 2).mean())
    spread = csv[f"{TARGET}_mean"].std(ddof=1)
    assert spread < sd / 5
    assert f"seed SD {sd * 100:.2f} points" in md and f"spread of {spread * 100:.2f} points" in md
    # one plain sentence: every row is within the noise (issue 32), not a count of rows
    assert ALL_WITHIN in md and "row(s) are indistinguishable" not in md
    assert f"{TIED_MARK} best: {S.NOISE_RULE}" in md  # the rule, in the caption
    assert csv[IS_BEST].sum() == 1 and csv[TIED].sum() == 2  # the csv carries the marks
    assert csv[csv[IS_BEST]][f"{TARGET}_mean"].iloc[0] == csv[f"{TARGET}_mean"].max()
    page = (out / "index.html").read_text()
    assert 'id="noise"' in page and ALL_WITHIN in page and "<td>≈</td>" in page
    tex = (out / "ablation.tex").read_text()
    assert "$\\approx$" in tex and "≈" not in tex and "≥" not in tex


def test_one_clearly_better_configuration_marks_no_other_row(tmp_path: Path) -> None:
    out = _report(tmp_path, "clear", CLEAR)
    md = (out / "ablation.md").read_text()
    marks = _marks(md)
    assert sorted(marks.values()) == ["", "", "best"], marks
    assert [k for k, v in marks.items() if v == "best"][0].startswith("trial 3:")
    assert CANNOT_RANK not in md and "No row is within the seed noise of the best" in md
    assert "<td>≈</td>" not in (out / "index.html").read_text()


def test_one_seed_per_configuration_says_the_noise_is_unknown(tmp_path: Path) -> None:
    out = _report(tmp_path, "single", {m: {0: v[0]} for m, v in WITHIN.items()})
    md = (out / "ablation.md").read_text()
    assert "Seed noise unknown: no configuration has ≥ 2 seeds" in md
    assert f"the sweep of study 'single' again with {S.ADD_SEEDS_HINT}" in md
    assert sorted(_marks(md).values()) == ["best", "—", "—"]
    assert CANNOT_RANK not in md


def test_pooled_sd_and_spread_by_hand() -> None:
    groups = [[1.0, 3.0], [2.0, 2.0, 5.0], [7.0]]  # the single value adds no degree of freedom
    sd, df = S.pooled_sd(groups)
    assert df == 1 + 2 and sd == pytest.approx(math.sqrt((2.0 + 6.0) / 3))
    assert S.pooled_sd([[1.0], [2.0]]) == (pytest.approx(math.nan, nan_ok=True), 0)
    noise = S.seed_noise([{0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0, 2: 5.0}, {0: 7.0}])
    assert noise.known and noise.n_repeated == 2 and noise.best == 2
    assert noise.spread == pytest.approx(np.std([2.0, 3.0, 7.0], ddof=1))
    assert not noise.cannot_rank  # spread 2.65 > seed SD 1.63


def test_the_rule_interval_where_both_have_seeds_else_the_pooled_sd() -> None:
    best = {0: 0.50, 1: 0.52, 2: 0.48}
    # both with ≥ 2 seeds: the paired interval of stats.compare decides
    assert S.indistinguishable({0: 0.49, 1: 0.53, 2: 0.47}, best, 0.02, 4)
    assert not S.indistinguishable({0: 0.40, 1: 0.421, 2: 0.379}, best, 0.02, 4)
    # one run: |Δ| against t(0.975, df) · s · √(1/1 + 1/3)
    half = sps.t.ppf(0.975, 4) * 0.02 * math.sqrt(1 + 1 / 3)
    assert S.indistinguishable({5: 0.50 - 0.99 * half}, best, 0.02, 4)
    assert not S.indistinguishable({5: 0.50 - 1.01 * half}, best, 0.02, 4)
    assert not S.indistinguishable({5: 0.50}, best, math.nan, 0)  # noise unknown: no mark
    # a crowned best other than the best mean (Optuna's best trial) is honoured
    assert S.seed_noise([best, {0: 0.6, 1: 0.6}], best=0).best == 0
