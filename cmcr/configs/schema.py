"""Typed configuration: the single source of truth for every hyperparameter.

Presets (YAML beside this file) hold only what differs from these defaults. The CLI, the
sweeps and the tests all change values through ``cmcr.configs.apply_overrides`` with dotted
keys (``loss.weights.mim=0.5``); the flattened keys are the MLflow param names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any

NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)


def setting(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    registry: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    length: int | None = None,
    min_length: int | None = None,
    finite: bool = True,
) -> Any:
    """A dataclass field that declares its allowed values; ``validate_config`` checks them.

    ``choices``: the fixed allowed strings; ``registry``: the name of a model registry whose
    registered names are the choices (looked up when validating, so registering is enough);
    ``ge``/``gt``/``le``/``lt``: bounds of a number (of each item of a list); ``finite``: floats
    reject inf and nan; ``length``/``min_length``: of a list.
    """
    given = dict(choices=choices, registry=registry, ge=ge, gt=gt, le=le, lt=lt)
    given.update(length=length, min_length=min_length)
    meta = {k: v for k, v in given.items() if v is not None}
    meta["finite"] = finite
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


PROB = {"ge": 0.0, "le": 1.0}  # a probability or a fraction that may be 0 or 1
POSITIVE = {"gt": 0}
COUNT = {"ge": 1}  # a count that must be at least one
OPTIONAL_COUNT = {"ge": 0}  # 0 means "off" or "all", as the field's comment says


@dataclass
class DataConfig:
    """Where the data lives and how samples are built (METHOD.md, Data)."""

    dataroot: str = "data/synthetic"  # CMCR_DATA_ROOT overrides the default
    version: str = "v1.0-mini"
    train_split: str = "mini_train"
    val_split: str = "mini_val"
    cameras: list[str] = setting(
        factory=lambda: list(NUSCENES_CAMERAS), choices=NUSCENES_CAMERAS, min_length=1
    )
    # (H, W) after crop; multiples of 32 (a rule in cmcr/configs/validate.py)
    image_size: list[int] = setting(factory=lambda: [224, 416], length=2, **POSITIVE)
    # area fraction range [min, max]; min <= max is a rule in validate.py
    crop_scale: list[float] = setting(factory=lambda: [0.7, 1.0], length=2, gt=0.0, le=1.0)
    hflip_prob: float = setting(0.5, **PROB)
    rotate: bool = True  # random rotation of the cloud about z
    flip_prob: float = setting(0.5, **PROB)  # probability of flipping each of the x and y axes
    min_depth: float = setting(1.0, ge=0.0)
    voxel_size: float = setting(0.1, **POSITIVE)
    # 0 = keep every point; else random subsample (CPU presets)
    max_points: int = setting(0, **OPTIONAL_COUNT)
    mask_image_prob: float = setting(0.5, **PROB)
    mask_ratio: float = setting(0.5, **PROB)
    mask_patch: int = setting(16, **COUNT)
    n_queries: int = setting(2048, **OPTIONAL_COUNT)
    # inside / near-outside queries move U(0, query_offset) m
    query_offset: float = setting(0.1, ge=0.0)
    query_radius: float = setting(1.0, **POSITIVE)
    max_neighbours: int = setting(16, **COUNT)
    num_workers: int = setting(2, **OPTIONAL_COUNT)
    # 0 = all keyframes of the split; else the first N (smoke runs)
    max_samples: int = setting(0, **OPTIONAL_COUNT)


@dataclass
class ModelConfig:
    """Network shapes (METHOD.md, Model)."""

    # the names registered with @register_backbone (cmcr/models/backbone.py)
    backbone: str = setting("unet34c", registry="backbone")
    feat_dim: int = setting(64, **COUNT)
    # the names registered with @register_image_encoder (cmcr/models/resnet.py)
    image_encoder: str = setting("resnet50", registry="image_encoder")
    image_weights: str = ""  # path to MoCo-v2 / torchvision weights, or "random"; "" is an error
    image_upsample: int = setting(32, **COUNT)
    codebook_size: int = setting(400, **COUNT)
    codebook_decay: float = setting(0.999, gt=0.0, lt=1.0)
    codebook_eps: float = setting(1e-5, **POSITIVE)
    mim_channels: list[int] = setting(factory=lambda: [32, 16], **COUNT)
    occ_hidden: list[int] = setting(factory=lambda: [128, 128, 128], **COUNT)


@dataclass
class LossWeights:
    """Weights of the named loss terms; one function applies them."""

    nce: float = setting(1.0, ge=0.0)
    mim: float = setting(1.0, ge=0.0)
    occ: float = setting(1.0, ge=0.0)
    intensity: float = setting(1.0, ge=0.0)
    orth: float = setting(0.1, ge=0.0)
    commit: float = setting(1.0, ge=0.0)
    cmcm: float = setting(1.0, ge=0.0)
    # weights of terms registered with @register_loss_term (cmcr/losses/registry.py), by name;
    # a registered term is computed only when its weight here is > 0 (docs: How to extend)
    extra: dict[str, float] = setting(factory=dict, registry="loss_term", ge=0.0)


@dataclass
class LossConfig:
    """Loss hyperparameters (METHOD.md, Losses)."""

    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = setting(0.07, **POSITIVE)
    num_matches: int = setting(2048, **COUNT)
    commit_beta: float = setting(0.25, ge=0.0)
    mim_on: str = setting("all", choices=("all", "masked"))


@dataclass
class MethodConfig:
    """Which method and which CMCR components are on (the ablation switches)."""

    name: str = setting("cmcr", choices=("cmcr", "ppkt", "random"))
    mim: bool = True
    gemim: bool = True
    occupancy: bool = True
    codebook: bool = True
    orth: bool = True


@dataclass
class TrainConfig:
    """Pre-training loop."""

    seed: int = setting(0, ge=0)  # numpy's SeedSequence takes non-negative entropy only
    epochs: int = setting(10, ge=0)  # ignored when max_steps > 0
    # 0 = epochs decide; else stop after this many optimiser steps
    max_steps: int = setting(0, **OPTIONAL_COUNT)
    batch_size: int = setting(12, **COUNT)
    lr: float = setting(1e-3, **POSITIVE)
    weight_decay: float = setting(1e-4, ge=0.0)
    scheduler: str = setting("cosine", choices=("cosine", "constant"))
    warmup_steps: int = setting(0, ge=0)
    grad_accum: int = setting(1, **COUNT)
    grad_clip: float = setting(0.0, ge=0.0)  # 0 = no clipping
    # GPU only: cmcr.configs.resolve_config turns it to "no" on a machine without CUDA
    mixed_precision: str = setting("no", choices=("no", "fp16", "bf16"))
    checkpoint_every: int = setting(50, **COUNT)
    keep_checkpoints: int = setting(2, **COUNT)
    log_every: int = setting(1, **COUNT)


@dataclass
class DownstreamConfig:
    """Linear probing and fine-tuning on lidarseg (METHOD.md, Downstream evaluation)."""

    mode: str = setting("probe", choices=("probe", "finetune"))
    label_fraction: float = setting(0.01, gt=0.0, le=1.0)
    batch_size: int = setting(8, **COUNT)
    probe_lr: float = setting(0.05, **POSITIVE)
    probe_epochs: int = setting(50, **COUNT)  # at least one, so that one evaluation runs
    finetune_lr: float = setting(0.02, **POSITIVE)
    finetune_head_lr: float = setting(2.0, **POSITIVE)
    finetune_epochs: int = setting(100, **COUNT)
    max_steps: int = setting(0, **OPTIONAL_COUNT)  # 0 = epochs decide
    eval_every: int = setting(1, **COUNT)  # epochs


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
