"""The block-wise code probabilities (cmcr/losses/probs.py) against autograd through
``-torch.cdist`` and the softmaxes: values, both gradients, blocks, zero distances, autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmcr.losses import probs


def _autograd_form(f: torch.Tensor, codes: torch.Tensor):
    logits = -torch.cdist(f, codes)
    return logits.softmax(1), logits.log_softmax(1)


def _unit(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("block", [1 << 18, 40, 1])  # one block, blocks of 4 rows, of 1 row
def test_values_and_gradients_equal_the_cdist_softmax_form(monkeypatch, block) -> None:
    monkeypatch.setattr(probs, "BLOCK_ELEMENTS", block)
    gen = torch.Generator().manual_seed(0)
    f0, c0 = _unit(37, 5, gen), _unit(11, 5, gen)
    w_p, w_log = (torch.randn(37, 11, generator=gen, dtype=torch.float64) for _ in range(2))
    f, c = f0.clone().requires_grad_(), c0.clone().requires_grad_()
    rf, rc = f0.clone().requires_grad_(), c0.clone().requires_grad_()
    got, want = probs.code_probs(f, c), _autograd_form(rf, rc)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    ((got[0] * w_p).sum() + (got[1] * w_log).sum()).backward()
    ((want[0] * w_p).sum() + (want[1] * w_log).sum()).backward()
    torch.testing.assert_close(f.grad, rf.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c.grad, rc.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_with_one_output_used() -> None:
    gen = torch.Generator().manual_seed(1)
    f, c = (_unit(n, 3, gen).requires_grad_() for n in (6, 4))
    assert torch.autograd.gradcheck(lambda a, b: probs.code_probs(a, b)[0], (f, c))
    assert torch.autograd.gradcheck(lambda a, b: probs.code_probs(a, b)[1], (f, c))


def test_a_feature_on_a_code_has_finite_values_and_gradients() -> None:
    codes = torch.eye(3, dtype=torch.float64).requires_grad_()
    f = torch.eye(3, dtype=torch.float64)[:2].clone().requires_grad_()  # distance 0 to a code
    p, log_p = probs.code_probs(f, codes)
    (p.sum() + log_p.sum()).backward()
    assert torch.isfinite(p).all() and torch.isfinite(f.grad).all()
    assert torch.isfinite(codes.grad).all()


def test_under_autocast_the_probabilities_stay_float32() -> None:
    gen = torch.Generator().manual_seed(2)
    f = _unit(8, 4, gen).to(torch.bfloat16)
    codes = _unit(5, 4, gen).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p, log_p = probs.code_probs(f, codes)
    assert p.dtype == log_p.dtype == torch.float32
    want, _ = _autograd_form(f.float(), codes)
    torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-6)
