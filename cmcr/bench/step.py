"""Benchmark: one forward+backward of the ``paper`` model on one sample (CPU), and cmcm speed.

Sizes follow the paper preset: unet34c, ResNet-50 (random weights, said explicitly), 6 cameras
at 224×416, ~30k points, 2048 queries, 2048 matches. The batch comes from the synthetic batch
factory (``cmcr.bench.batch``), so the step can be measured without a dataset.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cmcr import losses as L
from cmcr.bench.batch import batch_from_config
from cmcr.compat import patch_spconv_cpu
from cmcr.configs import load_config
from cmcr.models import CMCRModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this benchmark (all optional)."""
    parser.add_argument("--step-repeats", type=int, default=1, help="timed steps after warm-up")


def _step(model: CMCRModel, batch: dict) -> dict[str, float]:
    """One forward+backward; the model's section timings plus totals, in seconds."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = model(batch)
    t1 = time.perf_counter()
    L.weighted_total(out["losses"], model.cfg.loss.weights).backward()
    t2 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "step": t2 - t0, **model.timings}


def cmcm_loop(f_p: torch.Tensor, f_v: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """cmcm with a Python loop over the pairs (the form the official code uses): for timing."""
    p, log_p = L.code_probs(f_p, codes)
    v, log_v = L.code_probs(f_v, codes)
    total = f_p.new_zeros(())
    for i in range(len(f_p)):
        row = (p[i] * log_v).sum(1) + (v[i] * log_p).sum(1)  # (n,): S_i·
        total = total - row.log_softmax(0)[i]
    return total / len(f_p)


def _time_cmcm(n: int, m: int, d: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    f_p, f_v = (F.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(2))
    codes = F.normalize(torch.randn(m, d, generator=g), dim=1)
    t0 = time.perf_counter()
    fast = L.cmcm(f_p, f_v, codes)
    t1 = time.perf_counter()
    slow = cmcm_loop(f_p, f_v, codes)
    t2 = time.perf_counter()
    return {
        "cmcm_pairs": n,
        "cmcm_matrix_ms": round((t1 - t0) * 1e3, 2),
        "cmcm_loop_ms": round((t2 - t1) * 1e3, 1),
        "cmcm_speedup": round((t2 - t1) / max(t1 - t0, 1e-9), 1),
        "cmcm_forms_agree": bool(torch.allclose(fast, slow, rtol=1e-4, atol=1e-4)),
    }


def run(args: argparse.Namespace) -> dict:
    """Time a paper-preset step on CPU and the cmcm matrix form vs a loop; flat figures."""
    patch_spconv_cpu()
    quick = bool(getattr(args, "quick", False))
    repeats = int(getattr(args, "step_repeats", 1))
    cfg = load_config(
        "paper",
        {
            "model.image_weights": "random",  # explicit: no MoCo file is needed to time a step
            "train.batch_size": 1,
            "data.cameras": ["CAM_FRONT"] if quick else list(load_config().data.cameras),
        },
    )
    torch.manual_seed(cfg.train.seed)
    n_points = 8000 if quick else 30000
    batch = batch_from_config(cfg, n_points=n_points, n_pairs=n_points // 2, extent=25.0)
    model = CMCRModel(cfg).train()
    model.profile = True
    _step(model, batch)  # warm-up: spconv index building, allocator
    runs = [_step(model, batch) for _ in range(max(repeats, 1))]
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    figures = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "points": len(batch["points"]),
        "voxels": len(batch["coords"]),
        "images": tuple(batch["images"].shape),
        "queries": len(batch["queries"]),
        "matches": int(min(cfg.loss.num_matches, int((~batch["pair_masked"]).sum()))),
        "step_s": round(med["step"], 3),
        "forward_s": round(med["forward"], 3),
        "backward_s": round(med["backward"], 3),
        "backbone_forward_s": round(med.get("backbone", 0.0), 3),
        "image_encoder_forward_s": round(med.get("image_encoder", 0.0), 3),
        "loss_compute_s": round(med.get("losses", 0.0), 3),
        "loss_share_of_step": round(med.get("losses", 0.0) / med["step"], 4),
        "loss_share_target": 0.15,
        # nearest-code search over every point and every pixel (the MIM decoder's quantised
        # input): model work, not a loss, reported beside it
        "codebook_assign_s": round(med.get("codebook_assign", 0.0), 3),
        "codebook_assign_share_of_step": round(med.get("codebook_assign", 0.0) / med["step"], 4),
    }
    figures.update(_time_cmcm(cfg.loss.num_matches, cfg.model.codebook_size, cfg.model.feat_dim))
    return figures
