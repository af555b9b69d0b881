"""Segmentation metrics: confusion, IoU, mIoU, fwIoU, per label space (nuScenes, SemanticKITTI).

The arithmetic matches the nuScenes-devkit's ``nuscenes.eval.lidarseg.utils.ConfusionMatrix``
exactly, so that our validation numbers and the devkit's scores of an exported submission agree:
a (17, 17) confusion over labels 0..16 (rows = ground truth, columns = prediction) whose row and
column 0 ("ignore") are zeroed; IoU = TP / (GT + PRED - TP) divided in float32 as the devkit does;
a class absent from both ground truth and prediction gets 0/0 = NaN and ``nanmean`` leaves it out
of the mean (index 0 is always NaN, hence always left out).

A label space whose absent rule is "zero" (SemanticKITTI, ``cmcr.datasets.semantickitti``)
follows semantic-kitti-api's ``iouEval``: points labelled 0 are ignored, IoU = TP / (TP + FP +
FN + 1e-15) in float64, and the mean runs over all its classes (19), so a class absent from both
ground truth and prediction counts as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cmcr.data.classes import CHALLENGE_CLASSES

NUM_LABELS = len(CHALLENGE_CLASSES)  # 17: index 0 "ignore" + 16 challenge classes
IGNORE_INDEX = 0
KITTI_EPS = 1e-15  # semantic-kitti-api's union epsilon


@dataclass(frozen=True)
class LabelSpace:
    """A dataset's classes (index 0 = ignored) and its rule for classes absent from both
    ground truth and prediction: "nan" (left out of the mean, nuScenes devkit) or "zero"
    (IoU 0, in the mean: semantic-kitti-api)."""

    name: str
    classes: tuple[str, ...]
    absent: str

    @property
    def num_labels(self) -> int:
        """Label indices including ignore (17 nuScenes, 20 SemanticKITTI)."""
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        """Classes the network predicts (16, 19)."""
        return len(self.classes) - 1


# the devkit's space, the default of the functions below; each downstream dataset registers its
# own (cmcr.datasets: ``DATASETS.get(name).space``)
NUSCENES_SPACE = LabelSpace("nuscenes", CHALLENGE_CLASSES, "nan")


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
    """mIoU, fwIoU and per-class IoU (the label space's classes, by name) of one evaluation."""

    miou: float
    fwiou: float
    per_class: dict[str, float]
    confusion: np.ndarray = field(repr=False)


def kitti_iou(cm: np.ndarray) -> np.ndarray:
    """(num_labels,) IoU by semantic-kitti-api's rule: absent classes get 0 (NaN at ignore)."""
    tp = np.diagonal(cm).astype(np.float64)
    union = cm.sum(axis=1) + cm.sum(axis=0) - tp
    iou = tp / (union + KITTI_EPS)
    iou[IGNORE_INDEX] = np.nan
    return iou


def summarize(cm: np.ndarray, space: LabelSpace = NUSCENES_SPACE) -> SegMetrics:
    """The metrics of a (num_labels, num_labels) confusion matrix in ``space``."""
    if space.absent == "zero":
        iou = kitti_iou(cm)
        miou = float(np.mean(iou[1:]))
        total = cm.sum()
        fwiou = float(np.sum(cm.sum(axis=1)[1:] * iou[1:]) / total) if total else float("nan")
    else:
        iou, miou, fwiou = per_class_iou(cm), mean_iou(cm), fw_iou(cm)
    per_class = {name: float(iou[i]) for i, name in enumerate(space.classes) if i != 0}
    return SegMetrics(miou=miou, fwiou=fwiou, per_class=per_class, confusion=cm)


class ConfusionAccumulator:
    """Sums confusion matrices over batches (labels 0..C, 0 ignored) of one label space."""

    def __init__(self, space: LabelSpace = NUSCENES_SPACE) -> None:
        self.space = space
        self.num_labels = space.num_labels
        self.cm = np.zeros((self.num_labels, self.num_labels), dtype=np.int64)

    def update(self, gt: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray) -> None:
        """Add one batch of per-point labels and predictions."""
        self.cm += confusion_matrix(gt, pred, self.num_labels)

    def compute(self) -> SegMetrics:
        """The metrics of everything seen so far."""
        return summarize(self.cm, self.space)
