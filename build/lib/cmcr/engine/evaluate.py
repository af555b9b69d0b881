"""Scoring a segmentation model: metrics over a split, lidarseg export, per-class tables,
the confusion figure, and ``run_evaluate`` for saved weights (``cmcr evaluate``)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmcr.configs import Config
from cmcr.datasets import spec_of
from cmcr.engine.downstream_protocol import seg_loader, seg_splits
from cmcr.engine.seg_weights import build_seg_model, load_seg_head
from cmcr.errors import CMCRError
from cmcr.eval.export import prepare_export, zip_export
from cmcr.eval.metrics import NUSCENES_SPACE, ConfusionAccumulator, LabelSpace, SegMetrics
from cmcr.names import Metric, dataset_key
from cmcr.progress import pct_value

log = logging.getLogger("cmcr")
Pairs = Iterable[tuple[torch.Tensor, dict[str, Any]]]  # (voxel logits (V, 16), batch)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def point_predictions(voxel_logits: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(N,) labels 1..16 for every point from (V, 16) voxel logits via the point→voxel index."""
    return voxel_logits.argmax(dim=1)[inverse] + 1


def evaluate_batches(
    batches: Pairs, writer: Any = None, space: LabelSpace = NUSCENES_SPACE
) -> SegMetrics:
    """Metrics over (voxel logits, batch) pairs on every point; optionally export each scan
    (``writer``: a LidarsegWriter or KittiWriter)."""
    acc = ConfusionAccumulator(space)
    for logits, batch in batches:
        pred = point_predictions(logits, batch["inverse"])  # (N,)
        acc.update(batch["labels"], pred)
        if writer is not None:
            writer.write_batch(batch["sample_tokens"], pred, batch["num_points"])
    return acc.compute()


@torch.no_grad()
def live_logits(model: Any, loader: Any, device: torch.device) -> Iterator[tuple[Any, Any]]:
    """(voxel logits, batch) of ``model`` in eval mode over ``loader``."""
    model.eval()
    for batch in loader:
        batch = to_device(batch, device)
        yield model(batch), batch


def make_writer(cfg: Config, export_dir: str | Path, split: str) -> Any:
    """The submission writer of cfg.downstream.dataset (its registered layout: lidarseg,
    SemanticKITTI's sequences/NN/predictions, ...)."""
    return spec_of(cfg).writer(cfg, export_dir, split)


def uncapped(cfg: Config) -> Config:
    """A copy of ``cfg`` with data.max_samples=0: an export holds every scan of its split (the
    benchmarks' evaluators expect all of them; the cap is for fast runs)."""
    out = copy.deepcopy(cfg)
    out.data.max_samples = 0
    return out


def export_predictions(
    cfg: Config, model: Any, device: torch.device, export_dir: str | Path
) -> SegMetrics:
    """Write the submission folder of the validation split (the dataset's layout), every scan
    of it whatever data.max_samples (``uncapped``); the metrics over those scans."""
    full = uncapped(cfg)
    split = seg_splits(full)[1]
    loader = seg_loader(full, split, train=False)
    writer = make_writer(full, export_dir, split)
    metrics = evaluate_batches(live_logits(model, loader, device), writer, spec_of(cfg).space)
    writer.finish()
    return metrics


def metric_dict(m: SegMetrics, dataset: str = "nuscenes") -> dict[str, float]:
    """The contract metric names: val/miou, val/fwiou, val/iou_<class> (nuScenes), and
    val/<dataset>/miou, ... for another dataset (``names.dataset_key``); val/miou_pct, the same
    mIoU in % to 2 decimals, for MLflow's runs table."""
    out = {Metric.VAL_MIOU: m.miou, Metric.VAL_FWIOU: m.fwiou,
           Metric.VAL_MIOU_PCT: pct_value(m.miou)}  # fmt: skip
    out.update({f"{Metric.VAL_IOU_PREFIX}{name}": v for name, v in m.per_class.items()})
    return {dataset_key(dataset, k): v for k, v in out.items()}


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

    cm = m.confusion[1:, 1:].astype(np.float64)  # (C, C), the ignore row/column dropped
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    names = list(m.per_class)
    fig = go.Figure(go.Heatmap(z=norm, x=names, y=names, colorscale="Blues", zmin=0, zmax=1))
    fig.update_layout(
        title=f"Confusion (row-normalised), mIoU {100 * m.miou:.1f}",
        xaxis_title="prediction",
        yaxis_title="ground truth",
        yaxis_autorange="reversed",
    )
    return fig


def log_artifacts(logger: Any, m: SegMetrics, dataset: str = "nuscenes") -> None:
    """Per-class IoU table (csv + md) and the confusion-matrix figure (downstream/<dataset>/
    for a dataset other than nuScenes)."""
    csv, md = iou_table(m)
    logger.log_text(csv, dataset_key(dataset, "downstream/per_class_iou.csv"))
    logger.log_text(md, dataset_key(dataset, "downstream/per_class_iou.md"))
    logger.log_figure(confusion_figure(m), dataset_key(dataset, "downstream/confusion.html"))


def run_evaluate(
    cfg: Config,
    *,
    pretrained: str | None,
    head: str | Path,
    split: str | None = None,
    export_dir: str | Path | None = None,
    overwrite: bool = False,
    zipped: bool = False,
) -> SegMetrics | None:
    """Score encoder weights (run id, file, none) + a linear head on ``split`` (default: the
    dataset's validation split); optionally export (every scan: data.max_samples is lifted,
    ``uncapped``; the folder checked first, ``prepare_export``) and zip it. A split without
    labels (a benchmark's test split) runs inference only: it needs ``export_dir``, and the
    result is None."""
    spec = spec_of(cfg)
    split = split or spec.splits(cfg)[1]
    if export_dir is not None:
        cfg = uncapped(cfg)
    scored = spec.labelled(cfg, split)
    if not scored and export_dir is None:
        raise CMCRError(
            f"--split {split}: its scans have no labels, so there is nothing to score; add "
            "--export DIR to write the predictions for the benchmark's server"
        )
    if export_dir is not None:
        prepare_export(export_dir, overwrite, zipped)
    model, _ = build_seg_model(cfg, pretrained)
    load_seg_head(model, head)  # with or without the ignore class's row
    loader = seg_loader(cfg, split, train=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    writer = make_writer(cfg, export_dir, split) if export_dir is not None else None
    metrics = evaluate_batches(live_logits(model.to(device), loader, device), writer, spec.space)
    if writer is not None:
        writer.finish()
        if zipped:
            zip_export(export_dir)
    return metrics if scored else None
