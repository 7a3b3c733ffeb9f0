"""From inbound events to trigger contexts and matches, and the dry-run report built on them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from orchestrator import triggers
from orchestrator.cli import app
from orchestrator.dryrun import report
from orchestrator.spec import load_workflows
from orchestrator.vod.events import parse_event
from tests.conftest import ROOT

PAYLOADS = ROOT / "tests" / "fixtures" / "payloads"
WORKFLOWS = load_workflows([ROOT / "workflows"])
NOW = datetime(2026, 11, 26, tzinfo=UTC)


def event(name: str):  # type: ignore[no-untyped-def]
    return parse_event((PAYLOADS / f"{name}.json").read_bytes())


def test_a_live_recording_is_a_recording_with_times() -> None:
    (ctx,) = triggers.contexts_for(event("lvb-recording-100"))
    assert ctx.type == "recording.finished"
    assert ctx.identity == "5285890784273533001"
    assert ctx.fields["startTime"] == 1763632800
    assert ctx.fields["endTime"] == 1763634600
    assert ctx.fields["sessionId"] == "rec-0001"


def test_a_vod_record_upload_is_a_recording_and_an_upload() -> None:
    contexts = triggers.contexts_for(event("v2-NewFileUpload-record"))
    assert [c.type for c in contexts] == ["recording.finished", "file.uploaded"]
    assert contexts[0].fields["fileName"] == "lecture_42 2026-11-20 10:00"
    assert {c.identity for c in contexts} == {"5285890784273533001"}


def test_task_events_start_nothing() -> None:
    for name in ("v2-TranscodeComplete", "v2-ProcedureStateChanged", "lvb-stream-end-0"):
        assert triggers.contexts_for(event(name)) == []


def test_both_announcements_of_one_recording_share_a_dedup_key() -> None:
    (a,) = [m for m in triggers.match(event("lvb-recording-100"), WORKFLOWS) if not m.is_session]
    (b,) = [
        m for m in triggers.match(event("v2-NewFileUpload-record"), WORKFLOWS) if not m.is_session
    ]
    assert (
        a.dedup_key == b.dedup_key == "recording-transcode/recording.finished/5285890784273533001"
    )


def test_session_context_spans_the_segments() -> None:
    fields = triggers.session_context(
        [
            {"streamId": "s", "fileId": "a", "startTime": 100, "endTime": 160},
            {"streamId": "s", "fileId": "b", "startTime": 165, "endTime": 230.5},
        ]
    )
    assert fields == {
        "streamId": "s",
        "fileIds": ["a", "b"],
        "segmentCount": 2,
        "startTime": 100,
        "endTime": 231,
        "duration": 131,
    }


def test_a_session_with_a_recording_of_unknown_times_has_no_window() -> None:
    """VOD's NewFileUpload carries no recording times, and guessing them from when it arrived
    clipped the wrong range: such a session names the recordings instead of inventing a span."""
    fields = triggers.session_context(
        [
            {"streamId": "s", "fileId": "a", "startTime": 100, "endTime": 160},
            {"streamId": "s", "fileId": "c", "duration": 60.5},
        ]
    )
    assert fields == {
        "streamId": "s",
        "fileIds": ["a", "c"],
        "segmentCount": 2,
        "untimedFileIds": ["c"],
    }


def test_dry_run_shows_the_wire_parameters() -> None:
    text = report(event("lvb-recording-100"), WORKFLOWS, NOW)
    assert "starts 2 of 2 workflow(s)" in text
    assert "gen.clip.streamInfo.streamId=lecture_42" in text
    assert "gen.clip.streamInfo.startTime=1763632800" in text
    assert "gen.concat.dstType=mp4" in text
    assert "fileId=5285890784273533001\n    procedure=TranscodeAndSprite" in text
    assert "notify POST /hooks/sink" in text


def test_dry_run_names_what_did_not_match(tmp_path: Path) -> None:
    body = json.loads((PAYLOADS / "lvb-recording-100.json").read_text())
    body["stream_id"] = "news"
    text = report(parse_event(body), WORKFLOWS, NOW)
    assert "starts 1 of 2 workflow(s)" in text
    assert (
        "not started: lecture-replay (triggers[0] stream.session: streamId 'news' does not" in text
    )


def test_dry_run_from_the_command_line() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "validate",
            str(ROOT / "workflows"),
            "--dry-run",
            str(PAYLOADS / "lvb-recording-100.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "procedure=TranscodeAndSprite" in result.output
    bad = runner.invoke(
        app, ["validate", str(ROOT / "workflows"), "--dry-run", str(ROOT / "README.md")]
    )
    assert bad.exit_code == 1
    assert "not an event vodflow understands" in bad.output
