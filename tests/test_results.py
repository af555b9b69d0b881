"""Report tables from a synthetic components sweep logged straight into a scratch MLflow store."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cmcr.configs import COMPONENTS, load_config
from cmcr.data.classes import CHALLENGE_CLASSES
from cmcr.results import fake_runs
from cmcr.results.collect import Selection, collect
from cmcr.results.report import build, main

REPO = Path(__file__).resolve().parents[1]
ORDER = ["random", "ppkt", "cmcr"] + [f"cmcr-{c}" for c in COMPONENTS]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A scratch sqlite store holding a finished components sweep (+ one running, one failed)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(root / "artifacts"))
    info = fake_runs.log_components_sweep(client, "cmcr", study="components", rng_seed=7)
    client.create_experiment("empty", artifact_location=str(root / "artifacts_empty"))
    return {"uri": uri, "root": root, **info}


@pytest.fixture(scope="module")
def report(store: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The components report, built once."""
    out = tmp_path_factory.mktemp("reports") / "components"
    sel = Selection(tracking_uri=store["uri"], study="components")
    return {**build(sel, out), "dir": out}


def _expected_from_mlflow(uri: str) -> dict[str, dict[str, list[float]]]:
    """variant → metric → final values, recomputed straight from MlflowClient.search_runs."""
    runs = MlflowClient(uri).search_runs(
        ["1"],
        filter_string="tags.\"optuna.study\" = 'components' and tags.\"cmcr.kind\" = 'trial' "
        "and attributes.status = 'FINISHED'",
        max_results=1000,
    )
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for key, value in r.data.metrics.items():
            out[r.data.tags["cmcr.variant"]][key].append(value)
    return out


def test_components_table_matches_mlflow(store: dict, report: dict) -> None:
    """One row per configuration, in the paper's order, mean ± std recomputed from MLflow."""
    csv = pd.read_csv(report["dir"] / "ablation.csv")
    assert list(csv["variant"]) == ORDER
    assert list(csv["n_runs"]) == [2] * len(ORDER)
    expected = _expected_from_mlflow(store["uri"])
    for metric in ["val/miou", "val/fwiou"] + [f"val/iou_{c}" for c in CHALLENGE_CLASSES[1:]]:
        for _, row in csv.iterrows():
            values = expected[row["variant"]][metric]
            assert len(values) == 2
            assert row[f"{metric}_mean"] == pytest.approx(statistics.mean(values), abs=1e-9)
            assert row[f"{metric}_std"] == pytest.approx(statistics.stdev(values), abs=1e-9)
    base = csv.loc[csv["variant"] == "random", "val/miou_mean"].item()
    assert np.allclose(csv["delta_val/miou"], csv["val/miou_mean"] - base)


def test_markdown_rows_and_bold(report: dict) -> None:
    """ablation.md: header + one line per configuration, best mIoU bold, mean ± std in %."""
    csv = pd.read_csv(report["dir"] / "ablation.csv")
    lines = [ln for ln in (report["dir"] / "ablation.md").read_text().splitlines() if ln[:1] == "|"]
    assert len(lines) == 2 + len(ORDER)
    labels = [ln.split("|")[1].strip() for ln in lines[2:]]
    assert labels == ["random init", "PPKT", "CMCR"] + [f"CMCR − {c}" for c in COMPONENTS]
    best = int(csv["val/miou_mean"].idxmax())
    miou_cells = [ln.split("|")[3].strip() for ln in lines[2:]]
    assert miou_cells[best].startswith("**") and sum(c.startswith("**") for c in miou_cells) == 1
    m, s = csv.at[0, "val/miou_mean"] * 100, csv.at[0, "val/miou_std"] * 100
    assert miou_cells[0] == f"{m:.2f} ± {s:.2f}"
    tex = (report["dir"] / "ablation.tex").read_text()
    assert tex.count("\\textbf{") >= 1 and "\\toprule" in tex and "CMCR $-$ mim" in tex


def test_unfinished_runs_listed_not_averaged(store: dict, report: dict) -> None:
    """The running and failed trials (mIoU ≈ 0.99) appear in incomplete.csv only."""
    inc = pd.read_csv(report["dir"] / "incomplete.csv")
    assert sorted(inc["state"]) == ["FAILED", "RUNNING"]
    csv = pd.read_csv(report["dir"] / "ablation.csv")
    assert csv["n_runs"].sum() == store["n_trials"] - 2
    assert csv["val/miou_mean"].max() < 0.6


def test_params_cast_to_config_types(store: dict) -> None:
    """MLflow's string params come back as the config's bool / int / float / list types."""
    rt = collect(Selection(tracking_uri=store["uri"], study="components"))
    row = rt.runs.iloc[0]
    cfg = load_config("smoke")
    assert isinstance(row["method.mim"], bool | np.bool_)
    assert isinstance(row["train.seed"], int | np.integer)
    assert row["train.lr"] == cfg.train.lr and isinstance(row["train.lr"], float)
    assert row["data.cameras"] == tuple(cfg.data.cameras)
    assert row["model.backbone"] == cfg.model.backbone
    assert set(rt.swept()) >= {f"method.{c}" for c in COMPONENTS} | {"method.name"}


def test_report_logged_on_parent_run(store: dict, report: dict) -> None:
    """The same files are artifacts ``report/`` of the study's parent run."""
    assert report["logged_to"] == store["parent_run_id"]
    names = {Path(a.path).name for a in MlflowClient(store["uri"]).list_artifacts(
        store["parent_run_id"], "report")}  # fmt: skip
    assert {"index.html", "ablation.md", "ablation.csv", "ablation.tex"} <= names


def test_swept_params_group_and_optuna_pruned(tmp_path: Path) -> None:
    """Without a variant change, rows are the swept params; an Optuna-pruned trial is left out."""
    import optuna

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    exp_id, parent = fake_runs.start_study(client, "cmcr", "weights")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="weights", storage=storage, direction="maximize")
    rng = np.random.default_rng(0)
    dist = {"loss.weights.mim": optuna.distributions.FloatDistribution(0.0, 2.0),
            "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}  # fmt: skip
    for trial, (w, lr, seed) in enumerate([(0.5, 1e-3, 0), (0.5, 1e-3, 1), (1.5, 1e-3, 0),
                                           (1.5, 1e-3, 1), (1.5, 3e-3, 0)]):  # fmt: skip
        cfg = load_config("smoke", {"loss.weights.mim": w, "train.lr": lr, "train.seed": seed})
        miou = 0.3 + 0.05 * w
        run_id = fake_runs.log_run(client, exp_id, cfg, study="weights", trial=trial,
                                   parent_run_id=parent, miou=miou, rng=rng)  # fmt: skip
        state = optuna.trial.TrialState.PRUNED if trial == 4 else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params={"loss.weights.mim": w, "train.lr": lr}, distributions=dist,
            value=miou if trial != 4 else None, intermediate_values={0: miou}, state=state,
            user_attrs={"mlflow_run_id": run_id}))  # fmt: skip
    info = build(Selection(tracking_uri=uri, study="weights", storage=storage), tmp_path / "rep")
    csv = pd.read_csv(tmp_path / "rep" / "ablation.csv")
    # a continuous search: rows ranked by mIoU, named by their first trial, Δ to the best row
    assert list(csv.columns[:3]) == [
        "config",
        "trial",
        "loss.weights.mim",
    ]  # train.lr only varied in the pruned run
    assert list(csv["loss.weights.mim"]) == [1.5, 0.5] and list(csv["n_runs"]) == [2, 2]
    assert list(csv["config"]) == ["trial 2: mim=1.5", "trial 0: mim=0.5"]
    assert csv.at[0, "delta_val/miou"] == 0.0 and csv.at[1, "delta_val/miou"] < 0
    assert pd.read_csv(tmp_path / "rep" / "incomplete.csv").empty  # pruned runs are apart
    pruned = pd.read_csv(tmp_path / "rep" / "pruned.csv")
    assert list(pruned["trial"]) == [4] and list(pruned["phase"]) == ["downstream"]
    assert list(pruned["step_from"]) == ["last val/miou"]  # no pruned tags: its last epoch
    assert info["n_complete"] == 4
    assert "Optuna study found" in (tmp_path / "rep" / "index.html").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "nope"], "unknown study 'nope'"),
        (["--experiment", "empty"], "experiment 'empty' of"),
        (["--experiment", "missing"], "experiment 'missing' does not exist"),
        (["--study", "components", "--filter", "params.`train.lr` = '9'"], "matched no runs"),
        (["--study", "components", "--filter", "params.x =="], "is not valid"),
    ],
)
def test_bad_input_exit_2_no_report(store: dict, tmp_path: Path, capsys, args, message) -> None:
    """Unknown study, empty/missing experiment, empty or bad filter: one line, exit 2, no dir."""
    out = tmp_path / "rep"
    rc = main([*args, "--tracking-uri", store["uri"], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_store_not_created(tmp_path: Path) -> None:
    """A tracking store that does not exist is an error, and it is not created on the way."""
    db = tmp_path / "none.db"
    proc = subprocess.run(
        [sys.executable, str(REPO / "dashboards" / "build.py"), "--study", "x",
         "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "rep")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "does not exist" in proc.stderr and not db.exists() and not (tmp_path / "rep").exists()


def test_readme_block_regenerated_from_the_runs(store: dict, tmp_path: Path, capsys) -> None:
    """--readme replaces only the marked block with the summary table of the same runs."""
    readme = tmp_path / "README.md"
    readme.write_text(
        "# title\nbefore\n<!-- cmcr-report:components -->\nstale table\n"
        "<!-- /cmcr-report:components -->\nafter\n"
    )
    out = tmp_path / "rep"
    argv = ["--study", "components", "--tracking-uri", store["uri"], "--out", str(out)]
    assert main([*argv, "--no-log", "--readme", str(readme)]) == 0, capsys.readouterr().err
    text = readme.read_text()
    assert text.startswith("# title\nbefore\n<!-- cmcr-report:components -->\n")
    assert text.endswith("<!-- /cmcr-report:components -->\nafter\n") and "stale" not in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert rows[0] == ("| configuration | runs | mIoU | Δ mIoU | vs CMCR [95 % CI] | p (Holm) "
                       "| seeds needed | ≈ best | fwIoU |")  # fmt: skip
    csv = pd.read_csv(out / "ablation.csv")
    assert len(rows) == 1 + len(csv)
    m, s = csv.at[0, "val/miou_mean"] * 100, csv.at[0, "val/miou_std"] * 100
    assert rows[1].split("|")[3].strip().strip("*") == f"{m:.2f} ± {s:.2f}"
    assert "finished runs of study 'components'" in text
    assert "the seeds support" in text and "Holm-corrected" in text  # the table explains itself


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("no markers\n", "must contain the line '<!-- cmcr-report:components -->' exactly once"),
        ("<!-- /cmcr-report:components -->\n<!-- cmcr-report:components -->\n", "must come before"),
    ],
)
def test_readme_without_markers_fails_before_building(
    store: dict, tmp_path: Path, capsys, content: str, message: str
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(content)
    out = tmp_path / "rep"
    argv = ["--study", "components", "--tracking-uri", store["uri"], "--out", str(out)]
    assert main([*argv, "--no-log", "--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(readme) in err and len(err.splitlines()) == 1
    assert not out.exists() and readme.read_text() == content  # nothing built, file untouched
