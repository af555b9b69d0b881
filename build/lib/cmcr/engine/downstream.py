"""Downstream training loops: linear probing and fine-tuning on nuScenes-lidarseg or
SemanticKITTI (METHOD.md; the dataset dispatch is in ``downstream_protocol``).

The network is ``cmcr.models.segmentation.SegModel``; weights are resolved and loaded by
``cmcr.engine.checkpoint``; metrics, export and reports come from ``cmcr.engine.evaluate``.

The loop is plain PyTorch on one device (CUDA if present): downstream runs are small and the
sweep runs them in-process, so the Accelerate machinery of pre-training is not needed here.
Why not one loop skeleton with pre-training: pre-training counts optimiser steps across
processes, checkpoints and resumes mid-epoch (``skip_first_batches``) and logs every
``log_every`` steps; the downstream loop counts epochs, never checkpoints (a resumed trial
re-runs it from scratch) and evaluates every ``eval_every`` epochs. What they do share, logging
only the steps not yet in the run's history, comes from ``RunLogger.last_logged_step``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmcr import progress, runlog
from cmcr.compat import patch_spconv_cpu
from cmcr.configs import (
    Config,
    evaluation_config,
    evaluation_list,
    objective_evaluation,
    validate_config,
)
from cmcr.data import check_downstream_data, set_loader_epoch
from cmcr.datasets import DATASETS
from cmcr.engine.checkpoint import own_run_dir, pretrained_variant, run_dir
from cmcr.engine.downstream_protocol import (
    Protocol,
    describe,
    protocol_file,
    seg_loader,
    seg_splits,
)
from cmcr.engine.evaluate import (
    evaluate_batches,
    export_predictions,
    live_logits,
    log_artifacts,
    metric_dict,
    to_device,
)
from cmcr.engine.seg_weights import build_seg_model, save_seg_weights
from cmcr.eval.export import prepare_export
from cmcr.eval.metrics import SegMetrics
from cmcr.guard import no_links, open_nofollow
from cmcr.losses.lovasz import lovasz_softmax
from cmcr.models.segmentation import SegModel
from cmcr.names import Metric, Tag, dataset_key
from cmcr.tracking.inputs import config_yaml, run_spec
from cmcr.tracking.runs import RunLogger

__all__ = ["DownstreamResult", "SegModel", "build_loaders", "run_downstream"]

Report = Callable[[int, float], None]
Announce = Callable[[list[str]], None]  # receives the protocol's lines before training
IGNORE = -1  # training target of label 0 ("ignore"): columns 0..C-1, or 1..C with the ignore column


@dataclass
class DownstreamResult:
    """Outcome of one probe / fine-tune run: final validation metrics."""

    run_id: str | None
    miou: float
    fwiou: float
    per_class: dict[str, float]


def first_point_of_voxel(inverse: torch.Tensor, n_voxels: int) -> torch.Tensor:
    """(V,) index of each voxel's first point (the lowest index mapping to it) from the (N,)
    point→voxel index."""
    n = len(inverse)
    first = torch.full((n_voxels,), n, dtype=torch.long, device=inverse.device)
    points = torch.arange(n, device=inverse.device)
    return first.scatter_reduce(0, inverse.long(), points, reduce="amin")


def seg_targets(batch: dict[str, Any], cfg: Config) -> torch.Tensor:
    """Training targets, IGNORE where the label is 0: (V,) per voxel, each voxel labelled with
    its first point's label (downstream.loss_unit: voxel, the release), or (N,) per point.

    The columns of the new layer: 0..C-1 for classes 1..C, or 0..C with the ignore class in
    column 0 (downstream.head_includes_ignore), never a target but in the softmax.
    """
    ds = cfg.downstream
    labels = batch["labels"].long()  # (N,) 0..C
    if ds.loss_unit == "voxel":
        labels = labels[first_point_of_voxel(batch["inverse"], len(batch["coords"]))]  # (V,)
    if ds.head_includes_ignore:
        return labels.masked_fill(labels == 0, IGNORE)
    return labels - 1


def seg_loss(logits: torch.Tensor, target: torch.Tensor, lovasz: bool) -> torch.Tensor:
    """Cross-entropy (+ Lovász-softmax) over voxels or points; target IGNORE is left out."""
    ce = nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
    if not lovasz:
        return ce
    return ce + lovasz_softmax(logits.softmax(dim=1), target, ignore_index=IGNORE)


def _freeze_backbone(model: SegModel) -> None:
    """Linear probing: only the new layer trains (METHOD.md)."""
    model.backbone.requires_grad_(False)
    # eval mode, not only no gradient: in train mode BatchNorm would still update its running
    # statistics from the probe's data, so the "frozen" backbone would change under the probe;
    # the release's SLidR-based trainer puts the frozen model in eval for the same reason
    model.backbone.eval()


def param_groups(cfg: Config, model: SegModel) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: probe = the new layer; finetune = backbone + layer."""
    ds = cfg.downstream
    head = {"params": list(model.classifier.parameters())}
    if ds.mode == "probe":
        return [{**head, "lr": ds.probe_lr}]
    return [
        {"params": list(model.backbone.parameters()), "lr": ds.finetune_lr},
        {**head, "lr": ds.finetune_head_lr},
    ]


def make_optimizer(cfg: Config, groups: list[dict[str, Any]], total_steps: int) -> tuple:
    """SGD (momentum, dampening, weight decay from downstream.*) and a cosine schedule over the
    epochs (downstream.scheduler_interval: epoch, stepped at each epoch's end) or the steps."""
    ds = cfg.downstream
    opt = torch.optim.SGD(
        groups, momentum=ds.momentum, dampening=ds.dampening, weight_decay=ds.weight_decay
    )
    epochs = ds.probe_epochs if ds.mode == "probe" else ds.finetune_epochs
    length = epochs if ds.scheduler_interval == "epoch" else total_steps
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, length))


def total_steps(cfg: Config, train_loader: Any) -> int:
    """Optimiser steps of the run: batches × epochs, capped by downstream.max_steps."""
    ds = cfg.downstream
    epochs = ds.probe_epochs if ds.mode == "probe" else ds.finetune_epochs
    total = len(train_loader) * epochs
    return min(total, ds.max_steps) if ds.max_steps else total


_LOGGED_KEYS = (Metric.SEG_LOSS, Metric.VAL_MIOU)


class _Trainer:
    """Shared epoch loop: optimiser, cosine schedule, evaluation, logging and report hooks."""

    def __init__(self, cfg: Config, model: SegModel, logger: Any, report: Report | None):
        self.cfg, self.model, self.logger, self.report = cfg, model, logger, report
        self.step = 0
        self.metrics: SegMetrics | None = None
        self.dataset = cfg.downstream.dataset
        # a resumed trial re-runs its downstream part from scratch: epochs already in the run's
        # history are not logged twice (the first value logged stays, as in pre-training)
        last = getattr(logger, "last_logged_step", None)
        keys = [dataset_key(self.dataset, k) for k in _LOGGED_KEYS]
        self.logged_until = {k: (last(k) or 0) if last else 0 for k in keys}

    def _log(self, metrics: dict[str, float], epoch: int, key: str) -> None:
        if epoch > self.logged_until[dataset_key(self.dataset, key)]:
            self.logger.log_metrics(metrics, step=epoch)

    def make_optimizer(self, groups: list[dict[str, Any]], total: int) -> None:
        self.opt, self.sched = make_optimizer(self.cfg, groups, total)

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.cfg.downstream.scheduler_interval == "step":
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
        phase = progress.PROBE if self.cfg.downstream.mode == "probe" else progress.FINETUNE
        with progress.task(phase, epochs, unit="epoch") as bar:
            for epoch in range(1, epochs + 1):
                losses = []
                for loss in epoch_losses(epoch):
                    self.update(loss)
                    losses.append(loss.item())
                    if self.done():
                        break
                self.end_epoch(epoch, losses, epoch == epochs or self.done(), evaluate)
                bar.update(1)
                if self.done():
                    break

    def end_epoch(self, epoch: int, losses: list[float], last: bool, evaluate: Callable) -> None:
        """Step an epoch-wise schedule; log the epoch's loss; evaluate every eval_every epochs
        and at the end."""
        if self.cfg.downstream.scheduler_interval == "epoch":
            self.sched.step()
        if losses:
            loss = {dataset_key(self.dataset, Metric.SEG_LOSS): float(np.mean(losses))}
            self._log(loss, epoch, Metric.SEG_LOSS)
        if not (last or epoch % self.cfg.downstream.eval_every == 0):
            return
        self.metrics = evaluate()
        self._log(metric_dict(self.metrics, self.dataset), epoch, Metric.VAL_MIOU)
        if self.report is not None:
            self.report(epoch, self.metrics.miou)  # may raise optuna.TrialPruned: let it through


def train_logits(model: SegModel, batch: dict[str, Any], probe: bool) -> torch.Tensor:
    """(V, C') voxel logits of the whole new layer (with the ignore column where it has one);
    the probe's frozen backbone builds no graph."""
    # the probe recomputes the features every epoch: the augmentation is drawn afresh
    with torch.no_grad() if probe else contextlib.nullcontext():
        feats = model.features(batch)  # (V, out_dim)
    return model.classifier(feats)


def _train(cfg: Config, model: SegModel, loaders: tuple, device: torch.device, tr: _Trainer):
    """Probe or fine-tune: one loop, the mode decides what is frozen and what the groups are."""
    ds, probe = cfg.downstream, cfg.downstream.mode == "probe"
    train_loader, val_loader = loaders
    if probe:
        _freeze_backbone(model)
    tr.make_optimizer(param_groups(cfg, model), total_steps(cfg, train_loader))

    def epoch_losses(epoch: int) -> Iterator[torch.Tensor]:
        set_loader_epoch(train_loader, epoch - 1)  # fresh rotation / flips every epoch
        model.train()  # evaluation left it in eval mode
        if probe:
            model.backbone.eval()  # see _freeze_backbone
        for batch in train_loader:
            batch = to_device(batch, device)
            target = seg_targets(batch, cfg)  # (V,) or (N,)
            if bool((target != IGNORE).any()):  # nothing labelled: cross-entropy would be NaN
                logits = train_logits(model, batch, probe)  # (V, C')
                if ds.loss_unit == "point":
                    logits = logits[batch["inverse"]]  # (N, C')
                yield seg_loss(logits, target, lovasz=ds.lovasz)

    # validation runs the backbone live each time rather than caching its features: the cache
    # of the whole nuScenes val split (about 6000 scans × 30k voxels × 96 floats) would need
    # ~70 GB, and eval mode makes the live pass deterministic all the same
    space = DATASETS.get(ds.dataset).space
    tr.fit(
        ds.probe_epochs if probe else ds.finetune_epochs,
        epoch_losses,
        lambda: evaluate_batches(live_logits(model, val_loader, device), space=space),
    )


def build_loaders(cfg: Config, mode: str) -> tuple[Any, Any]:
    """(train, val) loaders from the config as logged.

    ``train=True`` selects the mode's label fraction (every k-th scene or scan, in the dataset)
    and applies data.rotate / data.flip_prob, drawn per (seed, epoch, scan): both modes
    recompute the backbone's features every epoch, so every epoch sees a fresh augmentation.
    """
    train_split, val_split = seg_splits(cfg)
    return seg_loader(cfg, train_split, train=True), seg_loader(cfg, val_split, train=False)


def _probe_augment(cfg: Config) -> bool:
    """Whether the probe's training clouds are rotated / flipped (afresh every epoch)."""
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
    announce: Announce | None = None,
    overwrite: bool = False,
) -> DownstreamResult:
    """Probe or fine-tune (cfg.downstream.mode on cfg.downstream.dataset) from ``pretrained``
    (run id, backbone.pt, none).

    With ``logger`` (e.g. inside a sweep trial) metrics go to that run, which the caller ends,
    and every evaluation of ``downstream.evaluations`` runs (objective first; only it reports
    to ``report``); the objective's result is returned. Otherwise a run of kind
    probe|finetune is started here and ended FINISHED or FAILED.
    Bad pre-trained input fails before any MLflow run starts. ``announce`` receives the
    protocol's lines before training (the CLI prints them); the run records them either way.
    ``export_dir`` is checked (and with ``overwrite`` cleared) before anything trains.
    """
    validate_config(cfg)  # epochs >= 1, eval_every >= 1, ... (declared on the schema)
    if export_dir is not None:
        prepare_export(export_dir, overwrite)
    patch_spconv_cpu()  # fine-tuning runs spconv backward; a no-op with CUDA
    if logger is not None:
        return _run_evaluations(cfg, pretrained, logger, tags, report, export_dir, announce)
    cfg = evaluation_config(cfg, cfg.downstream.dataset, cfg.downstream.mode)
    model, source_run = build_seg_model(cfg, pretrained)  # bad weights fail first (cheap)
    loaders = build_loaders(cfg, cfg.downstream.mode)
    extra, parent_run_id = _source_tags(cfg, pretrained, source_run, parent_run_id, own=True)
    # every file the run reads, before the run exists (a trial's run_trial checked them already)
    check_downstream_data(cfg)
    if run_id is not None:  # a resume: its folder holds no link (before the run is touched)
        own_run_dir(cfg, run_id)
    device = _device()
    with (
        RunLogger.start(
            run_spec(
                cfg, kind=cfg.downstream.mode, parent=parent_run_id, tags={**extra, **(tags or {})}
            ),
            run_id=run_id,
        ) as own,
        runlog.attached(own, run_dir(cfg, str(own.run_id))),
    ):
        return _run(cfg, model.to(device), loaders, device, own, report, export_dir, announce)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _source_tags(cfg, pretrained, source_run, parent_run_id, *, own: bool) -> tuple[dict, Any]:
    """Tags naming what the evaluation started from, and the parent run to nest under."""
    extra = {Tag.PRETRAINED: str(pretrained or "none")}
    if cfg.downstream.mode == "probe":
        extra[Tag.PROBE_AUGMENT] = str(_probe_augment(cfg)).lower()
    if source_run:
        extra[Tag.PRETRAINED_RUN] = source_run
        parent_run_id = parent_run_id or source_run  # link the evaluation to its pre-training
    variant = pretrained_variant(cfg, pretrained, source_run)
    if variant and own:  # a trial's own variant tag is already right
        extra[Tag.VARIANT] = variant
    return extra, parent_run_id


def _run_evaluations(cfg, pretrained, logger, tags, report, export_dir, announce):
    """Every evaluation of a trial into ``logger``'s run, the objective first (it alone reports
    to the pruner and is exported); returns the objective's result."""
    objective = objective_evaluation(cfg)
    todo = [objective] + [e for e in evaluation_list(cfg) if e != objective]
    results = {}
    for dataset, mode in todo:
        one = evaluation_config(cfg, dataset, mode)
        model, source_run = build_seg_model(one, pretrained)
        loaders = build_loaders(one, mode)
        extra, _ = _source_tags(one, pretrained, source_run, None, own=False)
        logger.set_tags({**extra, **(tags or {})})
        first = (dataset, mode) == objective
        results[(dataset, mode)] = _run(
            one, model.to(_device()), loaders, _device(), logger,
            report if first else None, export_dir if first else None, announce,
        )  # fmt: skip
    return results[objective]


def record_protocol(cfg: Config, model: SegModel, loaders: tuple, logger: Any) -> Protocol:
    """Describe the run's protocol and record it in the run (tags + a text artifact)."""
    steps = total_steps(cfg, loaders[0])
    proto = describe(cfg, param_groups(cfg, model), model, loaders, steps)
    logger.set_tags(proto.tags())
    logger.log_text("\n".join(proto.lines()) + "\n", protocol_file(cfg.downstream.dataset))
    return proto


def _run(cfg, model, loaders, device, logger, report, export_dir, announce) -> DownstreamResult:
    """Train, evaluate, export, save weights and log artifacts inside an open run."""
    t0 = time.perf_counter()
    proto = record_protocol(cfg, model, loaders, logger)
    if announce is not None:
        announce(proto.lines())
    tr = _Trainer(cfg, model, logger, report)
    _train(cfg, model, loaders, device, tr)
    spec = DATASETS.get(cfg.downstream.dataset)
    dataset = spec.name
    if export_dir is not None:
        export_predictions(cfg, model, device, export_dir)
    # runs/<id>/ for the main benchmark, runs/<id>/<dataset>/ for another
    run = run_dir(cfg, str(logger.run_id))
    save_outputs(model, cfg, run / spec.subfolder(), run)
    log_artifacts(logger, tr.metrics, dataset)
    seconds = dataset_key(dataset, Metric.DOWNSTREAM_SECONDS)
    logger.log_metrics({seconds: time.perf_counter() - t0}, step=tr.step)
    m = tr.metrics
    return DownstreamResult(logger.run_id, m.miou, m.fwiou, dict(m.per_class))


def save_outputs(model: SegModel, cfg: Config, out: Path, run: Path) -> None:
    """``seg_backbone.pt``, ``seg_head.pt`` (checkpoint module) and ``config.yaml`` in ``out``,
    inside the run folder ``run`` and never through a link (``cmcr.guard``)."""
    no_links(run, out).mkdir(parents=True, exist_ok=True)
    save_seg_weights(model, out, run)
    with open_nofollow(no_links(run, out / "config.yaml")) as fh:
        fh.write(config_yaml(cfg))
