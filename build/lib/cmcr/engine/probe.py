"""The representation probe: a cheap measure of the backbone during pre-training (issue 17).

Every ``sweep.eval_every`` optimiser steps the main process measures the current backbone on a
fixed, small labelled subset of the training split (``sweep.probe_scans`` scans, evenly spaced,
subsampled like training, never augmented, loaded once): the frozen backbone's point features
are computed once per measurement (eval mode) and a linear layer is fitted on the features of
half the scans, scored as mIoU on the other half, twice (``fit_and_score``): on standardised
features (``rep/probe_miou_standardised``) and on raw features fitted as the downstream probe fits
them (``rep/probe_miou_raw``). ``rep/probe_miou`` is the one ``sweep.probe_features`` names, the value
the pruner sees. ``rep/probe_seconds`` (cumulative) and, at the end, ``rep/probe_time_share`` (the
probe's share of pre-training wall time) say what it costs.

Why a linear layer on cached frozen features, and why two fits, by measurement (demo world,
8 scans; a random-init backbone vs ones pre-trained 42 steps): the sweep's objective is itself
a linear probe of the frozen backbone, so the probe measures the same thing at a fraction of the
cost (6 scans on the demo sizes, CPU: features 0.16 s, each fit 0.05 s; a k-NN over the points
would cost more and, like the standardised fit, ignore the features' scale). The raw fit reproduces what
the objective sees (random 0.024 vs pre-trained 0.07-0.08, the objective 0.066-0.075 at the
end), but the features of a young backbone are tiny (standard deviation 0.005 at init, 0.19
after 42 steps), so for the first ~15 steps every trial's raw fit predicts one class and ties:
it cannot rank trials early. The standardised fit is scale-free (random 0.18, pre-trained
0.16-0.22) and ranks from the first step. ``python -m cmcr.bench pruning`` measures both fits'
rank correlation with the final probe and the pruning each gives.

Label-free scores of the same frozen features, with no fit: ``rep/rankme`` and
``rep/alpha_req`` (``cmcr.engine.spectrum``), logged at every probe step beside the fits.

Rungs (issue 27): the pruner's values are reported only at the rungs, fractions of this run's
own pre-training (``rungs``: ``sweep.first_rung`` * 3^k, the resource in permille, measured at
the first step at or past each), so trials of different lengths compare at equal fractions;
the other probe steps are the learning curve in MLflow.

Resume: a step already in the run's ``rep/probe_miou`` history is neither measured nor logged
again; a rung logged but absent from the trial's reported values (killed between the log and
the report, or a retry's new trial) is reported from the history at the next probe step, in
order (``_report_backlog``). Pruning: ``report(step, value)`` may raise
``optuna.TrialPruned`` on the main process; the decision is shared with the other ranks (one
broadcast at each probe step), every rank checkpoints the step (``save_state`` is collective),
the main process logs ``rep/probe_time_share`` and every rank stops: the main process raises the
``TrialPruned``, the others ``PrunedElsewhere``, which ``cmcr.sweep.group`` lets a follower
survive.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch

from cmcr.configs import Config
from cmcr.data import build_seg_loader
from cmcr.data.collate import collate_seg
from cmcr.engine import spectrum
from cmcr.engine.evaluate import to_device
from cmcr.errors import CMCRError, DataError
from cmcr.eval.metrics import ConfusionAccumulator
from cmcr.names import Metric
from cmcr.progress import fmt_pct
from cmcr.registry import DATASETS

# the probe scores the pre-training world itself, which is nuScenes-format lidarseg
PRETRAIN_DATASET = "nuscenes"

log = logging.getLogger("cmcr")
FIT_ITERS = 150  # full-batch steps of the linear layer (demo CPU: 0.06 s per fit on 16k points)
STD_LR = 0.2  # Adam on standardised features: within 0.003 mIoU of 1000 steps on demo
MAX_POINTS_PER_SCAN = 4000  # fit points per scan (a fixed draw); the score uses every point
FITS = ("standardised", "raw")  # the linear fits, logged as rep/probe_miou_<fit>
RESOURCE = 1000  # the pruners' resource: permille of the trial's pre-training steps
REDUCTION = 3  # the pruners' reduction factor: rungs at first_rung * 3^k


class PrunedElsewhere(CMCRError):
    """Raised on a rank > 0 when the main process's pruner stopped the trial at a probe step."""


def rungs(first_rung: float, total: int) -> list[tuple[int, int]]:
    """(permille, step) of every rung of a ``total``-step pre-training: the rungs are
    ``round(first_rung * RESOURCE) * REDUCTION^k`` permille (below ``RESOURCE``), each measured
    at the first optimiser step at or past its fraction of ``total`` (at least 1)."""
    out, r = [], max(1, round(first_rung * RESOURCE))
    while r < RESOURCE:
        out.append((r, min(total, max(1, -(-r * total // RESOURCE)))))
        r *= REDUCTION
    return out


def enabled(cfg: Config) -> bool:
    """Whether pre-training measures its backbone (``sweep.eval_every`` > 0; not for random init)."""
    return cfg.sweep.eval_every > 0 and cfg.method.name != "random"


class RepresentationProbe:
    """The probe of one pre-training run (built on every rank; only main measures)."""

    def __init__(
        self, cfg: Config, logger: Any, report: Any = None, *, is_main: bool = True, total: int = 0
    ):
        self.cfg, self.logger, self.report = cfg, logger, report
        self.every = cfg.sweep.eval_every
        # {step: permille} of the rungs, where the pruner's values are reported (total: the
        # run's pre-training steps; 0 = unknown, no rung and no report)
        self.rungs: dict[int, list[int]] = {}
        for r, s in rungs(cfg.sweep.first_rung, total) if total > 0 else []:
            self.rungs.setdefault(s, []).append(r)
        self.is_main = is_main
        self.seconds = 0.0
        self.t0 = time.perf_counter()
        self._batches: list[tuple[dict[str, Any], bool]] | None = None
        # a resumed run's logged probe values {step: rep/probe_miou} and cost so far
        self.history = _history(logger, Metric.PROBE_MIOU) if is_main else {}
        self.logged = max(self.history, default=0)
        self._caught_up = not self.history  # no logged step the trial may lack
        if is_main:
            self.seconds = _latest(logger, Metric.PROBE_SECONDS)

    def due(self, step: int) -> bool:
        """Every ``sweep.eval_every`` steps (the learning curve) and at every rung's step."""
        return step % self.every == 0 or step in self.rungs

    # -- data -------------------------------------------------------------------------------
    def batches(self) -> list[tuple[dict[str, Any], bool]]:
        """(batch, is_fit) of the fixed subset: the fit scans, the score scans; loaded once."""
        if self._batches is None:
            self._batches = load_subset(self.cfg)
        return self._batches

    # -- the measurement --------------------------------------------------------------------
    @torch.no_grad()
    def features(self, backbone: torch.nn.Module, device: torch.device) -> tuple[Any, Any]:
        """(fit, score) lists of (point features, targets) of the frozen backbone."""
        was_training = backbone.training
        backbone.eval()  # BatchNorm's running statistics, as the downstream probe
        fit: list[tuple[torch.Tensor, torch.Tensor]] = []
        score: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            for batch, is_fit in self.batches():
                b = to_device(batch, device)
                voxel = backbone(b["coords"], b["feats"], b["spatial_shape"], b["batch_size"])
                feats = voxel[b["inverse"]].float()
                target = b["labels"].long() - 1  # 0 = ignore → -1
                keep = target >= 0
                (fit if is_fit else score).append((feats[keep], target[keep]))
        finally:
            backbone.train(was_training)
        return fit, score

    def measure(self, backbone: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Every probe figure of ``backbone``: both fits (on half the subset, scored on the
        other half), ``standardised`` and ``raw`` (see ``fit_and_score``), and the label-free
        ``rankme`` and ``alpha_req`` of every subset point's features (``cmcr.engine.spectrum``)."""
        fit, score = self.features(backbone, device)
        ds = self.cfg.downstream
        out = {
            "standardised": fit_and_score(fit, score, standardise=True),
            "raw": fit_and_score(
                fit, score, standardise=False, lr=ds.probe_lr, momentum=ds.momentum
            ),
        }
        feats = [f for f, _ in fit + score]
        out.update(spectrum.scores(torch.cat(feats) if feats else torch.zeros(0, 1)))  # (n, D)
        return out

    # -- the loop's hook --------------------------------------------------------------------
    def step(self, accelerator: Any, model: Any, step: int, save: Any) -> None:
        """At a probe step: measure, log and report (main); stop every rank if pruned.

        A resumed run first reports the logged steps up to ``step`` that its trial has not
        (``_report_backlog``). ``save``: checkpoints this step on every rank (only when pruned).
        """
        pruned: BaseException | None = None
        if self.is_main and not self._caught_up:  # a resumed run's logged rungs, once each
            pruned = self._report_backlog(step)
            self._caught_up = step >= self.logged
        if self.is_main and pruned is None and step > self.logged:
            t = time.perf_counter()
            net = accelerator.unwrap_model(model)
            every = self.measure(net.backbone, accelerator.device)
            value = every[self.cfg.sweep.probe_features]
            self.seconds += time.perf_counter() - t
            self.logger.log_metrics(self._metrics(value, every), step)
            self.logged = step
            self.history[step] = value
            # the representation probe, never "probe" alone: the objective is the downstream one
            log.info(f"{Metric.PROBE_MIOU} at step {step}: {fmt_pct(value)} % (representation "
                     f"probe, {self.seconds:.1f} s so far)")  # fmt: skip
            pruned = self._report(step, value)
        if _agree(accelerator, pruned is not None):
            save()
            self.finish(step)  # a pruned run records the probe's share too
            if pruned is not None:
                raise pruned
            raise PrunedElsewhere(f"pruned by the main process at pre-training step {step}")

    def _metrics(self, value: float, every: dict[str, float]) -> dict[str, float]:
        """The MLflow metrics of one measurement (``rep/probe_miou``: the pruner's value)."""
        out = {Metric.PROBE_MIOU: value, Metric.PROBE_SECONDS: self.seconds}
        out.update({f"{Metric.PROBE_MIOU}_{k}": every[k] for k in FITS})
        out.update(
            {Metric.PROBE_RANKME: every["rankme"], Metric.PROBE_ALPHA_REQ: every["alpha_req"]}
        )
        return out

    def _report(self, step: int, value: float, done: set[int] | None = None) -> Any:
        """Report ``value`` at each rung of ``step`` (resource: permille of the budget) not in
        ``done``; the exception when the pruner stops the trial."""
        if self.report is None:
            return None
        for r in self.rungs.get(step, []):
            if done is not None and r in done:
                continue
            try:
                self.report(step, value, phase="pretrain", resource=r)
            except Exception as exc:  # optuna.TrialPruned; anything else too, after saving
                return exc
        return None

    def _report_backlog(self, step: int) -> BaseException | None:
        """Report, in order, every step up to ``step`` that this run logged to MLflow but its
        trial never reported (killed between the log and the report, or a retry's new trial),
        so the pruner compares each value at its own step. A report callable without
        ``reported`` (the steps its trial holds) has no backlog."""
        reported = getattr(self.report, "reported", None)
        if reported is None:
            return None
        done = set(reported())
        for s in sorted(k for k in self.history if k <= step and k in self.rungs):
            pruned = self._report(s, self.history[s], done)
            if pruned is not None:
                return pruned
        return None

    def finish(self, step: int) -> None:
        """Log ``rep/probe_time_share``: the probe's share of this process's pre-training time."""
        if not self.is_main or self.seconds <= 0:
            return
        total = time.perf_counter() - self.t0
        share = self.seconds / max(total, 1e-9)
        self.logger.log_metrics({Metric.PROBE_TIME_SHARE: share}, step)
        log.info(f"representation probe: {self.seconds:.1f} s of {total:.1f} s pre-training "
                 f"({fmt_pct(share)} %)")  # fmt: skip


def _history(logger: Any, key: str) -> dict[int, float]:
    """{step: value} of metric ``key`` in the logger's run (empty without a store)."""
    if logger.client is None or logger.run_id is None:
        return {}
    return {int(m.step): m.value for m in logger.client.get_metric_history(logger.run_id, key)}


def _latest(logger: Any, key: str) -> float:
    """The run's latest value of metric ``key`` (0 when it has none)."""
    if logger.client is None or logger.last_logged_step(key) is None:
        return 0.0
    return float(logger.client.get_run(logger.run_id).data.metrics.get(key, 0.0))


def _agree(accelerator: Any, flag: bool) -> bool:
    """The main process's flag on every rank (one broadcast; every rank calls it)."""
    if accelerator.num_processes == 1:
        return flag
    from accelerate.utils import broadcast

    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(broadcast(t, from_process=0).item() > 0)


def load_subset(cfg: Config) -> list[tuple[dict[str, Any], bool]]:
    """``sweep.probe_scans`` evenly spaced labelled scans of the pre-training split, alternately
    for the fit and for the score, as two batches (fit, score).

    Each scan keeps at most ``data.max_points`` points (a fixed draw per scan, as training
    subsamples; every point when it is 0), with no rotation or flip: the same points every time.
    """
    dataset = build_seg_loader(_probe_config(cfg), cfg.data.train_split, train=True).dataset
    n = min(cfg.sweep.probe_scans, len(dataset))
    if n < 2:
        raise DataError(
            f"sweep.probe_scans: the representation probe needs 2 labelled scans of "
            f"data.train_split '{cfg.data.train_split}', which has {len(dataset)}"
        )
    index = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(int))
    samples = [dataset[int(i)] for i in index]
    return [(collate_seg(samples[0::2]), True), (collate_seg(samples[1::2]), False)]


def _probe_config(cfg: Config) -> Config:
    """Every labelled scan of the split, subsampled like training, never augmented."""
    out = copy.deepcopy(cfg)
    out.downstream.dataset, out.downstream.mode = PRETRAIN_DATASET, "probe"
    out.downstream.probe_label_fraction = 1.0
    out.data.rotate, out.data.flip_prob = False, 0.0
    out.data.num_workers = 0
    return out


def fit_and_score(
    fit: list[tuple[Any, Any]],
    score: list[tuple[Any, Any]],
    *,
    standardise: bool,
    lr: float = STD_LR,
    momentum: float = 0.0,
) -> float:
    """Fit a linear layer on ``fit`` (features, targets) and return its mIoU on ``score``.

    ``standardise``: features scaled to zero mean and unit variance over the fit points, Adam at
    ``STD_LR`` (scale-free: what the features separate); else raw features and SGD at ``lr``
    with ``momentum``, as the downstream probe fits them. Full-batch, ``FIT_ITERS`` steps from
    zero weights, cross-entropy: the same features give the same figure.
    """
    space = DATASETS.get(PRETRAIN_DATASET).space
    x = torch.cat([_cap(f, k) for k, (f, _) in enumerate(fit)])
    y = torch.cat([_cap(t, k) for k, (_, t) in enumerate(fit)])
    if len(y) == 0:
        return 0.0
    mean, std = torch.zeros(x.shape[1], device=x.device), torch.ones(x.shape[1], device=x.device)
    if standardise:
        mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    x = (x - mean) / std
    layer = torch.nn.Linear(x.shape[1], space.num_classes).to(x.device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    params = layer.parameters()
    if standardise:
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=STD_LR)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    with torch.enable_grad():
        for _ in range(FIT_ITERS):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(layer(x), y).backward()
            opt.step()
    metrics = ConfusionAccumulator(space)
    with torch.no_grad():
        for feats, target in score:
            pred = layer((feats - mean) / std).argmax(1)
            metrics.update((target + 1).cpu(), (pred + 1).cpu())  # back to labels 1..C
    return float(metrics.compute().miou)


def _cap(t: torch.Tensor, k: int) -> torch.Tensor:
    """At most MAX_POINTS_PER_SCAN rows, a fixed strided draw (no randomness)."""
    if len(t) <= MAX_POINTS_PER_SCAN:
        return t
    stride = int(np.ceil(len(t) / MAX_POINTS_PER_SCAN))
    return t[k % stride :: stride]
