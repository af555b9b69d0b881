"""The one reader of YAML a user gives (issue 28): ``--config`` files and presets, ``--set``
values, study files, ``--slurm-config`` files, a SemanticKITTI label map.

A YAML document may name a node once (``&a``) and repeat it by alias (``*a``); nine levels of
nine aliases each, 460 bytes, expand to 9^9 values ("billion laughs") that cost minutes and
gigabytes in whatever walks them. Here a document is refused, in milliseconds and before
anything walks it, when it is over ``MAX_BYTES``, uses more than ``MAX_ALIASES`` aliases,
nests deeper than ``MAX_DEPTH`` or would expand to more than ``MAX_VALUES`` values (counted on
the composed node graph, each shared node once). Configs and studies use none of that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cmcr.errors import CMCRError, ConfigError

MAX_BYTES = 1_000_000  # 1 MB: the shipped configs and studies are about 2 kB
MAX_ALIASES = 100
MAX_DEPTH = 50
MAX_VALUES = 100_000  # scalars, lists and mappings once aliases are expanded


class _Refused(Exception):
    """A limit was passed: what the document does, and what was expected (in words)."""

    def __init__(self, does: str, expected: str) -> None:
        super().__init__(f"{does}; expected {expected}")


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias events and nesting while it composes the node graph."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Refused(
                    f"uses more than {MAX_ALIASES} YAML aliases", f"at most {MAX_ALIASES}"
                )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(f"nests deeper than {MAX_DEPTH} levels", f"at most {MAX_DEPTH}")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_size(root: yaml.Node) -> int:
    """How many values ``root`` holds once every alias is expanded (each shared node is
    counted where it is used, computed once: linear in the document, never in its expansion)."""
    size: dict[int, int] = {}
    stack = [(root, False)]
    while stack:  # post-order without recursion
        node, ready = stack.pop()
        if id(node) in size:
            continue
        if ready:
            size[id(node)] = 1 + sum(size[id(c)] for c in _children(node))
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]


def _problem(exc: yaml.YAMLError) -> str:
    """A YAML syntax error on one line: the problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["syntax error"])[0]
    context = getattr(exc, "context", None)
    problem = f"{context}, {problem}" if context else problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_yaml_text(text: str, what: str, error: type[CMCRError] = ConfigError) -> Any:
    """Parse one YAML document within the limits; ``error`` naming ``what`` if it is refused."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise error(f"{what}: larger than {MAX_BYTES} bytes; expected at most 1 MB of YAML")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_VALUES:
            raise _Refused(
                f"its YAML aliases expand to more than {MAX_VALUES} values (a 'billion laughs')",
                f"at most {MAX_VALUES} values with aliases expanded",
            )
        return loader.construct_document(node)
    except _Refused as exc:
        raise error(f"{what}: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} is not valid YAML: {_problem(exc)}") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, what: str, error: type[CMCRError] = ConfigError) -> Any:
    """Read and parse a YAML file within the limits (never more than ``MAX_BYTES`` + 1 bytes
    are read: ``/dev/zero`` is refused too); ``error`` naming ``what`` on any problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise error(f"{what}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise error(f"{what}: larger than {MAX_BYTES} bytes; expected at most 1 MB of YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what}: not UTF-8 text; expected a YAML file") from None
    return load_yaml_text(text, what, error)
