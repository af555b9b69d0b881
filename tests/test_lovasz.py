"""Lovász-softmax: against a slow per-class reference, a hand-computed value, and 1 - IoU."""

from __future__ import annotations

import pytest
import torch

from cmcr.losses.lovasz import lovasz_softmax


def _slow_lovasz(probs: torch.Tensor, labels: torch.Tensor, ignore: int | None) -> torch.Tensor:
    """Berman et al.'s reference: a Python loop over classes, lovasz_grad per class."""
    if ignore is not None:
        probs, labels = probs[labels != ignore], labels[labels != ignore]
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).float()
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        inter = gts - fg_sorted.cumsum(0)
        union = gts + (1 - fg_sorted).cumsum(0)
        jac = 1.0 - inter / union
        grad = jac.clone()
        grad[1:] = jac[1:] - jac[:-1]
        losses.append(torch.dot(errors_sorted, grad))
    return torch.stack(losses).mean()


def test_known_value() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1])
    # by hand: class 0 -> 0.3 + 0.2/6 + 0.1/3 = 11/30; class 1 -> 0.3 + 0.1 = 0.4
    assert lovasz_softmax(probs, labels).item() == pytest.approx(23 / 60, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference_with_ignore(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(300, 7, generator=g), dim=1)
    labels = torch.randint(-1, 5, (300,), generator=g)  # classes 5, 6 absent; -1 ignored
    fast = lovasz_softmax(probs, labels, ignore_index=-1)
    assert fast.item() == pytest.approx(_slow_lovasz(probs, labels, -1).item(), abs=1e-6)


def test_one_hot_predictions_give_one_minus_iou() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    probs = torch.nn.functional.one_hot(pred, 3).float()
    iou = torch.tensor([1 / 3, 2 / 3, 1 / 2])  # TP / (TP + FP + FN) per class
    assert lovasz_softmax(probs, labels).item() == pytest.approx((1 - iou).mean().item(), abs=1e-6)


def test_gradient_and_all_ignored() -> None:
    logits = torch.randn(50, 4, requires_grad=True)
    labels = torch.randint(0, 4, (50,))
    lovasz_softmax(torch.softmax(logits, 1), labels).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    empty = lovasz_softmax(torch.softmax(logits, 1), torch.full((50,), -1), ignore_index=-1)
    assert empty.item() == 0.0 and empty.requires_grad
