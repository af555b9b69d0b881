"""The one safe reader of torch weight files (``weights_only=True``: a file never runs code).

Every weight file the project reads comes through ``read_torch_file``: backbone.pt and the
segmentation weights (``cmcr.engine.checkpoint.load_weights``), and the image encoder's
MoCo-v2 / torchvision file (``cmcr.models.resnet.load_resnet``). Light on purpose (torch only),
so the data checks and the models can use it without importing the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cmcr.errors import CheckpointError, first_line


def read_torch_file(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; CheckpointError naming ``what`` if bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        first = first_line(exc).split(". ")[0][:200]  # torch's first sentence; then advice
        raise CheckpointError(
            f"{what} file '{path}' is corrupt or not a torch state dict ({first})"
        ) from None


def check_image_weights(weights: str, *, read: bool = False) -> None:
    """``model.image_weights`` is ``random`` or an existing file; ``read``: one that torch also
    reads (the pre-flight check: a corrupt file is one line before any run; its fit to the
    encoder: load_resnet)."""
    if weights == "random":
        return
    if not weights:
        raise CheckpointError(
            "model.image_weights is empty: give a MoCo-v2/torchvision weight file, "
            "or 'random' to use an untrained image encoder on purpose"
        )
    if not Path(weights).is_file():
        raise CheckpointError(f"model.image_weights '{weights}': no such file")
    if read:
        read_torch_file(weights, "model.image_weights")
