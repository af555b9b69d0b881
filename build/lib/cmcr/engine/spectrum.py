"""Label-free representation scores of a feature matrix (issue 27): RankMe and alpha-ReQ.

Both read the spectrum of the frozen features the representation probe already computes
(``cmcr.engine.probe``): one (D, D) Gram matrix and ``eigvalsh`` each (float64; an SVD of the
(n, D) matrix took 2.5x as long on one CPU thread) on at most ``MAX_ROWS`` rows (a fixed
strided draw), no labels and no fit:

- **RankMe** (Garrido et al., ICML 2023): ``exp(-sum p_k log p_k)`` with ``p_k = s_k / sum(s) +
  eps`` over the singular values ``s`` of the (n, D) feature matrix: the effective rank, in
  [1, D]. Higher is better (a collapsed representation has a low rank).
- **alpha-ReQ** (Agrawal et al., NeurIPS 2022): the decay exponent ``alpha`` of the feature
  covariance's eigenspectrum, ``lambda_i ~ i^-alpha``, the least-squares slope of log eigenvalue
  against log rank (negated). Not monotone in quality: the paper finds the best near 1 (smaller:
  noisy, whitened features; larger: collapse towards few directions), so it is logged to read,
  not offered as a pruning signal.
"""

from __future__ import annotations

import torch

EPS = 1e-7  # RankMe's epsilon (the paper's)
MAX_ROWS = 16384  # rows the scores read (D 96, one loaded CPU thread: ~40 ms per score)
REL_FLOOR = 1e-10  # eigenvalues below this share of the largest are numerical zeros (alpha-ReQ)


def subsample(x: torch.Tensor, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """At most ``max_rows`` rows of ``x``, a fixed strided draw (no randomness)."""
    if len(x) <= max_rows:
        return x
    stride = -(-len(x) // max_rows)
    return x[::stride]


def rankme(x: torch.Tensor, eps: float = EPS) -> float:
    """RankMe of the (n, D) matrix ``x``: the exponential of the entropy of its normalised
    singular values (1 for a rank-1 matrix, D for an isotropic one)."""
    z = subsample(x).double()
    s = torch.linalg.eigvalsh(z.T @ z).clamp_min(0).sqrt()  # (D,) singular values of z
    if float(s.sum()) <= 0:
        return 1.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alpha_req(x: torch.Tensor) -> float:
    """alpha-ReQ of the (n, D) matrix ``x``: minus the least-squares slope of log eigenvalue vs
    log rank of its covariance (eigenvalues above ``REL_FLOOR`` of the largest; 0 with < 2)."""
    z = subsample(x).double()
    c = z - z.mean(0)
    lam = torch.linalg.eigvalsh(c.T @ c / max(len(z) - 1, 1)).flip(0)  # (D,) descending
    lam = lam[lam > REL_FLOOR * lam.max().clamp_min(1e-300)]
    if len(lam) < 2:
        return 0.0
    u = torch.arange(1, len(lam) + 1, dtype=torch.float64).log()
    v = lam.log()
    slope = ((u - u.mean()) * (v - v.mean())).sum() / ((u - u.mean()) ** 2).sum()
    return float(-slope)


def scores(x: torch.Tensor) -> dict[str, float]:
    """Both scores of the (n, D) features ``x``: ``rankme`` and ``alpha_req`` (0 when empty)."""
    if x.numel() == 0:
        return {"rankme": 0.0, "alpha_req": 0.0}
    return {"rankme": rankme(x), "alpha_req": alpha_req(x)}
