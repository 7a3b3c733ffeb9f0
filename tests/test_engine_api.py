"""The engine's API over real HTTP, without media work (workers off: tasks stay queued):
Tencent's own SDK and vodflow's client signing for it, every refusal code, the answer shapes,
the duplicate check, the frequency limit, and the task queries' answers."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from QcloudApi.modules.base import Base

from orchestrator.engine.kinds import new_file_id
from orchestrator.store import engine as store
from orchestrator.store.db import Database
from orchestrator.store.tables import EngineFile
from orchestrator.vod.errors import (
    DuplicateTask,
    FileNotFound,
    FrequencyLimit,
    InvalidParameter,
    ProcedureInvalid,
)
from orchestrator.vod.params import PullEventRequest
from orchestrator.vod.responses import GetVodTaskStatusResponse, ProcessFileByProcedureResponse
from tests.engine_support import Vod, running_engine

pytestmark = pytest.mark.usefixtures("clean_env")

TASK_ID = {
    "transcode": re.compile(r"transcode-[0-9a-f]{32}"),
    "imageSprite": re.compile(r"CreateImageSprite-[0-9a-f]{32}"),
    "clip": re.compile(r"clip-[0-9a-f]{32}"),
    "concat": re.compile(r"concat-[0-9a-f]{32}"),
    "snapshotByTimeOffset": re.compile(r"CreateSnapshotByTimeOffset-[0-9a-f]{32}"),
    "procedure": re.compile(r"1250000001-procedurev2-[0-9a-f]{32}"),
}


@pytest.fixture
async def vod(database_url: str, tmp_path: Path) -> AsyncIterator[Vod]:
    async with running_engine(database_url, tmp_path, work=False) as running:
        yield running


async def add_file(
    db: Database,
    *,
    duration: float = 12.0,
    stream_id: str | None = None,
    start: int | None = None,
    end: int | None = None,
) -> str:
    """A file row as an upload leaves it (the API checks only what the database says)."""
    file_id = new_file_id()
    row = EngineFile(
        file_id=file_id,
        name="lecture.mp4",
        path=f"{file_id}/f0.mp4",
        container="mp4",
        size=1_000_000,
        duration=duration,
        meta={"duration": duration},
        source_type="Record" if stream_id else "ServerUpload",
        stream_id=stream_id,
        record_start=start,
        record_end=end,
        created_at=datetime.now(UTC),
    )
    async with db.transaction() as conn:
        assert await store.insert_file(conn, row)
    return file_id


def sdk_url(vod: Vod, action: str, params: dict[str, Any], **config: str) -> str:
    """A request signed by Tencent's published SDK for the engine's host, fetched over http."""
    sdk = Base(
        {
            "secretId": vod.keys.vod_secret_id,
            "secretKey": vod.keys.vod_secret_key,
            "Region": "gz",
            "method": "GET",
            "endpoint": vod.base.removeprefix("http://"),
            **config,
        }
    )
    url: str = sdk.generateUrl(action, params)
    assert url.startswith("https://127.0.0.1:")
    return "http://" + url.removeprefix("https://")


# --- Tencent's SDK and vodflow's client -------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HmacSHA1", "HmacSHA256"])
async def test_tencents_sdk_runs_process_file_by_procedure(vod: Vod, algorithm: str) -> None:
    file_id = await add_file(vod.db)
    url = sdk_url(
        vod,
        "ProcessFileByProcedure",
        {"fileId": file_id, "procedure": "TranscodeAndSprite"},
        SignatureMethod=algorithm,
    )
    answer = (await vod.http.get(url)).json()
    assert answer["code"] == 0, answer
    assert (answer["message"], answer["codeDesc"]) == ("", "Success")
    assert TASK_ID["transcode"].fullmatch(answer["transcodeTaskId"])
    assert TASK_ID["imageSprite"].fullmatch(answer["imageSpriteTaskId"])

    # The SDK flattens nested requests itself (dots, lists from 0) and signs with its RequestClient.
    other = await add_file(vod.db)
    gen = {
        "gen": {
            "clip": {"fileList": [{"fileId": other, "startTimeOffset": 2, "endTimeOffset": -2}]},
            "concat": {"dstType": "mp4"},
        },
        "procedure": "TranscodeAndSprite",
    }
    answer = (await vod.http.get(sdk_url(vod, "ProcessFileByProcedure", gen))).json()
    assert answer["code"] == 0, answer
    assert TASK_ID["clip"].fullmatch(answer["clipTaskId"])
    assert TASK_ID["concat"].fullmatch(answer["concatTaskId"])


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_vodflows_client_signs_for_the_engine(vod: Vod, method: str) -> None:
    file_id = await add_file(vod.db)
    vod.client.method = method
    answer = await vod.process({"fileId": file_id, "procedure": "TranscodeAndSnapshots"})
    kinds = [task.kind for task in answer.tasks]
    assert kinds == ["transcode", "snapshotByTimeOffset"]
    for task in answer.tasks:
        assert TASK_ID[task.kind].fullmatch(task.task_id)


# --- refusals ---------------------------------------------------------------------------------


async def test_authentication_failures_use_the_common_codes(vod: Vod) -> None:
    request = {"vodTaskId": "transcode-0"}
    unknown = await vod.call("GetTaskInfo", request, secret_id="AKIDnobody", secret_key="x")
    assert unknown["code"] == 4104
    assert "'AKIDnobody' is not a key of this engine" in unknown["message"]

    tampered = vod.signed("GetTaskInfo", request)
    tampered["vodTaskId"] = "transcode-1"
    bad = await vod.send(tampered)
    assert bad["code"] == 4100
    assert bad["codeDesc"] == "AuthFailure"
    assert "signature mismatch" in bad["message"]

    wrong_key = await vod.call("GetTaskInfo", request, secret_key="not-the-key")
    assert wrong_key["code"] == 4100

    # Signing leaves a POST's values that start with '@' out: anyone on the way could add one.
    added = vod.signed("GetVodTaskStatus", {"taskId.0": "transcode-0"}, method="POST")
    added["taskId.1"] = "@added-on-the-way"
    unsigned = await vod.send(added, "POST")
    assert (unsigned["code"], unsigned["message"]) == (
        4100,
        "parameter 'taskId.1': a value starting with '@' is not signed in a POST; send this "
        "request with GET so that every parameter is signed",
    )

    # Signed for another host (the one a proxy would have been addressed by).
    params = vod.signed("GetTaskInfo", request)
    answer = await vod.http.get(vod.endpoint, params=params, headers={"Host": "vod.example:80"})
    assert answer.json()["code"] == 4100

    stale = await vod.call("GetTaskInfo", request, timestamp=int(time.time()) - 1000)
    assert stale["code"] == 4500
    assert "behind the engine's clock; allowed: 300s" in stale["message"]
    ahead = await vod.call("GetTaskInfo", request, timestamp=int(time.time()) + 400)
    assert ahead["code"] == 4500

    first = await vod.call("GetTaskInfo", request, nonce=424242)
    assert first["code"] == 5000  # authenticated: the task just does not exist
    replay = await vod.call("GetTaskInfo", request, nonce=424242)
    assert replay["code"] == 4500
    assert "Nonce 424242 was already used" in replay["message"]


async def test_a_request_dated_ahead_cannot_be_replayed_while_its_timestamp_is_accepted(
    vod: Vod,
) -> None:
    # Its Timestamp stays within the window for up to two windows after it arrives: so must
    # its Nonce stay remembered.
    now = [time.time()]
    vod.engine.api.auth.clock = lambda: now[0]
    request = {"taskId.0": "transcode-0"}
    params = vod.signed("GetVodTaskStatus", request, timestamp=int(now[0]) + 290)
    assert (await vod.send(params))["code"] == 0
    now[0] += 301  # a window after it arrived; its Timestamp is now 11 s behind the clock
    replay = await vod.send(params)
    assert replay["code"] == 4500
    assert replay["message"] == (
        f"Nonce {params['Nonce']} was already used with this SecretId by a request still "
        "within the 300s window (a replayed request?)"
    )
    now[0] += 300
    assert "behind the engine's clock" in (await vod.send(params))["message"]
    # Once no request with it can be accepted any more, the Nonce may be used again.
    again = vod.signed(
        "GetVodTaskStatus", request, timestamp=int(now[0]), nonce=int(params["Nonce"])
    )
    assert (await vod.send(again))["code"] == 0


async def test_extra_key_pairs_from_the_settings_are_accepted(
    database_url: str, tmp_path: Path
) -> None:
    extra = {"AKIDpartner0000": "partner-secret"}
    async with running_engine(database_url, tmp_path, work=False, engine_extra_keys=extra) as vod:
        answer = await vod.call(
            "GetVodTaskStatus",
            {"taskId.0": "transcode-0"},
            secret_id="AKIDpartner0000",
            secret_key="partner-secret",
            method="POST",
        )
    assert answer == {
        "code": 0,
        "message": "",
        "codeDesc": "Success",
        "taskList": [{"taskId": "transcode-0", "status": "NotFound"}],
    }


async def test_unknown_or_missing_action_is_4000(vod: Vod) -> None:
    answer = await vod.call("DeleteEverything", {})
    assert answer["code"] == 4000
    assert answer["message"].startswith("unknown Action 'DeleteEverything'; this engine serves:")
    missing = await vod.call("", {})
    assert (missing["code"], missing["message"]) == (4000, "missing parameter Action")


async def test_a_form_body_starlette_refuses_is_4000_naming_why(
    vod: Vod, caplog: pytest.LogCaptureFixture
) -> None:
    # Read before anything is known about the sender: no "internal error", no traceback.
    fields = {f"f{n}": "1" for n in range(1001)}
    answer = (await vod.http.post(vod.endpoint, data=fields)).json()
    assert (answer["code"], answer["message"]) == (
        4000,
        "the form body: Too many fields. Maximum number of fields is 1000.",
    )
    assert not [r for r in caplog.records if r.exc_info]


async def test_an_exception_inside_is_6000_without_a_traceback(vod: Vod) -> None:
    async def broken(params: dict[str, str], secret_id: str) -> dict[str, Any]:
        raise RuntimeError("disk /srv/secret/path exploded")

    vod.engine.api.handlers["GetTaskInfo"] = broken
    answer = await vod.call("GetTaskInfo", {"vodTaskId": "x"})
    assert answer["code"] == 6000
    assert "internal error while handling GetTaskInfo" in answer["message"]
    assert "secret" not in answer["message"]
    assert "Traceback" not in answer["message"]


@pytest.mark.parametrize(
    ("params", "parameter", "why"),
    [
        (
            {"gen.clip.fileList.0.fileId": "{a}", "gen.clip.fileList.0.startTimeOffset": "two"},
            "gen.clip.fileList.0.startTimeOffset",
            "expected an integer",
        ),
        ({"procedure": "TranscodeAndSprite"}, "fileId", "required unless gen.clip"),
        (
            {"gen.clip.fileList.0.fileId": "{a}", "gen.clip.fileList.0.startTimeOffset": "30"},
            "gen.clip.fileList.0.startTimeOffset",
            "30 s is not inside file",
        ),
        (
            {
                "gen.clip.fileList.0.fileId": "{a}",
                "gen.clip.fileList.0.startTimeOffset": "-4",
                "gen.clip.fileList.0.endTimeOffset": "5",
            },
            "gen.clip.fileList.0.endTimeOffset",
            "ends before the clip starts (8 s into file",
        ),
        (
            {"gen.clip.fileList.0.fileId": "{a}", "gen.clip.fileList.1.fileId": "{a}"},
            "gen.concat.dstType",
            "gen.clip yields 2 clips",
        ),
        (
            {"gen.concat.fileIdList.0": "{a}", "gen.concat.dstType": "avi"},
            "gen.concat.dstType",
            "expected one of mp4, flv, ts, got 'avi'",
        ),
        (
            {
                "gen.clip.streamInfo.streamId": "lecture_9",
                "gen.clip.streamInfo.startTime": "1000",
                "gen.clip.streamInfo.endTime": "2000",
                "gen.concat.dstType": "mp4",
            },
            "gen.clip.streamInfo",
            "stream 'lecture_9' has no recording between 1000 and 2000",
        ),
        ({"fileId": "{a}"}, "procedure", "required with fileId"),
    ],
)
async def test_invalid_requests_are_1000_naming_the_parameter(
    vod: Vod, params: dict[str, str], parameter: str, why: str
) -> None:
    file_id = await add_file(vod.db, duration=12.0)
    await add_file(vod.db, stream_id="lecture_9", start=5000, end=5600)
    request = {name: value.replace("{a}", file_id) for name, value in params.items()}
    answer = await vod.call("ProcessFileByProcedure", request)
    assert answer["code"] == 1000, answer
    assert answer["message"].startswith(f"parameter '{parameter}'"), answer["message"]
    assert why in answer["message"]


async def test_missing_files_are_10008_naming_them(vod: Vod) -> None:
    with pytest.raises(FileNotFound, match="fileId '5285890700000000000': no such file") as info:
        await vod.process({"fileId": "5285890700000000000", "procedure": "TranscodeAndSprite"})
    assert info.value.code == 10008
    real = await add_file(vod.db)
    answer = await vod.call(
        "ProcessFileByProcedure",
        {
            "gen.concat.fileIdList.0": real,
            "gen.concat.fileIdList.1": "42",
            "gen.concat.dstType": "mp4",
        },
    )
    assert answer["code"] == 10008
    assert answer["message"] == "parameter 'gen.concat.fileIdList.1': no such file '42'"


async def test_unknown_procedure_is_50007(vod: Vod) -> None:
    file_id = await add_file(vod.db)
    with pytest.raises(ProcedureInvalid) as info:
        await vod.process({"fileId": file_id, "procedure": "MakeItPretty"})
    assert info.value.code == 50007
    assert "procedure 'MakeItPretty' is not defined by this engine" in str(info.value)
    assert "TranscodeAndSprite" in str(info.value)


async def test_the_same_procedure_twice_is_50005_naming_the_first(vod: Vod) -> None:
    file_id = await add_file(vod.db)
    vod.engine.api.shape = "both"
    first = await vod.process({"fileId": file_id, "procedure": "TranscodeAndSprite"})
    with pytest.raises(DuplicateTask) as info:
        await vod.process({"fileId": file_id, "procedure": "TranscodeAndSprite"})
    assert info.value.code == 50005
    assert f"procedure task {first.procedure_task_id}" in str(info.value)
    # Another procedure on the same file is no duplicate.
    await vod.process({"fileId": file_id, "procedure": "TranscodeHLS"})

    # A gen request is the same request however it is spelt (the seed's endTime alias, an
    # ignored fileIdList).
    clip = {
        "gen.clip.fileList.0.fileId": file_id,
        "gen.concat.dstType": "mp4",
        "procedure": "TranscodeAndSprite",
    }
    made = await vod.call(
        "ProcessFileByProcedure", {**clip, "gen.clip.fileList.0.endTimeOffset": "6"}
    )
    again = await vod.call(
        "ProcessFileByProcedure",
        {**clip, "gen.clip.fileList.0.endTime": "6", "gen.concat.fileIdList.0": "123"},
    )
    assert again["code"] == 50005
    assert made["vodTaskId"] in again["message"]


async def test_a_procedure_that_cannot_be_queued_is_50006(
    vod: Vod, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def full(*args: Any) -> None:
        raise OSError("no space left on device")

    file_id = await add_file(vod.db)
    monkeypatch.setattr(store, "insert_procedure", full)
    answer = await vod.call(
        "ProcessFileByProcedure", {"fileId": file_id, "procedure": "TranscodeAndSprite"}
    )
    assert answer["code"] == 50006
    assert answer["message"] == ("procedure task creation failed: OSError: no space left on device")


async def test_the_frequency_limit_is_4400_per_secret_id(database_url: str, tmp_path: Path) -> None:
    extra = {"AKIDpartner0000": "partner-secret"}
    async with running_engine(
        database_url, tmp_path, work=False, engine_rate_per_minute=3, engine_extra_keys=extra
    ) as vod:
        file_id = await add_file(vod.db)
        for procedure in ("TranscodeAndSprite", "TranscodeHLS", "TranscodeAll"):
            await vod.process({"fileId": file_id, "procedure": procedure})
        with pytest.raises(FrequencyLimit) as info:
            await vod.process({"fileId": file_id, "procedure": "TranscodeAndSnapshots"})
        assert info.value.code == 4400
        assert "at most 3 ProcessFileByProcedure calls per minute" in str(info.value)
        # Other calls and other keys are not counted against it.
        assert (await vod.call("GetVodTaskStatus", {"taskId.0": "x"}))["code"] == 0
        other = await vod.call(
            "ProcessFileByProcedure",
            {"fileId": file_id, "procedure": "TranscodeAndSnapshots"},
            secret_id="AKIDpartner0000",
            secret_key="partner-secret",
        )
        assert other["code"] == 0


# --- answers -----------------------------------------------------------------------------------


async def test_answer_shapes(vod: Vod) -> None:
    file_id = await add_file(vod.db)
    several = await vod.call(
        "ProcessFileByProcedure", {"fileId": file_id, "procedure": "TranscodeAll"}
    )
    # Several transcodes of one procedure: one task each, listed in definition order.
    assert len(several["transcodeTaskId"]) == 3
    assert "vodTaskId" not in several
    parsed = ProcessFileByProcedureResponse.parse(several)
    assert [t.kind for t in parsed.tasks] == ["transcode"] * 3 + ["imageSprite"]

    vod.engine.api.shape = "procedure"
    only = await vod.call(
        "ProcessFileByProcedure", {"fileId": file_id, "procedure": "TranscodeHLS"}
    )
    assert set(only) == {"code", "message", "codeDesc", "vodTaskId"}
    assert TASK_ID["procedure"].fullmatch(only["vodTaskId"])

    vod.engine.api.shape = "both"
    both = await vod.process({"fileId": file_id, "procedure": "TranscodeAndSprite"})
    assert [t.kind for t in both.tasks] == ["transcode", "imageSprite", "procedure"]


async def test_task_queries_of_queued_work(vod: Vod) -> None:
    first = await add_file(vod.db, duration=10.0)
    vod.engine.api.shape = "both"
    request = {
        "gen.clip.fileList.0.fileId": first,
        "gen.clip.fileList.0.startTimeOffset": "-4",
        "gen.concat.dstType": "mp4",
        "procedure": "TranscodeAndSprite",
    }
    answer = ProcessFileByProcedureResponse.parse(
        await vod.call("ProcessFileByProcedure", request, method="POST")
    )
    ids = {task.kind: task.task_id for task in answer.tasks}

    status = await vod.client.get_task_status([ids["transcode"], "transcode-nothing"])
    assert [(e.task_id, e.status) for e in status.task_list] == [
        (ids["transcode"], "Queuing"),
        ("transcode-nothing", "NotFound"),
    ]

    info = await vod.client.get_task_info(ids["clip"])
    assert (info.type, info.status, info.finish_time) == ("clip", "WAITING", 0)
    assert info.data == {"vodTaskId": ids["clip"], "fileId": first}

    procedure = await vod.client.get_procedure_info(ids["procedure"])
    assert procedure.status == "WAITING"
    assert [(t.task_type, t.status) for t in procedure.process_task_list] == [
        ("Transcode", "WAITING"),
        ("ImageSprites", "WAITING"),
    ]
    concat_file = procedure.file_id
    assert concat_file is not None
    assert len(concat_file) == 19
    assert concat_file.isdigit()

    listed = await vod.client.get_task_list("WAITING")
    assert listed.total_count == 1
    entry = listed.task_list[0]
    assert (entry.vod_task_id, entry.type, entry.file_id) == (
        ids["procedure"],
        "procedure",
        concat_file,
    )
    extra = entry.model_extra or {}
    assert extra["procedure"] == "TranscodeAndSprite"
    assert extra["request"] == {
        "gen": {
            "clip": {"fileList": [{"fileId": first, "startTimeOffset": "-4"}]},
            "concat": {"dstType": "mp4"},
        },
        "procedure": "TranscodeAndSprite",
    }
    raw = await vod.call("GetTaskList", {"status": "WAITING"})  # Tencent's documented shape
    assert [(g["status"], len(g["taskList"])) for g in raw["data"]] == [("WAITING", 1)]
    assert (await vod.client.get_task_list("WAITING", file_id=first)).task_list == ()
    assert (await vod.client.get_task_list("FINISHED")).total_count == 0

    missing = await vod.call("GetTaskInfo", {"vodTaskId": "transcode-nothing"})
    assert (missing["code"], missing["message"]) == (
        5000,
        "vodTaskId 'transcode-nothing': no such task",
    )


async def test_queries_check_their_parameters(vod: Vod) -> None:
    # GetVodTaskStatus without any taskId.N (sent through the client's machinery).
    with pytest.raises(InvalidParameter, match="parameter 'taskId': required"):
        await vod.client.call(PullEventRequest(), GetVodTaskStatusResponse)
    answer = await vod.call("GetTaskList", {"status": "DONE"})
    assert answer["code"] == 4000
    assert "parameter 'status'" in answer["message"]


async def test_pull_event_without_events_answers_4000_after_waiting(vod: Vod) -> None:
    started = time.monotonic()
    pulled = await vod.client.pull_event()
    assert pulled.code == 4000
    assert pulled.event_list == ()
    assert time.monotonic() - started >= 0.9  # held for engine_pull_wait (1 s here)
