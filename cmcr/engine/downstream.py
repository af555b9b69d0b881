"""Downstream training loops on nuScenes-lidarseg: linear probing and fine-tuning (METHOD.md).

The network is ``cmcr.models.segmentation.SegModel``; weights are resolved and loaded by
``cmcr.engine.checkpoint``; metrics, export and reports come from ``cmcr.eval.evaluate``.

The loop is plain PyTorch on one device (CUDA if present): downstream runs are small and the
sweep runs them in-process, so the Accelerate machinery of pre-training is not needed here.
Why not one loop skeleton with pre-training: pre-training counts optimiser steps across
processes, checkpoints and resumes mid-epoch (``skip_first_batches``) and logs every
``log_every`` steps; the downstream loop counts epochs, never checkpoints (a resumed trial
re-runs it from scratch) and evaluates every ``eval_every`` epochs. What they do share, logging
only the steps not yet in the run's history, comes from ``RunLogger.last_logged_step``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmcr.compat import patch_spconv_cpu
from cmcr.configs import Config, validate_config
from cmcr.data import check_downstream_data, set_loader_epoch
from cmcr.engine.checkpoint import build_seg_model, pretrained_variant, save_seg_weights
from cmcr.eval.evaluate import (
    evaluate_batches,
    export_predictions,
    live_logits,
    log_artifacts,
    metric_dict,
    to_device,
)
from cmcr.eval.metrics import SegMetrics
from cmcr.losses.lovasz import lovasz_softmax
from cmcr.models.segmentation import SegModel
from cmcr.names import Metric, Tag

__all__ = ["DownstreamResult", "SegModel", "build_loaders", "run_downstream"]

Report = Callable[[int, float], None]
IGNORE = -1  # training target of label 0 ("ignore") after the shift to 0..15


@dataclass
class DownstreamResult:
    """Outcome of one probe / fine-tune run: final validation metrics."""

    run_id: str | None
    miou: float
    fwiou: float
    per_class: dict[str, float]


def _point_targets(batch: dict[str, Any]) -> torch.Tensor:
    """(N,) training targets 0..15, IGNORE where the label is 0."""
    return batch["labels"].long() - 1


def seg_loss(point_logits: torch.Tensor, target: torch.Tensor, lovasz: bool) -> torch.Tensor:
    """Cross-entropy (+ Lovász-softmax) over points; target IGNORE is left out."""
    ce = nn.functional.cross_entropy(point_logits, target, ignore_index=IGNORE)
    if not lovasz:
        return ce
    return ce + lovasz_softmax(point_logits.softmax(dim=1), target, ignore_index=IGNORE)


@dataclass
class _Cache:
    """Frozen features computed once, from one pass over the train loader (epoch 0's
    augmentation, recorded as ``Tag.PROBE_AUGMENT``): one backbone pass per scan instead of one
    per scan per epoch, the big CPU saving of probing."""

    train: list[tuple[torch.Tensor, torch.Tensor]]  # per scan: (M, D) feats, (M,) targets 0..15
    val: list[tuple[torch.Tensor, dict[str, Any]]]  # per batch: (V, D) voxel feats, the batch


@torch.no_grad()
def _cache_features(model: SegModel, train_loader: Any, val_loader: Any, device: torch.device):
    model.eval()
    train: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch in train_loader:
        batch = to_device(batch, device)
        point_feats = model.features(batch)[batch["inverse"]]  # (N, D)
        target = _point_targets(batch)  # (N,)
        sizes = [int(n) for n in batch["num_points"].tolist()]
        for f, t in zip(point_feats.split(sizes), target.split(sizes), strict=True):
            keep = t != IGNORE  # ignored points add nothing to the loss: do not store them
            train.append((f[keep], t[keep]))
    val = []
    for batch in val_loader:
        batch = to_device(batch, device)
        val.append((model.features(batch), batch))
    return _Cache(train, val)


def _freeze(model: SegModel) -> None:
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    model.encoder.eval()  # BatchNorm keeps its pre-trained statistics


_LOGGED_KEYS = (Metric.SEG_LOSS, Metric.VAL_MIOU)


class _Trainer:
    """Shared epoch loop: optimiser, cosine schedule, evaluation, logging and report hooks."""

    def __init__(self, cfg: Config, model: SegModel, logger: Any, report: Report | None):
        self.cfg, self.model, self.logger, self.report = cfg, model, logger, report
        self.step = 0
        self.metrics: SegMetrics | None = None
        # a resumed trial re-runs its downstream part from scratch: epochs already in the run's
        # history are not logged twice (the first value logged stays, as in pre-training)
        last = getattr(logger, "last_logged_step", None)
        self.logged_until = {k: (last(k) or 0) if last else 0 for k in _LOGGED_KEYS}

    def _log(self, metrics: dict[str, float], epoch: int, key: str) -> None:
        if epoch > self.logged_until[key]:
            self.logger.log_metrics(metrics, step=epoch)

    def make_optimizer(self, groups: list[dict[str, Any]], total_steps: int) -> None:
        self.opt = torch.optim.SGD(groups, momentum=0.9)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(1, total_steps))

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1

    def done(self) -> bool:
        max_steps = self.cfg.downstream.max_steps
        return max_steps > 0 and self.step >= max_steps

    def fit(
        self, epochs: int, epoch_losses: Callable[[int], Iterator[torch.Tensor]], evaluate: Callable
    ) -> None:
        """Epochs 1..epochs: one update per loss ``epoch_losses(epoch)`` yields, then end_epoch.

        ``epoch_losses`` is a generator, so each loss is computed after the previous update.
        """
        for epoch in range(1, epochs + 1):
            losses = []
            for loss in epoch_losses(epoch):
                self.update(loss)
                losses.append(loss.item())
                if self.done():
                    break
            self.end_epoch(epoch, losses, epoch == epochs or self.done(), evaluate)
            if self.done():
                break

    def end_epoch(self, epoch: int, losses: list[float], last: bool, evaluate: Callable) -> None:
        """Log the epoch's loss; evaluate every eval_every epochs and at the end."""
        if losses:
            self._log({Metric.SEG_LOSS: float(np.mean(losses))}, epoch, Metric.SEG_LOSS)
        if not (last or epoch % self.cfg.downstream.eval_every == 0):
            return
        self.metrics = evaluate()
        self._log(metric_dict(self.metrics), epoch, Metric.VAL_MIOU)
        if self.report is not None:
            self.report(epoch, self.metrics.miou)  # may raise optuna.TrialPruned: let it through


def _probe(cfg: Config, model: SegModel, loaders: tuple, device: torch.device, tr: _Trainer):
    _freeze(model)
    cache = _cache_features(model, *loaders, device)
    ds = cfg.downstream
    n_batches = math.ceil(len(cache.train) / ds.batch_size)
    total = n_batches * ds.probe_epochs
    if ds.max_steps:
        total = min(total, ds.max_steps)
    tr.make_optimizer([{"params": model.classifier.parameters(), "lr": ds.probe_lr}], total)
    model.classifier.train()

    def evaluate() -> SegMetrics:
        model.classifier.eval()  # BatchNorm: running statistics
        with torch.no_grad():
            metrics = evaluate_batches((model.classifier(f), b) for f, b in cache.val)
        model.classifier.train()
        return metrics

    def epoch_losses(epoch: int) -> Iterator[torch.Tensor]:
        order = np.random.default_rng([cfg.train.seed, epoch - 1]).permutation(len(cache.train))
        for i in range(0, len(order), ds.batch_size):
            chunk = [cache.train[j] for j in order[i : i + ds.batch_size]]
            x = torch.cat([c[0] for c in chunk])  # (M, D)
            y = torch.cat([c[1] for c in chunk])  # (M,)
            if y.numel() > 0:
                yield seg_loss(model.classifier(x), y, lovasz=False)

    tr.fit(ds.probe_epochs, epoch_losses, evaluate)
    return cache


def _finetune(cfg: Config, model: SegModel, loaders: tuple, device: torch.device, tr: _Trainer):
    ds = cfg.downstream
    train_loader, val_loader = loaders
    total = len(train_loader) * ds.finetune_epochs
    if ds.max_steps:
        total = min(total, ds.max_steps)
    tr.make_optimizer(
        [
            {"params": model.encoder.parameters(), "lr": ds.finetune_lr},
            {"params": model.classifier.parameters(), "lr": ds.finetune_head_lr},
        ],
        total,
    )

    def epoch_losses(epoch: int) -> Iterator[torch.Tensor]:
        set_loader_epoch(train_loader, epoch - 1)
        model.train()  # evaluation left it in eval mode
        for batch in train_loader:
            batch = to_device(batch, device)
            target = _point_targets(batch)
            if bool((target != IGNORE).any()):  # nothing labelled: cross-entropy would be NaN
                logits = model(batch)[batch["inverse"]]  # (N, 16)
                yield seg_loss(logits, target, lovasz=True)

    tr.fit(
        ds.finetune_epochs,
        epoch_losses,
        lambda: evaluate_batches(live_logits(model, val_loader, device)),
    )


def build_loaders(cfg: Config, mode: str) -> tuple[Any, Any]:
    """(train, val) loaders from the config as logged; train keeps downstream.label_fraction.

    ``train=True`` selects the label-fraction subset (every k-th scan, in the dataset) and
    applies data.rotate / data.flip_prob; the probe caches its features from one such pass
    (epoch 0), and ``Tag.PROBE_AUGMENT`` records whether that pass was augmented.
    """
    from cmcr.data import build_seg_loader

    train = build_seg_loader(cfg, cfg.data.train_split, train=True)
    val = build_seg_loader(cfg, cfg.data.val_split, train=False)
    return train, val


def _probe_augment(cfg: Config) -> bool:
    """Whether the probe's cached train features saw rotation / flips (``train=True``)."""
    return bool(cfg.data.rotate) or cfg.data.flip_prob > 0


def run_downstream(
    cfg: Config,
    *,
    pretrained: str | None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    report: Report | None = None,
    logger: Any = None,
    export_dir: str | Path | None = None,
) -> DownstreamResult:
    """Probe or fine-tune (cfg.downstream.mode) from ``pretrained`` (run id, backbone.pt, none).

    With ``logger`` (e.g. inside a sweep trial) metrics go to that run, which the caller ends;
    otherwise a run of kind probe|finetune is started here and ended FINISHED or FAILED.
    Bad pre-trained input fails before any MLflow run starts.
    """
    from cmcr.engine.tracking import RunLogger

    mode = cfg.downstream.mode
    validate_config(cfg)  # epochs >= 1, eval_every >= 1, ... (declared on the schema)
    patch_spconv_cpu()  # fine-tuning runs spconv backward; a no-op with CUDA
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, source_run = build_seg_model(cfg, pretrained)  # bad weights fail first (cheap)
    loaders = build_loaders(cfg, mode)
    extra = {Tag.PRETRAINED: str(pretrained or "none")}
    if mode == "probe":
        extra[Tag.PROBE_AUGMENT] = str(_probe_augment(cfg)).lower()
    if source_run:
        extra[Tag.PRETRAINED_RUN] = source_run
        parent_run_id = parent_run_id or source_run  # link the evaluation to its pre-training
    variant = pretrained_variant(cfg, pretrained, source_run)
    if variant and logger is None:  # a trial's own variant tag is already right
        extra[Tag.VARIANT] = variant
    if logger is not None:
        logger.set_tags({**extra, **(tags or {})})
        return _run(cfg, model.to(device), loaders, device, logger, report, export_dir)
    # every file the run reads, before the run exists (a trial's run_trial checked them already)
    check_downstream_data(cfg)
    with RunLogger.start(
        cfg,
        kind=mode,
        run_id=run_id,
        parent_run_id=parent_run_id,
        tags={**extra, **(tags or {})},
    ) as own:
        return _run(cfg, model.to(device), loaders, device, own, report, export_dir)


def _run(cfg, model, loaders, device, logger, report, export_dir) -> DownstreamResult:
    """Train, evaluate, export, save weights and log artifacts inside an open run."""
    t0 = time.perf_counter()
    tr = _Trainer(cfg, model, logger, report)
    if cfg.downstream.mode == "probe":
        cache = _probe(cfg, model, loaders, device, tr)
        model.classifier.eval()
        batches = ((model.classifier(f), b) for f, b in cache.val)
    else:
        _finetune(cfg, model, loaders, device, tr)
        batches = live_logits(model, loaders[1], device)
    if export_dir is not None:
        export_predictions(cfg, batches, export_dir, len(loaders[1].dataset))
    out = Path(cfg.tracking.output_dir) / str(logger.run_id)
    save_outputs(model, cfg, out)
    log_artifacts(logger, tr.metrics)
    logger.log_metrics({Metric.DOWNSTREAM_SECONDS: time.perf_counter() - t0}, step=tr.step)
    m = tr.metrics
    return DownstreamResult(logger.run_id, m.miou, m.fwiou, dict(m.per_class))


def save_outputs(model: SegModel, cfg: Config, out: Path) -> None:
    """``seg_backbone.pt``, ``seg_head.pt`` (checkpoint module) and ``config.yaml``."""
    from cmcr.engine.tracking import config_yaml

    out.mkdir(parents=True, exist_ok=True)
    save_seg_weights(model, out)
    (out / "config.yaml").write_text(config_yaml(cfg))
