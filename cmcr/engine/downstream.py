"""Downstream evaluation on nuScenes-lidarseg: linear probing and fine-tuning (METHOD.md).

Which features the probe sees: the pre-trained **shared** 3D head's output (``feat_dim``,
L2-normalised), i.e. exactly the features that were distilled from the images, with a linear
head to the 16 challenge classes. Fine-tuning uses the same network (backbone → shared head →
linear classifier) with everything trainable, so probe, fine-tune and the random baseline differ
only in what is trained and from which weights.

The loop is plain PyTorch on one device (CUDA if present): downstream runs are small and the
sweep runs them in-process, so the Accelerate machinery of pre-training is not needed here.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmcr.compat import patch_spconv_cpu
from cmcr.configs import Config, ConfigError, apply_overrides
from cmcr.data import check_downstream_data, set_loader_epoch
from cmcr.data.classes import CHALLENGE_CLASSES, NUM_CHALLENGE
from cmcr.errors import CheckpointError, TrackingError
from cmcr.eval.export import LidarsegWriter
from cmcr.eval.metrics import ConfusionAccumulator, SegMetrics
from cmcr.losses.lovasz import lovasz_softmax

Report = Callable[[int, float], None]
log = logging.getLogger("cmcr")
_PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
IGNORE = -1  # training target of label 0 ("ignore") after the shift to 0..15


@dataclass
class DownstreamResult:
    """Outcome of one probe / fine-tune run: final validation metrics."""

    run_id: str | None
    miou: float
    fwiou: float
    per_class: dict[str, float]


# ---- the network ----------------------------------------------------------------------------
class PointEncoder(nn.Module):
    """The 3D part of CMCRModel with the same module names, so ``backbone.pt`` loads strictly.

    The specific head is kept only so that the state dict matches; the probe and fine-tuning
    read the shared head (see the module docstring).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        from cmcr.models import build_backbone

        self.backbone = build_backbone(cfg.model)
        self.point_head_shared = nn.Linear(self.backbone.out_dim, cfg.model.feat_dim)
        self.point_head_specific = nn.Linear(self.backbone.out_dim, cfg.model.feat_dim)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(V, feat_dim) L2-normalised shared features of the batch's voxels."""
        voxel = self.backbone(
            batch["coords"], batch["feats"], batch["spatial_shape"], batch["batch_size"]
        )  # (V, C)
        return nn.functional.normalize(self.point_head_shared(voxel), dim=1)


def linear_head(feat_dim: int) -> nn.Sequential:
    """The linear classifier: per-dimension standardisation (BatchNorm without affine) + Linear.

    As in MAE's linear probe: BatchNorm is affine at evaluation, so the head stays linear in
    the features, but the probe no longer depends on the features' scale. This matters: the
    L2-normalised output of an untrained shared head is nearly one constant direction (its bias
    dominates; mean pairwise cosine 0.999 on the smoke world), and a plain Linear layer at
    probe_lr barely moves off the majority class for the random baseline.
    """
    return nn.Sequential(nn.BatchNorm1d(feat_dim, affine=False), nn.Linear(feat_dim, NUM_CHALLENGE))


class SegModel(nn.Module):
    """Backbone → pre-trained shared 3D head (L2-normalised, feat_dim) → linear classifier."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.encoder = PointEncoder(cfg)
        self.classifier = linear_head(cfg.model.feat_dim)

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """(V, feat_dim) shared-head features of the batch's voxels."""
        return self.encoder(batch)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(V, 16) voxel logits for classes 1..16."""
        return self.classifier(self.features(batch))


# ---- pre-trained weights --------------------------------------------------------------------
def resolve_pretrained(cfg: Config, pretrained: str | None) -> tuple[Path | None, str | None]:
    """``none``/None → (None, None); a file → (path, None); else an MLflow run id → its backbone.pt."""
    if pretrained is None or str(pretrained).lower() in ("", "none"):
        return None, None
    text = str(pretrained)
    path = Path(text)
    if path.suffix == ".pt" or path.exists():
        if not path.is_file():
            raise CheckpointError(f"--pretrained '{text}': file does not exist")
        return path, None
    local = Path(cfg.tracking.output_dir) / text / "backbone.pt"
    if local.is_file():
        return local, text
    return _download_backbone(cfg, text), text


def _download_backbone(cfg: Config, run_id: str) -> Path:
    """The ``backbone.pt`` artifact of MLflow run ``run_id`` (TrackingError if no such run)."""
    from mlflow.exceptions import MlflowException

    from cmcr.engine.tracking import make_client, redact_url, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg)
    client = make_client(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"--pretrained '{run_id}': neither a file nor a run id in {redact_url(uri)}"
        ) from None
    dst = Path(cfg.tracking.output_dir) / run_id
    # MLflow draws progress bars on stderr; the CLI's error contract is one line there
    quiet = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "false"
    try:
        return Path(client.download_artifacts(run_id, "backbone.pt", str(dst)))
    except (MlflowException, OSError):
        raise CheckpointError(
            f"--pretrained '{run_id}': the run has no backbone.pt "
            f"(not in {dst} nor among its artifacts)"
        ) from None
    finally:
        if quiet is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = quiet


def load_state_file(path: Path, what: str = "backbone") -> dict[str, torch.Tensor]:
    """A state dict saved with torch.save, loaded with weights_only=True; CheckpointError if bad."""
    if not path.is_file():
        raise CheckpointError(f"{what} file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{what} file '{path}' is corrupt or not a torch state dict ({first})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} file '{path}': expected a state dict of tensors")
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Strict load; a key or shape mismatch is a CheckpointError naming the file."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(
            f"{what} file '{path}' does not fit this model config ({detail[:300]})"
        ) from None


def build_seg_model(cfg: Config, pretrained: str | None) -> tuple[SegModel, str | None]:
    """A SegModel with pre-trained encoder weights loaded (or random, explicitly); + source run."""
    torch.manual_seed(cfg.train.seed)
    model = SegModel(cfg)
    path, run_id = resolve_pretrained(cfg, pretrained)
    if path is not None:
        load_into(model.encoder, load_state_file(path), path, "backbone")
    return model, run_id


# ---- data -----------------------------------------------------------------------------------
def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _point_targets(batch: dict[str, Any]) -> torch.Tensor:
    """(N,) training targets 0..15, IGNORE where the label is 0."""
    return batch["labels"].long() - 1


# ---- losses, evaluation ---------------------------------------------------------------------
def seg_loss(point_logits: torch.Tensor, target: torch.Tensor, lovasz: bool) -> torch.Tensor:
    """Cross-entropy (+ Lovász-softmax) over points; target IGNORE is left out."""
    ce = nn.functional.cross_entropy(point_logits, target, ignore_index=IGNORE)
    if not lovasz:
        return ce
    return ce + lovasz_softmax(point_logits.softmax(dim=1), target, ignore_index=IGNORE)


def point_predictions(voxel_logits: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(N,) labels 1..16 for every point from (V, 16) voxel logits via the point→voxel index."""
    return voxel_logits.argmax(dim=1)[inverse] + 1


def evaluate_batches(
    batches: Iterator[tuple[torch.Tensor, dict[str, Any]]], writer: LidarsegWriter | None = None
) -> SegMetrics:
    """Metrics over (voxel logits, batch) pairs on every point; optionally export each scan."""
    acc = ConfusionAccumulator()
    for logits, batch in batches:
        pred = point_predictions(logits, batch["inverse"])  # (N,)
        acc.update(batch["labels"], pred)
        if writer is not None:
            writer.write_batch(batch["sample_tokens"], pred, batch["num_points"])
    return acc.compute()


@torch.no_grad()
def _live_logits(
    model: SegModel, loader: Any, device: torch.device
) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
    model.eval()
    for batch in loader:
        batch = _to_device(batch, device)
        yield model(batch), batch


# ---- linear probing -------------------------------------------------------------------------
@dataclass
class _Cache:
    """Frozen features computed once. Probing uses no augmentation (METHOD.md gives none), so
    a scan's features never change across epochs: one backbone pass per scan instead of one per
    scan per epoch, the big CPU saving of probing."""

    train: list[tuple[torch.Tensor, torch.Tensor]]  # per scan: (M, D) feats, (M,) targets 0..15
    val: list[tuple[torch.Tensor, dict[str, Any]]]  # per batch: (V, D) voxel feats, the batch


@torch.no_grad()
def _cache_features(model: SegModel, train_loader: Any, val_loader: Any, device: torch.device):
    model.eval()
    train: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch in train_loader:
        batch = _to_device(batch, device)
        point_feats = model.features(batch)[batch["inverse"]]  # (N, D)
        target = _point_targets(batch)  # (N,)
        sizes = [int(n) for n in batch["num_points"].tolist()]
        for f, t in zip(point_feats.split(sizes), target.split(sizes), strict=True):
            keep = t != IGNORE  # ignored points add nothing to the loss: do not store them
            train.append((f[keep], t[keep]))
    val = []
    for batch in val_loader:
        batch = _to_device(batch, device)
        val.append((model.features(batch), batch))
    return _Cache(train, val)


def _freeze(model: SegModel) -> None:
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    model.encoder.eval()  # BatchNorm keeps its pre-trained statistics


_LOGGED_KEYS = ("train/seg_loss", "val/miou")


class _Trainer:
    """Shared epoch loop: optimiser, cosine schedule, evaluation, logging and report hooks."""

    def __init__(self, cfg: Config, model: SegModel, logger: Any, report: Report | None):
        self.cfg, self.model, self.logger, self.report = cfg, model, logger, report
        self.step = 0
        self.metrics: SegMetrics | None = None
        self.history: list[tuple[int, float]] = []
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

    def end_epoch(self, epoch: int, losses: list[float], last: bool, evaluate: Callable) -> None:
        """Log the epoch's loss; evaluate every eval_every epochs and at the end."""
        if losses:
            self._log({"train/seg_loss": float(np.mean(losses))}, epoch, "train/seg_loss")
        if not (last or epoch % self.cfg.downstream.eval_every == 0):
            return
        self.metrics = evaluate()
        self.history.append((epoch, self.metrics.miou))
        self._log(metric_dict(self.metrics), epoch, "val/miou")
        if self.report is not None:
            self.report(epoch, self.metrics.miou)  # may raise optuna.TrialPruned: let it through


def metric_dict(m: SegMetrics) -> dict[str, float]:
    """The contract metric names: val/miou, val/fwiou, val/iou_<class>."""
    out = {"val/miou": m.miou, "val/fwiou": m.fwiou}
    out.update({f"val/iou_{name}": v for name, v in m.per_class.items()})
    return out


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

    for epoch in range(1, ds.probe_epochs + 1):
        order = np.random.default_rng([cfg.train.seed, epoch - 1]).permutation(len(cache.train))
        losses = []
        for i in range(0, len(order), ds.batch_size):
            chunk = [cache.train[j] for j in order[i : i + ds.batch_size]]
            x = torch.cat([c[0] for c in chunk])  # (M, D)
            y = torch.cat([c[1] for c in chunk])  # (M,)
            if y.numel() == 0:
                continue
            loss = seg_loss(model.classifier(x), y, lovasz=False)
            tr.update(loss)
            losses.append(loss.item())
            if tr.done():
                break
        tr.end_epoch(epoch, losses, epoch == ds.probe_epochs or tr.done(), evaluate)
        if tr.done():
            break
    return cache


# ---- fine-tuning ----------------------------------------------------------------------------
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
    for epoch in range(1, ds.finetune_epochs + 1):
        set_loader_epoch(train_loader, epoch - 1)
        model.train()
        losses = []
        for batch in train_loader:
            batch = _to_device(batch, device)
            target = _point_targets(batch)
            if not bool((target != IGNORE).any()):
                continue  # nothing labelled: cross-entropy would be NaN
            logits = model(batch)[batch["inverse"]]  # (N, 16)
            loss = seg_loss(logits, target, lovasz=True)
            tr.update(loss)
            losses.append(loss.item())
            if tr.done():
                break
        last = epoch == ds.finetune_epochs or tr.done()
        tr.end_epoch(
            epoch, losses, last, lambda: evaluate_batches(_live_logits(model, val_loader, device))
        )
        if tr.done():
            break


# ---- the entry point ------------------------------------------------------------------------
def build_loaders(cfg: Config, mode: str) -> tuple[Any, Any]:
    """(train, val) loaders; the train one keeps cfg.downstream.label_fraction of the scans.

    ``train=True`` is what selects the label-fraction subset (every k-th scan, in the dataset);
    the probe caches its features from one pass, so it reads the train scans with rotation and
    flips switched off (the max_points subsample, drawn for epoch 0, stays as in fine-tuning).
    """
    from cmcr.data import build_seg_loader

    train_cfg = cfg
    if mode == "probe":
        train_cfg = apply_overrides(
            copy.deepcopy(cfg), {"data.rotate": False, "data.flip_prob": 0.0}
        )
    train = build_seg_loader(train_cfg, cfg.data.train_split, train=True)
    val = build_seg_loader(cfg, cfg.data.val_split, train=False)
    return train, val


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
    _check_epochs(cfg)
    patch_spconv_cpu()  # fine-tuning runs spconv backward; a no-op with CUDA
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, source_run = build_seg_model(cfg, pretrained)
    loaders = build_loaders(cfg, mode)
    extra = {"cmcr.pretrained": str(pretrained or "none")}
    if source_run:
        extra["cmcr.pretrained_run"] = source_run
        parent_run_id = parent_run_id or source_run  # link the evaluation to its pre-training
    variant = _source_variant(cfg, pretrained, source_run)
    if variant and logger is None:  # a trial's own variant tag is already right
        extra["cmcr.variant"] = variant
    if logger is not None:
        logger.set_tags({**extra, **(tags or {})})
        return _run(cfg, model.to(device), loaders, device, logger, report, export_dir)
    check_downstream_data(cfg)  # every file the run reads, before the run exists (issue 14)
    with RunLogger.start(
        cfg,
        kind=mode,
        run_id=run_id,
        parent_run_id=parent_run_id,
        tags={**extra, **(tags or {})},
    ) as own:
        return _run(cfg, model.to(device), loaders, device, own, report, export_dir)


def _source_variant(cfg: Config, pretrained: str | None, source_run: str | None) -> str | None:
    """What the evaluated weights are: random for none, else the pre-training run's variant.

    The probe's own config says nothing about how its weights were trained, so without this the
    variant tag of ``--pretrained none`` would read "cmcr".
    """
    if resolve_pretrained(cfg, pretrained) == (None, None):
        return "random"
    if source_run is None:
        return None
    from cmcr.engine.tracking import make_client, resolve_tracking_uri

    try:
        tags = make_client(resolve_tracking_uri(cfg)).get_run(source_run).data.tags
    except Exception:  # a local runs/<id>/backbone.pt whose run is in another store
        return None
    return tags.get("cmcr.variant")


def _check_epochs(cfg: Config) -> None:
    """At least one epoch, so that at least one evaluation runs (checked before any run starts)."""
    key = f"downstream.{cfg.downstream.mode}_epochs"
    epochs = getattr(cfg.downstream, f"{cfg.downstream.mode}_epochs")
    if epochs < 1:
        raise ConfigError(f"{key}: expected an integer >= 1, got {epochs}")
    if cfg.downstream.eval_every < 1:
        raise ConfigError(
            f"downstream.eval_every: expected an integer >= 1, got {cfg.downstream.eval_every}"
        )


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
        batches = _live_logits(model, loaders[1], device)
    if export_dir is not None:
        if 0 < cfg.data.max_samples <= len(loaders[1].dataset):
            log.warning(
                "data.max_samples=%d may cut the %s scans exported; the devkit's evaluator "
                "expects every scan of the split (set data.max_samples=0)",
                cfg.data.max_samples,
                cfg.data.val_split,
            )
        with torch.no_grad():
            writer = LidarsegWriter(export_dir, cfg.data.val_split)
            evaluate_batches(batches, writer)
            writer.finish()
    out = Path(cfg.tracking.output_dir) / str(logger.run_id)
    save_outputs(model, cfg, out)
    log_artifacts(logger, tr.metrics)
    logger.log_metrics({"downstream/seconds": time.perf_counter() - t0}, step=tr.step)
    m = tr.metrics
    return DownstreamResult(logger.run_id, m.miou, m.fwiou, dict(m.per_class))


def save_outputs(model: SegModel, cfg: Config, out: Path) -> None:
    """``seg_backbone.pt`` (same format as backbone.pt), ``seg_head.pt`` and ``config.yaml``."""
    from cmcr.engine.tracking import config_yaml

    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.encoder.state_dict().items()}, out / "seg_backbone.pt")
    torch.save({k: v.cpu() for k, v in model.classifier.state_dict().items()}, out / "seg_head.pt")
    (out / "config.yaml").write_text(config_yaml(cfg))


def iou_table(m: SegMetrics) -> tuple[str, str]:
    """The per-class IoU table as (csv, markdown), classes in challenge order, then the means."""
    rows = [*m.per_class.items(), ("mIoU", m.miou), ("fwIoU", m.fwiou)]
    csv = "class,iou\n" + "".join(f"{k},{v:.6f}\n" for k, v in rows)
    md = "| class | IoU (%) |\n| --- | ---: |\n" + "".join(
        f"| {k} | {'n/a' if math.isnan(v) else f'{100 * v:.2f}'} |\n" for k, v in rows
    )
    return csv, md


def confusion_figure(m: SegMetrics) -> Any:
    """A plotly heatmap of the row-normalised confusion matrix (ground truth × prediction)."""
    import plotly.graph_objects as go

    cm = m.confusion[1:, 1:].astype(np.float64)  # (16, 16), the ignore row/column dropped
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    names = list(CHALLENGE_CLASSES[1:])
    fig = go.Figure(go.Heatmap(z=norm, x=names, y=names, colorscale="Blues", zmin=0, zmax=1))
    fig.update_layout(
        title=f"Confusion (row-normalised), mIoU {100 * m.miou:.1f}",
        xaxis_title="prediction",
        yaxis_title="ground truth",
        yaxis_autorange="reversed",
    )
    return fig


def log_artifacts(logger: Any, m: SegMetrics) -> None:
    """Per-class IoU table (csv + md) and the confusion-matrix figure."""
    csv, md = iou_table(m)
    logger.log_text(csv, "downstream/per_class_iou.csv")
    logger.log_text(md, "downstream/per_class_iou.md")
    logger.log_figure(confusion_figure(m), "downstream/confusion.html")


def as_dict(result: DownstreamResult) -> dict[str, Any]:
    """A JSON-friendly form of a result."""
    return dataclasses.asdict(result)


# ---- evaluation of a saved segmentation model -----------------------------------------------
def run_dir_weights(cfg: Config, run_id: str) -> tuple[Path, Path]:
    """``seg_backbone.pt`` and ``seg_head.pt`` of a probe / fine-tune run (CheckpointError if absent)."""
    out = Path(cfg.tracking.output_dir) / run_id
    backbone, head = out / "seg_backbone.pt", out / "seg_head.pt"
    if not (backbone.is_file() and head.is_file()):
        raise CheckpointError(
            f"--run '{run_id}': no seg_backbone.pt / seg_head.pt in {out} "
            "(expected the output folder of a cmcr probe or finetune run)"
        )
    return backbone, head


def run_evaluate(
    cfg: Config,
    *,
    pretrained: str | None,
    head: str | Path,
    split: str | None = None,
    export_dir: str | Path | None = None,
) -> SegMetrics:
    """Score encoder weights (run id, file, none) + a linear head on ``split``; optionally export."""
    model, _ = build_seg_model(cfg, pretrained)
    head_path = Path(head)
    load_into(model.classifier, load_state_file(head_path, "head"), head_path, "head")
    from cmcr.data import build_seg_loader

    split = split or cfg.data.val_split
    loader = build_seg_loader(cfg, split, train=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    writer = LidarsegWriter(export_dir, split) if export_dir is not None else None
    metrics = evaluate_batches(_live_logits(model.to(device), loader, device), writer)
    if writer is not None:
        writer.finish()
    return metrics
