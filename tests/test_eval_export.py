"""The lidarseg submission writer: layout, dtype, per-scan split, range and meta checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmcr.eval.export import ExportError, LidarsegWriter


def test_layout_and_batch_split(tmp_path) -> None:
    w = LidarsegWriter(tmp_path, "mini_val")
    labels = torch.tensor([1, 2, 3, 16, 16, 5])
    w.write_batch(["tokA", "tokB"], labels, torch.tensor([4, 2]))
    path = w.finish()
    a = np.fromfile(tmp_path / "lidarseg" / "mini_val" / "tokA_lidarseg.bin", dtype=np.uint8)
    b = np.fromfile(tmp_path / "lidarseg" / "mini_val" / "tokB_lidarseg.bin", dtype=np.uint8)
    assert a.tolist() == [1, 2, 3, 16] and b.tolist() == [16, 5]
    assert path == tmp_path / "mini_val" / "submission.json"
    meta = json.loads(path.read_text())["meta"]
    assert meta == {
        "use_camera": False,
        "use_lidar": True,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }


@pytest.mark.parametrize("bad", [[0, 1], [17], []])
def test_rejects_labels_outside_challenge_range(tmp_path, bad) -> None:
    with pytest.raises(ExportError, match="1..16"):
        LidarsegWriter(tmp_path, "val").write("tok", np.array(bad, dtype=np.int64))


def test_rejects_bad_meta(tmp_path) -> None:
    with pytest.raises(ExportError, match="meta"):
        LidarsegWriter(tmp_path, "val", meta={"use_camera": "yes"})  # type: ignore[dict-item]
