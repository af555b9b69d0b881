"""The unified codebook: assignment, EMA update by hand, unit norm, distributed agreement."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cmcr.models import codebook
from cmcr.models.codebook import UnifiedCodebook


def _codebook(codes: list[list[float]], decay: float = 0.9, eps: float = 1e-5) -> UnifiedCodebook:
    cb = UnifiedCodebook(len(codes), len(codes[0]), decay, eps)
    cb.codes.copy_(torch.tensor(codes))
    cb.embed_sum.copy_(torch.tensor(codes))
    return cb.train()


@pytest.mark.parametrize("chunk_elements", [1 << 20, 17 * 7])  # one chunk / 43 chunks of 7 rows
def test_assign_is_nearest_code(chunk_elements, monkeypatch) -> None:
    monkeypatch.setattr(codebook, "_CHUNK_ELEMENTS", chunk_elements)
    cb = UnifiedCodebook(17, 8, 0.99, 1e-5)
    x = torch.randn(300, 8)
    brute = ((x[:, None, :] - cb.codes[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(cb.assign(x), brute)


def test_straight_through_forward_code_backward_identity() -> None:
    cb = UnifiedCodebook(5, 3, 0.99, 1e-5)
    x = torch.randn(4, 3, requires_grad=True)
    q = cb.quantise(x)
    assert torch.allclose(q, cb.codes[cb.assign(x)])
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_pair_pulls_both_codes_as_specified() -> None:
    # four codes in 2-D; the point chose code 0, its pixel chose code 1
    codes = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
    cb = _codebook(codes, decay=0.9)
    f_p, f_v = torch.tensor([[0.6, 0.8]]), torch.tensor([[0.0, 1.0]])
    cb.update(f_p, f_v, torch.tensor([0]), torch.tensor([1]))
    # each chosen code's sum gets half the point feature and half the pixel feature:
    # mixed = 0.5·(0.6, 0.8) + 0.5·(0, 1) = (0.3, 0.9); points step then pixels step
    # code 0 (points step): 0.9·(1, 0) + 0.1·(0.3, 0.9) = (0.93, 0.09); pixels step decays: ×0.9
    # code 1: decayed in the points step 0.9·(0, 1), then 0.9·(0, 0.9) + 0.1·(0.3, 0.9)
    expected_sum = torch.tensor([[0.837, 0.081], [0.03, 0.9], [-0.81, 0.0], [0.0, -0.81]])
    assert torch.allclose(cb.embed_sum, expected_sum, atol=1e-6)
    # counts: ones → points step (0.9·1 + 0.1 for code 0) → pixels step
    expected_size = torch.tensor([0.9, 0.9 * 0.9 + 0.1, 0.81, 0.81])
    assert torch.allclose(cb.cluster_size, expected_size, atol=1e-6)
    # both codes turned toward the pair; unused codes keep their direction
    assert cb.codes[0, 1] > 0 and cb.codes[1, 0] > 0
    assert torch.allclose(cb.codes[2:], torch.tensor([[-1.0, 0.0], [0.0, -1.0]]), atol=1e-6)
    assert torch.allclose(cb.codes, F.normalize(expected_sum, dim=1), atol=1e-6)


def test_codes_stay_unit_norm_and_eval_does_not_update() -> None:
    cb = UnifiedCodebook(32, 16, 0.9, 1e-5).train()
    for _ in range(5):
        f_p, f_v = F.normalize(torch.randn(64, 16), dim=1), F.normalize(torch.randn(64, 16), dim=1)
        cb.update(f_p, f_v, cb.assign(f_p), cb.assign(f_v))
        assert torch.allclose(cb.codes.norm(dim=1), torch.ones(32), atol=1e-5)
    before = cb.codes.clone()
    cb.eval().update(f_p, f_v, cb.assign(f_p), cb.assign(f_v))
    assert torch.equal(cb.codes, before)


def test_state_dict_holds_the_codebook() -> None:
    cb = UnifiedCodebook(8, 4, 0.9, 1e-5)
    assert {"codes", "embed_sum", "cluster_size"} <= set(cb.state_dict())
    other = UnifiedCodebook(8, 4, 0.9, 1e-5)
    other.load_state_dict(cb.state_dict())
    assert torch.equal(other.codes, cb.codes)


def test_statistics_usage_and_perplexity() -> None:
    cb = UnifiedCodebook(8, 4, 0.9, 1e-5)
    stats = cb.statistics(torch.tensor([0, 1]), torch.tensor([2, 3]))  # 4 codes, uniform
    assert stats["codebook_usage"] == pytest.approx(0.5)
    assert stats["codebook_perplexity"] == pytest.approx(4.0)


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)  # same initial codes on both ranks, as after a broadcast
    cb = UnifiedCodebook(16, 8, 0.9, 1e-5).train()
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(3):
        f_p = F.normalize(torch.randn(50, 8, generator=g), dim=1)
        f_v = F.normalize(torch.randn(50, 8, generator=g), dim=1)
        cb.update(f_p, f_v, cb.assign(f_p), cb.assign(f_v))
    torch.save(cb.state_dict(), os.path.join(out_dir, f"cb{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_identical_codebooks(tmp_path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "cb0.pt", weights_only=True)
    b = torch.load(tmp_path / "cb1.pt", weights_only=True)
    for key in ("codes", "embed_sum", "cluster_size"):
        assert torch.equal(a[key], b[key]), key
    torch.manual_seed(0)
    init = UnifiedCodebook(16, 8, 0.9, 1e-5).codes
    assert not torch.allclose(a["codes"], init)  # they did move
