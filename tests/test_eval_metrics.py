"""Segmentation metrics against a slow, obvious implementation and the devkit's own class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nuscenes.eval.lidarseg.utils import ConfusionMatrix

from cmcr.eval.metrics import ConfusionAccumulator, confusion_matrix, summarize


def _slow_metrics(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float, dict[int, float]]:
    """Per-class loops over the 16 classes; points with ground truth 0 are skipped."""
    keep = gt != 0
    gt, pred = gt[keep], pred[keep]
    ious: dict[int, float] = {}
    for c in range(1, 17):
        tp = int(np.sum((gt == c) & (pred == c)))
        fp = int(np.sum((gt != c) & (pred == c)))
        fn = int(np.sum((gt == c) & (pred != c)))
        ious[c] = float("nan") if tp + fp + fn == 0 else tp / (tp + fp + fn)
    valid = [v for v in ious.values() if not math.isnan(v)]
    miou = sum(valid) / len(valid)
    fw = sum(np.sum(gt == c) * v for c, v in ious.items() if not math.isnan(v)) / len(gt)
    return miou, float(fw), ious


def _random_labels(seed: int, n: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 12, n)  # classes 12..16 absent from the ground truth
    pred = rng.integers(1, 14, n)  # 12, 13 predicted but absent (IoU 0); 14..16 NaN
    pred[: n // 2] = np.where(gt[: n // 2] > 0, gt[: n // 2], pred[: n // 2])  # some skill
    return gt, pred


@pytest.mark.parametrize("seed", [0, 1])
def test_against_slow_implementation(seed: int) -> None:
    gt, pred = _random_labels(seed)
    m = summarize(confusion_matrix(torch.from_numpy(gt), torch.from_numpy(pred)))
    miou, fw, ious = _slow_metrics(gt, pred)
    assert m.miou == pytest.approx(miou, abs=1e-6)
    assert m.fwiou == pytest.approx(fw, abs=1e-6)
    names = list(m.per_class)
    assert len(names) == 16 and names[0] == "barrier" and names[-1] == "vegetation"
    for c, name in enumerate(names, start=1):
        if math.isnan(ious[c]):
            assert math.isnan(m.per_class[name])
        else:
            assert m.per_class[name] == pytest.approx(ious[c], abs=1e-6)
    assert m.per_class["manmade"] != m.per_class["manmade"]  # absent everywhere -> NaN
    assert m.per_class["other_flat"] == 0.0  # predicted, never true -> 0, counted in the mean


def test_matches_devkit_confusion_matrix_exactly() -> None:
    gt, pred = _random_labels(3)
    ref = ConfusionMatrix(17, 0)
    acc = ConfusionAccumulator()
    for part in np.array_split(np.arange(len(gt)), 4):  # accumulated over batches
        ref.update(gt[part].astype(np.uint8), pred[part].astype(np.uint8))
        acc.update(gt[part], pred[part])
    assert np.array_equal(acc.cm, ref.global_cm)
    m = acc.compute()
    assert m.miou == ref.get_mean_iou()
    assert m.fwiou == ref.get_freqweighted_iou()


def test_perfect_and_rejects_out_of_range() -> None:
    gt = np.array([0, 1, 1, 4, 16])
    m = summarize(confusion_matrix(gt, np.where(gt == 0, 3, gt)))
    assert m.miou == 1.0 and m.fwiou == 1.0
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([17]), np.array([1]))
