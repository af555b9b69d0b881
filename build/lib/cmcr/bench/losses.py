"""Benchmark: each grouped loss form (one batched computation) against a loop over the groups.

The release computes every loss per GPU over its 2 scans (cmcr/losses/groups.py); one process
computes the G groups of its batch at once. Here, per term, forward + backward on CPU with one
thread: the batched form ``L.<term>(..., group, G)`` against ``Σ_g L.<term>(rows of g) / G``,
interleaved, median CPU time of the repeats; and CMCM's matrix form against two per-pair Python
loops: a loop over the rows of S (``cmcm_loop``, forward), and the release's own form, one GEMM
for S then a loop over the 2048 pairs of its diagonal (``cmcm_release``), forward + backward as
it trains. Sizes: 6 groups (the release's 12 scans per step) of 2048 rows (matches for nce /
cmcm, rows for orth / occ), D 64, M 400 codes, MIM over 2 images of 3 × 224 × 416 per group;
``--quick``: 3 groups.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cmcr import losses as L

D, M, ROWS = 64, 400, 2048


def _loop(fn: Callable, group: torch.Tensor, n_groups: int, *rows: torch.Tensor) -> torch.Tensor:
    """Mean over the groups of ``fn`` on each group's rows (an empty group adds 0)."""
    total = rows[0].new_zeros(())
    for g in range(n_groups):
        pick = (group == g).nonzero(as_tuple=True)[0]
        if len(pick):
            total = total + fn(*(r[pick] for r in rows))
    return total / n_groups


def _cases(
    n_groups: int, gen: torch.Generator, rows: int, hw: tuple[int, int]
) -> dict[str, tuple[Callable, Callable, list]]:
    """term -> (batched(*inputs), looped(*inputs), inputs).

    Rows in group order, as the model hands them over: matches come out of sample_matches by
    group, voxels, queries and images by scan.
    """
    n = n_groups * rows
    group = torch.arange(n) // rows  # (n,)

    def unit(rows: int) -> torch.Tensor:
        return F.normalize(torch.randn(rows, D, generator=gen), dim=1)

    codes = unit(M)
    n_img = 2 * n_groups  # 2 scans' front camera per group (the MIM cost grows with pixels)
    img_group = torch.arange(n_img) // 2
    recon, target = torch.rand(n_img, 3, *hw, generator=gen), torch.rand(n_img, 3, *hw)
    mask = torch.rand(n_img, *hw, generator=gen) < 0.5
    logit, occ_t = torch.randn(n, generator=gen), (torch.rand(n, generator=gen) < 0.5).float()
    g, k = group, n_groups
    return {
        "nce": (
            lambda a, b: L.nce(a, b, 0.07, g, k),
            lambda a, b: _loop(lambda x, y: L.nce(x, y, 0.07), g, k, a, b),
            [unit(n), unit(n)],
        ),
        "cmcm": (
            lambda a, b: L.cmcm(a, b, codes, g, k),
            lambda a, b: _loop(lambda x, y: L.cmcm(x, y, codes), g, k, a, b),
            [unit(n), unit(n)],
        ),
        "orth": (
            lambda a, b: L.orth(a, b, g, k),
            lambda a, b: _loop(L.orth, g, k, a, b),
            [unit(n), torch.randn(n, D, generator=gen)],
        ),
        "occ": (
            lambda a: L.occ(a, occ_t, g, k),
            lambda a: _loop(L.occ, g, k, a, occ_t),
            [logit],
        ),
        "mim": (
            lambda a: L.mim(a, target, mask, "masked", img_group, k),
            lambda a: _loop(
                lambda x, y, z: L.mim(x, y, z, "masked"), img_group, k, a, target, mask
            ),
            [recon],
        ),
    }


def _seconds(fn: Callable, inputs: list[torch.Tensor]) -> float:
    """CPU seconds of one forward + backward of ``fn`` on fresh leaf copies of ``inputs``.

    CPU time with one thread, not wall clock: on a CPU shared with other jobs the wall clock
    measures the neighbours (cmcr.bench.data._min_seconds).
    """
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    t0 = time.process_time()
    fn(*leaves).backward()
    return time.process_time() - t0


def grouped_forms(
    n_groups: int, repeats: int, rows: int = ROWS, hw: tuple[int, int] = (224, 416)
) -> dict[str, float]:
    """Per term: batched and looped ms (median, interleaved), their ratio, and agreement."""
    gen = torch.Generator().manual_seed(0)
    out: dict[str, float] = {"loss_groups": n_groups, "loss_rows_per_group": rows}
    for name, (batched, looped, inputs) in _cases(n_groups, gen, rows, hw).items():
        agree = torch.allclose(batched(*inputs), looped(*inputs), rtol=1e-5, atol=1e-6)
        times: dict[str, list[float]] = {"batched": [], "loop": []}
        for _ in range(repeats + 1):  # the first round warms the allocator, not counted
            for form, fn in (("batched", batched), ("loop", looped)):
                times[form].append(_seconds(fn, inputs))
        b, lo = (statistics.median(times[f][1:]) for f in ("batched", "loop"))
        out[f"{name}_batched_ms"] = round(b * 1e3, 2)
        out[f"{name}_loop_ms"] = round(lo * 1e3, 2)
        out[f"{name}_loop_over_batched"] = round(lo / max(b, 1e-9), 2)
        out[f"{name}_forms_agree"] = bool(agree)
    return out


def cmcm_loop(f_p: torch.Tensor, f_v: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """cmcm with a Python loop over the rows of S, each row its own products: for timing."""
    p, log_p = L.code_probs(f_p, codes)
    v, log_v = L.code_probs(f_v, codes)
    total = f_p.new_zeros(())
    for i in range(len(f_p)):
        row = (p[i] * log_v).sum(1) + (v[i] * log_p).sum(1)  # (n,): S_i·
        total = total - row.log_softmax(0)[i]
    return total / len(f_p)


def cmcm_release(f_p: torch.Tensor, f_v: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """cmcm as the release computes it, for timing (`pretrain/lightning_trainer.py`,
    ``loss_codebook``): distances by addmm, S = P·log(Vᵀ + 1e-10) + V·log(Pᵀ + 1e-10) in one
    GEMM, exp(S − min S), then a Python loop over the pairs adding −log(E_ii / (Σ_j E_ij + ε)).
    Its backward walks 2048 indexing nodes, each a (n, n) gradient."""
    e2 = codes.square().sum(1)

    def probs(f: torch.Tensor) -> torch.Tensor:
        d2 = torch.addmm(e2 + f.square().sum(1, keepdim=True), f, codes.t(), alpha=-2.0)
        return torch.softmax(-d2.sqrt(), dim=1)

    p, v = probs(f_p), probs(f_v)
    s = p @ torch.log(v.t() + 1e-10) + v @ torch.log(p.t() + 1e-10)
    e = torch.exp(s + torch.max(-s))
    row_sum = e.sum(1)
    total = f_p.new_zeros(())
    for i in range(len(f_p)):
        total = total - torch.log(e[i, i] / (row_sum[i] + 1e-10))
    return total / len(f_p)


def _fwd_bwd_seconds(fn: Callable, inputs: list[torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    """CPU seconds of ``fn``'s forward, and of forward + backward, on fresh leaves; its value."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    t0 = time.process_time()
    out = fn(*leaves)
    t1 = time.process_time()
    out.backward()
    return t1 - t0, time.process_time() - t0, out.detach()


def cmcm_vs_pair_loop(n: int, repeats: int, release_repeats: int = 1) -> dict[str, float]:
    """CMCM's matrix form against the row loop (forward, no gradient) and against the
    release's form (forward + backward), one group of n pairs."""
    gen = torch.Generator().manual_seed(1)
    f_p, f_v, codes = (F.normalize(torch.randn(r, D, generator=gen), dim=1) for r in (n, n, M))
    fast, slow = [], []
    L.cmcm(f_p, f_v, codes)  # warm-up
    for _ in range(repeats):
        t0 = time.process_time()
        a = L.cmcm(f_p, f_v, codes)
        t1 = time.process_time()
        b = cmcm_loop(f_p, f_v, codes)
        t2 = time.process_time()
        fast.append(t1 - t0)
        slow.append(t2 - t1)
    fm, sm = statistics.median(fast), statistics.median(slow)
    ours = [_fwd_bwd_seconds(lambda x, y: L.cmcm(x, y, codes), [f_p, f_v]) for _ in range(3)]
    rel = [
        _fwd_bwd_seconds(lambda x, y: cmcm_release(x, y, codes), [f_p, f_v])
        for _ in range(max(release_repeats, 1))
    ]
    o_all, r_all = (statistics.median(t[1] for t in runs) for runs in (ours, rel))
    agree = torch.allclose(a, rel[0][2], rtol=1e-4, atol=1e-4)  # a timed run's value
    return {
        "cmcm_pairs": n,
        "cmcm_matrix_ms": round(fm * 1e3, 2),
        "cmcm_pair_loop_ms": round(sm * 1e3, 1),
        "cmcm_speedup": round(sm / max(fm, 1e-9), 1),
        "cmcm_speedup_target": 50,
        "cmcm_forms_agree": bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4)),
        "cmcm_matrix_fwd_bwd_ms": round(o_all * 1e3, 1),
        "cmcm_release_fwd_ms": round(statistics.median(t[0] for t in rel) * 1e3, 1),
        "cmcm_release_fwd_bwd_ms": round(r_all * 1e3, 1),
        "cmcm_release_over_matrix_fwd_bwd": round(r_all / max(o_all, 1e-9), 1),
        "cmcm_release_agrees": bool(agree),
    }


def run(args: argparse.Namespace) -> dict:
    """Figures for ``python -m cmcr.bench losses`` (CPU, one thread)."""
    quick = bool(getattr(args, "quick", False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        figures = {"threads": 1, **grouped_forms(3 if quick else 6, 3 if quick else 5)}
        figures.update(cmcm_vs_pair_loop(ROWS, 3, 1 if quick else 3))
    finally:
        torch.set_num_threads(threads)
    return figures
