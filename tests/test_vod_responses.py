"""VOD answers: the envelope, both task-ID shapes, and each call's typed fields."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.vod.errors import (
    AuthError,
    DuplicateTask,
    FrequencyLimit,
    InvalidParameter,
    MalformedResponse,
    VodError,
)
from orchestrator.vod.responses import (
    RESPONSES,
    ConfirmEventResponse,
    GetProcedureInfoResponse,
    GetTaskInfoResponse,
    GetTaskListResponse,
    GetVideoInfoResponse,
    GetVodTaskStatusResponse,
    ProcessFileByProcedureResponse,
    PullEventResponse,
    TaskRef,
    load_answer,
)

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


SEED_ANSWER = {
    "code": 0,
    "message": "",
    "transcodeTaskId": "transcode-7a2229a8f1957bfce08ba733fbfd4a3c",
    "imageSpriteTaskId": "CreateImageSprite-4744578227f9abb1e308c6aca7e9195b",
}


def test_seed_answer_shape_gives_one_ref_per_task() -> None:
    answer = ProcessFileByProcedureResponse.parse(json.dumps(SEED_ANSWER))
    assert answer.tasks == (
        TaskRef(task_id="transcode-7a2229a8f1957bfce08ba733fbfd4a3c", kind="transcode"),
        TaskRef(task_id="CreateImageSprite-4744578227f9abb1e308c6aca7e9195b", kind="imageSprite"),
    )
    assert answer.procedure_task_id is None


def test_vod_task_id_answer_shape() -> None:
    answer = ProcessFileByProcedureResponse.parse(
        payload("v2-api-ProcessFileByProcedure-response-vodTaskId.json")
    )
    assert answer.code_desc == "Success"
    assert answer.tasks == (
        TaskRef(
            task_id="1250000001-procedurev2-0123456789abcdef0123456789abcdef", kind="procedure"
        ),
    )
    assert answer.procedure_task_id == answer.tasks[0].task_id


def test_other_task_ids_and_empty_ones() -> None:
    answer = ProcessFileByProcedureResponse.parse(
        {
            "code": 0,
            "transcodeTaskId": "",
            "snapshotByTimeOffsetTaskId": "SnapshotByTimeOffset-1",
            "clipTaskId": ["clip-1", "clip-2"],
            "TaskId": "not-a-v2-field",
            "unrelated": "x",
        }
    )
    assert [(ref.kind, ref.task_id) for ref in answer.tasks] == [
        ("snapshotByTimeOffset", "SnapshotByTimeOffset-1"),
        ("clip", "clip-1"),
        ("clip", "clip-2"),
    ]
    with pytest.raises(MalformedResponse, match="transcodeTaskId"):
        ProcessFileByProcedureResponse.parse({"code": 0, "transcodeTaskId": 42})


def test_error_envelope_raises_the_typed_error() -> None:
    with pytest.raises(AuthError) as caught:
        ProcessFileByProcedureResponse.parse(payload("v2-api-error-response.json"))
    assert caught.value.code == 4100
    assert not caught.value.retryable
    assert "ProcessFileByProcedure answered code 4100" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "kind"),
    [(50005, DuplicateTask), (4400, FrequencyLimit), (1000, InvalidParameter)],
)
def test_error_codes_raise_by_class(code: int, kind: type[VodError]) -> None:
    body = {"code": code, "message": "m", "codeDesc": "Desc"}
    with pytest.raises(kind) as caught:
        ProcessFileByProcedureResponse.parse(body)
    assert caught.value.code_desc == "Desc"


@pytest.mark.parametrize(
    "body",
    [b"<html>502 Bad Gateway</html>", b"[]", b'{"message": "no code"}', b'{"code": "0"}', b""],
)
def test_non_envelopes_are_malformed_responses(body: bytes) -> None:
    with pytest.raises(MalformedResponse) as caught:
        load_answer(body, "GetTaskInfo")
    assert caught.value.retryable
    assert "GetTaskInfo" in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_junk_answers_raise_only_vod_errors(body: bytes) -> None:
    for model in RESPONSES.values():
        with contextlib.suppress(VodError):
            model.parse(body)


def test_get_task_info_procedure_sample() -> None:
    info = GetTaskInfoResponse.parse(payload("v2-api-GetTaskInfo-response-procedure.json"))
    assert info.type == "procedure"
    assert (info.create_time, info.begin_process_time, info.finish_time) == (
        1485156352,
        1485156354,
        1485156400,
    )
    assert info.data is not None
    assert info.data["vodTaskId"] == "1250000001-procedurev2-0123456789abcdef0123456789abcdef"


def test_get_vod_task_status_sample() -> None:
    answer = GetVodTaskStatusResponse.parse(payload("v2-api-GetVodTaskStatus-response.json"))
    assert [(entry.task_id, entry.status) for entry in answer.task_list] == [
        ("1250000001-procedurev2-0123456789abcdef0123456789abcdef", "Finished"),
        ("transcode-65e1de88d50c494778253a872ac0a69b", "Processing"),
        ("unknown-task", "NotFound"),
    ]


def test_pull_event_samples() -> None:
    answer = PullEventResponse.parse(payload("v2-api-PullEvent-response.json"))
    assert [entry.msg_handle for entry in answer.event_list] == [
        "476553469977303",
        "560197602638589",
    ]
    assert (
        PullEventResponse.parse(payload("v2-api-PullEvent-no-events-response.json")).event_list
        == ()
    )
    with pytest.raises(AuthError):
        PullEventResponse.parse({"code": 4100, "message": "bad signature"})


def test_confirm_event_sample() -> None:
    assert ConfirmEventResponse.parse(payload("v2-api-ConfirmEvent-response.json")).message is None


def test_get_task_list_is_lenient() -> None:
    answer = GetTaskListResponse.parse(
        {
            "code": 0,
            "totalCount": 2,
            "taskList": [
                {"vodTaskId": "transcode-1", "type": "transcode", "status": "FINISHED", "x": 1},
                {"taskId": "clip-2", "status": "PROCESSING", "createTime": "1485156352"},
                "junk",
            ],
        }
    )
    assert answer.total_count == 2
    assert answer.task_list[0].vod_task_id == "transcode-1"
    assert answer.task_list[0].model_extra == {"x": 1}
    assert answer.task_list[1].task_id == "clip-2"
    assert answer.task_list[1].create_time == 1485156352
    assert len(answer.task_list) == 2


def test_get_procedure_info_reads_sub_tasks() -> None:
    body = json.loads(payload("v2-api-GetTaskInfo-response-procedure.json"))
    answer = GetProcedureInfoResponse.parse({"code": 0, **body["data"]})
    assert answer.status == "FINISH"
    assert answer.meta_data is not None
    assert answer.meta_data.duration == 60
    assert [task.task_type for task in answer.process_task_list][:2] == [
        "Transcode",
        "SampleSnapshot",
    ]


def test_get_video_info_is_lenient() -> None:
    answer = GetVideoInfoResponse.parse(
        {
            "code": 0,
            "basicInfo": {"name": "lecture", "duration": 599, "coverUrl": "http://c", "new": 1},
            "metaData": {"size": 10, "bitrate": "oops"},
            "transcodeInfo": {
                "transcodeList": [{"url": "http://u/f20.mp4", "definition": 20, "bitrate": 400}]
            },
            "imageSpriteInfo": {
                "imageSpriteList": [{"definition": 10, "totalCount": 60, "imageUrls": ["http://s"]}]
            },
            "snapshotByTimeOffsetInfo": {"unmodelled": True},
        }
    )
    assert answer.basic_info is not None
    assert answer.basic_info.name == "lecture"
    assert answer.meta_data is not None
    assert answer.meta_data.bitrate is None
    assert answer.transcode_info is not None
    assert answer.transcode_info.transcode_list[0].definition == 20
    assert answer.image_sprite_info is not None
    assert answer.image_sprite_info.image_sprite_list[0].image_urls == ("http://s",)
    assert answer.model_extra == {"snapshotByTimeOffsetInfo": {"unmodelled": True}}
