"""Models: backbone registry (spconv SR-UNet), frozen image encoder, unified codebook, CMCRModel."""

from cmcr.models.backbone import BACKBONES, SparseResUNet, build_backbone, register_backbone
from cmcr.models.cmcr import CMCRModel, active_terms
from cmcr.models.codebook import UnifiedCodebook
from cmcr.models.resnet import ResNet, load_resnet

__all__ = [
    "BACKBONES",
    "CMCRModel",
    "ResNet",
    "SparseResUNet",
    "UnifiedCodebook",
    "active_terms",
    "build_backbone",
    "load_resnet",
    "register_backbone",
]
