"""One row of docs/fidelity.md: a point of the release's protocol (``cmcr.configs.protocol``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Point:
    """One protocol point: where it is set and what pins it."""

    area: str  # pre-training data | pre-training model | losses | optimiser | downstream
    point: str  # what the release does, in words (where: `file:line` of its repository)
    values: dict[str, Any]  # config key -> the official preset's value
    tests: tuple[str, ...]  # "tests/test_x.py::test_name" that fail if the point regresses
    note: str = ""  # how we do it, where it is not obvious; the other value of its key
