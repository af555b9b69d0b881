"""The raw lidarseg classes for the generator, read from ``cmcr/data/classes.py`` without torch.

``cmcr.data``'s package ``__init__`` imports the datasets (and so torch); ``cmcr synth`` must stay
torch-free, so this loads that one file under a private name. Same file, same values.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "cmcr.synth._data_classes"


def _load():
    if "cmcr.data.classes" in sys.modules:  # already imported the ordinary way: reuse it
        return sys.modules["cmcr.data.classes"]
    if _NAME not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "data" / "classes.py"
        spec = importlib.util.spec_from_file_location(_NAME, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


_classes = _load()
RAW_CLASSES: tuple[str, ...] = _classes.RAW_CLASSES
RAW_INDEX: dict[str, int] = _classes.RAW_INDEX
