"""SemanticKITTI (METHOD.md, Second downstream dataset; the release's ``semseg_kitti``).

Its 19 classes scored by semantic-kitti-api's rule (all classes in the mean, an absent one
counting 0), the sequences ``semantickitti.train_sequences`` / ``val_sequences`` under
``semantickitti.root`` (and the test split 11-21, unlabelled: export only), its own section ``semantickitti.*`` (batch, learning rates, label
fractions counted in scans), cylindrical voxels, predictions in the
``sequences/NN/predictions/*.label`` layout; its metric names carry ``semantickitti``.
"""

from __future__ import annotations

from pathlib import Path

from cmcr.configs import Config
from cmcr.data.kitti import (
    KittiSegDataset,
    check_kitti_data,
    is_labelled,
    kitti_root,
    label_maps,
    load_kitti_records,
    select_kitti_records,
)
from cmcr.data.kitti_classes import KITTI_CLASSES
from cmcr.datasets.spec import DownstreamDataset, cartesian_voxels, register_dataset
from cmcr.eval.export import KittiWriter
from cmcr.eval.metrics import LabelSpace

KITTI_SPACE = LabelSpace("semantickitti", KITTI_CLASSES, "zero")


def splits(cfg: Config) -> tuple[str, str]:
    """("train", "val"): semantickitti.train_sequences / val_sequences."""
    return "train", "val"


def count(cfg: Config, split: str, fraction: float = 1.0) -> int:
    """Scans of ``split`` in the label-fraction subset (every k-th scan)."""
    return len(select_kitti_records(cfg, split, fraction))


def writer(cfg: Config, export_dir: str | Path, split: str) -> KittiWriter:
    """sequences/NN/predictions/NNNNNN.label, raw label ids by the root's learning map."""
    return KittiWriter(export_dir, label_maps(kitti_root(cfg))[1])


def labelled(cfg: Config, split: str) -> bool:
    """Whether the split's sequences have labels/ (test, 11-21: none)."""
    return is_labelled(load_kitti_records(cfg, split))


def configure(cfg: Config) -> None:
    """What the release's KITTI config changes, from ``semantickitti.*`` into ``downstream.*``."""
    ds, kc = cfg.downstream, cfg.semantickitti
    ds.batch_size = kc.batch_size
    ds.finetune_lr, ds.finetune_head_lr = kc.finetune_lr, kc.finetune_head_lr
    ds.finetune_label_fraction = kc.finetune_label_fraction
    ds.probe_label_fraction = kc.probe_label_fraction
    ds.label_fraction_unit = "scan"


def voxels(cfg: Config) -> str:
    """Cylindrical voxels of semantickitti.cylinder_size, else Cartesian ones."""
    if cfg.semantickitti.coords == "cylindrical":
        rho, phi, z = cfg.semantickitti.cylinder_size
        return f"cylindrical: ρ {rho:g} m, φ {phi:g}°, z {z:g} m"
    return cartesian_voxels(cfg)


SEMANTICKITTI = register_dataset(
    DownstreamDataset(
        name="semantickitti",
        display="SemanticKITTI",
        space=KITTI_SPACE,
        fraction_key="semantickitti.{mode}_label_fraction",
        splits=splits,
        dataset_cls=KittiSegDataset,
        count=count,
        check=check_kitti_data,
        writer=writer,
        configure=configure,
        voxels=voxels,
        labelled=labelled,
        # the benchmark_kitti study's downstream/semantickitti/seconds, halved for the 2
        # workers that shared the 2 cores (idle 2-core CPU machine, 2026-12-02)
        scan_epoch_s={
            "demo": {"probe": 0.15, "finetune": 0.3},
            "smoke": {"probe": 0.25, "finetune": 0.5},
        },
    )
)
