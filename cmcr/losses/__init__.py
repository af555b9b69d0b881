"""The CMCR loss terms as pure functions (METHOD.md, Losses) and the one place weights apply."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmcr.configs.schema import LossWeights
from cmcr.errors import CMCRError

__all__ = [
    "cmcm",
    "code_probs",
    "commit",
    "intensity",
    "mim",
    "nce",
    "occ",
    "orth",
    "weighted_total",
]


def nce(k: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """PPKT InfoNCE: point features k (n, D) vs their pixels q (n, D), target the diagonal."""
    logits = k @ q.t() / temperature  # (n, n)
    return F.cross_entropy(logits, torch.arange(len(k), device=k.device))


def mim(
    recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, on: str = "all"
) -> torch.Tensor:
    """MSE of the reconstruction (I, 3, H, W) against the unmasked image; ``on``: all | masked."""
    if on == "all":
        return F.mse_loss(recon, target)
    sq = (recon - target).square().sum(1)  # (I, H, W)
    m = mask.to(sq.dtype)
    # mean over masked pixels and channels; zero (with a graph) when nothing is masked
    return (sq * m).sum() / (m.sum() * recon.shape[1]).clamp_min(1.0)


def occ(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of occupancy logits (Q,) against 0/1 targets (Q,)."""
    return F.binary_cross_entropy_with_logits(logits, target)


def intensity(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 on intensity over the queries that carry a target (``valid``, (Q,) bool)."""
    v = valid.to(pred.dtype)
    return ((pred - target).abs() * v).sum() / v.sum().clamp_min(1.0)


def orth(shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    """‖F_sharedᵀ · normalise(F_specific)‖_F / D² over points (N, D)."""
    d = shared.shape[1]
    return torch.linalg.matrix_norm(shared.t() @ F.normalize(specific, dim=1)) / d**2


def commit(
    f_p: torch.Tensor, f_v: torch.Tensor, e_p: torch.Tensor, e_v: torch.Tensor, beta: float
) -> torch.Tensor:
    """Commitment: 2β·MSE(f_p, sg e_p) + β·MSE(f_p, sg e_v), plus the same with p and v swapped."""
    e_p, e_v = e_p.detach(), e_v.detach()
    points = 2 * beta * F.mse_loss(f_p, e_p) + beta * F.mse_loss(f_p, e_v)
    pixels = 2 * beta * F.mse_loss(f_v, e_v) + beta * F.mse_loss(f_v, e_p)
    return points + pixels


def code_probs(f: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax_m(−‖f_i − e_m‖) and its log, both (n, M) (plain, not squared, distances)."""
    logits = -torch.cdist(f, codes)  # (n, M)
    return logits.softmax(dim=1), logits.log_softmax(dim=1)


def cmcm(f_p: torch.Tensor, f_v: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Cross-modal code matching: CE of rows of S = P·log Vᵀ + V·log Pᵀ, target the diagonal."""
    p, log_p = code_probs(f_p, codes)  # (n, M)
    v, log_v = code_probs(f_v, codes)
    s = p @ log_v.t() + v @ log_p.t()  # (n, n): S_ij = Σ_m P_i(m) log V_j(m) + V_i(m) log P_j(m)
    return F.cross_entropy(s, torch.arange(len(f_p), device=f_p.device))


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
