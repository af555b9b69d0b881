"""A downstream dataset defined in a test module: one ``register_dataset`` call is the only step
(docs/architecture.md, How to extend). The toy dataset is the smoke world's lidarseg scans with
the 16 challenge classes merged into 3; it has its own label space, metric names and weights
folder, and the config accepts ``downstream.dataset=toy`` while refusing unknown names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmcr.configs import ConfigError, load_config
from cmcr.data import SegDataset
from cmcr.data.check import check_nuscenes_labels
from cmcr.data.classes import CHALLENGE_CLASSES
from cmcr.datasets import DATASETS, DownstreamDataset, register_dataset
from cmcr.datasets.nuscenes import count, splits
from cmcr.engine.downstream import run_downstream
from cmcr.engine.evaluate import evaluate_batches, metric_dict
from cmcr.errors import CMCRError
from cmcr.eval.metrics import LabelSpace
from cmcr.models.segmentation import SegModel
from cmcr.tracking.store import make_client

TOY_CLASSES = ("ignore", "vehicle", "ground", "other")
_GROUP = {
    "ignore": 0,
    **dict.fromkeys(("bicycle", "bus", "car", "construction_vehicle", "motorcycle"), 1),
    **dict.fromkeys(("trailer", "truck"), 1),
    **dict.fromkeys(("driveable_surface", "other_flat", "sidewalk", "terrain"), 2),
    **dict.fromkeys(("barrier", "pedestrian", "traffic_cone", "manmade", "vegetation"), 3),
}
TO_TOY = np.array([_GROUP[name] for name in CHALLENGE_CLASSES], dtype=np.int64)  # (17,)
# "zero": an absent class counts 0 in the mean, unlike nuScenes' "nan"
TOY_SPACE = LabelSpace("toy", TOY_CLASSES, "zero")


class ToySegDataset(SegDataset):
    """The nuScenes-format scans with their labels merged into the toy classes."""

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        sample = super().__getitem__(index)
        sample["labels"] = TO_TOY[sample["labels"]]
        return sample


class TokenWriter:
    """A submission writer that only remembers which scans it was given."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir, self.tokens = Path(out_dir), []

    def write_batch(self, tokens: list[str], pred: torch.Tensor, num_points: torch.Tensor) -> None:
        """Record the batch's scans."""
        self.tokens.extend(tokens)

    def finish(self) -> Path:
        """Write the list of scans."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "tokens.txt").write_text("\n".join(self.tokens))
        return self.out_dir


TOY = register_dataset(
    DownstreamDataset(
        name="toy",
        display="Toy",
        space=TOY_SPACE,
        fraction_key="downstream.{mode}_label_fraction",
        splits=splits,
        dataset_cls=ToySegDataset,
        count=count,
        check=check_nuscenes_labels,
        writer=lambda cfg, out, split: TokenWriter(out),
    )
)


def test_toy_is_a_valid_choice_and_unknown_names_are_refused_with_the_known_ones():
    cfg = load_config("smoke", ["downstream.dataset=toy", "downstream.evaluations=[toy/probe]"])
    assert cfg.downstream.dataset == "toy" and cfg.downstream.evaluations == ["toy/probe"]
    assert {"nuscenes", "semantickitti", "toy"} <= set(DATASETS.names())
    with pytest.raises(ConfigError, match="downstream.dataset") as info:
        load_config("smoke", ["downstream.dataset=nope"])
    assert "nuscenes" in str(info.value) and "toy" in str(info.value)
    with pytest.raises(ConfigError, match="downstream.evaluations"):
        load_config("smoke", ["downstream.evaluations=[nope/probe]"])
    with pytest.raises(CMCRError, match="expected one of .*nuscenes.*semantickitti.*toy"):
        DATASETS.get("nope")  # never a fallback to another dataset
    with pytest.raises(CMCRError, match="already defined"):
        register_dataset(DownstreamDataset(**{**TOY.__dict__, "display": "again"}))


def test_toy_network_has_its_own_classes_and_metric_names():
    cfg = load_config("smoke", ["downstream.dataset=toy"])
    assert SegModel(cfg).classifier.out_features == 3 + 1  # + the ignore class (release)
    pred = torch.tensor([1, 1, 2, 2])
    gt = torch.tensor([1, 1, 2, 0])
    batch = {"inverse": torch.arange(4), "labels": gt}
    logits = torch.nn.functional.one_hot(pred - 1, 3).float()  # (V, 3)
    m = evaluate_batches([(logits, batch)], space=TOY.space)
    assert list(m.per_class) == ["vehicle", "ground", "other"]
    # its own rule: "other" is absent from both and counts 0 in the mean
    assert m.per_class["other"] == 0.0
    assert m.miou == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    keys = metric_dict(m, "toy")
    assert {"val/toy/miou", "val/toy/fwiou", "val/toy/iou_vehicle"} <= set(keys)
    assert keys["val/toy/miou_pct"] == round(100 * m.miou, 2) == 66.67  # the table's column


def test_toy_probe_runs_end_to_end(smoke_world: Path, tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(
        "smoke",
        {
            "downstream.dataset": "toy",
            "downstream.mode": "probe",
            "downstream.probe_epochs": 1,
            "data.dataroot": str(smoke_world),
            "tracking.tracking_uri": store,
            "tracking.output_dir": str(tmp_path / "runs"),
        },
    )
    res = run_downstream(cfg, pretrained="none", export_dir=tmp_path / "export")
    assert sorted(res.per_class) == ["ground", "other", "vehicle"]
    run = make_client(store).get_run(res.run_id)
    assert run.data.metrics["val/toy/miou"] == pytest.approx(res.miou)
    assert "val/miou" not in run.data.metrics  # nuScenes' names stay nuScenes'
    assert run.data.tags["cmcr.protocol.schedule.toy"].endswith("→4)")  # 3 classes + ignore
    assert (tmp_path / "runs" / res.run_id / "toy" / "seg_head.pt").is_file()
    assert (tmp_path / "export" / "tokens.txt").read_text()
