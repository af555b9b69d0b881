"""Loss groups: every per-step loss is computed per group of ``loss.group_size`` scans.

The release trains 12 scans per step on 6 GPUs, so each loss is one GPU's loss over its 2 scans
and the gradients are averaged. A single process reproduces that by splitting its batch into
groups of consecutive samples (group = sample index // group_size; the last may be smaller),
computing each term per group and averaging over the groups. An empty group (no matches, no
masked pixel) adds 0 and still counts, as a GPU whose loss is constant still counts in the
gradient average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def row_blocks(n: int, row_elements: int, budget: int) -> list[slice]:
    """Slices of n rows of ``row_elements`` each, about ``budget`` elements a block (at least
    one row): how the CPU forms of the losses keep their buffers cache-sized."""
    step = max(1, budget // max(row_elements, 1))
    return [slice(r, min(r + step, n)) for r in range(0, n, step)]


@dataclass(frozen=True)
class LossGroups:
    """The loss group of every element of a pre-training batch (docs/architecture.md)."""

    count: int  # number of groups: ceil(batch_size / group_size)
    point: torch.Tensor  # (N,) group of each point
    voxel: torch.Tensor  # (V,) group of each voxel row
    image: torch.Tensor  # (I,) group of each image
    query: torch.Tensor  # (Q,) group of each occupancy query


def loss_groups(batch: dict[str, Any], group_size: int) -> LossGroups:
    """Group of each point, voxel, image and query of ``batch`` for groups of ``group_size`` scans."""
    b = int(batch["batch_size"])
    n_img = len(batch["images"])
    n_cams = n_img // b  # images are ordered b * n_cams + c
    dev = batch["images"].device
    return LossGroups(
        count=-(-b // group_size),
        point=batch["point_batch"] // group_size,
        voxel=batch["coords"][:, 0].long() // group_size,
        image=torch.arange(n_img, device=dev) // n_cams // group_size,
        query=batch["query_batch"] // group_size,
    )


def ungrouped(n: int, device: torch.device | None = None) -> torch.Tensor:
    """(n,) zeros: every element in one group (the whole-batch computation)."""
    return torch.zeros(n, dtype=torch.long, device=device)


def group_mean(
    num: torch.Tensor, den: torch.Tensor, group: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """(1 / n_groups) · Σ_g (Σ_{i∈g} num_i / Σ_{i∈g} den_i); a group with Σ den = 0 adds 0.

    ``num`` (n,) per-element sums of a loss, ``den`` (n,) the count each stands for: the mean of
    each group's mean, without a Python loop over groups.
    """
    s_num = num.new_zeros(n_groups).index_add(0, group, num)
    s_den = den.to(num.dtype).new_zeros(n_groups).index_add(0, group, den.to(num.dtype))
    # a safe denominator rather than a masked quotient: 0 / 0 would poison the gradient
    safe = torch.where(s_den > 0, s_den, torch.ones_like(s_den))
    return (s_num / safe).sum() / n_groups


def rank_in_group(sorted_group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of each element within its group (n,), and the group sizes (n_groups,).

    ``sorted_group`` (n,) must be sorted (a stable sort keeps each group's own order).
    """
    counts = torch.bincount(sorted_group, minlength=n_groups)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(sorted_group), device=sorted_group.device) - starts[sorted_group]
    return rank, counts


def _equal_layout(n_groups: int, per: int, like: torch.Tensor) -> torch.Tensor:
    """(n_groups · per,) 0…0 1…1 …: the group of each row when groups are equal and in order."""
    return torch.arange(n_groups, device=like.device).repeat_interleave(per)


def pad_by_group(
    x: torch.Tensor, group: torch.Tensor, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x`` (n, ...) laid out per group: (n_groups, n_max, ...) and valid (n_groups, n_max).

    Rows keep their order within a group (stable sort). ``n_max`` is read back from the device
    (one sync point per call). One group needs no copy; otherwise rows go to their flat padded
    slot with ``index_copy`` (5× faster than a two-index ``index_put`` on 16k×128 rows, CPU).
    """
    if n_groups == 1:
        return x[None], torch.ones(1, len(x), dtype=torch.bool, device=x.device)
    n, per = len(x), len(x) // n_groups
    if n == per * n_groups and bool((group == _equal_layout(n_groups, per, group)).all()):
        # already in order and equal (the matches of sample_matches): a view, no copy
        return x.view(n_groups, per, *x.shape[1:]), torch.ones(
            n_groups, per, dtype=torch.bool, device=x.device
        )
    order = torch.argsort(group, stable=True)
    g = group[order]
    rank, counts = rank_in_group(g, n_groups)
    n_max = int(counts.max()) if len(g) else 0
    slot = g * n_max + rank  # (n,) row of the flattened (G·n_max) layout
    out = x.new_zeros(n_groups * n_max, *x.shape[1:]).index_copy(0, slot, x[order])
    valid = torch.zeros(n_groups * n_max, dtype=torch.bool, device=x.device)
    valid[slot] = True
    return out.view(n_groups, n_max, *x.shape[1:]), valid.view(n_groups, n_max)
