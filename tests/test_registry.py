"""The generic registry: a taken name and an unknown name are errors (the latter listing the
known names, never a fallback), and its homes are imported on the first lookup only."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from cmcr.errors import CMCRError
from cmcr.registry import Registry


def test_register_get_names_and_errors() -> None:
    reg = Registry("widget")

    @reg.register("a")
    def a() -> int:
        return 1

    reg.register("b")(len)
    assert reg.get("a") is a and reg["b"] is len and "a" in reg and "z" not in reg
    assert reg.names() == ("a", "b") and list(reg) == ["a", "b"] and len(reg) == 2
    reg.register("a")(a)  # the same object again: a no-op
    with pytest.raises(CMCRError, match="widget 'a' is already defined"):
        reg.register("a")(len)
    with pytest.raises(CMCRError, match="unknown widget 'z': expected one of a, b"):
        reg.get("z")
    reg.unregister("b")
    assert reg.names() == ("a",)


def test_homes_are_imported_on_the_first_lookup(tmp_path: Path, monkeypatch) -> None:
    reg = Registry("part", homes=("toy_home_mod",))
    # the home registers itself into ``reg``, reached through a stand-in module
    monkeypatch.setitem(sys.modules, "toy_registry_holder", types.SimpleNamespace(REG=reg))
    (tmp_path / "toy_home_mod.py").write_text(
        "from toy_registry_holder import REG\nREG.register('from_home')(object)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy_home_mod" not in sys.modules
    assert reg.names() == ("from_home",)
    assert "toy_home_mod" in sys.modules
    monkeypatch.delitem(sys.modules, "toy_home_mod")


def test_the_registries_load_light() -> None:
    """cmcr.registry (and the config check through it) imports no torch until a lookup."""
    code = "import sys, cmcr.registry, cmcr.names; print(sorted({'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
