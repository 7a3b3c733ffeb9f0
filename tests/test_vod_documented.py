"""Tencent's documented bodies, verbatim (``tests/fixtures/tencent_docs``), through the real
parsers, the real sweeper and the real HTTP receiver: what Tencent sends must be read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.triggers import contexts_for
from orchestrator.vod.events import event_from_task_info, parse_event, task_info_callback
from orchestrator.vod.responses import GetTaskListResponse

DOCS = Path(__file__).parent / "fixtures" / "tencent_docs"


def documented(name: str) -> Any:
    return json.loads((DOCS / name).read_bytes())


# --- GetTaskInfo (recovering a missed callback) ------------------------------------------------


def test_a_documented_transcode_task_info_rebuilds_its_callback() -> None:
    # Tencent's example leaves vodTaskId and status out of data (the envelope has them).
    answer = documented("v2-GetTaskInfo-transcode.json")
    answer["status"] = "FINISH"  # the example shows a task still running; the words are documented
    queried = event_from_task_info(answer, "transcode-7a2229a8f1957bfce08ba733fbfd4a3c")
    assert queried.kind == "TranscodeComplete"
    assert queried.task_id == "transcode-7a2229a8f1957bfce08ba733fbfd4a3c"
    assert (queried.terminal, queried.success) == (True, True)
    assert len(queried.outputs.play) == 6
    # What the sweeper stores reads back as the same event, with the same dedup key.
    callback = task_info_callback(answer, "transcode-7a2229a8f1957bfce08ba733fbfd4a3c")
    stored = parse_event(json.dumps(callback), source="query")
    assert (stored.task_id, stored.dedup_key) == (queried.task_id, queried.dedup_key)


def test_a_documented_procedure_task_info_is_read_with_the_envelope_status() -> None:
    answer = documented("v2-GetTaskInfo-procedure.json")
    running = event_from_task_info(answer, "1251989944-Procedure-d7c9631c15ecf653b1ff67e34cb04692")
    assert running.kind == "ProcedureStateChanged"
    assert running.task_id == "1251989944-Procedure-d7c9631c15ecf653b1ff67e34cb04692"
    assert running.terminal is False
    assert [task.status for task in running.sub_tasks] == [
        "PROCESSING",
        "SUCCESS",
        "SUCCESS",
        "SUCCESS",
    ]
    answer["status"] = "FINISH"
    answer["data"]["processTaskList"][0]["status"] = "SUCCESS"
    done = event_from_task_info(answer, "1251989944-Procedure-d7c9631c15ecf653b1ff67e34cb04692")
    assert (done.terminal, done.success) == (True, True)
    assert done.outputs.cover_url is not None


def test_fields_a_task_info_does_carry_are_kept() -> None:
    answer = documented("v2-GetTaskInfo-transcode.json")
    answer["status"] = "FINISH"
    answer["data"]["vodTaskId"] = "transcode-given"
    answer["data"]["status"] = -43001
    callback = task_info_callback(answer, "transcode-asked")
    assert callback is not None
    assert callback["data"]["vodTaskId"] == "transcode-given"  # type: ignore[index,call-overload]
    assert event_from_task_info(answer, "transcode-asked").success is False


def test_a_finished_word_with_an_error_code_is_a_failure() -> None:
    # The Chinese GetTaskInfo page shows a transcode's data with a word and errCode
    # ("status": "PROCESSING", "errCode": 0): once finished, the code tells the outcome.
    answer = documented("v2-GetTaskInfo-transcode.json")
    answer["status"] = "FINISHED"  # the word in that page's field table
    answer["data"].update({"status": "FINISH", "errCode": -43001})
    failed = event_from_task_info(answer, "transcode-asked")
    assert (failed.terminal, failed.success, failed.error_code) == (True, False, -43001)
    answer["data"]["errCode"] = 0
    assert event_from_task_info(answer, "transcode-asked").success is True
    answer["data"]["status"] = "PROCESSING"
    assert event_from_task_info(answer, "transcode-asked").terminal is False


def test_a_procedure_reported_finished_is_terminal() -> None:
    # GetTaskInfo's status words are WAITING / PROCESSING / FINISHED; the callback's FINISH.
    answer = documented("v2-GetTaskInfo-procedure.json")
    answer["status"] = "FINISHED"
    answer["data"]["processTaskList"][0]["status"] = "SUCCESS"
    done = event_from_task_info(answer, "1251989944-Procedure-d7c9631c15ecf653b1ff67e34cb04692")
    assert (done.terminal, done.success) == (True, True)


def test_the_documented_task_list_is_read_group_by_group() -> None:
    answer = GetTaskListResponse.parse(json.dumps(documented("v2-GetTaskList.json")))
    assert [(e.vod_task_id, e.type, e.status) for e in answer.task_list][::2] == [
        ("1251132654-Procedure-d7c9631c15ecf653b1ff67e34cb04692", "procedure", "WAITING"),
        ("1251132654-Procedure-d7c9631c15ecf653b1ff67e34cb046ff", "procedure", "PROCESSING"),
        ("1251132654-Procedure-d7c9631c15ecf653b1ff67e34cb046ff", "procedure", "FINISHED"),
    ]
    assert len(answer.task_list) == 6
    assert answer.task_list[0].create_time == 1485156352
    # The field table's name for the list is read too.
    renamed = documented("v2-GetTaskList.json")
    for group in renamed["data"]:
        group["vodTaskList"] = group.pop("taskList")
    assert GetTaskListResponse.parse(json.dumps(renamed)).task_list == answer.task_list


def test_a_clip_task_info_is_read_as_a_clip_complete() -> None:
    # GetTaskInfo documents the type "clipVideo" for a clip.
    answer = {
        "code": 0,
        "type": "clipVideo",
        "status": "FINISH",
        "data": {
            "srcFileId": "16092504232103571364",
            "fileInfo": {
                "fileType": "mp4",
                "status": 0,
                "message": "",
                "fileId": "14508071098244929440",
                "fileUrl": "http://125676836723.vod2.myqcloud.com/xxx/xxx/f0.mp4",
            },
        },
    }
    queried = event_from_task_info(answer, "clipVideo-0a78cf44c4285026a4c")
    assert (queried.kind, queried.task_id, queried.success) == (
        "ClipComplete",
        "clipVideo-0a78cf44c4285026a4c",
        True,
    )


# --- v3 NewFileUpload --------------------------------------------------------------------------


def live_recording(stream_id: str, start: str, end: str, file_id: str) -> dict[str, Any]:
    """The documented v3 NewFileUpload, as a live recording's (see the fixtures' README)."""
    body: dict[str, Any] = documented("v3-NewFileUpload.json")
    event = body["FileUploadEvent"]
    event["FileId"] = event["MediaBasicInfo"]["Vid"] = file_id
    event["MediaBasicInfo"]["SourceInfo"] = {
        "SourceType": "Record",
        "SourceContext": "",
        "LiveRecordInfo": {"StreamId": stream_id, "RecordStartTime": start, "RecordEndTime": end},
    }
    return body


def test_the_documented_v3_upload_is_a_file_upload() -> None:
    event = parse_event(json.dumps(documented("v3-NewFileUpload.json")))
    assert (event.kind, event.file_id, event.source_type) == (
        "NewFileUpload",
        "5285890784273533167",
        "Upload",
    )
    assert (event.stream_id, event.recording) == (None, None)


def test_a_v3_live_recording_upload_names_its_stream_and_recording_times() -> None:
    body = live_recording("talk_9", "2019-01-09T16:00:00Z", "2019-01-09T16:30:00Z", "f9")
    event = parse_event(json.dumps(body))
    assert event.stream_id == "talk_9"
    assert event.recording is not None
    assert (event.recording.start_time, event.recording.end_time) == (1547049600, 1547051400)
    (recording, _upload) = contexts_for(event)
    assert recording.type == "recording.finished"
    assert recording.fields["streamId"] == "talk_9"
    assert (recording.fields["startTime"], recording.fields["endTime"]) == (1547049600, 1547051400)
