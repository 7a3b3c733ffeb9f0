"""YAML documents that remember where each value was written, for errors a person can act on.

Used by workflow files and by the engine's procedures file: load with ruamel.yaml's round-trip
loader (which keeps line and column marks), hand plain data to pydantic, and map a location in
the data back to ``line:column`` in the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

PathElem = str | int


class YamlSyntaxError(ValueError):
    """The text is not YAML; ``line`` and ``column`` are 1-based."""

    def __init__(self, line: int, column: int, reason: str) -> None:
        super().__init__(f"{line}:{column}: not valid YAML: {reason}")
        self.line = line
        self.column = column
        self.reason = reason


_HINTS = (
    ("expected <block end>", "check this line's indentation against the lines above"),
    ("mapping values are not allowed here", "a value with ': ' in it needs quotes"),
    ("found character '\\t'", "YAML indents with spaces, not tabs"),
    ("could not find expected ':'", "a key needs ': ' after it"),
)
"""What the parser's words usually mean in a workflow file."""


def load(text: str) -> Any:
    """Parse YAML keeping positions; duplicate keys are errors."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = str(exc.problem or exc)
        hint = next((h for words, h in _HINTS if words in reason), None)
        raise YamlSyntaxError(line, col, f"{reason} ({hint})" if hint else reason) from None
    except Exception as exc:  # ruamel raises a few unmarked errors (e.g. duplicate keys)
        raise YamlSyntaxError(1, 1, str(exc)) from None


def plain(node: object) -> object:
    """ruamel's round-trip containers as plain dicts and lists, keys as text."""
    if isinstance(node, Mapping):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _key(node: CommentedMap, elem: PathElem) -> Any:
    """The document's own key for ``elem`` (numeric keys are matched by their text too)."""
    if elem in node:
        return elem
    return next((k for k in node if str(k) == str(elem)), None)


class Positions:
    """Maps paths in a loaded document to 1-based (line, column)."""

    def __init__(self, doc: object) -> None:
        self.doc = doc

    def of(self, path: Sequence[PathElem], *, key: bool = False) -> tuple[int, int]:
        """Where the deepest node of ``path`` present in the document is written (its value, or
        with ``key=True`` its key)."""
        node = self.doc
        line, col = 0, 0
        if isinstance(node, CommentedMap | CommentedSeq):
            line, col = node.lc.line, node.lc.col
        for depth, elem in enumerate(path):
            last = depth == len(path) - 1
            index = int(elem) if isinstance(elem, str) and elem.isdigit() else elem
            if isinstance(node, CommentedMap) and (found := _key(node, elem)) is not None:
                line, col = node.lc.key(found) if (key and last) else node.lc.value(found)
                node = node[found]
            elif isinstance(node, CommentedSeq) and isinstance(index, int) and index < len(node):
                line, col = node.lc.item(index)
                node = node[index]
            else:
                break
        return line + 1, col + 1

    def doc_path(self, loc: Sequence[PathElem], missing_last: bool) -> list[PathElem]:
        """A pydantic error location without union member tags, as a path in the document."""
        node: Any = self.doc
        out: list[PathElem] = []
        for depth, elem in enumerate(loc):
            in_map = isinstance(node, Mapping) and elem in node
            in_list = isinstance(node, list) and isinstance(elem, int) and elem < len(node)
            if in_map or in_list:
                out.append(elem)
                node = node[elem]
            elif missing_last and depth == len(loc) - 1:
                out.append(elem)
            # else: a union member tag (e.g. 'stream.session', 'int'): not part of the document
        return out
