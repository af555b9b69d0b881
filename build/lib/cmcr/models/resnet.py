"""ResNet-18/50 written with torchvision's parameter names (torchvision is unavailable here).

A torchvision state dict or a MoCo-v2 checkpoint loads into it; weights are never chosen
silently: ``model.image_weights`` must be a readable file or the explicit word ``random``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cmcr.errors import CheckpointError
from cmcr.registry import IMAGE_ENCODERS
from cmcr.weights import check_image_weights, read_torch_file

# (block kind, blocks per stage)
RESNET_SPECS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}
# IMAGE_ENCODERS (cmcr.registry, home: this module): name -> factory of an image trunk:
# (I, 3, H, W) -> (I, out_dim, H/32, W/32), attribute out_dim; the registered names are
# model.image_encoder's choices (cmcr.configs validates against them)


def register_image_encoder(name: str) -> Callable:
    """Decorator: make an image encoder factory ``f() -> nn.Module`` buildable by name."""

    return IMAGE_ENCODERS.register(name)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (expansion 1)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv-bn-relu-conv-bn plus identity, relu."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (expansion 4, stride on the 3×3 conv: ResNet v1.5)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """1×1 reduce, 3×3, 1×1 expand, plus identity, relu."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """ResNet trunk without the classifier: ``forward`` returns the stride-32 feature map."""

    def __init__(self, name: str) -> None:
        super().__init__()
        kind, layers = RESNET_SPECS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for i, n_blocks in enumerate(layers):
            width, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks = []
            for b in range(n_blocks):
                down = None
                if b == 0 and (stride != 1 or c_in != width * block.expansion):
                    down = nn.Sequential(
                        nn.Conv2d(c_in, width * block.expansion, 1, stride, bias=False),
                        nn.BatchNorm2d(width * block.expansion),
                    )
                blocks.append(block(c_in, width, stride if b == 0 else 1, down))
                c_in = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(I, 3, H, W) normalised images -> (I, out_dim, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_image_encoder("resnet18")
def resnet18() -> ResNet:
    """torchvision's ResNet-18 trunk (out_dim 512)."""
    return ResNet("resnet18")


@register_image_encoder("resnet50")
def resnet50() -> ResNet:
    """torchvision's ResNet-50 trunk (out_dim 2048), the paper's MoCo-v2 encoder."""
    return ResNet("resnet50")


def _extract_state_dict(obj: object, path: str) -> dict[str, torch.Tensor]:
    """The trunk's weights from a MoCo-v2 checkpoint or a plain torchvision state dict."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"model.image_weights '{path}': expected a state dict")
    moco = "module.encoder_q."
    if any(k.startswith(moco) for k in sd):
        sd = {k[len(moco) :]: v for k, v in sd.items() if k.startswith(moco)}
    elif any(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    # the classifier / MoCo projection head is not part of the frozen encoder
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def load_resnet(name: str, weights: str) -> ResNet:
    """The registered encoder ``name`` with weights from a MoCo-v2/torchvision file or ``random``."""
    if name not in IMAGE_ENCODERS:
        raise CheckpointError(
            f"model.image_encoder: expected one of {sorted(IMAGE_ENCODERS)}, got {name!r}"
        )
    net = IMAGE_ENCODERS[name]()
    if weights == "random":
        return net
    check_image_weights(weights)
    obj = read_torch_file(weights, "model.image_weights")
    sd = _extract_state_dict(obj, weights)
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatch: e.g. ResNet-50 weights for a ResNet-18
        raise CheckpointError(
            f"model.image_weights '{weights}': does not fit {name} ({str(exc)[:200]})"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"model.image_weights '{weights}': does not fit {name} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return net
