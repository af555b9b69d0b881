"""Cross-entropy of bmm logits against their diagonal, per loss group, in cache-sized blocks.

nce and cmcm are both ``CE(rows of A·Bᵀ, target = the diagonal)`` per group. Written with
autograd ops, a (G, n, n) logits tensor costs about six (G, n, n) buffers over forward and
backward (logits, a scaled copy, log-softmax, its gradient, ...), each a pass over memory: at
6 groups × 2048 a buffer is 100 MB, past the 32 MB L3, and the batched form was slower than a
loop over the groups whose 16 MB buffers stay in cache (nce 359 vs 222 ms, cmcm 1495 vs
1074 ms). Here one pass over tiles of the block-diagonal logits does it all: logits, softmax,
loss, and the gradient for an upstream gradient of 1 (the loss is a scalar, so backward only
scales it). On a GPU one tile holds every group (one bmm each); on CPU a tile is about 4 MB of
logits of one group, so the work streams through cache as a loop over groups would.
"""

from __future__ import annotations

import functools

import torch

from cmcr.losses.groups import row_blocks

BLOCK_ELEMENTS = 1 << 20  # logits per tile on CPU: 4 MB in float32 (the L2 is 1 MB, L3 32 MB)


def _tiles(a: torch.Tensor) -> list[tuple[slice, slice]]:
    """(groups, rows) tiles of the block-diagonal logits: all of it in one on a GPU; on CPU
    cache-sized row blocks of one group at a time (a block of every group measured slower:
    its rank-c update of B's (G, n, K) gradient streams that whole tensor through memory once
    per block)."""
    g, n, _ = a.shape
    if a.device.type != "cpu":
        return [(slice(None), slice(None))]
    return [(slice(k, k + 1), rows) for k in range(g) for rows in row_blocks(n, n, BLOCK_ELEMENTS)]


class _DiagonalCE(torch.autograd.Function):
    """Σ_g,i weight_gi · (logsumexp_j L_gij − L_gii) with L = Σ_k A_k·B_kᵀ + column bias.

    Inputs: col_bias, row_weight, then the k operand pairs A_1, B_1, A_2, B_2, ... (G, n, K_k).
    """

    @staticmethod
    def forward(ctx, col_bias, row_weight, *operands):  # noqa: D102 (autograd's signature)
        need = any(ctx.needs_input_grad[2:])
        # left gradients are written tile by tile, right ones summed over a group's tiles
        ctx.grads = (
            [
                torch.empty_like(x) if k % 2 == 0 else torch.zeros_like(x)
                for k, x in enumerate(operands)
            ]
            if need
            else None
        )
        loss = row_weight.new_zeros(())
        for tile in _tiles(operands[0]):
            loss += _tile(operands, col_bias, row_weight, tile, ctx.grads)
        return loss

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        # new tensors, the kept ones untouched: a graph kept with retain_graph may run again
        return None, None, *(grad * x for x in ctx.grads)


def _tile(operands, col_bias, row_weight, tile: tuple[slice, slice], grads) -> torch.Tensor:
    """Loss of one (groups, rows) tile of the logits; adds the tile's part of the gradients."""
    groups, rows = tile
    r0 = rows.start or 0
    pairs = [
        (a[groups, rows], b[groups]) for a, b in zip(operands[::2], operands[1::2], strict=True)
    ]
    logits = torch.bmm(pairs[0][0], pairs[0][1].transpose(1, 2))  # (g, c, n)
    for a_t, b_t in pairs[1:]:
        logits.baddbmm_(a_t, b_t.transpose(1, 2))
    if logits.element_size() < 4:  # half precision: the softmax in float32
        logits = logits.float()
    if col_bias is not None:
        logits += col_bias[groups]  # (g, 1, n): 0, or the dtype's lowest value for padded columns
    diag = logits.diagonal(offset=r0, dim1=1, dim2=2).clone()  # (g, c): L_gii, i in the tile
    top = logits.amax(2, keepdim=True)  # (g, c, 1)
    total = logits.sub_(top).exp_().sum(2, keepdim=True)  # logits now exp(L − max)
    weight = row_weight[groups, rows]  # (g, c)
    loss = ((top.squeeze(2) + total.squeeze(2).log() - diag) * weight).sum()
    if grads is not None:  # d/dL of weight · (lse − L_ii) = weight · (softmax − one-hot)
        logits.div_(total)
        logits.diagonal(offset=r0, dim1=1, dim2=2).sub_(1.0)
        logits.mul_(weight[..., None])
        d = logits.to(pairs[0][0].dtype)
        for k, (a_t, b_t) in enumerate(pairs):
            torch.bmm(d, b_t, out=grads[2 * k][groups, rows])  # a contiguous slice
            grads[2 * k + 1][groups].baddbmm_(d.transpose(1, 2), a_t)
    return loss


def diagonal_ce(
    lefts: tuple[torch.Tensor, ...], rights: tuple[torch.Tensor, ...], valid: torch.Tensor
) -> torch.Tensor:
    """Mean over groups of the mean CE of rows of Σ_k lefts_k · rights_kᵀ (G, n, n), target
    the diagonal.

    lefts, rights: (G, n, K_k) rows laid out per group (the sum spares a concatenation and its
    backward); ``valid`` (G, n): real rows / columns. Padded columns get the dtype's lowest
    value (not −inf: an all-padded row stays finite), padded rows weigh 0, a group without rows
    adds 0 and still counts.
    """
    g, n, _ = lefts[0].shape
    if n == 0:  # no row in any group: every group adds 0
        return sum(x.sum() for x in (*lefts, *rights)) * 0.0
    dtype = torch.promote_types(lefts[0].dtype, torch.float32)  # the softmax's
    rows = valid.to(dtype)
    weight = rows / (rows.sum(1, keepdim=True).clamp_min(1) * g)  # (G, n): 1 / (n_g · G)
    bias = None
    if not bool(valid.all()):
        low = torch.finfo(dtype).min
        bias = rows.new_zeros(g, 1, n).masked_fill(~valid[:, None, :], low)  # (G, 1, n)
    operands = [x for pair in zip(lefts, rights, strict=True) for x in pair]
    device = operands[0].device.type
    if torch.is_autocast_enabled(device):  # the products in autocast's dtype, as a bmm would be
        op_dtype = torch.get_autocast_dtype(device)
    else:
        op_dtype = functools.reduce(torch.promote_types, (x.dtype for x in operands))
    # one dtype and contiguous once here, or every tile's bmm copies its operands again;
    # autocast off inside: the in-place sums of the tiles need one dtype throughout
    operands = [x.to(op_dtype).contiguous() for x in operands]
    with torch.autocast(device, enabled=False):
        return _DiagonalCE.apply(bias, weight, *operands)
