"""Benchmark: each grouped loss form (one batched computation) against a loop over the groups.

The release computes every loss per GPU over its 2 scans (cmcr/losses/groups.py); one process
computes the G groups of its batch at once. Here, per term, forward + backward on CPU with one
thread: the batched form ``L.<term>(..., group, G)`` against ``Σ_g L.<term>(rows of g) / G``,
interleaved, median CPU time of the repeats; and CMCM's matrix form against the per-pair Python loop of
the official code (``cmcr.bench.step.cmcm_loop``). Sizes: 6 groups (the release's 12 scans per
step) of 2048 rows (matches for nce / cmcm, rows for orth / occ), D 64, M 400 codes, MIM over
2 images of 3 × 224 × 416 per group; ``--quick``: 3 groups.
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


def cmcm_vs_pair_loop(n: int, repeats: int) -> dict[str, float]:
    """CMCM's matrix form against the official per-pair loop, forward only, one group of n."""
    from cmcr.bench.step import cmcm_loop  # lazy: step imports the model stack (spconv)

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
    return {
        "cmcm_pairs": n,
        "cmcm_matrix_ms": round(fm * 1e3, 2),
        "cmcm_pair_loop_ms": round(sm * 1e3, 1),
        "cmcm_speedup": round(sm / max(fm, 1e-9), 1),
        "cmcm_speedup_target": 50,
        "cmcm_forms_agree": bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4)),
    }


def run(args: argparse.Namespace) -> dict:
    """Figures for ``python -m cmcr.bench losses`` (CPU, one thread)."""
    quick = bool(getattr(args, "quick", False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        figures = {"threads": 1, **grouped_forms(3 if quick else 6, 3 if quick else 5)}
        figures.update(cmcm_vs_pair_loop(ROWS, 3))
    finally:
        torch.set_num_threads(threads)
    return figures
