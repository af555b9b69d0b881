"""Lovász-softmax loss (Berman et al., CVPR 2018), vectorised over classes.

A pure function: the fine-tuning objective is cross-entropy + this term (METHOD.md,
Downstream evaluation). The per-class Lovász extension of the Jaccard loss is computed for all
classes at once by sorting the (N, C) error matrix column-wise, instead of the reference
implementation's Python loop over classes.
"""

from __future__ import annotations

import torch


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension w.r.t. sorted errors; gt_sorted (N, C) in {0, 1}."""
    gts = gt_sorted.sum(dim=0, keepdim=True)  # (1, C)
    intersection = gts - gt_sorted.cumsum(dim=0)  # (N, C)
    union = gts + (1.0 - gt_sorted).cumsum(dim=0)  # (N, C), >= 1 from the first row on
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def lovasz_softmax(
    probs: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean over the classes present in ``labels`` of the Lovász hinge on softmax errors.

    probs: (N, C) class probabilities (softmax output); labels: (N,) int in 0..C-1, or
    ``ignore_index`` for points left out. Returns a scalar; 0 (with a graph) if nothing is left.
    """
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[keep], labels[keep]
    if labels.numel() == 0:
        return probs.sum() * 0.0
    num_classes = probs.shape[1]
    fg = torch.nn.functional.one_hot(labels.long(), num_classes).to(probs.dtype)  # (N, C)
    errors = (fg - probs).abs()  # (N, C)
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)  # per column
    fg_sorted = torch.gather(fg, 0, order)  # (N, C)
    # gradient flows through errors_sorted only; the Lovász weights are piecewise constant
    per_class = (errors_sorted * lovasz_grad(fg_sorted)).sum(dim=0)  # (C,)
    present = fg.sum(dim=0) > 0  # the 'present' class averaging of the reference code
    return per_class[present].mean()
