"""The workflow template syntax: references only, types kept, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.template import TemplateError, parse, refs_in, render, render_tree

CONTEXT = {
    "trigger": {"streamId": "lecture_42", "startTime": 1763632800, "fileIds": ["a", "b"]},
    "steps": {"replay": {"outputs": {"play": [{"url": "http://x/f20.mp4", "definition": 20}]}}},
}


def test_a_single_reference_keeps_its_type() -> None:
    assert render("{{ trigger.startTime }}", CONTEXT) == 1763632800
    assert render("{{trigger.fileIds}}", CONTEXT) == ["a", "b"]
    assert render("{{ steps.replay.outputs.play.0.definition }}", CONTEXT) == 20


def test_references_inside_text_render_as_text() -> None:
    assert render("s={{ trigger.streamId }}&t={{ trigger.startTime }}", CONTEXT) == (
        "s=lecture_42&t=1763632800"
    )
    assert render("ids: {{ trigger.fileIds }}", CONTEXT) == 'ids: ["a","b"]'


def test_missing_fields_name_the_path_and_what_is_there() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ trigger.streamid }}", CONTEXT)
    assert str(info.value) == (
        "trigger.streamid is missing: trigger has no field 'streamid' "
        "(it has: fileIds, startTime, streamId); did you mean 'streamId'?"
    )
    with pytest.raises(TemplateError, match=r"list of 1 item\(s\), so '3' is not an index"):
        render("{{ steps.replay.outputs.play.3.url }}", CONTEXT)
    with pytest.raises(TemplateError, match="is 1763632800, not an object"):
        render("{{ trigger.startTime.x }}", CONTEXT)


def test_no_expressions_or_code() -> None:
    for text in ("{{ trigger.x + 1 }}", "{{ __import__('os') }}", "{{ a[0] }}", "{{ }}"):
        with pytest.raises(TemplateError, match="is not a reference"):
            parse(text)
    with pytest.raises(TemplateError, match="unbalanced"):
        parse("{{ trigger.x ")


def test_render_tree_and_refs_in() -> None:
    tree = {"a": ["{{ trigger.streamId }}", 3], "b": {"c": "x-{{ trigger.startTime }}"}}
    assert render_tree(tree, CONTEXT) == {"a": ["lecture_42", 3], "b": {"c": "x-1763632800"}}
    assert [r.dotted for r in refs_in(tree)] == ["trigger.streamId", "trigger.startTime"]


@given(st.text(alphabet=st.characters(blacklist_characters="{}")))
def test_text_without_braces_renders_as_itself(text: str) -> None:
    assert render(text, CONTEXT) == text
