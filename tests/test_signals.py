"""The label-free early signals of issue 27 (cmcr/engine/spectrum.py): RankMe and alpha-ReQ,
against slow obvious versions and known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmcr.engine import spectrum


def _slow_rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe as the paper writes it: singular values from the eigenvalues of x^T x, a loop."""
    eig = np.linalg.eigvalsh(x.T @ x)
    s = [math.sqrt(max(e, 0.0)) for e in eig]
    total = sum(s)
    h = 0.0
    for v in s:
        p = v / total + eps
        h -= p * math.log(p)
    return math.exp(h)


def _slow_alpha(x: np.ndarray) -> float:
    """alpha-ReQ: eigenvalues of the covariance, sorted, a line through (log rank, log eig)."""
    lam = sorted(np.linalg.eigvalsh(np.cov(x, rowvar=False)), reverse=True)
    lam = [v for v in lam if v > 1e-10 * lam[0]]
    slope, _ = np.polyfit(np.log(np.arange(1, len(lam) + 1)), np.log(lam), 1)
    return float(-slope)


def test_rankme_and_alpha_agree_with_slow_versions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) * np.linspace(3.0, 0.1, 12)  # anisotropic
    t = torch.from_numpy(x)
    assert spectrum.rankme(t) == pytest.approx(_slow_rankme(x), rel=1e-6)
    assert spectrum.alpha_req(t) == pytest.approx(_slow_alpha(x), rel=1e-6)


def test_rankme_of_isotropic_gaussian_is_about_d_and_of_rank_k_about_k():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(20000, 32, generator=g)
    assert 0.97 * 32 < spectrum.rankme(iso) <= 32 + 1e-3
    k = 5
    low = torch.randn(4000, k, generator=g) @ torch.randn(k, 32, generator=g)
    assert 0.8 * k < spectrum.rankme(low) <= k + 1e-3  # the 27 zero directions add ~1e-5
    assert spectrum.rankme(torch.ones(100, 8)) == pytest.approx(1.0, abs=1e-4)  # rank 1


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_a_known_power_law(alpha):
    d, n = 24, 2000
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # orthonormal, centred columns
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** -alpha
    x = q * lam.sqrt() * math.sqrt(n - 1)  # covariance eigenvalues exactly lam
    assert spectrum.alpha_req(x) == pytest.approx(alpha, abs=1e-6)


def test_scores_read_a_capped_subsample_and_handle_degenerate_input():
    x = torch.randn(50000, 4)
    assert len(spectrum.subsample(x)) <= spectrum.MAX_ROWS
    assert torch.equal(spectrum.subsample(x[:10]), x[:10])
    assert spectrum.scores(torch.zeros(0, 4)) == {"rankme": 0.0, "alpha_req": 0.0}
    assert spectrum.alpha_req(torch.ones(10, 3)) == 0.0  # no spread: no spectrum to fit


# ---- rungs as fractions of each trial's budget (sweep.first_rung) --------------------------------
class _Logger:
    """The probe's logger interface, no store: records the steps it logged."""

    client, run_id = None, None

    def __init__(self) -> None:
        self.steps: list[int] = []

    def log_metrics(self, metrics, step) -> None:
        self.steps.append(step)


class _Accelerator:
    num_processes, device = 1, "cpu"

    def unwrap_model(self, model):
        return model


def _reports(epochs: int, first_rung: float, batches: int = 7) -> tuple[list, list]:
    """(resource, step) reported, and the steps logged, by a probe every 2 steps through a
    pre-training of ``epochs`` x ``batches`` steps (the measurement stubbed)."""
    from cmcr.configs import load_config
    from cmcr.engine import train
    from cmcr.engine.probe import RepresentationProbe

    cfg = load_config("smoke", [f"train.epochs={epochs}", "train.max_steps=0", "sweep.eval_every=2",
                                f"sweep.first_rung={first_rung}"])  # fmt: skip
    total = train.total_steps(cfg, batches)
    got: list[tuple[int, int]] = []

    def report(step, value, phase="downstream", resource=None):
        got.append((resource, step))

    logger = _Logger()
    probe = RepresentationProbe(cfg, logger, report, total=total)
    probe.measure = lambda backbone, device: dict.fromkeys(
        ("standardised", "raw", "rankme", "alpha_req"), 0.5
    )
    model = type("M", (), {"backbone": None})()
    for step in range(1, total + 1):
        if probe.due(step):
            probe.step(_Accelerator(), model, step, save=lambda: None)
    return got, logger.steps


def test_two_trials_of_different_lengths_report_at_the_same_fractions():
    short, short_logged = _reports(epochs=2, first_rung=0.1)  # 14 steps
    long, long_logged = _reports(epochs=6, first_rung=0.1)  # 42 steps
    assert [r for r, _ in short] == [r for r, _ in long] == [100, 300, 900]  # permille rungs
    for total, got in ((14, short), (42, long)):
        for r, step in got:  # each at the first step at or past its fraction of the budget
            assert step / total >= r / 1000 > (step - 1) / total
    assert [s for _, s in long] == [5, 13, 38]
    assert set(range(2, 43, 2)) <= set(long_logged)  # the learning curve: every 2 steps too
    assert {5, 13, 38} <= set(long_logged)  # and the rung steps


def test_rungs_and_the_pruners_resource_follow_first_rung():
    from optuna.pruners import HyperbandPruner, SuccessiveHalvingPruner

    from cmcr.configs import load_config
    from cmcr.engine.probe import rungs
    from cmcr.sweep.runner import make_pruner

    assert rungs(0.25, 4) == [(250, 1), (750, 3)]
    assert rungs(0.5, 3) == [(500, 2)]
    assert rungs(0.001, 2) == [(1, 1), (3, 1), (9, 1), (27, 1), (81, 1), (243, 1), (729, 2)]
    cfg = load_config("demo", ["sweep.first_rung=0.2"])  # demo: the probe is on
    asha = make_pruner("asha", cfg)
    assert isinstance(asha, SuccessiveHalvingPruner)
    assert asha._min_resource == 200  # no public getter
    hb = make_pruner("hyperband", cfg)
    assert isinstance(hb, HyperbandPruner) and hb._max_resource == 1000


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.1"])
def test_first_rung_outside_0_1_is_refused(bad):
    from cmcr.configs import load_config
    from cmcr.errors import CMCRError

    with pytest.raises(CMCRError, match="sweep.first_rung"):
        load_config("smoke", [f"sweep.first_rung={bad}"])


def test_the_replays_collection_reads_the_label_free_signals(tmp_path):
    """``collect_trials(fits=None)`` (what the replay reads) sees rep/rankme as ``rankme`` and
    rep/alpha_req as ``alpha_req_near_1`` = -|alpha - 1| (higher = better, as the pruners)."""
    import optuna
    from mlflow.tracking import MlflowClient

    from cmcr.bench.pruning import collect_trials
    from cmcr.names import Attr, Metric

    storage, uri = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x")).info.run_id
    for step, (miou, rank, alpha) in {7: (0.2, 12.5, 0.6), 14: (0.3, 20.0, 1.3)}.items():
        client.log_metric(run, Metric.PROBE_MIOU, miou, step=step)
        client.log_metric(run, Metric.PROBE_RANKME, rank, step=step)
        client.log_metric(run, Metric.PROBE_ALPHA_REQ, alpha, step=step)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, value=0.3, user_attrs={Attr.RUN_ID: run}))  # fmt: skip
    (row,) = collect_trials(storage, uri, "s", None)
    assert row["probe"]["miou"] == {7: 0.2, 14: 0.3}
    assert row["probe"]["rankme"] == {7: 12.5, 14: 20.0}
    assert row["probe"]["alpha_req_near_1"] == pytest.approx({7: -0.4, 14: -0.3})
