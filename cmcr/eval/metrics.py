"""Segmentation metrics on the 16 lidarseg challenge classes: confusion, IoU, mIoU, fwIoU.

The arithmetic matches the nuScenes-devkit's ``nuscenes.eval.lidarseg.utils.ConfusionMatrix``
exactly, so that our validation numbers and the devkit's scores of an exported submission agree:
a (17, 17) confusion over labels 0..16 (rows = ground truth, columns = prediction) whose row and
column 0 ("ignore") are zeroed; IoU = TP / (GT + PRED - TP) divided in float32 as the devkit does;
a class absent from both ground truth and prediction gets 0/0 = NaN and ``nanmean`` leaves it out
of the mean (index 0 is always NaN, hence always left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cmcr.data.classes import CHALLENGE_CLASSES

NUM_LABELS = len(CHALLENGE_CLASSES)  # 17: index 0 "ignore" + 16 challenge classes
IGNORE_INDEX = 0


def confusion_matrix(
    gt: torch.Tensor | np.ndarray,
    pred: torch.Tensor | np.ndarray,
    num_labels: int = NUM_LABELS,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """(num_labels, num_labels) int64 counts, rows = ground truth, columns = prediction."""
    gt_t = torch.as_tensor(gt).reshape(-1).long()  # (N,)
    pred_t = torch.as_tensor(pred).reshape(-1).long().to(gt_t.device)  # (N,)
    if gt_t.shape != pred_t.shape:
        raise ValueError(f"confusion_matrix: {gt_t.numel()} labels vs {pred_t.numel()} predictions")
    for name, t in (("ground truth", gt_t), ("prediction", pred_t)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_labels):
            raise ValueError(f"confusion_matrix: {name} outside 0..{num_labels - 1}")
    # one bincount over the flattened (gt, pred) pair index: no Python loop over points
    counts = torch.bincount(gt_t * num_labels + pred_t, minlength=num_labels**2)
    cm = counts.reshape(num_labels, num_labels).cpu().numpy().astype(np.int64)
    if ignore_index is not None:
        cm[ignore_index, :] = 0
        cm[:, ignore_index] = 0
    return cm


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """(num_labels,) IoU per label index; NaN where a class is in neither GT nor prediction."""
    intersection = np.diagonal(cm)
    union = cm.sum(axis=1) + cm.sum(axis=0) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection / union.astype(np.float32)  # float32 union as in the devkit


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes that occur (NaN excluded, as the devkit's nanmean does)."""
    iou = per_class_iou(cm)
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou))


def fw_iou(cm: np.ndarray) -> float:
    """Frequency-weighted IoU: IoU weighted by each class's ground-truth point count."""
    total = cm.sum()
    if total == 0:
        return float("nan")
    return float(np.nansum(cm.sum(axis=1) * per_class_iou(cm)) / total)


@dataclass
class SegMetrics:
    """mIoU, fwIoU and per-class IoU (the 16 challenge classes, by name) of one evaluation."""

    miou: float
    fwiou: float
    per_class: dict[str, float]
    confusion: np.ndarray = field(repr=False)


def summarize(cm: np.ndarray) -> SegMetrics:
    """The metrics of a (17, 17) confusion matrix."""
    iou = per_class_iou(cm)
    per_class = {name: float(iou[i]) for i, name in enumerate(CHALLENGE_CLASSES) if i != 0}
    return SegMetrics(miou=mean_iou(cm), fwiou=fw_iou(cm), per_class=per_class, confusion=cm)


class ConfusionAccumulator:
    """Sums confusion matrices over batches (labels 0..16, 0 ignored)."""

    def __init__(self, num_labels: int = NUM_LABELS) -> None:
        self.num_labels = num_labels
        self.cm = np.zeros((num_labels, num_labels), dtype=np.int64)

    def update(self, gt: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray) -> None:
        """Add one batch of per-point labels and predictions."""
        self.cm += confusion_matrix(gt, pred, self.num_labels)

    def compute(self) -> SegMetrics:
        """The metrics of everything seen so far."""
        return summarize(self.cm)
