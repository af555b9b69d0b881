"""The floors of docs/architecture.md hold: the import contracts (pyproject's
``[tool.importlinter]``: imports go down the floors, no cycle) on the real tree, the contracts
catch a planted upward import and a planted cycle, imports of our package inside functions say
why (``# lazy: <why>``), and modules and functions stay under the size limits (or say why:
``# size: <why>``). ``python -m tests.layers_report`` prints the current findings."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from layers_report import ROOT, lazy_import_offenders, lint_imports, size_offenders


def test_the_import_contracts_hold_on_the_tree():
    status, report = lint_imports()
    assert status == 0, report


def _planted_copy(tmp_path: Path) -> Path:
    """A copy of cmcr/ and pyproject.toml with an upward import hidden in a function of
    cmcr.errors (floor 0 -> cmcr.sweep, floor 8) and a cycle inside one package
    (cmcr.losses.registry -> extra -> registry), which the layers contract alone allows."""
    root = tmp_path / "tree"
    shutil.copytree(ROOT / "cmcr", root / "cmcr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    errors = root / "cmcr" / "errors.py"
    errors.write_text(
        errors.read_text()
        + textwrap.dedent('''

            def _planted() -> None:
                """Planted by tests/test_layers.py: an upward import inside a function."""
                import cmcr.sweep  # lazy: planted

                del cmcr.sweep
            ''')
    )
    registry = root / "cmcr" / "losses" / "registry.py"
    registry.write_text(
        registry.read_text() + "\nfrom cmcr.losses import extra as _planted  # noqa\n"
    )
    assert "cmcr.losses.registry" in (root / "cmcr/losses/extra.py").read_text()  # the other half
    return root


def test_the_contracts_catch_an_upward_import_and_a_cycle(tmp_path):
    root = _planted_copy(tmp_path)
    status, report = lint_imports(cwd=root, pythonpath=root)
    assert status != 0, report
    broken = report.split("Broken contracts", 1)[1]
    floors, _, cycles = broken.partition("no import cycle between the packages or modules")
    # the upward import, named with its line, though it hides inside a function
    assert "cmcr.errors is not allowed to import cmcr.sweep" in floors, report
    assert "cmcr.errors -> cmcr.sweep (l." in floors, report
    # the cycle inside one package: the layers contract says nothing of it, the acyclic
    # contract names one of its two imports to remove
    in_losses = cycles.split("No cycles are allowed in cmcr.losses.", 1)
    assert len(in_losses) == 2, report
    assert ".registry -> .extra" in in_losses[1] or ".extra -> .registry" in in_losses[1], report
    assert "registry" not in floors, report


def test_the_planted_copy_is_what_the_contracts_read(tmp_path):
    """The copy, not the installed cmcr, is analysed: the report names the planted function's
    import with the copy's line number."""
    root = _planted_copy(tmp_path)
    line = next(
        n for n, text in enumerate((root / "cmcr/errors.py").read_text().splitlines(), 1)
        if "import cmcr.sweep" in text
    )  # fmt: skip
    _, report = lint_imports(cwd=root, pythonpath=root)
    assert f"cmcr.errors -> cmcr.sweep (l.{line})" in report, report


def test_imports_of_our_package_inside_functions_say_why():
    offenders = lazy_import_offenders()
    assert not offenders, (
        f"{len(offenders)} imports of cmcr inside functions without '# lazy: <why>' (on the "
        "line, the line above, or above the run of imports; 'avoids a cycle' is no reason: "
        "fix the floors):\n" + "\n".join(offenders)
    )


def _checked_tree(root):
    """The three folders the checkers read (cmcr/, sweeps/, dashboards/) under ``root``; cmcr/."""
    for name in ("cmcr", "sweeps", "dashboards"):
        (root / name).mkdir()
    return root / "cmcr"


def test_the_lazy_rule_reads_comments_not_strings(tmp_path):
    """The checker itself: a covered run of imports passes, a string is not a comment, an
    import of another package or at module level is not its business."""
    pkg = _checked_tree(tmp_path)
    (pkg / "m.py").write_text(
        textwrap.dedent("""
            from cmcr import names


            def covered():
                # lazy: torch is slow to import and --help needs none of it
                from cmcr import errors
                from cmcr.uris import (
                    redact,
                )
                import cmcr.weights  # lazy: only the weight check needs it
                import json


            def bare():
                x = "# lazy: not a comment"
                from cmcr import progress


            def two_lines():
                # lazy: a reason that takes
                # two comment lines
                from cmcr import compat


            def not_above():
                # lazy: this comment is about the next line, not the import below it
                x = 1
                from cmcr import runlog
            """)
    )
    assert lazy_import_offenders(tmp_path) == [
        "cmcr/m.py:17: from cmcr import progress",
        "cmcr/m.py:29: from cmcr import runlog",
    ]


def test_modules_and_functions_stay_under_the_limits():
    offenders = size_offenders()
    assert not offenders, (
        "over 450 lines per module or 60 per function, without a '# size: <why>' comment at "
        "the top:\n" + "\n".join(offenders)
    )


def test_a_size_comment_excuses_and_nothing_else_does(tmp_path):
    pkg = _checked_tree(tmp_path)
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    (pkg / "long.py").write_text(
        '"""Doc."""\n\n\ndef excused():\n    """Doc."""\n    # size: one table, row by row\n'
        + body
        + "\n\ndef plain():\n"
        + body
    )
    (pkg / "big.py").write_text('"""Doc."""\n' + "x = 1\n" * 460)
    (pkg / "big_ok.py").write_text('"""Doc."""\n# size: generated table\n' + "x = 1\n" * 460)
    assert size_offenders(tmp_path) == [
        "cmcr/big.py: module of 461 lines > 450",
        "cmcr/long.py:69: plain of 61 lines > 60",
    ]
