"""Code probabilities softmax_m(−‖f_i − e_m‖) and their log, in cache-sized row blocks.

Written with autograd ops (``-torch.cdist`` then ``softmax`` and ``log_softmax``), the batched
cmcm held about eight (n, M) buffers over forward and backward: at 6 loss groups × 2048 rows ×
400 codes each is 20 MB, and together they leave the 32 MB L3, so the elementwise passes
(negation, both softmaxes and their backward, cdist's backward) cost more for the batch than a
loop over its groups whose 3 MB buffers stay in cache (``python -m cmcr.bench losses``). Here one
pass over row blocks of about 1 MB computes distances, log-probabilities and probabilities, and
the backward walks the same blocks once. The distances are the release's: ``addmm`` of
‖f‖² + ‖e‖² − 2 f·eᵀ, then the square root (clamped at 0, where the release would take the root
of a rounding error below 0); a zero distance passes no gradient, as in ``torch.cdist``.
"""

from __future__ import annotations

import torch

from cmcr.losses.groups import row_blocks

BLOCK_ELEMENTS = 1 << 18  # (rows × codes) per block on CPU: 1 MB in float32, the size of the L2


def _blocks(n: int, m: int, device: torch.device) -> list[slice]:
    """Row blocks: all rows at once on a GPU, about BLOCK_ELEMENTS per block on CPU."""
    return [slice(0, n)] if device.type != "cpu" else row_blocks(n, m, BLOCK_ELEMENTS)


class _CodeProbs(torch.autograd.Function):
    """(f (n, D), codes (M, D)) -> (P, log P), each (n, M)."""

    @staticmethod
    def forward(ctx, f, codes):  # noqa: D102 (autograd's signature)
        n, m = len(f), len(codes)
        e2 = codes.square().sum(1)  # (M,)
        dist = f.new_empty(n, m)
        log_p = f.new_empty(n, m)
        p = f.new_empty(n, m)
        for rows in _blocks(n, m, f.device):
            x = f[rows]
            d = torch.addmm(e2 + x.square().sum(1, keepdim=True), x, codes.t(), alpha=-2.0)
            d = torch.sqrt(d.clamp_min_(0.0), out=dist[rows])
            lp = torch.neg(d, out=log_p[rows])
            lp -= torch.logsumexp(lp, 1, keepdim=True)
            torch.exp(lp, out=p[rows])
        ctx.save_for_backward(f, codes, dist, p)
        ctx.set_materialize_grads(False)  # an unused output's gradient: None, not a zero pass
        return p, log_p

    @staticmethod
    def backward(ctx, grad_p, grad_log_p):  # noqa: D102
        f, codes, dist, p = ctx.saved_tensors
        need_f, need_codes = ctx.needs_input_grad
        grad_f = torch.zeros_like(f) if need_f else None
        grad_codes = torch.zeros_like(codes) if need_codes else None
        for rows in _blocks(len(f), len(codes), f.device):
            pb = p[rows]
            g = None  # d/d(logits), logits = −distance
            if grad_log_p is not None:  # log_softmax: g − P·Σg
                gl = grad_log_p[rows]
                g = gl - pb * gl.sum(1, keepdim=True)
            if grad_p is not None:  # softmax: P ⊙ (g − Σ g⊙P)
                gp = grad_p[rows]
                term = pb * (gp - (gp * pb).sum(1, keepdim=True))
                g = term if g is None else g.add_(term)
            if g is None:  # neither output reached the loss
                break
            # w = dL/d(distance) / distance (0 at distance 0): d‖f − e‖ = (f − e)·df / ‖f − e‖
            d = dist[rows]
            w = g.div_(d).neg_().masked_fill_(d == 0, 0.0)
            x = f[rows]
            if need_f:  # Σ_m w_im (f_i − e_m)
                grad_f[rows] = w.sum(1, keepdim=True) * x - w @ codes
            if need_codes:  # Σ_i w_im (e_m − f_i)
                grad_codes += w.sum(0)[:, None] * codes - w.t() @ x
        return grad_f, grad_codes


def code_probs(f: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax_m(−‖f_i − e_m‖) and its log, both (n, M) (plain, not squared, distances).

    In float32 at least, autocast or not (as ``torch.cdist`` runs under autocast).
    """
    dtype = torch.promote_types(torch.promote_types(f.dtype, codes.dtype), torch.float32)
    with torch.autocast(f.device.type, enabled=False):
        return _CodeProbs.apply(f.to(dtype).contiguous(), codes.to(dtype).contiguous())
