"""The CMCR loss terms as pure functions (METHOD.md, Losses) and the one place weights apply."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmcr.configs.schema import LossWeights
from cmcr.errors import CMCRError
from cmcr.losses.diagonal import diagonal_ce
from cmcr.losses.groups import group_mean, pad_by_group, ungrouped
from cmcr.losses.probs import code_probs

__all__ = [
    "cmcm",
    "code_probs",
    "commit",
    "group_mean",
    "intensity",
    "mim",
    "nce",
    "occ",
    "orth",
    "weighted_total",
]


def _groups(n: int, group: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor:
    """``group``, or every one of ``n`` elements in group 0 (the whole-batch computation)."""
    return ungrouped(n, ref.device) if group is None else group


# nce and cmcm are batched over loss groups: one (G, n_max, n_max) logits buffer, no padding when
# the groups are equal and already in order (the matches come out of sample_matches so), see
# cmcr/losses/diagonal.py; measured against a loop over groups by `python -m cmcr.bench losses`.


def nce(
    k: torch.Tensor,
    q: torch.Tensor,
    temperature: float,
    group: torch.Tensor | None = None,
    n_groups: int = 1,
) -> torch.Tensor:
    """PPKT InfoNCE: point features k (n, D) vs their pixels q (n, D), target the diagonal.

    Per loss group (``group`` (n,), None = one group): each group's matches are contrasted
    only with each other, batched as padded (G, n_max, n_max) logits; mean over groups.
    """
    grp = _groups(len(k), group, k)
    # the temperature on the (n, D) side, not on the (G, n, n) logits
    kg, valid = pad_by_group(k / temperature, grp, n_groups)  # (G, n_max, D)
    qg, _ = pad_by_group(q, grp, n_groups)
    return diagonal_ce((kg,), (qg,), valid)


def mim(
    recon: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    on: str = "all",
    group: torch.Tensor | None = None,
    n_groups: int = 1,
) -> torch.Tensor:
    """MSE of the reconstruction (I, 3, H, W) against the unmasked image; ``on``: all | masked.

    Per loss group of images (``group`` (I,)), mean over groups; ``masked``: over masked
    pixels and channels, a group with nothing masked adds 0.
    """
    sq = (recon - target).square()  # (I, 3, H, W)
    if on == "all":
        num = sq.flatten(1).sum(1)  # (I,)
        den = torch.full_like(num, float(sq[0].numel()))
    else:
        m = mask.to(sq.dtype)
        num = (sq.sum(1) * m).flatten(1).sum(1)
        den = m.flatten(1).sum(1) * recon.shape[1]
    return group_mean(num, den, _groups(len(recon), group, recon), n_groups)


def occ(
    logits: torch.Tensor,
    target: torch.Tensor,
    group: torch.Tensor | None = None,
    n_groups: int = 1,
) -> torch.Tensor:
    """BCE-with-logits of occupancy logits (n,) against 0/1 targets (n,), mean per loss group.

    The rows are (query, neighbour) pairs or queries (``loss.occ_reduce``); the caller decides.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return group_mean(bce, torch.ones_like(bce), _groups(len(bce), group, bce), n_groups)


def intensity(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    group: torch.Tensor | None = None,
    n_groups: int = 1,
) -> torch.Tensor:
    """L1 on intensity over the rows that carry a target (``valid``, (n,) bool), per group."""
    v = valid.to(pred.dtype)
    return group_mean((pred - target).abs() * v, v, _groups(len(pred), group, pred), n_groups)


def orth(
    shared: torch.Tensor,
    specific: torch.Tensor,
    group: torch.Tensor | None = None,
    n_groups: int = 1,
) -> torch.Tensor:
    """‖F_sharedᵀ · normalise(F_specific)‖_F / D² over rows (n, D), per loss group, averaged.

    The rows are voxels or points (``loss.orth_rows``); padded rows are zero, so they add
    nothing to a group's (D, D) product.
    """
    d = shared.shape[1]
    both = torch.cat([shared, F.normalize(specific, dim=1)], 1)
    x, _ = pad_by_group(both, _groups(len(shared), group, shared), n_groups)
    s, p = x.split(d, dim=2)  # (G, n_max, D) each
    return (torch.linalg.matrix_norm(s.transpose(1, 2) @ p) / d**2).sum() / n_groups


def _mse_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().mean(1)  # (n,)


def commit(
    f_p: torch.Tensor,
    f_v: torch.Tensor,
    e_p: torch.Tensor,
    e_v: torch.Tensor,
    beta: float,
    group: torch.Tensor | None = None,
    n_groups: int = 1,
) -> torch.Tensor:
    """Commitment: 2β·MSE(f_p, sg e_p) + β·MSE(f_p, sg e_v), plus the same with p and v swapped.

    Per loss group of matches (``group`` (n,)), mean over groups.
    """
    e_p, e_v = e_p.detach(), e_v.detach()
    points = 2 * beta * _mse_rows(f_p, e_p) + beta * _mse_rows(f_p, e_v)
    pixels = 2 * beta * _mse_rows(f_v, e_v) + beta * _mse_rows(f_v, e_p)
    rows = points + pixels  # (n,)
    return group_mean(rows, torch.ones_like(rows), _groups(len(rows), group, rows), n_groups)


def cmcm(
    f_p: torch.Tensor,
    f_v: torch.Tensor,
    codes: torch.Tensor,
    group: torch.Tensor | None = None,
    n_groups: int = 1,
) -> torch.Tensor:
    """Cross-modal code matching: CE of rows of S = P·log Vᵀ + V·log Pᵀ, target the diagonal.

    Per loss group of matches, batched as padded (G, n_max, n_max) products; mean over groups.
    """
    grp = _groups(len(f_p), group, f_p)
    # lay out the (n, D) features per group, not the (n, M) probabilities: padded rows are 0,
    # weigh 0 and are masked as columns
    x_p, valid = pad_by_group(f_p, grp, n_groups)  # (G, n_max, D)
    x_v, _ = pad_by_group(f_v, grp, n_groups)
    g, n_max = valid.shape
    p, log_p = (t.view(g, n_max, -1) for t in code_probs(x_p.reshape(g * n_max, -1), codes))
    v, log_v = (t.view(g, n_max, -1) for t in code_probs(x_v.reshape(g * n_max, -1), codes))
    # S_ij = Σ_m P_i(m) log V_j(m) + V_i(m) log P_j(m), per group: (G, n_max, n_max)
    return diagonal_ce((p, v), (log_v, log_p), valid)


def weighted_total(losses: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Σ weight·term over the active terms: the single place loss weights apply."""
    if not losses:
        raise CMCRError("weighted_total: no loss terms (method.name=random does not pre-train)")
    total = None
    for name, value in losses.items():
        if hasattr(weights, name) and name != "extra":
            weight = getattr(weights, name)
        elif name in weights.extra:
            weight = weights.extra[name]
        else:
            raise CMCRError(f"loss.weights.{name}: no weight for loss term '{name}'")
        term = weight * value
        total = term if total is None else total + term
    return total
