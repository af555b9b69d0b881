"""The grouped cross-entropy of nce / cmcm (cmcr/losses/diagonal.py) against autograd's
cross_entropy per group: values and gradients, tiles, padding, and the in-order layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmcr import losses as L
from cmcr.losses import diagonal
from cmcr.losses.groups import pad_by_group


def _reference(a: torch.Tensor, b: torch.Tensor, group: torch.Tensor, n_groups: int):
    """Mean over groups of F.cross_entropy(a_g · b_gᵀ, diagonal); an empty group adds 0."""
    total = a.new_zeros(())
    for g in range(n_groups):
        pick = group == g
        if pick.any():
            logits = a[pick] @ b[pick].t()
            total = total + F.cross_entropy(logits, torch.arange(len(logits)))
    return total / n_groups


@pytest.mark.parametrize("block", [1 << 20, 7])  # one tile a group, and tiles of a few rows
@pytest.mark.parametrize(
    "group, n_groups",
    [(torch.tensor([0, 2, 0, 2, 2, 0, 0, 2, 2, 0, 2]), 3), (torch.arange(12) // 4, 3)],
    ids=["padded-with-empty-group", "equal-in-order"],
)
def test_values_and_gradients_equal_cross_entropy_per_group(
    monkeypatch, block, group, n_groups
) -> None:
    monkeypatch.setattr(diagonal, "BLOCK_ELEMENTS", block)
    gen = torch.Generator().manual_seed(0)
    a0, b0 = (torch.randn(len(group), 5, generator=gen, dtype=torch.float64) for _ in range(2))
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    ra, rb = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    ag, valid = pad_by_group(a, group, n_groups)
    bg, _ = pad_by_group(b, group, n_groups)
    got = diagonal.diagonal_ce((ag,), (bg,), valid)
    want = _reference(ra, rb, group, n_groups)
    (0.5 * got).backward()
    (0.5 * want).backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-10, atol=1e-12)


def test_groups_in_order_and_equal_are_a_view_not_a_copy() -> None:
    x = torch.randn(12, 3)
    out, valid = pad_by_group(x, torch.arange(12) // 4, 3)
    assert out.shape == (3, 4, 3) and valid.all()
    assert out.data_ptr() == x.data_ptr()  # the matches of sample_matches: no copy
    shuffled, _ = pad_by_group(x, torch.tensor([1, 0, 2] * 4), 3)
    assert shuffled.data_ptr() != x.data_ptr()  # interleaved: laid out per group


def test_cmcm_gradients_equal_the_per_group_autograd_form() -> None:
    gen = torch.Generator().manual_seed(1)
    f_p, f_v = (
        F.normalize(torch.randn(10, 4, generator=gen, dtype=torch.float64), dim=1) for _ in range(2)
    )
    codes = F.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=1)
    group = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0, 1])

    def slow(fp, fv):  # the release's form per group: S = P·log Vᵀ + V·log Pᵀ
        total = fp.new_zeros(())
        for g in range(2):
            p, log_p = L.code_probs(fp[group == g], codes)
            v, log_v = L.code_probs(fv[group == g], codes)
            s = p @ log_v.t() + v @ log_p.t()
            total = total + F.cross_entropy(s, torch.arange(len(s)))
        return total / 2

    x = [t.clone().requires_grad_() for t in (f_p, f_v)]
    y = [t.clone().requires_grad_() for t in (f_p, f_v)]
    got, want = L.cmcm(*x, codes, group, 2), slow(*y)
    got.backward()
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    for u, w in zip(x, y, strict=True):
        torch.testing.assert_close(u.grad, w.grad, rtol=1e-9, atol=1e-12)


def test_a_retained_graph_gives_the_same_gradient_twice() -> None:
    a = torch.randn(1, 4, 3, requires_grad=True)
    loss = diagonal.diagonal_ce((a,), (a.detach(),), torch.ones(1, 4, dtype=torch.bool))
    first = torch.autograd.grad(loss, a, retain_graph=True)[0]
    second = torch.autograd.grad(2.0 * loss, a)[0]
    torch.testing.assert_close(second, 2.0 * first)


def test_a_retained_graph_run_twice_with_weight_one_computes_the_gradient_again() -> None:
    # weight 1 hands the forward's gradient buffers over; a second run must not reuse them
    a = torch.randn(1, 4, 3, requires_grad=True)
    loss = diagonal.diagonal_ce((a,), (a.detach(),), torch.ones(1, 4, dtype=torch.bool))
    first = torch.autograd.grad(loss, a, retain_graph=True)[0]
    want = first.clone()
    first.mul_(100.0)  # the caller owns what it got back
    second = torch.autograd.grad(loss, a, retain_graph=True)[0]
    torch.testing.assert_close(second, want)
    third = torch.autograd.grad(3.0 * loss, a)[0]
    torch.testing.assert_close(third, 3.0 * want)


def test_leaf_gradients_accumulate_over_two_backward_runs() -> None:
    a = torch.randn(2, 5, 3, requires_grad=True)
    b = torch.randn(2, 5, 3, requires_grad=True)
    valid = torch.ones(2, 5, dtype=torch.bool)
    loss = diagonal.diagonal_ce((a,), (b,), valid)
    loss.backward(retain_graph=True)
    once = (a.grad.clone(), b.grad.clone())
    loss.backward()
    torch.testing.assert_close(a.grad, 2 * once[0])
    torch.testing.assert_close(b.grad, 2 * once[1])
