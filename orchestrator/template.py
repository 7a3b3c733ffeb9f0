"""The small, safe template syntax of workflow files: ``{{ trigger.streamId }}``.

A template is text with ``{{ path }}`` references, where a path is dotted names and list indices
(``steps.replay.outputs.play.0.url``). There is nothing else: no expressions, calls or filters,
so a workflow file can never run code. A value that is exactly one reference keeps the referenced
value's type (an integer stays an integer, a list stays a list); references inside longer text are
rendered as text. A missing field is an error that names the path and what was there instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches

from pydantic import JsonValue

_REF = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.(?:[A-Za-z_][A-Za-z0-9_-]*|\d+))*")


class TemplateError(ValueError):
    """A template is malformed or refers to something that is not there."""


@dataclass(frozen=True)
class Ref:
    """One ``{{ path }}`` reference."""

    path: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Template:
    """Parsed template text: literal strings and references, in order."""

    parts: tuple[str | Ref, ...]

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    @property
    def is_single_ref(self) -> bool:
        return len(self.parts) == 1 and isinstance(self.parts[0], Ref)


def is_template(text: str) -> bool:
    return "{{" in text


def parse(text: str) -> Template:
    """Split text into literals and references; raise TemplateError on a malformed reference."""
    parts: list[str | Ref] = []
    pos = 0
    for match in _REF.finditer(text):
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        expr = match.group(1)
        if not _PATH.fullmatch(expr):
            raise TemplateError(
                f"{{{{ {expr} }}}} is not a reference: expected a dotted path such as "
                "trigger.streamId or steps.replay.outputs.fileId (no expressions)"
            )
        parts.append(Ref(tuple(expr.split("."))))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    leftover = "".join(p for p in parts if isinstance(p, str))
    if "{{" in leftover or "}}" in leftover:
        raise TemplateError(f"unbalanced '{{{{' or '}}}}' in {text!r}")
    return Template(tuple(parts))


def lookup(context: Mapping[str, JsonValue], ref: Ref) -> JsonValue:
    """Follow a reference through nested mappings and lists."""
    current: JsonValue = dict(context)
    for depth, name in enumerate(ref.path):
        where = ".".join(ref.path[:depth]) or "the context"
        if isinstance(current, Mapping):
            if name not in current:
                hint = get_close_matches(name, [str(k) for k in current], n=1)
                known = ", ".join(sorted(str(k) for k in current)) or "nothing"
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise TemplateError(
                    f"{ref.dotted} is missing: {where} has no field {name!r} "
                    f"(it has: {known}){suggestion}"
                )
            current = current[name]
        elif isinstance(current, Sequence) and not isinstance(current, str):
            if not name.isdigit() or int(name) >= len(current):
                raise TemplateError(
                    f"{ref.dotted} is missing: {where} is a list of {len(current)} item(s), "
                    f"so {name!r} is not an index in it"
                )
            current = current[int(name)]
        else:
            raise TemplateError(
                f"{ref.dotted} is missing: {where} is {json.dumps(current)}, not an object"
            )
    return current


def _as_text(value: JsonValue) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render(text: str, context: Mapping[str, JsonValue]) -> JsonValue:
    """Render one template string against the context."""
    template = parse(text)
    if template.is_single_ref:
        ref = template.parts[0]
        assert isinstance(ref, Ref)
        return lookup(context, ref)
    return "".join(
        part if isinstance(part, str) else _as_text(lookup(context, part))
        for part in template.parts
    )


def render_tree(value: JsonValue, context: Mapping[str, JsonValue]) -> JsonValue:
    """Render every template string inside a nested structure of dicts and lists."""
    if isinstance(value, str):
        return render(value, context) if is_template(value) else value
    if isinstance(value, list):
        return [render_tree(item, context) for item in value]
    if isinstance(value, dict):
        return {key: render_tree(item, context) for key, item in value.items()}
    return value


def refs_in(value: object) -> list[Ref]:
    """Every reference in a nested structure (used by validation)."""
    if isinstance(value, str):
        return list(parse(value).refs) if is_template(value) else []
    if isinstance(value, list | tuple):
        return [ref for item in value for ref in refs_in(item)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in refs_in(item)]
    return []
