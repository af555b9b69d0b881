"""A process's random number generators (Python, NumPy, torch, CUDA) as plain JSON values:
what each rank writes into a checkpoint (``rng_state_<rank>.json``) instead of Accelerate's
pickle, and reads back on resume (cmcr.engine.checkpoint)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmcr.errors import CheckpointError


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch RNG states as plain JSON values."""
    _, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [list(mt), gauss],
        "numpy": [keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(path: Path) -> None:
    """Restore what ``rng_state`` saved (CheckpointError if the file is bad)."""
    try:
        s = json.loads(path.read_text())
        random.setstate((3, tuple(s["python"][0]), s["python"][1]))
        keys, pos, has_gauss, cached = s["numpy"]
        np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(s["torch"], dtype=torch.uint8))
        if torch.cuda.is_available() and "cuda" in s:
            torch.cuda.set_rng_state_all([torch.tensor(c, dtype=torch.uint8) for c in s["cuda"]])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"'{path}' is not an RNG state ({type(exc).__name__})") from None
