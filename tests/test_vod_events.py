"""Inbound bodies → VodEvent: every sample, generated variants, dedup keys, and junk."""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.vod.errors import ErrorClass, MalformedEvent
from orchestrator.vod.events import (
    _V4_READERS,
    VodEvent,
    event_from_task_info,
    lvb_sign_problem,
    normalize_task_id,
    parse_event,
    parse_pull_event_response,
    pull_event_items,
    verify_lvb_sign,
)

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
LVB_KEY = "vodflow-example-key"
EVENT_SAMPLES = sorted(
    path.name for path in PAYLOADS.glob("*.json") if not path.name.startswith("v2-api-")
)


def payload(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_bytes())


def raw_payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def without_raw(event: VodEvent) -> dict[str, Any]:
    return event.model_dump(exclude={"raw"})


# --- every sample ---------------------------------------------------------------------------------


def test_every_event_sample_is_covered() -> None:
    assert len(EVENT_SAMPLES) == 10


@pytest.mark.parametrize("name", EVENT_SAMPLES)
def test_every_sample_parses_and_keeps_its_raw_body(name: str) -> None:
    event = parse_event(raw_payload(name))
    assert event.raw == payload(name)
    assert event.dedup_key
    assert parse_event(payload(name)) == event


def test_new_file_upload_from_a_recording() -> None:
    event = parse_event(raw_payload("v2-NewFileUpload-record.json"))
    assert (event.source, event.kind, event.source_type) == ("vod", "NewFileUpload", "Record")
    assert event.file_id == "5285890784273533001"
    assert event.stream_id == "lecture_42"
    assert event.procedure_task_id is None  # "" means none
    assert event.task_id is None
    assert event.terminal
    assert event.success is True
    assert event.outputs.files[0].url == "http://1256768367.vod2.example.com/a1/b2/f0.flv"
    assert event.outputs.cover_url == "http://1256768367.vod2.example.com/a1/b2/cover.jpg"
    assert event.occurred_at is None


def test_transcode_complete() -> None:
    event = parse_event(raw_payload("v2-TranscodeComplete.json"))
    assert event.task_id == "transcode-7a2229a8f1957bfce08ba733fbfd4a3c"
    assert event.success is True
    assert event.error_class is None
    assert [(p.definition, p.bitrate, p.width, p.height) for p in event.outputs.play] == [
        (0, 246000, 640, 480),
        (20, 297656, 640, 480),
        (30, 899976, 1280, 720),
    ]
    assert event.outputs.meta is not None
    assert event.outputs.meta.duration == 599


def test_image_sprite_complete() -> None:
    event = parse_event(raw_payload("v2-CreateImageSpriteComplete.json"))
    assert event.task_id == "CreateImageSprite-4744578227f9abb1e308c6aca7e9195b"
    (sprite,) = event.outputs.sprites
    assert (sprite.definition, sprite.total_count) == (10, 60)
    assert sprite.image_urls == ("http://1256768367.vod2.example.com/a1/b2/sprite/1.jpg",)
    assert sprite.webvtt_url == "http://1256768367.vod2.example.com/a1/b2/sprite/sprite.vtt"


def test_snapshot_by_time_offset_complete() -> None:
    event = parse_event(raw_payload("v2-CreateSnapshotByTimeOffsetComplete.json"))
    assert event.success is True
    assert [(s.time_offset_ms, s.definition) for s in event.outputs.snapshots] == [
        (10000, 10),
        (20000, 10),
    ]


def test_clip_complete_gives_the_new_file() -> None:
    event = parse_event(raw_payload("v2-ClipComplete.json"))
    assert event.task_id == "clipVideo-0a78cf44c4285026a4c"
    assert event.file_id == "5285890784273533001"  # the source
    (new_file,) = event.outputs.files
    assert (new_file.file_id, new_file.file_type) == ("5285890784273533002", "mp4")


def test_concat_complete_gives_the_new_files() -> None:
    event = parse_event(raw_payload("v2-ConcatComplete.json"))
    assert event.success is True
    assert [f.file_id for f in event.outputs.files] == ["5285890784273533003"]


def test_procedure_with_a_failed_sub_task_fails() -> None:
    event = parse_event(raw_payload("v2-ProcedureStateChanged.json"))
    assert event.task_id == "1256768367-procedure-lecture-25f5aac63"
    assert event.terminal
    assert event.success is False
    assert (event.error_code, event.error_message) == (30010, "system failure")
    assert event.error_class is ErrorClass.INTERNAL
    assert [(t.task_type, t.status, t.error_code) for t in event.sub_tasks] == [
        ("Transcode", "SUCCESS", 0),
        ("Transcode", "FAIL", 30010),
        ("ImageSprites", "SUCCESS", 0),
        ("SnapshotByTimeOffset", "SUCCESS", 0),
    ]
    # What did succeed is still reported, for the run's history and partial outputs.
    (play,) = event.outputs.play
    assert (play.definition, play.bitrate, play.size) == (20, 400_000, 30_000_000)
    assert event.outputs.meta is not None
    assert event.outputs.meta.bitrate == 1_200_000
    assert len(event.outputs.sprites) == 1
    assert len(event.outputs.snapshots) == 2


def test_procedure_sub_task_ids_are_read_when_the_body_names_them() -> None:
    # Tencent's bodies name none; the embedded engine names each sub-task's own task ID.
    assert parse_event(raw_payload("v2-ProcedureStateChanged.json")).sub_task_ids == ()
    body = payload("v2-ProcedureStateChanged.json")
    body["data"]["processTaskList"][0]["vodTaskId"] = "transcode-0001"
    body["data"]["processTaskList"][2]["vodTaskId"] = "imageSprite-0002"
    event = parse_event(body)
    assert [t.task_id for t in event.sub_tasks] == [
        "transcode-0001",
        None,
        "imageSprite-0002",
        None,
    ]
    assert event.sub_task_ids == ("transcode-0001", "imageSprite-0002")
    v3 = payload("v3-ProcedureStateChanged-normal-callback.json")
    v3["ProcedureStateChangeEvent"]["MediaProcessResultSet"][0]["TranscodeTask"]["TaskId"] = "t-1"
    assert parse_event(v3).sub_task_ids == ("t-1",)


def test_v3_procedure_callback() -> None:
    event = parse_event(raw_payload("v3-ProcedureStateChanged-normal-callback.json"))
    assert (event.kind, event.source) == ("ProcedureStateChanged", "vod")
    assert event.task_id == "1250000001-procedurev2-0123456789abcdef0123456789abcdef"
    assert event.success is True
    assert [t.task_type for t in event.sub_tasks] == ["Transcode", "CoverBySnapshot"]
    assert event.outputs.play[0].bitrate == 552218  # v3 is already bps
    assert event.outputs.meta is not None
    assert event.outputs.meta.bitrate == 1021028
    assert event.outputs.cover_url is not None
    assert event.outputs.cover_url.endswith("/cover.jpg")
    assert event.dedup_key.startswith("v3:")


def test_lvb_recording() -> None:
    event = parse_event(raw_payload("lvb-recording-100.json"))
    assert (event.source, event.kind) == ("lvb", "lvb.recording")
    assert event.file_id == "5285890784273533001"
    assert event.stream_id == "lecture_42"
    assert event.recording is not None
    assert event.recording.session_id == "rec-0001"
    assert (event.recording.start_time, event.recording.end_time) == (1763632800, 1763634600)
    assert (event.recording.app, event.recording.appname) == ("push.example.com", "live")
    assert event.recording.file_size == 104857600
    assert event.outputs.meta is not None
    assert (event.outputs.meta.width, event.outputs.meta.height) == (1280, 720)
    assert event.occurred_at == datetime.fromtimestamp(1763634600, UTC)


def test_lvb_stream_end() -> None:
    event = parse_event(raw_payload("lvb-stream-end-0.json"))
    assert event.kind == "lvb.stream_end"
    assert event.success is None
    assert event.error_message == "the stream was closed by the pusher"
    assert event.occurred_at == datetime.fromtimestamp(1763634610, UTC)


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [(1, "lvb.stream_start"), (200, "lvb.screenshot"), ("42", "lvb.event_42")],
)
def test_other_lvb_event_types(event_type: object, kind: str) -> None:
    body = {
        "event_type": event_type,
        "stream_id": "s",
        "pic_url": "http://p.jpg",
        "t": 1,
        "sign": "x",
    }
    event = parse_event(body)
    assert event.kind == kind
    assert event.stream_id == "s"


# --- the live service's signature -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["lvb-recording-100.json", "lvb-stream-end-0.json"])
def test_lvb_samples_are_signed_with_the_example_key(name: str) -> None:
    body = payload(name)
    before = body["t"] - 60
    assert verify_lvb_sign(raw_payload(name), LVB_KEY, before)
    assert verify_lvb_sign(body, LVB_KEY, datetime.fromtimestamp(before, UTC))
    assert verify_lvb_sign(body, LVB_KEY, body["t"])  # t itself has not passed yet
    assert (
        lvb_sign_problem(body, LVB_KEY, body["t"] + 1)
        == f"t: the notification expired at {body['t']}"
    )
    assert "check the callback key" in (lvb_sign_problem(body, "wrong-key", before) or "")
    assert verify_lvb_sign({**body, "t": str(body["t"])}, LVB_KEY, before)
    assert verify_lvb_sign({**body, "sign": body["sign"].upper()}, LVB_KEY, before)
    assert not verify_lvb_sign({**body, "t": body["t"] + 1}, LVB_KEY, before)
    assert (
        lvb_sign_problem({k: v for k, v in body.items() if k != "sign"}, LVB_KEY, before)
        == "sign: required"
    )
    assert (
        lvb_sign_problem({**body, "t": "soon"}, LVB_KEY, before)
        == "t: expected the expiry as Unix seconds"
    )
    assert not verify_lvb_sign(b"not json", LVB_KEY, before)


# --- dedup keys -----------------------------------------------------------------------------------


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: _shuffled(item, rng) for key, item in items}
    if isinstance(value, list):
        return [_shuffled(item, rng) for item in value]
    return value


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(EVENT_SAMPLES), seed=st.integers())
def test_field_order_and_whitespace_change_nothing(name: str, seed: int) -> None:
    original = parse_event(raw_payload(name))
    resent = json.dumps(_shuffled(payload(name), random.Random(seed)), indent=seed % 3 or None)
    again = parse_event(resent)
    assert again.dedup_key == original.dedup_key
    assert without_raw(again) == without_raw(original)


def test_a_different_status_gives_a_different_key() -> None:
    body = payload("v2-TranscodeComplete.json")
    failed = copy.deepcopy(body)
    failed["data"]["status"] = -43001
    assert parse_event(body).dedup_key != parse_event(failed).dedup_key
    processing = payload("v2-ProcedureStateChanged.json")
    processing["data"]["status"] = "PROCESSING"
    finished = parse_event(raw_payload("v2-ProcedureStateChanged.json"))
    assert parse_event(processing).dedup_key != finished.dedup_key


def test_lvb_resend_with_new_expiry_keeps_its_key() -> None:
    body = payload("lvb-recording-100.json")
    resent = {**body, "t": body["t"] + 60, "sign": "0" * 32}
    assert parse_event(resent).dedup_key == parse_event(body).dedup_key
    assert parse_event({**body, "file_size": 1}).dedup_key != parse_event(body).dedup_key


def test_push_and_pull_of_the_same_content_share_a_key() -> None:
    answer = payload("v2-api-PullEvent-response.json")
    pulled = parse_pull_event_response(json.dumps(answer))
    assert [handle for handle, _ in pulled] == ["476553469977303", "560197602638589"]
    for (_, event), entry in zip(pulled, answer["eventList"], strict=True):
        pushed = parse_event(entry["eventContent"])
        assert event.source == "pull"
        assert event.dedup_key == pushed.dedup_key
        assert without_raw(event) == {**without_raw(pushed), "source": "pull"}
    upload = pulled[0][1]
    assert upload.procedure_task_id == "1250000001-procedurev2-0123456789abcdef0123456789abcdef"
    assert upload.source_type == "ServerUpload"
    assert [f.file_type for f in pulled[1][1].outputs.files] == ["mp4", "m3u8"]


def test_pull_event_with_no_events() -> None:
    assert parse_pull_event_response(raw_payload("v2-api-PullEvent-no-events-response.json")) == []


def test_pull_event_with_a_malformed_entry() -> None:
    answer = payload("v2-api-PullEvent-response.json")
    answer["eventList"][1]["eventContent"] = {"version": "4.0", "eventType": "ConcatComplete"}
    answer["eventList"].append(
        {"msgHandle": 7, "eventContent": json.dumps(payload("v2-ClipComplete.json"))}
    )
    items = pull_event_items(answer)
    assert [handle for handle, _ in items] == ["476553469977303", "560197602638589", "7"]
    assert isinstance(items[1][1], MalformedEvent)
    assert items[1][1].field == "data"
    assert isinstance(items[2][1], VodEvent)
    assert items[2][1].kind == "ClipComplete"
    with pytest.raises(MalformedEvent, match="msgHandle 560197602638589"):
        parse_pull_event_response(answer)


def test_task_query_rebuilds_the_procedure_callback() -> None:
    answer = payload("v2-api-GetTaskInfo-response-procedure.json")
    queried = event_from_task_info(json.dumps(answer))
    pushed = parse_event(
        {"version": "4.0", "eventType": "ProcedureStateChanged", "data": answer["data"]}
    )
    assert queried.source == "query"
    assert queried.dedup_key == pushed.dedup_key
    assert queried.occurred_at == datetime.fromtimestamp(1485156400, UTC)
    assert without_raw(queried) == {
        **without_raw(pushed),
        "source": "query",
        "occurred_at": queried.occurred_at,
    }
    assert queried.raw["type"] == "procedure"
    assert queried.success is True
    assert queried.outputs.cover_url is not None
    assert len(queried.sub_tasks) == 5


def test_task_query_rebuilds_a_transcode_callback() -> None:
    pushed = parse_event(raw_payload("v2-TranscodeComplete.json"))
    data = payload("v2-TranscodeComplete.json")["data"]
    queried = event_from_task_info({"code": 0, "type": "transcode", "finishTime": 1, "data": data})
    assert (queried.kind, queried.dedup_key) == (pushed.kind, pushed.dedup_key)
    assert queried.outputs == pushed.outputs


def test_task_query_of_an_unfinished_task_is_not_terminal() -> None:
    queried = event_from_task_info(
        {
            "code": 0,
            "type": "transcode",
            "status": "PROCESSING",
            "data": {"vodTaskId": "transcode-1"},
        }
    )
    assert (queried.kind, queried.task_id, queried.terminal) == (
        "TranscodeComplete",
        "transcode-1",
        False,
    )
    assert queried.success is None
    assert event_from_task_info({"code": 0, "type": "clip"}).terminal is False


# --- statuses: int or string, everywhere ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "success", "code", "error_class"),
    [
        (0, True, None, None),
        ("0", True, None, None),
        ("SUCCESS", True, None, None),
        (-43001, False, -43001, ErrorClass.MEDIA),  # a documented source-file failure
        ("-43001", False, -43001, ErrorClass.MEDIA),
        (-2, False, -2, ErrorClass.INTERNAL),
        ("FAIL", False, None, ErrorClass.INTERNAL),
    ],
)
def test_task_status_int_or_string(
    status: object, success: bool, code: int | None, error_class: ErrorClass | None
) -> None:
    body = payload("v2-TranscodeComplete.json")
    body["data"]["status"] = status
    event = parse_event(body)
    assert event.success is success
    assert event.error_code == code
    assert event.error_class is error_class


def test_transcode_failure_from_the_documentation() -> None:
    event = parse_event(
        {
            "version": "4.0",
            "eventType": "TranscodeComplete",
            "data": {"status": -43001, "message": "", "fileId": "1", "vodTaskId": "Transcode-1e"},
        }
    )
    assert (event.success, event.error_code, event.outputs.play) == (False, -43001, ())
    assert event.task_id == "Transcode-1e"


@pytest.mark.parametrize(
    ("status", "success"), [(0, True), ("0", True), (-1, False), (4, False), ("4", False)]
)
def test_concat_statuses(status: object, success: bool) -> None:
    body = payload("v2-ConcatComplete.json")
    body["data"]["fileInfo"][0]["status"] = status
    event = parse_event(body)
    assert event.success is success
    assert len(event.outputs.files) == (1 if success else 0)


def test_procedure_statuses_and_sub_task_statuses() -> None:
    body = payload("v2-ProcedureStateChanged.json")
    body["data"]["status"] = "PROCESSING"
    processing = parse_event(body)
    assert (processing.terminal, processing.success, processing.error_code) == (False, None, None)

    body = payload("v2-ProcedureStateChanged.json")
    body["data"]["status"] = "finish"
    body["data"]["processTaskList"][1] = {**body["data"]["processTaskList"][0], "status": 0}
    done = parse_event(body)
    assert done.terminal
    assert done.success is True
    assert [t.status for t in done.sub_tasks][:2] == ["SUCCESS", "SUCCESS"]

    body["data"]["processTaskList"][1]["status"] = 30009
    body["data"]["processTaskList"][1]["errCode"] = 30009
    media = parse_event(body)
    assert (media.success, media.error_code, media.error_class) == (False, 30009, ErrorClass.MEDIA)

    body = payload("v2-ProcedureStateChanged.json")
    body["data"]["processTaskList"] = [body["data"]["processTaskList"][0]]
    body["data"]["errCode"] = 30010
    assert parse_event(body).success is False


def test_v2_bitrate_unit_follows_size_and_duration() -> None:
    body = payload("v2-ProcedureStateChanged.json")
    meta = body["data"]["metaData"]
    meta.update(size=10556, duration=3601, bitrate=246035)  # Tencent's doc example: bps-sized
    assert parse_event(body).outputs.meta.bitrate == 246035  # type: ignore[union-attr]
    del meta["size"]
    assert parse_event(body).outputs.meta.bitrate == 246035000  # type: ignore[union-attr]


# --- v3 per-task events ---------------------------------------------------------------------------


def test_v3_2017_style_events() -> None:
    transcode = parse_event(
        {
            "EventType": "TranscodeComplete",
            "EventHandle": "h1",
            "TranscodeCompleteEvent": {
                "TaskId": "transcode-1",
                "ErrCode": 0,
                "FileId": "f",
                "PlayInfoSet": [{"Url": "http://u", "Definition": 20, "Bitrate": 500000}],
            },
        }
    )
    assert (transcode.task_id, transcode.success, transcode.outputs.play[0].bitrate) == (
        "transcode-1",
        True,
        500000,
    )
    clip = parse_event(
        {
            "EventType": "ClipComplete",
            "ClipCompleteEvent": {
                "TaskId": "clip-1",
                "SrcFileId": "src",
                "FileInfo": {
                    "ErrCode": 0,
                    "FileId": "new",
                    "FileUrl": "http://n",
                    "FileType": "mp4",
                },
            },
        }
    )
    assert (clip.file_id, clip.outputs.files[0].file_id) == ("src", "new")
    concat = parse_event(
        {
            "EventType": "ConcatComplete",
            "ConcatCompleteEvent": {
                "TaskId": "concat-1",
                "FileInfoSet": [{"ErrCode": 4, "Message": "bad"}],
            },
        }
    )
    assert (concat.success, concat.error_code) == (False, 4)
    sprite = parse_event(
        {
            "EventType": "CreateImageSpriteComplete",
            "CreateImageSpriteCompleteEvent": {
                "TaskId": "sprite-1",
                "ErrCode": 0,
                "ImageSpriteUrlSet": ["http://s1"],
                "TotalCount": 9,
                "WebVttUrl": "http://v",
            },
        }
    )
    assert sprite.outputs.sprites[0].image_urls == ("http://s1",)
    snapshot = parse_event(
        {
            "EventType": "CreateSnapshotByTimeOffsetComplete",
            "SnapshotByTimeOffsetCompleteEvent": {
                "TaskId": "snap-1",
                "ErrCode": 0,
                "Definition": 10,
                "SnapshotInfoSet": [{"ErrCode": 0, "TimeOffset": 1000, "Url": "http://i"}],
            },
        }
    )
    assert snapshot.outputs.snapshots[0].time_offset_ms == 1000
    upload = parse_event(
        {
            "EventType": "NewFileUpload",
            "FileUploadEvent": {
                "FileId": "f1",
                "ProcedureTaskId": "p-1",
                "MediaBasicInfo": {"MediaUrl": "http://m", "SourceInfo": {"SourceType": "Record"}},
            },
        }
    )
    assert (upload.file_id, upload.procedure_task_id, upload.source_type) == ("f1", "p-1", "Record")


def test_v3_event_handle_is_not_part_of_the_key() -> None:
    body = payload("v3-ProcedureStateChanged-normal-callback.json")
    assert parse_event({**body, "EventHandle": "a"}).dedup_key == parse_event(body).dedup_key


# --- unknown types are generic events, never errors -----------------------------------------------


def test_unknown_event_types_become_generic_events() -> None:
    deleted = parse_event({"version": "4.0", "eventType": "FileDeleted", "data": {"fileId": "1"}})
    assert (deleted.kind, deleted.file_id, deleted.success, deleted.terminal) == (
        "FileDeleted",
        "1",
        None,
        True,
    )
    pulled = parse_event(
        {
            "version": "4.0",
            "eventType": "PullComplete",
            "data": {"vodTaskId": "pull-1", "status": 1},
        }
    )
    assert (pulled.task_id, pulled.success, pulled.error_code) == ("pull-1", False, 1)
    v3 = parse_event(
        {
            "EventType": "WechatPublishComplete",
            "WechatPublishCompleteEvent": {"TaskId": "w", "ErrCode": 0},
        }
    )
    assert (v3.kind, v3.task_id, v3.success) == ("WechatPublishComplete", "w", True)
    bare = parse_event({"EventType": "SomethingNew"})
    assert bare.kind == "SomethingNew"


_STORABLE = st.characters(exclude_characters="\x00")  # a NUL in an ID is refused (below)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.text(_STORABLE, min_size=1, max_size=30),
    data=st.dictionaries(
        st.text(max_size=10),
        st.text(_STORABLE, max_size=10) | st.integers(-(2**31), 2**31 - 1),  # codes fit 32 bits
        max_size=5,
    ),
)
def test_any_event_type_parses(kind: str, data: dict[str, Any]) -> None:
    # (hypothesis also tries the names it finds in the code: known types need their fields)
    assume(kind not in _V4_READERS)
    event = parse_event({"version": "4.0", "eventType": kind, "data": data})
    assert event.kind == kind


@pytest.mark.parametrize("version", ["4.0", 4, 4.0, "4", " 4.0 "])
def test_version_4_is_read_as_text_or_number(version: Any) -> None:
    # Tencent's PullEvent example writes "version": 4; the TranscodeComplete table types it Integer.
    body = payload("v2-TranscodeComplete.json")
    event = parse_event({**body, "version": version})
    assert (event.kind, event.dedup_key) == ("TranscodeComplete", parse_event(body).dedup_key)


@pytest.mark.parametrize("version", ["3.0", 3, 5, True, None, "4.1"])
def test_other_versions_are_refused(version: Any) -> None:
    with pytest.raises(MalformedEvent, match=r'"4\.0"') as refused:
        parse_event({**payload("v2-TranscodeComplete.json"), "version": version})
    assert refused.value.field == "version"


def test_a_clips_file_info_may_come_as_a_list_of_one() -> None:
    # ClipComplete's field table types fileInfo as an Array; its examples send an object.
    body = payload("v2-ClipComplete.json")
    listed = {**body, "data": {**body["data"], "fileInfo": [body["data"]["fileInfo"]]}}
    assert parse_event(listed).outputs == parse_event(body).outputs


# --- malformed bodies: one error type, with a reason a person can act on --------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"{not json", None, "not JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'"text"', None, "JSON object"),
        (b"\xff\xfe\x00", None, "not JSON"),
        ({"hello": "world"}, None, "found none of these fields"),
        ({"version": "3.0", "eventType": "X", "data": {}}, "version", '"4.0"'),
        ({"eventType": "X", "data": {}}, "version", '"4.0"'),
        ({"version": "4.0", "data": {}}, "eventType", "non-empty string"),
        ({"version": "4.0", "eventType": 5, "data": {}}, "eventType", "non-empty string"),
        ({"version": "4.0", "eventType": "X", "data": []}, "data", "object"),
        (
            {"version": "4.0", "eventType": "TranscodeComplete", "data": {"status": 0}},
            "data.vodTaskId",
            "required",
        ),
        (
            {"version": "4.0", "eventType": "TranscodeComplete", "data": {"vodTaskId": ""}},
            "data.vodTaskId",
            "non-empty",
        ),
        (
            {"version": "4.0", "eventType": "TranscodeComplete", "data": {"vodTaskId": "t"}},
            "data.status",
            "required",
        ),
        (
            {
                "version": "4.0",
                "eventType": "TranscodeComplete",
                "data": {"vodTaskId": "t", "status": [1]},
            },
            "data.status",
            "expected a status",
        ),
        (
            {"version": "4.0", "eventType": "ClipComplete", "data": {"vodTaskId": "t"}},
            "data.fileInfo",
            "required",
        ),
        ({"version": "4.0", "eventType": "NewFileUpload", "data": {}}, "data.fileId", "required"),
        (
            {"version": "4.0", "eventType": "ProcedureStateChanged", "data": {"vodTaskId": "t"}},
            "data.status",
            "required",
        ),
        (
            {"EventType": "ProcedureStateChanged", "ProcedureStateChangeEvent": "x"},
            "ProcedureStateChangeEvent",
            "event object",
        ),
        (
            {"EventType": "ClipComplete", "ClipCompleteEvent": {"TaskId": "c"}},
            "ClipCompleteEvent.FileInfo",
            "required",
        ),
        (
            {
                "version": "4.0",
                "eventType": "TranscodeComplete",
                "data": {"vodTaskId": "t", "status": 99999999999999999999999},
            },
            "data.status",
            "error code of at most 32 bits",
        ),
        (
            {
                "version": "4.0",
                "eventType": "ProcedureStateChanged",
                "data": {"vodTaskId": "t", "status": "FINISH", "errCode": 2**31},
            },
            "data.errCode",
            "error code of at most 32 bits",
        ),
        (
            {
                "version": "4.0",
                "eventType": "TranscodeComplete",
                "data": {"vodTaskId": "t\x00", "status": 0},
            },
            None,
            "task ID contains a NUL character",
        ),
        (
            {
                "version": "4.0",
                "eventType": "ClipComplete",
                "data": {"vodTaskId": "t", "srcFileId": "9" * 201, "fileInfo": {"fileId": "1"}},
            },
            None,
            "fileId is 201 characters; at most 200",
        ),
        ({"event_type": 100, "stream_id": "s1"}, "file_id", "names the recorded file"),
        ({"event_type": "abc"}, "event_type", "integer"),
        ({"event_type": True}, "event_type", "integer"),
    ],
)
def test_malformed_bodies_name_the_field(body: Any, field: str | None, words: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        parse_event(body)
    assert caught.value.field == field
    assert words in caught.value.reason


def _parse_or_reason(body: Any) -> VodEvent | str:
    """The event, or the MalformedEvent's reason; any other exception fails the test."""
    try:
        return parse_event(body)
    except MalformedEvent as problem:
        return problem.reason


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    return st.recursive(
        leaves,
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4)
        ),
        max_leaves=25,
    )


_FIELDS = st.sampled_from(
    [
        "version",
        "eventType",
        "data",
        "EventType",
        "event_type",
        "vodTaskId",
        "status",
        "fileInfo",
        "processTaskList",
        "playSet",
        "fileId",
        "t",
        "sign",
        "TaskId",
        "picInfo",
        "metaData",
        "output",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=200)
    | st.text(max_size=200)
    | _json_values().map(json.dumps)
    | st.dictionaries(_FIELDS, _json_values(), max_size=6)
)
def test_junk_raises_only_malformed_event(body: Any) -> None:
    outcome = _parse_or_reason(body)
    assert isinstance(outcome, VodEvent) or outcome


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(EVENT_SAMPLES), data=st.data())
def test_mutated_samples_parse_or_raise_malformed_event(name: str, data: st.DataObject) -> None:
    body = payload(name)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(body)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = body
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans(), label="delete"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_json_values(), label="junk")
    outcome = _parse_or_reason(body)
    if isinstance(outcome, VodEvent):
        assert outcome.raw == body
    else:
        assert outcome


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(EVENT_SAMPLES), data=st.data())
def test_missing_optional_fields_still_parse(name: str, data: st.DataObject) -> None:
    required = {
        "version",
        "eventType",
        "data",
        "vodTaskId",
        "status",
        "fileInfo",
        "fileId",
        "event_type",
        "file_id",  # a recording's (event_type 100)
        "EventType",
        "ProcedureStateChangeEvent",
        "TaskId",
        "Status",
    }
    body = payload(name)
    inner = body.get("data") or body.get("ProcedureStateChangeEvent") or body
    optional = sorted(key for key in inner if key not in required)
    drop = data.draw(st.lists(st.sampled_from(optional), unique=True) if optional else st.just([]))
    for key in drop:
        del inner[key]
    event = parse_event(body)
    assert event.kind == parse_event(payload(name)).kind


# --- the rest -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_id", "normalized"),
    [
        (
            "Transcode-1edb7eb88a599d05abe451cfc541cfbd",
            "transcode-1edb7eb88a599d05abe451cfc541cfbd",
        ),
        ("transcode-7a22", "transcode-7a22"),
        ("CreateImageSprite-4744-AB", "createimagesprite-4744-AB"),
        ("1250000001-procedurev2-ABC", "1250000001-procedurev2-ABC"),
        ("nodash", "nodash"),
    ],
)
def test_normalize_task_id_lowers_only_the_prefix(task_id: str, normalized: str) -> None:
    assert normalize_task_id(task_id) == normalized


def test_events_are_frozen_and_source_can_be_overridden() -> None:
    event = parse_event(raw_payload("v2-ClipComplete.json"), source="manual")
    assert event.source == "manual"
    with pytest.raises(ValidationError):
        event.kind = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "body",
    [
        {
            "version": "4.0",
            "eventType": "TranscodeComplete",
            "data": {"vodTaskId": "t", "status": 0, "duration": 10**400},
        },
        {
            "version": "4.0",
            "eventType": "ProcedureStateChanged",
            "data": {
                "vodTaskId": "t",
                "status": "FINISH",
                "metaData": {"size": 10**400, "duration": 1, "bitrate": 5},
            },
        },
        {"event_type": 100, "end_time": 10**400, "duration": 10**400, "file_size": -1},
        {"version": "4.0", "eventType": "X", "data": {"vodTaskId": "t", "status": 10**30}},
        {"version": "4.0", "eventType": "X", "data": {"vodTaskId": "\ud800", "n": float("nan")}},
        json.dumps({"version": "4.0", "eventType": "X", "data": {"a": "\ud800"}}),
    ],
)
def test_absurd_numbers_and_text_never_crash(body: Any) -> None:
    assert isinstance(_parse_or_reason(body), VodEvent | str)


def test_lvb_sign_with_absurd_t() -> None:
    assert lvb_sign_problem({"t": 10**5000, "sign": "x"}, LVB_KEY, 0) == (
        "t: expected the expiry as Unix seconds"
    )


def test_task_query_of_a_running_procedure_lists_sub_task_progress() -> None:
    data = payload("v2-ProcedureStateChanged.json")["data"]
    data["status"] = "PROCESSING"
    data["processTaskList"][1]["status"] = "PROCESSING"
    queried = event_from_task_info(
        {"code": 0, "type": "procedure", "status": "PROCESSING", "data": data, "extra": 1}
    )
    assert (queried.terminal, queried.success) == (False, None)
    assert queried.sub_tasks[1].status == "PROCESSING"
    assert queried.raw["extra"] == 1
    waiting = event_from_task_info(
        {"code": 0, "type": "procedure", "status": "WAITING", "data": {"vodTaskId": "p-1"}}
    )
    assert (waiting.task_id, waiting.terminal) == ("p-1", False)
    with pytest.raises(MalformedEvent, match=r"data\.status"):
        event_from_task_info({"code": 0, "type": "procedure", "data": {"vodTaskId": "p-1"}})
