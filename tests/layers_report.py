"""The checks of docs/architecture.md "Floors", as functions: the import contracts
(``lint-imports``, pyproject's ``[tool.importlinter]``), imports of our package inside functions
without a ``# lazy: <why>`` comment, and modules / functions over the size limits without a
``# size: <why>`` comment.

``python -m tests.layers_report`` (from the repository root) prints what each check finds now;
tests/test_layers.py asserts that each finds nothing.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("cmcr", "sweeps", "dashboards")  # the folders the limits and the lazy rule cover
PACKAGE = "cmcr"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60  # def line to last line
LAZY = re.compile(r"#\s*lazy:\s*\S")  # "# lazy: keeps `cmcr --help` fast"
SIZE = re.compile(r"#\s*size:\s*\S")  # "# size: one table per record kind; split, ..."


def lint_imports(cwd: Path = ROOT, pythonpath: Path | None = None) -> tuple[int, str]:
    """Run the import contracts of ``cwd``/pyproject.toml on the ``cmcr`` found first on the
    path (``pythonpath``, else ``cwd``); (exit status, report text)."""
    env = None
    if pythonpath is not None:
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def python_files(root: Path = ROOT) -> Iterator[Path]:
    """Every .py file under the checked folders."""
    for base in CHECKED:
        yield from sorted((root / base).rglob("*.py"))


def _comments(source: str) -> dict[int, str]:
    """{line: comment text} from the tokens (a ``#`` inside a string is not a comment)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def _is_own(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == PACKAGE
    return any(a.name.split(".")[0] == PACKAGE for a in node.names)


def _function_imports(tree: ast.AST) -> Iterator[tuple[ast.stmt, list[ast.stmt]]]:
    """(import, the statement list holding it) for every import inside a function body."""

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.stmt, list[ast.stmt]]]:
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for field in ("body", "orelse", "finalbody", "handlers"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list):
                continue
            for stmt in stmts:
                if inside and isinstance(stmt, ast.Import | ast.ImportFrom):
                    yield stmt, stmts
                yield from visit(stmt, inside)

    yield from visit(tree, False)


def lazy_import_offenders(root: Path = ROOT) -> list[str]:
    """``path:line: import`` of every import of our package inside a function that carries no
    ``# lazy: <why>`` comment: on its line, in the comment lines right above it, or on the run
    of imports it ends (a comment above the first of several imports in a row covers them
    all)."""
    out = []
    for path in python_files(root):
        source = path.read_text()
        comments = _comments(source)
        lines_of = source.splitlines()
        for node, stmts in _function_imports(ast.parse(source)):
            if not _is_own(node):
                continue
            i = next(k for k, s in enumerate(stmts) if s is node)
            first = i
            while first > 0 and isinstance(stmts[first - 1], ast.Import | ast.ImportFrom):
                first -= 1
            top = stmts[first].lineno - 1
            while top > 1 and all(lines_of[n - 1].lstrip().startswith("#") for n in (top, top - 1)):
                top -= 1  # a comment of several lines above the run
            lines = range(top, node.end_lineno + 1)
            if not any(LAZY.search(comments.get(n, "")) for n in lines):
                text = ast.get_source_segment(source, node) or ""
                rel = path.relative_to(root)
                out.append(f"{rel}:{node.lineno}: {' '.join(text.split())}")
    return out


def _module_top(tree: ast.Module) -> int:
    """The last line of a module's head: its docstring, up to its first other statement."""
    body = tree.body
    start = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0  # fmt: skip
    return body[start].lineno if len(body) > start else 1


def size_offenders(root: Path = ROOT) -> list[str]:
    """Modules over ``MAX_MODULE_LINES`` lines and functions over ``MAX_FUNCTION_LINES`` (def
    line to last line) without a ``# size: <why>`` comment at their top: for a module above its
    first statement after the docstring, for a function from its def line to its first
    statement after the docstring."""
    out = []
    for path in python_files(root):
        source = path.read_text()
        tree = ast.parse(source)
        comments = _comments(source)
        rel = path.relative_to(root)

        def excused(first: int, last: int, comments: dict[int, str] = comments) -> bool:
            return any(SIZE.search(comments.get(n, "")) for n in range(first, last + 1))

        n_lines = len(source.splitlines())
        if n_lines > MAX_MODULE_LINES and not excused(1, _module_top(tree)):
            out.append(f"{rel}: module of {n_lines} lines > {MAX_MODULE_LINES}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            if length <= MAX_FUNCTION_LINES:
                continue
            body = node.body
            has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            top = body[1 if has_doc and len(body) > 1 else 0].lineno
            if not excused(node.lineno, top):
                out.append(f"{rel}:{node.lineno}: {node.name} of {length} lines > "
                           f"{MAX_FUNCTION_LINES}")  # fmt: skip
    return out


def main() -> int:
    """Print what each check finds; exit 1 when any finds something."""
    status, text = lint_imports()
    print("== import contracts (lint-imports)")
    print(text.strip())
    lazy = lazy_import_offenders()
    print(f"\n== imports of {PACKAGE} inside functions without '# lazy: <why>' ({len(lazy)})")
    print("\n".join(lazy) or "none")
    sizes = size_offenders()
    print(f"\n== over the size limits without '# size: <why>' ({len(sizes)})")
    print("\n".join(sizes) or "none")
    return int(bool(status or lazy or sizes))


if __name__ == "__main__":
    sys.exit(main())
