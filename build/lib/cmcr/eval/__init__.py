"""Segmentation metrics (mIoU, per-class IoU, fwIoU, confusion) and the lidarseg export."""

from cmcr.eval.export import ExportError, LidarsegWriter
from cmcr.eval.metrics import (
    ConfusionAccumulator,
    SegMetrics,
    confusion_matrix,
    fw_iou,
    mean_iou,
    per_class_iou,
    summarize,
)

__all__ = [
    "ConfusionAccumulator",
    "ExportError",
    "LidarsegWriter",
    "SegMetrics",
    "confusion_matrix",
    "fw_iou",
    "mean_iou",
    "per_class_iou",
    "summarize",
]
