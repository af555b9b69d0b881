"""The raw lidarseg classes for the generator, read from ``cmcr/data/classes.py`` without torch
(and SemanticKITTI's, from ``cmcr/data/kitti_classes.py``, the same way).

``cmcr.data``'s package ``__init__`` imports the datasets (and so torch); ``cmcr synth`` must stay
torch-free, so this loads that one file under a private name. Same file, same values.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_data_module(stem: str):
    """``cmcr/data/<stem>.py`` without importing the ``cmcr.data`` package (and so torch)."""
    if f"cmcr.data.{stem}" in sys.modules:  # already imported the ordinary way: reuse it
        return sys.modules[f"cmcr.data.{stem}"]
    name = f"cmcr.synth._data_{stem}"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "data" / f"{stem}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_classes = load_data_module("classes")
RAW_CLASSES: tuple[str, ...] = _classes.RAW_CLASSES
RAW_INDEX: dict[str, int] = _classes.RAW_INDEX
