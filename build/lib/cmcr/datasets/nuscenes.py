"""nuScenes-lidarseg, the release's main downstream benchmark (METHOD.md, Downstream evaluation).

Its 16 challenge classes scored by the devkit's rule (a class absent from ground truth and
prediction is left out of the mean), ``data.train_split`` / ``data.val_split`` of the world
under ``data.dataroot``, label fractions of ``downstream.*`` counted in scenes, predictions in
the lidarseg submission layout; its metric names are the plain ones (``val/miou``).
"""

from __future__ import annotations

from pathlib import Path

from cmcr.configs import Config
from cmcr.data import SegDataset
from cmcr.data.check import check_nuscenes_labels
from cmcr.data.pretrain import select_records
from cmcr.datasets.spec import DownstreamDataset, register_dataset
from cmcr.eval.export import LidarsegWriter
from cmcr.eval.metrics import NUSCENES_SPACE


def splits(cfg: Config) -> tuple[str, str]:
    """(data.train_split, data.val_split)."""
    return cfg.data.train_split, cfg.data.val_split


def count(cfg: Config, split: str, fraction: float = 1.0) -> int:
    """Keyframes of ``split`` in the label-fraction subset (every k-th scene)."""
    return len(select_records(cfg, split, fraction))


def labelled(cfg: Config, split: str) -> bool:
    """Whether the split's keyframes have lidarseg labels (v1.0-test: none)."""
    return any(r.lidarseg_path for r in select_records(cfg, split))


def writer(cfg: Config, export_dir: str | Path, split: str) -> LidarsegWriter:
    """lidarseg/<split>/<token>_lidarseg.bin and submission.json (the devkit's layout)."""
    return LidarsegWriter(export_dir, split)


NUSCENES = register_dataset(
    DownstreamDataset(
        name="nuscenes",
        display="nuScenes",
        space=NUSCENES_SPACE,
        fraction_key="downstream.{mode}_label_fraction",
        splits=splits,
        dataset_cls=SegDataset,
        count=count,
        check=check_nuscenes_labels,
        writer=writer,
        labelled=labelled,
        plain_keys=True,
        # measured with `make demo` and 2-trial demo / smoke sweeps on an idle 2-core CPU
        # machine, 2026-12-06 (cmcr/sweep/estimate.py, MEASURED)
        scan_epoch_s={
            "demo": {"probe": 0.052, "finetune": 0.067},
            "smoke": {"probe": 0.055, "finetune": 0.067},
        },
    )
)
