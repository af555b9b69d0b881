"""The CMCR loss terms as pure functions (METHOD.md, Losses) and the one place weights apply."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmcr.configs.schema import LossWeights
from cmcr.errors import CMCRError
from cmcr.losses.groups import group_mean, pad_by_group, ungrouped

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


# nce and cmcm are batched over loss groups (padded (G, n, n) logits), not looped. Measured on
# CPU (1 thread, forward + backward, D 64, M 400): 2 groups × 1024 matches nce 23 ms batched vs
# 16 ms looped, cmcm 119 vs 103 ms; 6 × 2048 (the release's step) nce 359 vs 222 ms, cmcm 1495 vs
# 1074 ms (large temporaries cost page faults on CPU). Kept batched for the GPU runs the
# protocol targets (one kernel per op, no per-group sync; not measured: no GPU here); with one
# group (demo, smoke) both forms are the same computation, and the losses are 2-3 % of a demo step.
def _diagonal_ce(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over groups of the mean CE of rows of ``logits`` (G, n, n), target the diagonal.

    ``valid`` (G, n): real rows / columns. Padded columns get the dtype's lowest value added
    (not -inf: a fully padded row would give NaN gradients), padded rows are ignored.
    """
    g, n, _ = logits.shape
    if n == 0:  # no row in any group: every group adds 0
        return logits.sum() * 0.0
    target = torch.arange(n, device=logits.device).repeat(g)  # (G·n,)
    if bool(valid.all()):  # equal groups, no padding: one fused cross-entropy
        return F.cross_entropy(logits.reshape(g * n, n), target)
    if logits.element_size() < 4:  # half precision: the mask value must not overflow
        logits = logits.float()
    low = torch.finfo(logits.dtype).min
    bias = logits.new_zeros(g, 1, n).masked_fill(~valid[:, None, :], low)  # (G, 1, n)
    target = target.masked_fill(~valid.reshape(-1), -100)  # cross_entropy's ignore_index
    rows = F.cross_entropy((logits + bias).reshape(g * n, n), target, reduction="none")
    return (rows.view(g, n).sum(1) / valid.sum(1).clamp_min(1)).sum() / g


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
    d = k.shape[1]
    kq, valid = pad_by_group(torch.cat([k, q], 1), _groups(len(k), group, k), n_groups)
    kg, qg = kq.split(d, dim=2)  # (G, n_max, D) each
    return _diagonal_ce(kg @ qg.transpose(1, 2) / temperature, valid)


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


def code_probs(f: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax_m(−‖f_i − e_m‖) and its log, both (n, M) (plain, not squared, distances)."""
    logits = -torch.cdist(f, codes)  # (n, M)
    return logits.softmax(dim=1), logits.log_softmax(dim=1)


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
    m = len(codes)
    p, log_p = code_probs(f_p, codes)  # (n, M)
    v, log_v = code_probs(f_v, codes)
    x, valid = pad_by_group(
        torch.cat([p, log_p, v, log_v], 1), _groups(len(f_p), group, f_p), n_groups
    )
    p, log_p, v, log_v = x.split(m, dim=2)  # (G, n_max, M) each
    # S_ij = Σ_m P_i(m) log V_j(m) + V_i(m) log P_j(m), per group: (G, n_max, n_max)
    s = p @ log_v.transpose(1, 2) + v @ log_p.transpose(1, 2)
    return _diagonal_ce(s, valid)


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
