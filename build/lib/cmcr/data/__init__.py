"""Datasets, geometry, augmentation, masking, occupancy queries, collate and loaders."""

from cmcr.data.check import check_data, check_downstream_data, check_pretrain_data
from cmcr.data.collate import collate_pretrain, collate_seg
from cmcr.data.loader import EpochSampler, build_pretrain_loader, build_seg_loader, set_loader_epoch
from cmcr.data.pretrain import PretrainDataset
from cmcr.data.seg import SegDataset

__all__ = [
    "EpochSampler",
    "PretrainDataset",
    "SegDataset",
    "build_pretrain_loader",
    "check_data",
    "check_downstream_data",
    "check_pretrain_data",
    "build_seg_loader",
    "collate_pretrain",
    "collate_seg",
    "set_loader_epoch",
]
