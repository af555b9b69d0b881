"""Models: backbone and image encoder registries (spconv SR-UNet), frozen image encoder, unified codebook, CMCRModel."""

from cmcr.models.backbone import BACKBONES, SparseResUNet, build_backbone, register_backbone
from cmcr.models.cmcr import CMCRModel, active_terms
from cmcr.models.codebook import UnifiedCodebook
from cmcr.models.resnet import IMAGE_ENCODERS, ResNet, load_resnet, register_image_encoder

__all__ = [
    "BACKBONES",
    "IMAGE_ENCODERS",
    "CMCRModel",
    "ResNet",
    "SparseResUNet",
    "UnifiedCodebook",
    "active_terms",
    "build_backbone",
    "load_resnet",
    "register_backbone",
    "register_image_encoder",
]
