"""Sparse residual U-Nets in spconv (SR-UNet / MinkUNet34C shape) and their name registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import spconv.pytorch as spconv
import torch
from torch import nn

from cmcr.configs.schema import ModelConfig
from cmcr.errors import ConfigError
from cmcr.registry import BACKBONES

# a factory gets the input channel count and the model config, from which it reads what applies
# to it (model.stem_kernel: its first convolution's kernel)
BackboneFactory = Callable[[int, ModelConfig], nn.Module]
# BACKBONES (cmcr.registry, home: this module): name -> factory; the registered names are
# model.backbone's choices (cmcr.configs validates against them), so decorating a factory is
# the only step to make a backbone usable


def register_backbone(name: str) -> Callable:
    """Decorator: make a factory ``f(in_channels, cfg: ModelConfig) -> nn.Module`` buildable by name.

    The module must follow the contract of docs/architecture.md (Model): ``forward(coords,
    feats, spatial_shape, batch_size) -> (V, C)`` and an ``out_dim`` attribute; it should honour
    the ModelConfig keys that apply to it (``stem_kernel``).
    """

    return BACKBONES.register(name)


class BasicBlock(nn.Module):
    """Residual block of two 3×3×3 submanifold convolutions (BatchNorm1d on the features)."""

    def __init__(self, c_in: int, c_out: int, indice_key: str) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(c_in, c_out, 3, bias=False, indice_key=indice_key)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = spconv.SubMConv3d(c_out, c_out, 3, bias=False, indice_key=indice_key)
        self.bn2 = nn.BatchNorm1d(c_out)
        # a 1×1 projection only where the channel count changes (as in MinkUNet)
        self.down = (
            nn.Sequential(nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out))
            if c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        """Two convolutions plus the (projected) identity, then ReLU."""
        identity = self.down(x.features)
        out = self.conv1(x)
        out = out.replace_feature(torch.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(torch.relu(self.bn2(out.features) + identity))


def _stage(c_in: int, c_out: int, n_blocks: int, key: str) -> nn.ModuleList:
    return nn.ModuleList(BasicBlock(c_in if i == 0 else c_out, c_out, key) for i in range(n_blocks))


class SparseResUNet(nn.Module):
    """Sparse residual U-Net: stride-2 convs down, inverse convs up, skip concatenation."""

    def __init__(
        self,
        in_channels: int,
        enc_planes: Sequence[int],
        dec_planes: Sequence[int],
        enc_layers: Sequence[int],
        dec_layers: Sequence[int],
        init_dim: int,
        stem_kernel: int,
    ) -> None:
        super().__init__()
        n = len(enc_planes)
        assert len(dec_planes) == n and len(enc_layers) == n and len(dec_layers) == n
        self.stem = spconv.SubMConv3d(
            in_channels, init_dim, stem_kernel, bias=False, indice_key="stem"
        )
        self.stem_bn = nn.BatchNorm1d(init_dim)
        self.down, self.down_bn, self.enc = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skip_dims, c = [init_dim], init_dim
        for i in range(n):
            # the stride-2 conv keeps the channel count; the stage after it changes it (MinkUNet)
            self.down.append(spconv.SparseConv3d(c, c, 2, 2, bias=False, indice_key=f"down{i}"))
            self.down_bn.append(nn.BatchNorm1d(c))
            self.enc.append(_stage(c, enc_planes[i], enc_layers[i], f"subm{i + 1}"))
            c = enc_planes[i]
            skip_dims.append(c)
        self.up, self.up_bn, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for j in range(n):
            level = n - 1 - j  # the resolution this decoder stage returns to
            self.up.append(
                spconv.SparseInverseConv3d(
                    c, dec_planes[j], 2, indice_key=f"down{level}", bias=False
                )
            )
            self.up_bn.append(nn.BatchNorm1d(dec_planes[j]))
            c_cat = dec_planes[j] + skip_dims[level]
            self.dec.append(_stage(c_cat, dec_planes[j], dec_layers[j], f"subm{level}"))
            c = dec_planes[j]
        self.out_dim = c

    def forward(
        self, coords: torch.Tensor, feats: torch.Tensor, spatial_shape: list[int], batch_size: int
    ) -> torch.Tensor:
        """Voxel features (V, out_dim) for voxels ``coords`` (V, 4) with input ``feats`` (V, C_in)."""
        x = spconv.SparseConvTensor(feats, coords.int(), list(spatial_shape), batch_size)
        x = self.stem(x)
        x = x.replace_feature(torch.relu(self.stem_bn(x.features)))
        skips = [x]
        for down, bn, stage in zip(self.down, self.down_bn, self.enc, strict=True):
            x = down(x)
            x = x.replace_feature(torch.relu(bn(x.features)))
            for block in stage:
                x = block(x)
            skips.append(x)
        skips.pop()  # the deepest output is x itself
        for up, bn, stage in zip(self.up, self.up_bn, self.dec, strict=True):
            x = up(x)
            skip = skips.pop()
            # inverse conv restores exactly the skip's indices, row for row
            x = x.replace_feature(torch.cat([torch.relu(bn(x.features)), skip.features], dim=1))
            for block in stage:
                x = block(x)
        return x.features  # (V, out_dim), rows in the order of ``coords``


@register_backbone("unet34c")
def unet34c(in_channels: int, cfg: ModelConfig) -> SparseResUNet:
    """MinkUNet34C / SR-UNet: encoder 32-64-128-256, decoder 256-128-96-96."""
    return SparseResUNet(in_channels, (32, 64, 128, 256), (256, 128, 96, 96),
                         (2, 3, 4, 6), (2, 2, 2, 2), init_dim=32,
                         stem_kernel=cfg.stem_kernel)  # fmt: skip


@register_backbone("unet_small")
def unet_small(in_channels: int, cfg: ModelConfig) -> SparseResUNet:
    """A narrow three-level U-Net, fast on CPU (smoke and demo presets)."""
    return SparseResUNet(in_channels, (16, 32, 64), (64, 32, 32), (1, 1, 1), (1, 1, 1),
                         init_dim=16, stem_kernel=cfg.stem_kernel)  # fmt: skip


BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
BLOCK_BN_MOMENTUM = 0.1  # the release's residual blocks keep BatchNorm's default


def set_bn_momentum(module: nn.Module, momentum: float, scope: str = "all") -> nn.Module:
    """Set the running-statistics momentum of the BatchNorms in ``module`` (in place).

    The release uses 0.05 in pre-training (model.bn_momentum) and 0.02 downstream
    (downstream.bn_momentum). ``scope`` (model.bn_momentum_scope): "all" sets every BatchNorm;
    "outside_blocks" is the release's effective rule: its residual blocks are built without
    the value (model/resnet.py:140-163 passes bn_momentum to the shortcut's BatchNorm only,
    lines 133-138), so their two inner BatchNorms keep 0.1 and the stem, stride-2, transposed
    and shortcut BatchNorms take ``momentum`` (16 of unet34c's 62).
    """
    inner = set()
    if scope == "outside_blocks":
        inner = {id(b.bn1) for b in module.modules() if isinstance(b, BasicBlock)}
        inner |= {id(b.bn2) for b in module.modules() if isinstance(b, BasicBlock)}
    for m in module.modules():
        if isinstance(m, BN_TYPES):
            m.momentum = BLOCK_BN_MOMENTUM if id(m) in inner else momentum
    return module


def build_backbone(cfg: ModelConfig, in_channels: int = 1) -> nn.Module:
    """The backbone named by ``cfg.backbone`` (input: one intensity channel per voxel).

    BatchNorm momentum is not set here: pre-training (model.bn_momentum) and downstream
    (downstream.bn_momentum) each apply theirs with ``set_bn_momentum``.
    """
    if cfg.backbone not in BACKBONES:
        raise ConfigError(
            f"model.backbone: expected one of {sorted(BACKBONES)}, got {cfg.backbone!r}"
        )
    return BACKBONES[cfg.backbone](in_channels, cfg)
