"""Open index.html in headless Chromium and check that every plotly figure rendered.

Chromium: ``dashboards/ensure_chromium.sh`` installs it. Missing browser: FAIL when $CI is set,
skip (with the reason) otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cmcr.results import fake_runs
from cmcr.results.collect import Selection
from cmcr.results.report import build

CHROMIUM = Path("/usr/bin/chromium")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip
# Classes plotly gives to drawn data: scatter/bar/contour traces, parcoords axes.
MARKS = {"trace", "y-axis"}


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The browser, or fail (CI) / skip (elsewhere) with how to install it."""
    if not CHROMIUM.is_file():
        msg = f"{CHROMIUM} missing: run dashboards/ensure_chromium.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return CHROMIUM


class _FigureDom(HTMLParser):
    """Per plot div (id fig-*): how many svg.main-svg and data marks lie inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []  # the fig id each open element belongs to
        self.svgs: dict[str, int] = defaultdict(int)
        self.marks: dict[str, int] = defaultdict(int)
        self.rendered: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        owner = self.stack[-1] if self.stack else None
        if tag == "div" and (a.get("id") or "").startswith("fig-"):
            owner = a["id"]
        classes = set((a.get("class") or "").split())
        if owner:
            self.svgs[owner] += tag == "svg" and "main-svg" in classes
            self.marks[owner] += bool(classes & MARKS)
            if "js-plotly-plot" in classes:  # plotly adds it once newPlot has run
                self.rendered.add(owner)
        if tag not in VOID:
            self.stack.append(owner)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self.stack:
            self.stack.pop()


def _dump_dom(chromium: Path, page: Path) -> str:
    cmd = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--virtual-time-budget=20000", "--dump-dom", page.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _check_page(chromium: Path, page: Path, expect_notes: set[str]) -> set[str]:
    """Every fig-* div of the page is rendered with an svg and data marks; returns the ids."""
    source = page.read_text()
    figs = set(re.findall(r'<div id="(fig-[a-z_]+)"', source))
    notes = set(re.findall(r'id="note-([a-z_]+)"', source))
    assert notes == expect_notes
    # Offline: no external script, plotly.js inlined exactly once.
    assert not re.search(r"<script[^>]*\bsrc=", source)
    assert source.count("plotly.js v") == 1 and len(source) > 1_000_000
    dom = _FigureDom()
    dom.feed(_dump_dom(chromium, page))
    for fid in figs:
        assert fid in dom.rendered, f"{fid}: plotly did not render"
        assert dom.svgs[fid] >= 1, f"{fid}: no svg.main-svg"
        assert dom.marks[fid] >= 1, f"{fid}: an empty plot (no trace drawn)"
    return figs


def test_components_page_renders(chromium: Path, tmp_path: Path) -> None:
    """Components study: every figure drawn; the contour says why it is not (no numeric param)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    fake_runs.log_components_sweep(client, "cmcr", study="components", storage=storage)
    build(Selection(tracking_uri=uri, study="components", storage=storage), tmp_path / "rep",
          log=False)  # fmt: skip
    figs = _check_page(chromium, tmp_path / "rep" / "index.html", expect_notes={"contour"})
    assert {"fig-history", "fig-importance", "fig-parallel", "fig-slice", "fig-summary",
            "fig-forest", "fig-per_class", "fig-loss"} == figs  # fmt: skip


def test_swept_page_renders(chromium: Path, tmp_path: Path) -> None:
    """A random search over four numeric params: all eight figures, contour included; one run
    per configuration, so no forest plot (a note says why)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    fake_runs.log_random_sweep(client, "cmcr", study="weights", n_runs=12, storage=storage)
    build(Selection(tracking_uri=uri, study="weights", storage=storage), tmp_path / "rep",
          log=False)  # fmt: skip
    figs = _check_page(chromium, tmp_path / "rep" / "index.html", expect_notes={"forest"})
    assert len(figs) == 8 and "fig-contour" in figs


def test_page_without_study_says_so(chromium: Path, tmp_path: Path) -> None:
    """No Optuna study: one note instead of Optuna's figures; the run figures still render."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    fake_runs.log_random_sweep(client, "cmcr", study="weights", n_runs=6)
    missing = f"sqlite:///{tmp_path / 'no-optuna.db'}"
    build(Selection(tracking_uri=uri, study="weights", storage=missing), tmp_path / "rep",
          log=False)  # fmt: skip
    figs = _check_page(chromium, tmp_path / "rep" / "index.html", expect_notes={"study", "forest"})
    assert figs == {"fig-summary", "fig-per_class", "fig-loss"}
    assert "is not in the storage sqlite:///" in (tmp_path / "rep" / "index.html").read_text()
