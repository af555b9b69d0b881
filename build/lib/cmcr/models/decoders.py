"""Image-side modules (frozen encoder + heads) and the MIM, GEMIM and occupancy decoders."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cmcr.data.collate import unit_float
from cmcr.models.resnet import load_resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenImageEncoder(nn.Module):
    """A ResNet trunk that never trains: no gradients, BatchNorm statistics fixed (eval mode)."""

    def __init__(self, name: str, weights: str) -> None:
        super().__init__()
        self.net = load_resnet(name, weights)
        self.out_dim = self.net.out_dim
        self.net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        """Stay in eval mode whatever the parent asks: the encoder is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, image_input: torch.Tensor, mask: torch.Tensor, fill: str) -> torch.Tensor:
        """image_input (I, 3, H, W) uint8 or float in [0, 1], mask (I, H, W) -> features
        (I, C, H/32, W/32).

        ``fill`` (data.mask_fill): "black" = the dataset already set masked pixels to 0 in
        image_input, before normalisation (release); "mean" = masked pixels are set to 0 here,
        after normalisation (the ImageNet mean colour).
        """
        x = (unit_float(image_input) - self.mean) / self.std
        if fill == "mean":
            x = x * (~mask).unsqueeze(1).to(x.dtype)
        elif fill != "black":
            raise ValueError(f"data.mask_fill: expected 'black' or 'mean', got {fill!r}")
        return self.net(x)


class ImageHead(nn.Module):
    """1×1 conv to ``feat_dim`` then bilinear upsampling to the input size (optionally L2-normed)."""

    def __init__(
        self, c_in: int, feat_dim: int, upsample: int, normalise: bool, align_corners: bool
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c_in, feat_dim, 1)
        self.upsample, self.normalise = upsample, normalise
        self.align_corners = align_corners  # model.image_head_align_corners (release: True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(I, C, h, w) -> (I, feat_dim, h·s, w·s)."""
        y = F.interpolate(
            self.proj(x),
            scale_factor=self.upsample,
            mode="bilinear",
            align_corners=self.align_corners,
        )
        return F.normalize(y, dim=1) if self.normalise else y


class MIMDecoder(nn.Module):
    """Three 3×3 convs (feat_dim → channels… → 3) with ReLU between, then sigmoid."""

    def __init__(self, feat_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        dims = [feat_dim, *channels, 3]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Conv2d(dims[i], dims[i + 1], 3, padding=1))
            layers.append(nn.ReLU(inplace=True) if i < len(dims) - 2 else nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(I, feat_dim, H, W) -> reconstruction (I, 3, H, W) in [0, 1]."""
        return self.net(x)


class GeometryScatter(nn.Module):
    """GEMIM: paired points' specific features, linearly projected, averaged onto their pixels."""

    def __init__(self, feat_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(feat_dim, feat_dim)

    def forward(self, point_feats: torch.Tensor, pairs: torch.Tensor, shape: tuple) -> torch.Tensor:
        """point_feats (N, D), pairs (P, 4) [point, image, row, col] -> map (I, D, H, W)."""
        n_img, _, h, w = shape
        # projecting before averaging equals averaging then projecting on hit pixels, costs P
        # rows instead of I·H·W, and leaves pixels without points at exactly 0
        src = self.proj(point_feats[pairs[:, 0]])  # (P, D)
        pix = (pairs[:, 1] * h + pairs[:, 2]) * w + pairs[:, 3]  # (P,) flat pixel index
        out = src.new_zeros(n_img * h * w, src.shape[1]).index_add(0, pix, src)
        count = torch.bincount(pix, minlength=n_img * h * w).clamp_min(1).to(src.dtype)
        out = out / count[:, None]  # (I·H·W, D): mean over the points on each pixel
        return out.view(n_img, h, w, -1).permute(0, 3, 1, 2)


class OccupancyDecoder(nn.Module):
    """Per (query, neighbour) MLP on [neighbour feature, query − neighbour] -> (logit, intensity).

    Release shape: Linear(D+3 → h1), ReLU, …, Linear(→ h_last), Linear(h_last → 2), with no
    activation after the last hidden layer unless ``last_relu`` (model.occ_last_relu).
    """

    def __init__(self, feat_dim: int, hidden: Sequence[int], last_relu: bool) -> None:
        super().__init__()
        dims = [feat_dim + 3, *hidden]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(hidden) - 1 or last_relu:
                layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(dims[-1], 2))  # occupancy logit, intensity
        self.mlp = nn.Sequential(*layers)

    def forward(
        self,
        point_feats: torch.Tensor,
        points: torch.Tensor,
        queries: torch.Tensor,
        neighbours: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> occupancy logits (E,), intensity (E,), query index (E,) of every valid pair.

        ``neighbours`` (Q, K) holds point indices, −1 padding; one output row per
        (query, neighbour) pair, in row-major order of ``neighbours``.
        """
        q_idx, k_idx = (neighbours >= 0).nonzero(as_tuple=True)  # (E,)
        nb = neighbours[q_idx, k_idx]  # (E,) point index
        x = torch.cat([point_feats[nb], queries[q_idx] - points[nb]], dim=1)  # (E, D + 3)
        out = self.mlp(x)  # (E, 2)
        return out[:, 0], out[:, 1], q_idx


def mean_per_query(
    values: torch.Tensor, query: torch.Tensor, n_queries: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of per-pair ``values`` (E, C) over each query's pairs -> (Q, C), has_pair (Q,) bool.

    For ``loss.occ_reduce: queries``: every query counts once whatever the local point density;
    a query without a neighbour gets 0 and has_pair False.
    """
    summed = values.new_zeros(n_queries, values.shape[1]).index_add(0, query, values)
    count = torch.bincount(query, minlength=n_queries)  # (Q,)
    return summed / count.clamp_min(1).to(values.dtype)[:, None], count > 0
