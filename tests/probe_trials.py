"""Test-only trial functions (``tests/sweep_with_trial_fn.py probe_trials:NAME``): the real
``run_trial`` with the representation probe's *measurement* replaced by a value the config
decides, so which trial's intermediate values are poor is known in advance. Everything else
(pre-training, checkpoints, MLflow, the report to Optuna and the pruner) is real."""

from __future__ import annotations

import os
import signal
from typing import Any


def _value(cfg: Any) -> float:
    return float(cfg.loss.weights.mim) / 10  # the study sets mim: a small one is a poor trial


def _patch() -> None:
    from cmcr.engine import probe

    def measure(self: Any, backbone: Any, device: Any) -> dict[str, float]:
        v = _value(self.cfg)
        return {"standardised": v, "raw": v, "rankme": v, "alpha_req": v}

    probe.RepresentationProbe.measure = measure


def by_mim(cfg: Any, **kwargs: Any) -> Any:
    """rep/probe_miou = loss.weights.mim / 10 at every probe step."""
    from cmcr.engine.pipeline import run_trial

    _patch()
    return run_trial(cfg, **kwargs)


def killed_after_step_3(cfg: Any, **kwargs: Any) -> Any:
    """As ``by_mim``, but the first attempt (no marker file yet) SIGKILLs its own process right
    after the probe at step 3 was logged and reported, before any checkpoint of step 3."""
    from cmcr.engine import probe
    from cmcr.engine.pipeline import run_trial

    _patch()
    marker = os.path.join(cfg.tracking.output_dir, "killed-once")
    original = probe.RepresentationProbe.step

    def step(self: Any, accelerator: Any, model: Any, at: int, save: Any) -> None:
        original(self, accelerator, model, at, save)
        if at == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    probe.RepresentationProbe.step = step
    return run_trial(cfg, **kwargs)


def killed_between_log_and_report(cfg: Any, **kwargs: Any) -> Any:
    """As ``by_mim``, but the first attempt SIGKILLs its own process at step 3 after the probe
    logged it to MLflow and before it reported it to Optuna (issue 27's wiring defect)."""
    from cmcr.engine.pipeline import run_trial

    _patch()
    marker = os.path.join(cfg.tracking.output_dir, "killed-once")
    report = kwargs.get("report")
    if report is not None:

        def killing(step: int, value: float, phase: str = "downstream", **kw: Any) -> None:
            if phase == "pretrain" and step == 3 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            report(step, value, phase, **kw)

        if hasattr(report, "reported"):
            killing.reported = report.reported  # type: ignore[attr-defined]
        kwargs["report"] = killing
    return run_trial(cfg, **kwargs)
