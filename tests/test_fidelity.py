"""docs/fidelity.md: every release protocol point has a config value, a test, and a table row."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cmcr.configs import flatten_config, load_config
from cmcr.configs.protocol import POINTS, official_values, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("key", sorted(official_values()))
def test_official_preset_holds_the_release_value(key: str) -> None:
    flat = flatten_config(load_config("official"))
    want = official_values()[key]
    got = flat[key]
    floats = want if isinstance(want, list) else [want]
    if floats and all(isinstance(v, float) for v in floats):
        assert got == pytest.approx(want), key
    else:
        assert got == want, key


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_point_names_tests_that_exist() -> None:
    for p in POINTS:
        assert p.tests, f"protocol point without a test: {p.point}"
        for ref in p.tests:
            file, name = ref.split("::")
            path = ROOT / file
            assert path.is_file(), ref
            assert name in _test_names(path), ref


def test_fidelity_doc_is_up_to_date() -> None:
    doc = (ROOT / "docs" / "fidelity.md").read_text()
    assert render(doc) == doc, "run: python -m cmcr.configs.protocol"
