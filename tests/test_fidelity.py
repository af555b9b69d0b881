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


def _test_source(ref: str) -> str:
    """The source text of a named test ("tests/test_x.py::test_name")."""
    file, name = ref.split("::")
    text = (ROOT / file).read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node) or ""
    return ""


# the keys whose row has an alternative value (a choice or a switch): a named test must set or
# read the key itself, so that flipping it is what the test checks (not only the preset value)
SWITCHES = sorted(
    (i, key)
    for i, p in enumerate(POINTS)
    for key, value in p.values.items()
    if isinstance(value, (str, bool))
)


# switches whose named test exercises the component's own argument rather than the key (why)
THROUGH_THE_COMPONENT = {
    "data.mask_fill": "FrozenImageEncoder is called with both fills",
    "model.image_head_align_corners": "the test flips ImageHead.align_corners",
    "model.occ_last_relu": "the test builds OccupancyDecoder(last_relu=True)",
    "loss.orth_rows": "the test compares the loss with the points' value by hand",
    "loss.mim_on": "parametrised over both values of L.mim's argument (its formula: issue 30)",
}


@pytest.mark.parametrize(("row", "key"), SWITCHES, ids=[k for _, k in SWITCHES])
def test_every_switch_is_exercised_by_a_named_test(row: int, key: str) -> None:
    point = POINTS[row]
    if key in THROUGH_THE_COMPONENT:
        return
    field = key.rsplit(".", 1)[-1]
    sources = [_test_source(ref) for ref in point.tests]
    assert any(field in src for src in sources), f"{key}: no named test of row {row + 1} sets it"


def test_fidelity_doc_is_up_to_date() -> None:
    doc = (ROOT / "docs" / "fidelity.md").read_text()
    assert render(doc) == doc, "run: python -m cmcr.configs.protocol"


def test_pretraining_optimiser_is_adamw_with_a_constant_lr() -> None:
    import torch

    from cmcr.engine.train import build_optimizer, build_scheduler

    cfg = load_config("official")
    net = torch.nn.Linear(3, 2)
    opt = build_optimizer(cfg, net)
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["lr"] == 1e-3 and group["weight_decay"] == 0.01  # AdamW's own default
    assert torch.optim.AdamW([torch.zeros(1)]).param_groups[0]["weight_decay"] == 0.01
    sched = build_scheduler(cfg, opt, total=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1e-3] * 100  # constant: no warmup, no decay
