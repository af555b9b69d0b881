"""Write predictions in the official nuScenes-lidarseg submission layout.

``DIR/lidarseg/<split>/<lidar_sample_data_token>_lidarseg.bin``: uint8, one label per point of the
lidar file, in file order, in the challenge index space 1..16 (the devkit's evaluator asserts that
predictions lie in 1..16 and maps only the ground truth); ``DIR/<split>/submission.json`` holds the
``meta`` block the devkit's ``validate_submission`` checks. ``nuscenes.eval.lidarseg.evaluate
.LidarSegEval(nusc, DIR, eval_set=<split>)`` then scores the folder.

SemanticKITTI (``KittiWriter``): ``DIR/sequences/NN/predictions/NNNNNN.label``, uint32, one raw
label id per point of the scan in file order, through the learning map's inverse (class 1..19
-> raw id), the layout semantic-kitti-api's ``evaluate_semantics.py`` reads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from cmcr.data.classes import NUM_CHALLENGE
from cmcr.errors import CMCRError


class _BatchWriter:
    """What both submission writers share: a batch split into scans, each passed to ``write``."""

    def write(self, token: str, labels: torch.Tensor | np.ndarray) -> Path:
        raise NotImplementedError

    def write_batch(
        self, tokens: list[str], labels: torch.Tensor, num_points: torch.Tensor
    ) -> None:
        """Split a batch's concatenated per-point labels (N,) by ``num_points`` (B,) and write."""
        chunks = torch.split(labels.cpu(), [int(n) for n in num_points.tolist()])
        for token, chunk in zip(tokens, chunks, strict=True):
            self.write(token, chunk)


class ExportError(CMCRError):
    """A lidarseg export cannot be written as asked."""


# what a submission folder may hold: --overwrite clears only a folder of these (a stale export),
# never one holding anything else (a mistyped --export pointing at someone's data)
EXPORT_SUFFIXES = (".label", "_lidarseg.bin", "submission.json", ".zip")


def prepare_export(out_dir: str | Path, overwrite: bool = False, zipped: bool = False) -> Path:
    """Check the export folder before any training: created if absent, refused when it is not a
    writable folder or is not empty (``overwrite``: cleared first, if it holds only files of a
    previous export); ``zipped``: ``DIR.zip`` (``zip_export``) is refused if present, unless
    ``overwrite``; ExportError naming ``--export``."""
    root = Path(out_dir)
    if zipped and zip_path(root).exists() and not (overwrite and zip_path(root).is_file()):
        raise ExportError(f"--zip: '{zip_path(root)}' exists (pass --overwrite to replace it)")
    try:
        if root.exists() and not root.is_dir():
            raise ExportError(f"--export '{root}': exists and is not a folder")
        if root.is_dir() and any(root.iterdir()):
            if not overwrite:
                raise ExportError(
                    f"--export '{root}': folder is not empty (stale predictions would mix with "
                    "new ones; pass --overwrite to clear it, or choose an empty folder)"
                )
            _clear_export(root)
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise ExportError(f"--export '{root}': folder is not writable")
    except OSError as exc:
        raise ExportError(f"--export '{root}': {exc.strerror or exc}") from None
    return root


def zip_path(root: Path) -> Path:
    """``DIR.zip`` beside the export folder ``DIR``."""
    return root.with_name(root.name + ".zip")


def zip_export(out_dir: str | Path) -> Path:
    """Zip the export folder's contents (its top entries at the archive's root, directory
    entries included, as the benchmarks' validators expect) into ``DIR.zip``; its path."""
    root = Path(out_dir)
    try:
        return Path(shutil.make_archive(str(root), "zip", root_dir=root))
    except OSError as exc:
        raise ExportError(f"--zip '{zip_path(root)}': {exc.strerror or exc}") from None


def _clear_export(root: Path) -> None:
    """Empty ``root`` if every file under it is one a submission holds (EXPORT_SUFFIXES)."""
    for path in root.rglob("*"):
        if path.is_symlink() or (not path.is_dir() and not path.name.endswith(EXPORT_SUFFIXES)):
            raise ExportError(
                f"--export '{root}': --overwrite clears only a previous export, and "
                f"'{path.relative_to(root)}' is not a submission file; remove it or choose "
                "another folder"
            )
    for child in root.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _save(path: Path, data: np.ndarray | str) -> None:
    """Write one export file (its folder created); every filesystem error an ExportError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            data.tofile(path)
    except OSError as exc:
        raise ExportError(f"export file '{path}': {exc.strerror or exc}") from None


DEFAULT_META = {
    "use_camera": False,  # the segmentation network sees LiDAR only (cameras teach pre-training)
    "use_lidar": True,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}


class LidarsegWriter(_BatchWriter):
    """Writes one ``<token>_lidarseg.bin`` per scan under ``DIR/lidarseg/<split>/``."""

    def __init__(self, out_dir: str | Path, split: str, meta: dict[str, bool] | None = None):
        self.root = Path(out_dir)
        self.split = split
        self.meta = {**DEFAULT_META, **(meta or {})}
        if set(self.meta) != set(DEFAULT_META) or not all(
            isinstance(v, bool) for v in self.meta.values()
        ):
            raise ExportError(f"submission meta: expected booleans for {sorted(DEFAULT_META)}")
        self.bin_dir = self.root / "lidarseg" / split
        try:
            self.bin_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(f"--export-lidarseg '{self.root}': cannot create ({exc})") from None
        self.written: list[str] = []

    def write(self, token: str, labels: torch.Tensor | np.ndarray) -> Path:
        """Write one scan's per-point labels (1..16) for lidar sample_data ``token``."""
        arr = torch.as_tensor(labels).cpu().numpy().reshape(-1)
        if arr.size == 0 or arr.min() < 1 or arr.max() > NUM_CHALLENGE:
            raise ExportError(f"scan {token}: predictions must lie in 1..{NUM_CHALLENGE}")
        path = self.bin_dir / f"{token}_lidarseg.bin"
        _save(path, arr.astype(np.uint8))
        self.written.append(token)
        return path

    def finish(self) -> Path:
        """Write ``DIR/<split>/submission.json``; returns its path."""
        path = self.root / self.split / "submission.json"
        _save(path, json.dumps({"meta": self.meta}, indent=2) + "\n")
        return path


class KittiWriter(_BatchWriter):
    """Writes one ``sequences/NN/predictions/NNNNNN.label`` per scan (token ``NN/NNNNNN``)."""

    def __init__(self, out_dir: str | Path, inverse: np.ndarray):
        self.root = Path(out_dir)
        self.inverse = np.asarray(inverse, dtype=np.int64)  # (20,) class -> raw id
        try:
            (self.root / "sequences").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(f"--export '{self.root}': cannot create ({exc})") from None
        self.written: list[str] = []

    def write(self, token: str, labels: torch.Tensor | np.ndarray) -> Path:
        """Write one scan's per-point classes (1..19) as raw ids for scan ``NN/NNNNNN``."""
        arr = torch.as_tensor(labels).cpu().numpy().reshape(-1).astype(np.int64)
        top = len(self.inverse) - 1
        if arr.size == 0 or arr.min() < 1 or arr.max() > top:
            raise ExportError(f"scan {token}: predictions must lie in 1..{top}")
        seq, _, frame = token.partition("/")
        path = self.root / "sequences" / seq / "predictions" / f"{frame}.label"
        _save(path, self.inverse[arr].astype(np.uint32))
        self.written.append(token)
        return path

    def finish(self) -> Path:
        """Nothing to add: the folder is the submission; returns its root."""
        return self.root
