"""Reports of continuous studies: rows ranked by mIoU and named by trial, Δ to the best row,
n = 1 said as such, and the many-trial figures marked unreliable under MIN_RELIABLE_TRIALS.
Grid studies keep their grouping and order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cmcr.results import fake_runs
from cmcr.results import figures as F
from cmcr.results.ablation import TARGET, ablation, short_names
from cmcr.results.ablation_formats import caption, to_markdown
from cmcr.results.collect import Selection, collect


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("cont")
    uri, storage = f"sqlite:///{tmp / 'mlflow.db'}", f"sqlite:///{tmp / 'optuna.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp / "art"))
    fake_runs.log_random_sweep(client, "cmcr", study="weights", n_runs=6, storage=storage)
    fake_runs.log_components_sweep(client, "cmcr", study="components", seeds=(0, 1))
    return {"uri": uri, "storage": storage}


def test_continuous_rows_are_ranked_trials_with_delta_to_the_best(stores: dict) -> None:
    rt = collect(Selection(tracking_uri=stores["uri"], study="weights", storage=stores["storage"]))
    ab = ablation(rt)
    t = ab.table
    assert ab.ranked and len(t) == 6
    means = t[f"{TARGET}_mean"].to_numpy()
    assert np.all(np.diff(means) <= 0)  # best first
    # each row is one trial, named by its number and short params (2 significant digits)
    by_run = rt.complete.set_index("trial")
    for _, row in t.iterrows():
        trial = int(row["trial"])
        assert row["config"].startswith(f"trial {trial}: cmcm=")
        assert f"mim={by_run.at[trial, 'loss.weights.mim']:.2g}" in row["config"]
        assert "lr=" in row["config"] and "loss.weights" not in row["config"]
        assert row[f"{TARGET}_mean"] == pytest.approx(by_run.at[trial, TARGET])
    # Δ to the best row, and the caption says so; one run per row: n = 1, no ± anywhere
    delta = t[f"delta_{TARGET}"].to_numpy()
    assert delta[0] == 0 and np.all(delta[1:] < 0)
    assert ab.baseline == t["config"].iloc[0]
    cap = caption(ab)
    assert f"Δ mIoU to the best row '{ab.baseline}'" in cap
    assert "one run per row (n = 1): no std" in cap and "mean ± std" not in cap
    rows = [r for r in to_markdown(ab).splitlines() if r.startswith("| trial ")]
    assert len(rows) == 6 and all("(n = 1)" in r and "±" not in r for r in rows)


def test_continuous_without_the_optuna_study(stores: dict, tmp_path: Path) -> None:
    """No Optuna study: float params alone make it continuous; the same ranking."""
    rt = collect(Selection(tracking_uri=stores["uri"], study="weights",
                           storage=f"sqlite:///{tmp_path / 'none.db'}"))  # fmt: skip
    assert rt.study is None
    ab = ablation(rt)
    assert ab.ranked and np.all(np.diff(ab.table[f"{TARGET}_mean"].to_numpy()) <= 0)


def test_grid_studies_keep_their_grouping(stores: dict) -> None:
    """The components grid: variants in the paper's order, Δ to random init, mean ± std."""
    ab = ablation(collect(Selection(tracking_uri=stores["uri"], study="components")))
    assert not ab.ranked and ab.group_by == ["variant"]
    assert list(ab.table["config"][:3]) == ["random init", "PPKT", "CMCR"]
    assert ab.baseline == "random init"
    assert "mean ± std over seeds;" in caption(ab) and "Grouped by variant" in caption(ab)


def test_short_names_are_unique_suffixes() -> None:
    keys = ["loss.weights.mim", "train.lr", "model.lr", "data.mask_ratio"]
    assert short_names(keys) == {"loss.weights.mim": "mim", "train.lr": "train.lr",
                                 "model.lr": "model.lr", "data.mask_ratio": "mask_ratio"}  # fmt: skip


def test_few_trials_mark_contour_and_importances_unreliable(stores: dict) -> None:
    """6 trials < MIN_RELIABLE_TRIALS: both figures say so in their titles."""
    rt = collect(Selection(tracking_uri=stores["uri"], study="weights", storage=stores["storage"]))
    figs = {fid: fig for fid, _, fig in F.study_figures(rt.study)}
    marker = f"unreliable: 6 complete trials < {F.MIN_RELIABLE_TRIALS}"
    assert marker in figs["contour"].layout.title.text
    assert marker in figs["importance"].layout.title.text
