"""Typed configuration: the single source of truth for every hyperparameter.

Presets (YAML beside this file) hold only what differs from these defaults. The CLI, the
sweeps and the tests all change values through ``cmcr.configs.apply_overrides`` with dotted
keys (``loss.weights.mim=0.5``); the flattened keys are the MLflow param names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)


@dataclass
class DataConfig:
    """Where the data lives and how samples are built (METHOD.md, Data)."""

    dataroot: str = "data/synthetic"  # CMCR_DATA_ROOT overrides the default
    version: str = "v1.0-mini"
    train_split: str = "mini_train"
    val_split: str = "mini_val"
    cameras: list[str] = field(default_factory=lambda: list(NUSCENES_CAMERAS))
    image_size: list[int] = field(default_factory=lambda: [224, 416])  # (H, W) after crop
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])  # area fraction range
    hflip_prob: float = 0.5
    rotate: bool = True  # random rotation of the cloud about z
    flip_prob: float = 0.5  # probability of flipping each of the x and y axes
    min_depth: float = 1.0
    voxel_size: float = 0.1
    max_points: int = 0  # 0 = keep every point; else random subsample (CPU presets)
    mask_image_prob: float = 0.5
    mask_ratio: float = 0.5
    mask_patch: int = 16
    n_queries: int = 2048
    query_offset: float = 0.1  # inside / near-outside queries move U(0, query_offset) m
    query_radius: float = 1.0
    max_neighbours: int = 16
    num_workers: int = 2
    max_samples: int = 0  # 0 = all keyframes of the split; else the first N (smoke runs)


@dataclass
class ModelConfig:
    """Network shapes (METHOD.md, Model)."""

    backbone: str = "unet34c"  # registry name: unet34c | unet_small
    feat_dim: int = 64
    image_encoder: str = "resnet50"  # resnet50 | resnet18
    image_weights: str = ""  # path to MoCo-v2 / torchvision weights, or "random"; "" is an error
    image_upsample: int = 32
    codebook_size: int = 400
    codebook_decay: float = 0.999
    codebook_eps: float = 1e-5
    mim_channels: list[int] = field(default_factory=lambda: [32, 16])
    occ_hidden: list[int] = field(default_factory=lambda: [128, 128, 128])


@dataclass
class LossWeights:
    """Weights of the named loss terms; one function applies them."""

    nce: float = 1.0
    mim: float = 1.0
    occ: float = 1.0
    intensity: float = 1.0
    orth: float = 0.1
    commit: float = 1.0
    cmcm: float = 1.0


@dataclass
class LossConfig:
    """Loss hyperparameters (METHOD.md, Losses)."""

    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 0.07
    num_matches: int = 2048
    commit_beta: float = 0.25
    mim_on: str = "all"  # all | masked


@dataclass
class MethodConfig:
    """Which method and which CMCR components are on (the ablation switches)."""

    name: str = "cmcr"  # cmcr | ppkt | random
    mim: bool = True
    gemim: bool = True
    occupancy: bool = True
    codebook: bool = True
    orth: bool = True


@dataclass
class TrainConfig:
    """Pre-training loop."""

    seed: int = 0
    epochs: int = 10
    max_steps: int = 0  # 0 = epochs decide; else stop after this many optimiser steps
    batch_size: int = 12
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | constant
    warmup_steps: int = 0
    grad_accum: int = 1
    grad_clip: float = 0.0
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU only)
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1


@dataclass
class DownstreamConfig:
    """Linear probing and fine-tuning on lidarseg (METHOD.md, Downstream evaluation)."""

    mode: str = "probe"  # probe | finetune
    label_fraction: float = 0.01
    batch_size: int = 8
    probe_lr: float = 0.05
    probe_epochs: int = 50
    finetune_lr: float = 0.02
    finetune_head_lr: float = 2.0
    finetune_epochs: int = 100
    max_steps: int = 0  # 0 = epochs decide
    eval_every: int = 1  # epochs


@dataclass
class TrackingConfig:
    """Where runs are recorded."""

    tracking_uri: str = ""  # "" = MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db
    experiment: str = "cmcr"
    output_dir: str = "runs"  # checkpoints and artifacts of local runs
    system_metrics: bool = True


@dataclass
class Config:
    """A whole run: data, model, losses, method switches, training, evaluation, tracking."""

    preset: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
