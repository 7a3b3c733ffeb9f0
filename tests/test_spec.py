"""Workflow files: the examples are valid, every kind of mistake is reported with its position,
what was found, what was expected, and a suggestion where one helps."""

from __future__ import annotations

import json
import typing
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.spec import (
    DEFAULT_RETRY_ON,
    KnownProcedures,
    RetryOn,
    WorkflowError,
    json_schema,
    load_workflows,
    parse_workflow,
    version_of,
)
from orchestrator.vod.errors import ErrorClass

ROOT = Path(__file__).resolve().parents[1]

VALID = """\
name: wf
triggers:
  - type: recording.finished
    match: {streamId: "lecture_*"}
steps:
  - name: transcode
    process:
      fileId: "{{ trigger.fileId }}"
      procedure: TranscodeAndSprite
"""


def problems(source: str, procedures: KnownProcedures | None = None) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(source, "wf.yaml", procedures)
    return [str(p) for p in info.value.problems]


def test_the_example_workflows_are_valid() -> None:
    loaded = load_workflows([ROOT / "workflows"])
    names = {w.spec.name for w in loaded}
    assert names == {"lecture-replay", "recording-transcode"}
    replay = next(w for w in loaded if w.spec.name == "lecture-replay").spec
    assert replay.triggers[0].type == "stream.session"
    process = replay.steps[0].process
    assert process is not None
    assert process.gen is not None
    assert process.gen.clip is not None
    assert process.gen.clip.stream_info is not None
    assert replay.steps[1].kind == "notify"


def test_unknown_key_names_position_and_suggests() -> None:
    (msg,) = problems(VALID.replace("    process:", "    proces:").replace("      ", "        ", 0))
    assert msg.startswith("wf.yaml:")
    found = problems(VALID + "    retyr: {max_attempts: 2}\n")
    assert found == [
        "wf.yaml:10:5: steps[0].retyr: unknown key 'retyr'; did you mean 'retry'? "
        "(expected one of: name, process, notify, wait_for, timeout, expected, verify, retry)"
    ]


def test_all_problems_are_reported_in_file_order() -> None:
    source = """\
name: Bad Name
triggers:
  - type: recording.finishd
steps:
  - name: a
    process: {fileId: x, procedure: p}
    timeout: soon
    retry: {max_attempts: 0, backoff: {multiplier: 0.5}}
"""
    found = problems(source)
    assert [f.split(": ", 1)[0] for f in found] == [
        "wf.yaml:1:7",
        "wf.yaml:3:11",
        "wf.yaml:7:14",
        "wf.yaml:8:27",
        "wf.yaml:8:52",
    ]
    assert "did you mean 'recording.finished'" in found[1]
    assert "expected a duration like 30s, 10m, 1h30m or 2d; found 'soon'" in found[2]
    assert "expected a value greater than or equal to 1; found 0" in found[3]


def test_wrong_types_say_what_was_found_and_expected() -> None:
    source = VALID.replace(
        '      fileId: "{{ trigger.fileId }}"',
        "      gen:\n        clip:\n          streamInfo: {streamId: s, startTime: soon, "
        "endTime: 2}\n        concat: {dstType: mp4}",
    )
    (msg,) = problems(source)
    assert msg == (
        "wf.yaml:10:48: steps[0].process.gen.clip.streamInfo.startTime: "
        'expected an integer or a {{ template }}; found "soon"'
    )


def test_missing_required_keys() -> None:
    found = problems("name: wf\ntriggers: []\n")
    assert "wf.yaml:1:1: steps: required key 'steps' is missing" in found
    assert any("triggers: expected a list with at least 1 item" in f for f in found)


def test_zero_timeouts_and_expected_times_are_refused() -> None:
    source = VALID.replace("steps:", "timeout: 0s\nsteps:") + "    expected: 0\n    timeout: 0m\n"
    source = source.replace("- type: recording.finished", "- type: stream.session\n    quiet: 0s")
    source = source.replace("{{ trigger.fileId }}", "{{ trigger.fileIds.0 }}")
    found = problems(source + "  - name: tell\n    notify: {url: /u, timeout: 0}\n")
    zero = "expected a duration greater than 0, such as 30s, 10m or 2h; found 0"
    assert found == [
        f"wf.yaml:4:12: triggers[0].quiet: {zero}",
        f"wf.yaml:6:10: timeout: {zero}",
        f"wf.yaml:12:15: steps[0].expected: {zero}",
        f"wf.yaml:13:14: steps[0].timeout: {zero}",
        f"wf.yaml:15:32: steps[1].notify.timeout: {zero}",
    ]


def test_match_fields_are_checked_against_the_trigger_type() -> None:
    (msg,) = problems(VALID.replace("streamId:", "streamid:"))
    assert "recording.finished events have no field 'streamid'; did you mean 'streamId'?" in msg
    assert msg.startswith("wf.yaml:4:")


def test_every_documented_session_field_can_be_referenced_and_matched() -> None:
    source = VALID.replace("type: recording.finished", "type: stream.session") + (
        "  - name: tell\n"
        "    notify:\n"
        "      url: /hooks/sink\n"
        '      data: {untimed: "{{ trigger.untimedFileIds }}", n: "{{ trigger.segmentCount }}"}\n'
    )
    parse_workflow(source.replace('"{{ trigger.fileId }}"', '"{{ trigger.fileIds.0 }}"'))
    (msg,) = problems(source.replace("{{ trigger.fileId }}", "{{ trigger.fileIDs }}"))
    assert "did you mean 'fileIds'?" in msg
    assert "untimedFileIds)" in msg  # the fields listed are the README's


def test_template_references_are_checked() -> None:
    source = VALID + (
        "  - name: tell\n"
        "    notify:\n"
        '      url: "https://x/{{ trigger.filId }}/{{ steps.transcode.outputs.plays }}"\n'
        '      data: {a: "{{ steps.later.outputs.fileId }}", b: "{{ nope.x }}", '
        'c: "{{ run.idd }}", d: "{{ trigger.x | upper }}"}\n'
    )
    found = problems(source)
    joined = "\n".join(found)
    assert "{{ trigger.filId }}: not every trigger of this workflow has a field 'filId'; " in joined
    assert "did you mean 'fileId'?" in joined
    assert "a process step has no output 'plays'; did you mean 'play'?" in joined
    assert "no earlier step is named 'later'" in joined
    assert "unknown root 'nope'" in joined
    assert "run has no field 'idd'; did you mean 'id'?" in joined
    assert "is not a reference: expected a dotted path" in joined


def test_a_step_cannot_use_its_own_or_later_outputs() -> None:
    source = VALID.replace(
        "procedure: TranscodeAndSprite", 'procedure: "{{ steps.transcode.outputs.fileId }}"'
    )
    (msg,) = problems(source)
    assert "a step cannot use its own outputs" in msg
    later = VALID.replace('"{{ trigger.fileId }}"', '"{{ steps.tell.outputs.url }}"')
    (msg,) = problems(later + "  - name: tell\n    notify: {url: /u}\n")
    assert msg == (
        "wf.yaml:8:15: steps[0].process.fileId: {{ steps.tell.outputs.url }}: step 'tell' runs "
        "after this one ('transcode'); a step can use only the outputs of steps before it"
    )


def test_process_rules_of_the_seed() -> None:
    both = VALID.replace(
        "      procedure: TranscodeAndSprite",
        "      gen: {concat: {dstType: mp4, fileIdList: [a, b]}}\n      procedure: P",
    )
    assert any("'fileId' and 'gen' both given" in p for p in problems(both))
    neither = VALID.replace('      fileId: "{{ trigger.fileId }}"\n', "")
    assert any("needs 'fileId' or 'gen'" in p for p in problems(neither))
    clip_both = VALID.replace(
        '      fileId: "{{ trigger.fileId }}"',
        "      gen:\n        clip:\n          fileList: [{fileId: a}]\n"
        "          streamInfo: {streamId: s, startTime: 1, endTime: 2}\n"
        "        concat: {dstType: mp4}",
    )
    assert any("exactly one of 'fileList' or 'streamInfo'" in p for p in problems(clip_both))
    backwards = VALID.replace(
        '      fileId: "{{ trigger.fileId }}"',
        "      gen:\n        clip: {streamInfo: {streamId: s, startTime: 15020876538, "
        "endTime: 1502087638}}\n        concat: {dstType: mp4}",
    )
    assert any("endTime must be after startTime" in p for p in problems(backwards))
    no_concat = VALID.replace(
        '      fileId: "{{ trigger.fileId }}"', "      gen: {clip: {fileList: [{fileId: a}]}}"
    )
    assert any("gen needs 'concat' with 'dstType'" in p for p in problems(no_concat))


ENGINE = KnownProcedures(frozenset({"TranscodeAndSprite", "TranscodeHLS"}), "the engine's file")


def test_procedure_names_are_checked_when_the_known_ones_are_given() -> None:
    assert parse_workflow(VALID, "wf.yaml", ENGINE).steps[0].process is not None
    typo = VALID.replace("procedure: TranscodeAndSprite", "procedure: TranscodeAndSprites")
    assert parse_workflow(typo, "wf.yaml")  # nothing known: VOD answers at run time
    assert problems(typo, ENGINE) == [
        "wf.yaml:9:7: steps[0].process.procedure: unknown procedure 'TranscodeAndSprites'; "
        "did you mean 'TranscodeAndSprite'? "
        "(the engine's file defines: TranscodeAndSprite, TranscodeHLS)"
    ]
    # Reported with the file's other problems, in file order.
    both = typo.replace("streamId:", "streamID:")
    where = [p.split(": ", 1)[0] for p in problems(both, ENGINE)]
    assert where == ["wf.yaml:4:23", "wf.yaml:9:7"]
    # A templated name is known only at run time; a step without a procedure has none to check.
    templated = VALID.replace("TranscodeAndSprite", '"{{ trigger.streamId }}"')
    assert parse_workflow(templated, "wf.yaml", ENGINE)
    none = VALID.replace(
        '      fileId: "{{ trigger.fileId }}"\n      procedure: TranscodeAndSprite',
        "      gen: {concat: {dstType: mp4, fileIdList: [a, b]}}",
    )
    assert parse_workflow(none, "wf.yaml", ENGINE)


def test_unquoted_numeric_file_ids_are_text() -> None:
    spec = parse_workflow(VALID.replace('"{{ trigger.fileId }}"', "5285890784273533001"))
    assert spec.steps[0].process is not None
    assert spec.steps[0].process.file_id == "5285890784273533001"


def test_step_needs_exactly_one_action_and_unique_names() -> None:
    found = problems(
        VALID + "  - name: transcode\n    notify: {url: /u}\n    process: {fileId: f}\n"
    )
    joined = "\n".join(found)
    assert "exactly one of 'process' or 'notify'" in joined
    found = problems(VALID + "  - name: transcode\n    notify: {url: /u}\n")
    assert "step name 'transcode' is already used by steps[0]" in found[0]


def test_options_of_process_steps_are_refused_on_a_notify_step() -> None:
    """A notify step's timeout, expected, verify or wait_for would be ignored: refused instead."""
    found = problems(
        VALID + "  - name: tell\n    notify: {url: /u}\n    timeout: 1s\n    expected: 1s\n"
        "    verify: false\n    wait_for: [transcode]\n"
    )
    assert [p.split(": ", 3)[1:] for p in found] == [
        ["steps[1].timeout", "only process steps have timeout",
         "the wait for VOD's tasks (a notify step's request has notify.timeout)"],
        ["steps[1].expected", "only process steps have expected",
         "when a VOD task's callback is due"],
        ["steps[1].verify", "only process steps have verify", "checks of VOD's outputs"],
        ["steps[1].wait_for", "only process steps have wait_for",
         "the VOD tasks a step waits for"],
    ]  # fmt: skip


def test_template_failures_are_not_a_retry_class() -> None:
    """Another attempt would render the same values; the README says so."""
    (msg,) = problems(VALID.replace("steps:", "retry: {on: [internal, template]}\nsteps:"))
    assert "retry.on[1]: a template that cannot be rendered is not retried" in msg
    assert msg.endswith(
        "expected one of: internal, transport, timeout, verification, "
        "invalid_params, file_not_found, procedure_invalid, auth, rejected, media"
    )


def test_a_stored_version_loads_with_options_refused_since() -> None:
    """A version runs started with, read back from the database, passed the checks of the
    release that loaded it: checks added since must not leave those runs unable to advance or
    be cancelled."""
    earlier = (
        VALID.replace("steps:", "retry: {on: [internal, template]}\nsteps:")
        + "  - name: tell\n    notify: {url: /u}\n    timeout: 30s\n"
    )
    assert len(problems(earlier)) == 2
    spec = parse_workflow(earlier, "wf.yaml", stored=True)
    assert spec.steps[1].kind == "notify"
    # Value checks added since too: a zero timeout, a webhook URL that is no http(s) URL.
    older = VALID + "  - name: tell\n    notify: {url: ftp://x/y}\n    retry: {max_attempts: 1}\n"
    older = older.replace("steps:", "timeout: 0s\nsteps:")
    assert len(problems(older)) == 2
    assert parse_workflow(older, "wf.yaml", stored=True).timeout == timedelta(0)
    # What a workflow file may name in retry.on, as the JSON schema tells editors.
    on = json_schema()["$defs"]["RetryPolicy"]["properties"]["on"]["items"]["enum"]
    assert "template" not in on
    assert "media" in on


def test_a_webhook_url_is_an_http_url_or_a_path_on_this_vodflow() -> None:
    for good in ("https://cms.example/hooks", "http://127.0.0.1:9/x", "/hooks/sink"):
        parse_workflow(VALID + f"  - name: tell\n    notify: {{url: {good!r}}}\n", "wf.yaml")
    for bad in ("not-a-url", "ftp://files.example/x", "https:///x"):
        (msg,) = problems(VALID + f"  - name: tell\n    notify: {{url: {bad!r}}}\n")
        assert msg.startswith("wf.yaml:11:19: steps[1].notify.url: "), msg
        assert (
            f"expected an http(s) URL or a path on this vodflow such as /hooks/sink; got {bad!r}"
            in msg
        )


def test_yaml_syntax_errors_have_positions() -> None:
    (msg,) = problems("name: wf\ntriggers: [\n")
    assert msg.startswith("wf.yaml:3:1: not valid YAML")


@pytest.mark.parametrize(
    ("source", "where", "hint"),
    [
        (
            "name: x\ntriggers: [{type: manual}]\nsteps:\n  - name: a\n   verify: false\n",
            "5:4",
            "(check this line's indentation against the lines above)",
        ),
        ("name: x\nsteps:\n  - name: a: b\n", "3:12", "(a value with ': ' in it needs quotes)"),
        ("name: x\n\ttriggers: []\n", "2:1", "(YAML indents with spaces, not tabs)"),
    ],
)
def test_yaml_syntax_errors_say_what_they_usually_mean(source: str, where: str, hint: str) -> None:
    (msg,) = problems(source)
    assert msg.startswith(f"wf.yaml:{where}: not valid YAML: ")
    assert msg.endswith(hint)


def test_duplicate_workflow_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID)
    with pytest.raises(WorkflowError) as info:
        load_workflows([tmp_path])
    assert str(info.value.problems[0]).startswith(f"{tmp_path / 'b.yaml'}:1:7: name: ")
    assert "already used by" in str(info.value)


def test_version_is_a_content_hash_ignoring_comments_and_order() -> None:
    a = parse_workflow(VALID)
    b = parse_workflow("# a comment\n" + VALID.replace("name: wf\n", "") + "name: wf\n")
    c = parse_workflow(VALID.replace("TranscodeAndSprite", "Other"))
    assert version_of(a) == version_of(b)
    assert version_of(a) != version_of(c)


def test_trigger_matching_exact_glob_and_lists() -> None:
    spec = parse_workflow(
        VALID.replace(
            '{streamId: "lecture_*"}', '{streamId: ["lecture_*", news], sourceType: Record}'
        )
    )
    trigger = spec.triggers[0]
    assert trigger.matches({"streamId": "lecture_1", "sourceType": "Record"})
    assert trigger.matches({"streamId": "news", "sourceType": "Record"})
    assert not trigger.matches({"streamId": "news2", "sourceType": "Record"})
    assert not trigger.matches({"streamId": "lecture_1", "sourceType": "ClientUpload"})
    assert not trigger.matches({"sourceType": "Record"})


def test_json_schema_is_published_for_editors() -> None:
    schema = json_schema()
    json.dumps(schema)
    assert schema["title"] == "vodflow workflow"
    assert set(schema["required"]) == {"name", "triggers", "steps"}
    step = schema["$defs"]["Step"]
    assert "wait_for" in step["properties"]
    assert "fileId" in schema["$defs"]["ProcessAction"]["properties"]


def test_verify_is_on_off_or_options_with_positions_for_bad_ones() -> None:
    step = parse_workflow(VALID).steps[0]
    assert step.verify_options is not None
    assert (step.verify_options.duration_tolerance, step.verify_options.duration_slack) == (
        0.02,
        timedelta(seconds=1),
    )
    off = parse_workflow(VALID + "    verify: false\n").steps[0]
    assert off.verify_options is None
    tight = parse_workflow(
        VALID + "    verify: {duration_tolerance: 0.005, duration_slack: 2s}\n"
    ).steps[0]
    assert tight.verify_options is not None
    assert tight.verify_options.duration_tolerance == 0.005
    assert tight.verify_options.duration_slack == timedelta(seconds=2)
    assert problems(VALID + "    verify: {duration_tolerance: 2}\n") == [
        "wf.yaml:10:34: steps[0].verify.duration_tolerance: "
        "expected a value less than or equal to 1; found 2"
    ]
    (typo,) = problems(VALID + "    verify: {duration_tolerence: 0.01}\n")
    assert typo.startswith("wf.yaml:10:14: steps[0].verify.duration_tolerence: unknown key")


def test_a_retry_policy_may_name_every_failure_class_but_those_handled_apart() -> None:
    named = set(typing.get_args(RetryOn))
    assert named == {c.value for c in ErrorClass} - {"frequency_limit", "duplicate_task"}
    assert set(DEFAULT_RETRY_ON) == {"internal", "transport", "timeout", "verification"}
    source = VALID.replace("steps:", "retry: {on: [timeout, duplicate_task]}\nsteps:")
    (problem,) = problems(source)
    assert problem.startswith("wf.yaml:5:23: retry.on[1]: expected 'internal', ")
    assert problem.endswith('found "duplicate_task"')
