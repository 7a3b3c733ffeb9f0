"""The orchestrator end to end over real HTTP, with a scriptable VOD: callbacks early, twice, out
of order or never; VOD throttling, refusing and failing; crashes between a call and its record;
stream sessions. (tests/test_e2e.py runs the same service against the real embedded engine.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.demo import recording_finished
from tests.fakevod import (
    new_file_upload,
    procedure_state_changed,
    sprite_complete,
    transcode_complete,
)
from tests.harness import TOKEN, Service, running_service, vodflow_cli
from tests.servers import serving
from tests.test_vod_documented import live_recording

pytestmark = pytest.mark.usefixtures("clean_env")
DOCS = Path(__file__).parent / "fixtures" / "tencent_docs"

TRANSCODE = """
name: transcode
triggers: [{type: recording.finished}, {type: manual, params: [fileId]}]
retry: {max_attempts: 2, backoff: {initial: 300ms, max: 1s, jitter: 0}}
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    expected: 1s
    timeout: %(timeout)s
    verify: false
"""
SESSION = """
name: session
triggers: [{type: stream.session, match: {streamId: "talk_*"}, quiet: 1s}]
steps:
  - name: replay
    process:
      gen:
        clip:
          streamInfo:
            streamId: "{{ trigger.streamId }}"
            startTime: "{{ trigger.startTime }}"
            endTime: "{{ trigger.endTime }}"
        concat: {dstType: mp4}
      procedure: TranscodeAndSprite
    verify: false
"""


@pytest.fixture
async def service(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[Service]:
    marker = request.node.get_closest_marker("step_timeout")
    timeout = marker.args[0] if marker else "1h"
    workflows = {"transcode": TRANSCODE % {"timeout": timeout}, "session": SESSION}
    async with running_service(tmp_path, database_url, workflows) as service:
        yield service


async def test_recording_finished_runs_to_success_with_callbacks(service: Service) -> None:
    assert (await service.callback(new_file_upload("f1"))).status_code == 200
    run_id = await service.one_run()
    await service.submitted()
    sent = service.vod.submitted[0]
    assert sent.params["fileId"] == "f1"
    assert sent.params["procedure"] == "TranscodeAndSprite"
    await service.status_is(run_id, "awaiting_callback")
    await service.callback(transcode_complete(sent.tasks["transcode"], "f1"))
    await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
    run = await service.status_is(run_id, "succeeded")
    outputs = run["steps"][0]["outputs"]
    assert outputs["play"][0]["url"] == "http://files.example/f1/f20.mp4"
    assert outputs["sprites"][0]["webVttUrl"] == "http://files.example/f1/sprite.vtt"
    assert [e["status"] for e in run["events"]][-2:] == ["applied", "applied"]
    assert [h["input"] for h in run["history"]] == [
        "trigger",
        "submit_succeeded",
        "task_event",
        "task_event",
    ]


async def test_a_step_without_expected_waits_task_poll_after(
    tmp_path: Path, database_url: str
) -> None:
    """VODFLOW_TASK_POLL_AFTER is the wait for a task's callback of a step that names none."""
    workflow = TRANSCODE.replace("    expected: 1s\n", "") % {"timeout": "1h"}
    async with running_service(
        tmp_path, database_url, {"transcode": workflow}, task_poll_after="20s"
    ) as service:
        await service.callback(new_file_upload("f1"))
        run_id = await service.one_run()
        await service.submitted()
        run = await service.status_is(run_id, "awaiting_callback")
        assert [t["expectedSeconds"] for t in run["steps"][0]["tasks"]] == [20, 20]


async def test_the_same_recording_announced_twice_starts_one_run(service: Service) -> None:
    await service.callback(new_file_upload("f1"))
    dup = await service.callback(new_file_upload("f1"))
    assert dup.json()["message"].startswith("duplicate")
    await service.submitted()
    await asyncio.sleep(0.5)
    assert len(await service.runs()) == 1
    assert len(service.vod.submitted) == 1


async def _answer_held_back(service: Service) -> tuple[str, Any]:
    """A run of file f1 whose submit VOD has accepted while its answer is still held back:
    the run's ID and what VOD was sent."""
    service.vod.delay = 1.0
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()

    async def accepted() -> bool:
        return bool(service.vod.submitted)

    await service.wait(accepted)
    return run_id, service.vod.submitted[0]


async def test_callbacks_before_the_submit_answer_wait_as_orphans(service: Service) -> None:
    run_id, sent = await _answer_held_back(service)
    # VOD finished before vodflow stored its answer: the callbacks come first.
    await service.callback(transcode_complete(sent.tasks["transcode"], "f1"))
    await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
    run = await service.status_is(run_id, "succeeded")
    notes = [e["note"] for e in run["events"] if e["eventType"] != "NewFileUpload"]
    assert all("succeeded" in n for n in notes)


async def test_the_procedure_event_of_recorded_tasks_joins_their_run_not_the_orphans(
    service: Service,
) -> None:
    # The answer named the tasks (transcodeTaskId, ...), not the procedure: its event carries an
    # ID no run recorded, but names the sub-tasks' IDs. Here it even comes before the answer.
    run_id, sent = await _answer_held_back(service)
    subs = {"Transcode": sent.tasks["transcode"], "ImageSprites": sent.tasks["imageSprite"]}
    early = procedure_state_changed(sent.procedure_id, "f1", subs)
    assert (await service.callback(early)).status_code == 200
    await service.status_is(run_id, "awaiting_callback")
    await service.callback(transcode_complete(sent.tasks["transcode"], "f1"))
    await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
    # A procedure none of whose IDs is known stays an orphan.
    unknown = procedure_state_changed("1250000001-procedurev2-ff", "f9", {"Transcode": "t-ff"})
    await service.callback(unknown)
    await service.status_is(run_id, "succeeded")

    async def procedure_event() -> dict[str, Any] | None:
        run = await service.run(run_id)
        found = [e for e in run["events"] if e["eventType"] == "ProcedureStateChanged"]
        return found[0] if found else None

    event = await service.wait(procedure_event)
    assert (event["status"], event["taskId"]) == ("ignored", sent.procedure_id)
    assert "recorded, not applied (each task's own event applies its result)" in event["note"]
    assert sent.tasks["transcode"] in event["note"]
    run = await service.run(run_id)
    # It applied nothing: the tasks' own events decided the step.
    assert [h["input"] for h in run["history"]] == [
        "trigger",
        "submit_succeeded",
        "task_event",
        "task_event",
    ]
    inbox = (await service.http.get(f"{service.base}/api/inbox?status=orphan")).json()
    assert [e["taskId"] for e in inbox["events"]] == ["1250000001-procedurev2-ff"]
    stats = (await service.http.get(f"{service.base}/api/stats")).json()
    assert stats["inbox"].get("orphan") == 1


async def test_a_task_callback_is_answered_after_its_transition_committed(
    service: Service,
) -> None:
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    await service.submitted()
    await service.status_is(run_id, "awaiting_callback")
    sent = service.vod.submitted[0]
    answer = await service.callback(transcode_complete(sent.tasks["transcode"], "f1"))
    assert answer.status_code == 200
    run = await service.run(run_id)  # no waiting: the answer came after the commit
    assert [h["input"] for h in run["history"]][-1] == "task_event"
    assert run["events"][-1]["status"] == "applied"


async def test_duplicated_and_reordered_callbacks_apply_once(service: Service) -> None:
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    await service.submitted()
    await service.status_is(run_id, "awaiting_callback")
    sent = service.vod.submitted[0]
    sprite = sprite_complete(sent.tasks["imageSprite"], "f1")
    transcode = transcode_complete(sent.tasks["transcode"], "f1")
    for body in (sprite, sprite, transcode, sprite, transcode):
        assert (await service.callback(body)).status_code == 200
    run = await service.status_is(run_id, "succeeded")
    task_events = [h for h in run["history"] if h["input"] == "task_event"]
    assert len(task_events) == 2  # the resends never reached the run


async def test_a_dropped_callback_is_recovered_by_the_sweepers_task_query(service: Service) -> None:
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    await service.submitted()
    sent = service.vod.submitted[0]
    await service.status_is(run_id, "awaiting_callback")
    await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
    # The transcode callback is lost; VOD knows the task finished.
    service.vod.task_info[sent.tasks["transcode"]] = {
        "type": "transcode",
        "status": "FINISH",
        "data": transcode_complete(sent.tasks["transcode"], "f1")["data"],
    }
    run = await service.status_is(run_id, "succeeded")
    recovered = [e for e in run["events"] if e["source"] == "query"]
    assert len(recovered) == 1
    assert service.vod.calls_of("GetTaskInfo")


async def test_a_dropped_callback_is_recovered_from_tencents_documented_task_info(
    service: Service,
) -> None:
    """GetTaskInfo's documented answer has no vodTaskId and no status in its data."""
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    await service.submitted()
    sent = service.vod.submitted[0]
    await service.status_is(run_id, "awaiting_callback")
    await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
    answer = json.loads((DOCS / "v2-GetTaskInfo-transcode.json").read_bytes())
    answer["status"] = "FINISH"  # Tencent's example shows the task still running
    service.vod.task_info[sent.tasks["transcode"]] = answer
    run = await service.status_is(run_id, "succeeded")
    (recovered,) = [e for e in run["events"] if e["source"] == "query"]
    assert recovered["taskId"] == sent.tasks["transcode"]
    assert len(run["steps"][0]["outputs"]["play"]) == 6


async def test_frequency_limit_backs_off_then_succeeds(service: Service) -> None:
    service.vod.script.append(lambda _: {"code": 4400, "message": "frequency limit"})
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    run = await service.status_is(run_id, "retrying")
    assert "throttled" in run["history"][-1]["reason"]
    assert run["steps"][0]["attempt"] == 1


async def test_duplicate_task_recovers_without_a_second_job(service: Service) -> None:
    def already_running(params: dict[str, str]) -> dict[str, Any]:
        service.vod.accept(params)  # VOD had accepted an earlier, unrecorded request
        return {"code": 50005, "message": "procedure task already exists"}

    service.vod.script.append(already_running)
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    run = await service.status_is(run_id, "awaiting_callback")

    async def recovered() -> dict[str, Any] | None:
        current = await service.run(run_id)
        return current if current["steps"][0]["tasks"] else None

    run = await service.wait(recovered)
    (task,) = run["steps"][0]["tasks"]
    assert task["taskId"] == service.vod.submitted[0].procedure_id
    assert task["kind"] == "procedure"
    assert len(service.vod.calls_of("ProcessFileByProcedure")) == 1


async def _recovered_by_procedure_id(service: Service) -> tuple[str, Any]:
    """A run of file f1 whose submit VOD answered 50005 and that recovered the job by the
    procedure's ID (not its tasks'): the run's ID and what VOD had accepted."""

    def already_running(params: dict[str, str]) -> dict[str, Any]:
        service.vod.accept(params)
        return {"code": 50005, "message": "procedure task already exists"}

    service.vod.script.append(already_running)
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()

    async def recovered() -> bool:
        return bool((await service.run(run_id))["steps"][0]["tasks"])

    await service.wait(recovered)
    return run_id, service.vod.submitted[0]


async def _events_of(service: Service, run_id: str, count: int) -> list[dict[str, Any]]:
    """The run's task events once ``count`` of them are recorded against it."""

    async def recorded() -> list[dict[str, Any]] | None:
        run = await service.run(run_id)
        found = [e for e in run["events"] if e["eventType"] != "NewFileUpload"]
        return found if len(found) >= count else None

    found: list[dict[str, Any]] = await service.wait(recorded)
    return found


async def _orphans(service: Service) -> list[dict[str, Any]]:
    inbox = (await service.http.get(f"{service.base}/api/inbox?status=orphan")).json()
    events: list[dict[str, Any]] = inbox["events"]
    return events


@pytest.mark.parametrize("named", [True, False], ids=["ids-named", "tencent-body"])
async def test_sub_task_events_of_a_job_recovered_by_its_procedure_id_join_its_run(
    service: Service, named: bool
) -> None:
    # The run knows the procedure's ID only; VOD still sends each sub-task's own event, with an
    # ID no run recorded. They used to wait as orphans and expire a day later as unmatched.
    run_id, sent = await _recovered_by_procedure_id(service)
    transcode = transcode_complete(sent.tasks["transcode"], "f1")
    sprite = sprite_complete(sent.tasks["imageSprite"], "f1")
    subs = {"Transcode": sent.tasks["transcode"], "ImageSprites": sent.tasks["imageSprite"]}
    await service.callback(transcode)  # before the procedure's event: waits as an orphan
    await service.callback(procedure_state_changed(sent.procedure_id, "f1", subs, named=named))
    await service.status_is(run_id, "succeeded")
    await service.callback(sprite)  # after it: tied at once
    events = await _events_of(service, run_id, 3)
    by_task = {e["taskId"]: e for e in events}
    assert by_task[sent.procedure_id]["status"] == "applied"
    how = "named by" if named else "matched by fileId to"
    for task_id in subs.values():
        assert by_task[task_id]["status"] == "ignored", by_task[task_id]
        assert f"{how} step transcode's procedure {sent.procedure_id}" in by_task[task_id]["note"]
        assert (
            "recorded, not applied (the procedure's event applies its result)"
            in (by_task[task_id]["note"])
        )
    run = await service.run(run_id)
    assert [h["input"] for h in run["history"]].count("task_event") == 1  # applied once
    assert await _orphans(service) == []


@pytest.mark.parametrize("order", ["procedure-last", "procedure-first"])
async def test_a_procedure_event_naming_no_task_ids_joins_the_run_of_its_tasks(
    service: Service, order: str
) -> None:
    # The answer named the tasks (transcodeTaskId, ...); the procedure's own event names only
    # its fileId, as Tencent's documented bodies do.
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    await service.submitted()
    await service.status_is(run_id, "awaiting_callback")
    sent = service.vod.submitted[0]
    subs = {"Transcode": sent.tasks["transcode"], "ImageSprites": sent.tasks["imageSprite"]}
    procedure = procedure_state_changed(sent.procedure_id, "f1", subs, named=False)
    bodies = [
        transcode_complete(sent.tasks["transcode"], "f1"),
        sprite_complete(sent.tasks["imageSprite"], "f1"),
    ]
    bodies.insert(0 if order == "procedure-first" else 2, procedure)
    for body in bodies:
        assert (await service.callback(body)).status_code == 200
    await service.status_is(run_id, "succeeded")
    events = await _events_of(service, run_id, 3)
    (event,) = [e for e in events if e["taskId"] == sent.procedure_id]
    assert event["status"] == "ignored"
    assert f"procedure {sent.procedure_id} of file f1, matched by fileId" in event["note"]
    assert "recorded, not applied (each task's own event applies its result)" in event["note"]
    run = await service.run(run_id)
    assert [h["input"] for h in run["history"]].count("task_event") == 2
    assert await _orphans(service) == []


async def test_an_event_tied_by_file_goes_to_the_run_that_records_its_id_later(
    service: Service,
) -> None:
    # Run 1 recovered its job by the procedure's ID; run 2 of the same file is submitted, and
    # VOD sends its task's event before vodflow stored the answer. The file ties that event to
    # run 1 for now; once run 2 records the ID, it is run 2's and is applied there.
    first, sent = await _recovered_by_procedure_id(service)
    subs = {"Transcode": sent.tasks["transcode"]}
    await service.callback(procedure_state_changed(sent.procedure_id, "f1", subs, named=False))
    await service.status_is(first, "succeeded")
    service.vod.gate = asyncio.Event()
    created = await service.http.post(
        f"{service.base}/api/runs", json={"workflow": "transcode", "params": {"fileId": "f1"}}
    )
    second = created.json()["runId"]
    await service.submitted(2)
    other = service.vod.submitted[1]
    await service.callback(transcode_complete(other.tasks["transcode"], "f1"))
    (tied,) = [e for e in await _events_of(service, first, 2) if e["taskId"] != sent.procedure_id]
    assert (tied["taskId"], tied["status"]) == (other.tasks["transcode"], "ignored")
    service.vod.gate.set()
    await service.status_is(second, "awaiting_callback")
    await service.callback(sprite_complete(other.tasks["imageSprite"], "f1"))
    run = await service.status_is(second, "succeeded")
    assert [h["input"] for h in run["history"]].count("task_event") == 2
    assert {e["taskId"]: e["status"] for e in run["events"] if e["taskId"]} == {
        other.tasks["transcode"]: "applied",
        other.tasks["imageSprite"]: "applied",
    }


async def test_a_failed_task_is_retried_per_policy(service: Service) -> None:
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    await service.submitted()
    await service.status_is(run_id, "awaiting_callback")
    first = service.vod.submitted[0]
    await service.callback(transcode_complete(first.tasks["transcode"], "f1", ok=False))
    await service.submitted(2)
    second = service.vod.submitted[1]
    await service.status_is(run_id, "awaiting_callback")
    await service.callback(transcode_complete(second.tasks["transcode"], "f1"))
    await service.callback(sprite_complete(second.tasks["imageSprite"], "f1"))
    run = await service.status_is(run_id, "succeeded")
    assert run["steps"][0]["attempt"] == 2


def documented_failure(service: Service) -> dict[str, Any]:
    """Tencent's documented failed TranscodeComplete (-43001: FFmpeg reports the file corrupt),
    for the transcode task of the first job sent."""
    failed: dict[str, Any] = json.loads((DOCS / "v2-TranscodeComplete-failed.json").read_bytes())
    failed["data"]["vodTaskId"] = service.vod.submitted[0].tasks["transcode"]
    return failed


async def test_a_task_failing_on_its_source_file_is_not_retried(service: Service) -> None:
    """Tencent's documented failed TranscodeComplete (-43001: FFmpeg reports the file corrupt)."""
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    await service.submitted()
    await service.status_is(run_id, "awaiting_callback")
    assert (await service.callback(documented_failure(service))).status_code == 200
    run = await service.status_is(run_id, "failed")
    assert run["steps"][0]["attempt"] == 1
    assert run["steps"][0]["errorClass"] == "media"
    assert len(service.vod.submitted) == 1


@pytest.mark.step_timeout("1s")
async def test_a_step_timing_out_is_retried_then_fails(service: Service) -> None:
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    run = await service.status_is(run_id, "failed")
    assert "no result from VOD within 1s" in run["error"]
    assert run["steps"][0]["attempt"] == 2
    assert len(service.vod.submitted) == 2


def recording(stream_id: str, file_id: str, start: int, end: int, key: str = "") -> dict[str, Any]:
    """The live service's recording-finished callback (event_type 100) of one segment, signed
    with ``key`` (checked only where a live callback key is configured)."""
    body = recording_finished(stream_id, file_id, start, end, key)
    return {**body, "video_url": f"http://files.example/{file_id}.mp4"}


async def test_a_live_callback_is_authenticated_before_it_is_read_or_stored(
    tmp_path: Path, database_url: str
) -> None:
    """With a live callback key, a body without a valid sign is refused (401) and not kept,
    malformed or not; a signed body that is malformed is kept as invalid (400)."""
    key = "live-key"
    async with running_service(
        tmp_path, database_url, {"session": SESSION}, lvb_callback_key=key
    ) as service:
        signed = recording("talk_1", "seg0", 1000, 1060, key)
        for body, status in [
            ({**signed, "sign": "0" * 32}, 401),
            ({**signed, "sign": "0" * 32, "event_type": "abc"}, 401),
            ({k: v for k, v in signed.items() if k != "sign"}, 401),
            ({**signed, "event_type": "abc"}, 400),
            (signed, 200),
        ]:
            answer = await service.callback(body, "/callbacks/lvb")
            assert answer.status_code == status, (body, answer.text)
        # The same body sent to the VOD endpoint is held to the live service's sign too.
        forged = {**signed, "sign": "0" * 32, "file_id": "seg9"}
        assert (await service.callback(forged)).status_code == 401
        inbox = (await service.http.get(f"{service.base}/api/inbox")).json()["events"]
        assert sorted(e["status"] for e in inbox) in (
            ["applied", "invalid"],
            ["invalid", "pending"],
        )


async def test_a_body_with_a_nul_byte_is_kept_as_invalid_on_every_database(
    service: Service,
) -> None:
    """PostgreSQL's text holds no NUL: the body is kept with it replaced, not refused with 500
    (the sender would resend it for ever)."""
    answer = await service.http.post(
        f"{service.base}/callbacks/vod", params={"token": TOKEN}, content=b'{"a":\x00}'
    )
    assert answer.status_code == 400, answer.text
    (event,) = (await service.http.get(f"{service.base}/api/inbox?status=invalid")).json()["events"]
    assert event["body"] == '{"a":\ufffd}'


async def test_a_stream_session_of_three_segments_is_one_run(service: Service) -> None:
    for n, (start, end) in enumerate([(1000, 1060), (1065, 1120), (1130, 1190)]):
        body = recording("talk_7", f"seg{n}", start, end)
        assert (await service.callback(body, "/callbacks/lvb")).status_code == 200

    def session_calls() -> list[dict[str, str]]:
        return [c.params for c in service.vod.submitted if "gen.concat.dstType" in c.params]

    async def submitted() -> bool:
        return bool(session_calls())

    await service.wait(submitted)
    await asyncio.sleep(1.5)
    runs = [r for r in await service.runs() if r["workflow"] == "session"]
    assert len(runs) == 1
    run = await service.run(runs[0]["id"])
    assert run["context"]["fileIds"] == ["seg0", "seg1", "seg2"]
    (params,) = session_calls()
    assert params["gen.clip.streamInfo.streamId"] == "talk_7"
    assert params["gen.clip.streamInfo.startTime"] == "1000"
    assert params["gen.clip.streamInfo.endTime"] == "1190"


async def test_an_open_session_is_listed_with_its_recordings_until_its_run_starts(
    tmp_path: Path, database_url: str
) -> None:
    """A session collecting a stream's recordings is no run yet: /api/sessions shows it, with
    when it closes, and then the run it started."""
    slow = SESSION.replace("quiet: 1s", "quiet: 2s")
    async with running_service(tmp_path, database_url, {"session": slow}) as service:
        for n in range(2):
            body = recording("talk_4", f"seg{n}", 1000 + 60 * n, 1060 + 60 * n)
            assert (await service.callback(body, "/callbacks/lvb")).status_code == 200
        url = f"{service.base}/api/sessions"

        async def collecting() -> dict[str, Any] | None:
            sessions = (await service.http.get(url, params={"status": "open"})).json()
            both = [s for s in sessions["sessions"] if len(s["segments"]) == 2]
            return next(iter(both), None)

        session = await service.wait(collecting)
        assert (session["workflow"], session["streamId"], session["runId"]) == (
            "session",
            "talk_4",
            None,
        )
        assert [s["fileId"] for s in session["segments"]] == ["seg0", "seg1"]
        assert session["closesAt"] > session["lastActivityAt"]
        stats = (await service.http.get(f"{service.base}/api/stats")).json()
        assert stats["openSessions"] == 1

        async def closed() -> dict[str, Any] | None:
            sessions = (await service.http.get(url, params={"streamId": "talk_4"})).json()
            (now,) = sessions["sessions"]
            return now if now["status"] == "closed" else None

        done = await service.wait(closed)
        assert done["id"] == session["id"]
        (run,) = [r for r in await service.runs() if r["workflow"] == "session"]
        assert done["runId"] == run["id"]
        args = ("sessions", "--status", "closed", "--stream-id", "talk_4")
        listed = await vodflow_cli(service, tmp_path, database_url, *args)
        assert run["id"] in listed
        assert "talk_4" in listed
        again = await service.http.post(f"{url}/{session['id']}/cancel")
        assert again.status_code == 409
        assert again.json()["error"] == (
            f"session {session['id']} has closed and started its run {run['id']}"
        )
        refused = await service.http.get(url, params={"status": "collecting"})
        assert refused.status_code == 422
        assert (
            "'collecting' is not a session status; expected one of: open, closed"
            in (refused.json()["error"])
        )


async def test_a_cancelled_session_starts_no_run(tmp_path: Path, database_url: str) -> None:
    slow = SESSION.replace("quiet: 1s", "quiet: 1h")
    async with running_service(tmp_path, database_url, {"session": slow}) as service:
        body = recording("talk_5", "seg0", 1000, 1060)
        assert (await service.callback(body, "/callbacks/lvb")).status_code == 200
        url = f"{service.base}/api/sessions"

        async def opened() -> int | None:
            listed = (await service.http.get(url, params={"status": "open"})).json()
            return next((s["id"] for s in listed["sessions"]), None)

        session_id = await service.wait(opened)
        out = await vodflow_cli(
            service, tmp_path, database_url, "session", "cancel", str(session_id)
        )
        assert out.strip() == (
            f"session {session_id} (session, stream talk_5, 1 recording(s)): cancelled"
        )
        again = (await service.http.post(f"{url}/{session_id}/cancel")).json()
        assert (again["changed"], again["session"]["status"]) == (False, "cancelled")
        runner = service.app.state.services.runner
        clock = runner.clock
        runner.clock = lambda: clock() + timedelta(hours=2)  # long past its quiet hour
        try:
            closed = await service.app.state.services.sweeper.run_job("sessions")
        finally:
            runner.clock = clock
        assert closed == {"closed": 0, "runs_started": 0}
        assert [r for r in await service.runs() if r["workflow"] == "session"] == []
        # The same recording announced again (VOD's NewFileUpload after the live service's
        # callback) does not bring the session back.
        assert (await service.callback(new_file_upload("seg0", "talk_5"))).status_code == 200

        async def noted() -> str | None:
            events = (await service.http.get(f"{service.base}/api/inbox")).json()["events"]
            upload = [e for e in events if e["eventType"] == "NewFileUpload"]
            return upload[0]["note"] if upload and upload[0]["status"] == "applied" else None

        note = await service.wait(noted)
        assert f"recording seg0 was in session's session {session_id} of stream talk_5" in note
        assert "cancelled: not collected again" in note
        open_now = (await service.http.get(url, params={"status": "open"})).json()["sessions"]
        assert open_now == []
        # A later recording of the stream opens a session of its own.
        later = recording("talk_5", "seg1", 1070, 1130)
        assert (await service.callback(later, "/callbacks/lvb")).status_code == 200
        newer = await service.wait(opened)
        assert newer != session_id
        missing = await service.http.post(f"{url}/999999/cancel")
        assert missing.status_code == 404
        # Both, a page at a time, through the command.
        listing = ("sessions", "--status", "open", "--status", "cancelled", "--limit", "1")
        first = json.loads(await vodflow_cli(service, tmp_path, database_url, *listing, "--json"))
        more = (*listing, "--cursor", first["nextCursor"], "--json")
        second = json.loads(await vodflow_cli(service, tmp_path, database_url, *more))
        assert [s["id"] for s in first["sessions"] + second["sessions"]] == [newer, session_id]
        table = await vodflow_cli(
            service, tmp_path, database_url, "sessions", "--status", "cancelled"
        )
        (row,) = [line for line in table.splitlines() if "talk_5" in line]
        assert "cancelled" in row
        assert row.rstrip(" │").endswith("-")  # no close time: it will not close


async def test_a_recording_announced_again_after_its_session_closed_starts_no_second_run(
    service: Service,
) -> None:
    """The live service's callback and VOD's NewFileUpload describe the same recording; the
    later one arriving after the session closed must not open a session, and a run, of its
    own."""
    assert (
        await service.callback(recording("talk_8", "seg0", 1000, 1060), "/callbacks/lvb")
    ).status_code == 200

    async def started() -> str | None:
        runs = [r for r in await service.runs() if r["workflow"] == "session"]
        return runs[0]["id"] if runs else None

    run_id = await service.wait(started)
    assert (await service.callback(new_file_upload("seg0", "talk_8"))).status_code == 200
    await asyncio.sleep(2)  # longer than the session's quiet second
    assert [r["id"] for r in await service.runs() if r["workflow"] == "session"] == [run_id]
    sessions = (
        await service.http.get(f"{service.base}/api/sessions", params={"streamId": "talk_8"})
    ).json()
    assert [(s["status"], s["runId"]) for s in sessions["sessions"]] == [("closed", run_id)]


async def test_a_session_runs_the_version_it_opened_under(
    tmp_path: Path, database_url: str
) -> None:
    """A workflow changed while a session collects (here its trigger no longer a session at
    all): the session's recordings were accepted under the old version, and its run runs it,
    as a run keeps the version it started with."""
    slow = SESSION.replace("quiet: 1s", "quiet: 2s")
    async with running_service(tmp_path, database_url, {"session": slow}) as service:
        opened = (await service.http.get(f"{service.base}/api/workflows")).json()["workflows"]
        (version,) = [w["version"] for w in opened if w["name"] == "session"]
        body = recording("talk_3", "seg0", 1000, 1060)
        assert (await service.callback(body, "/callbacks/lvb")).status_code == 200

        async def collecting() -> dict[str, Any] | None:
            sessions = (await service.http.get(f"{service.base}/api/sessions")).json()
            return next(iter(sessions["sessions"]), None)

        session = await service.wait(collecting)
        assert session["version"] == version
        changed = slow.replace("type: stream.session", "type: recording.finished").replace(
            ", quiet: 2s", ""
        )
        (tmp_path / "workflows" / "session.yaml").write_text(changed)
        reloaded = await service.http.post(f"{service.base}/api/workflows/reload")
        assert reloaded.json()["changed"] == ["session"]

        async def started() -> dict[str, Any] | None:
            runs = [r for r in await service.runs() if r["workflow"] == "session"]
            return await service.run(runs[0]["id"]) if runs else None

        run = await service.wait(started)
        assert run["version"] == version
        assert run["context"]["fileIds"] == ["seg0"]
        assert run["history"][0]["detail"]["event"].endswith(
            "runs it (the version it opened under)"
        )


async def test_a_run_cancelled_while_its_submit_waits_for_the_quota_sends_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """A workflow engine starts no activity of a cancelled workflow: a submit that was still
    waiting for VOD's quota when its run was cancelled is not sent, and the run can be retried."""
    workflows = {"transcode": TRANSCODE % {"timeout": "1h"}}
    paced = {"vod_rate_per_minute": 30, "vod_burst": 1}  # one call every 2 s
    async with running_service(tmp_path, database_url, workflows, **paced) as service:
        url = f"{service.base}/api/runs"
        await service.http.post(url, json={"workflow": "transcode", "params": {"fileId": "a"}})
        await service.submitted()
        created = await service.http.post(
            url, json={"workflow": "transcode", "params": {"fileId": "b"}}
        )
        run_id = created.json()["runId"]
        cancel = await service.http.post(f"{url}/{run_id}/cancel", json={"reason": "wrong file"})
        assert cancel.json()["status"] == "cancelled"

        async def answered() -> dict[str, Any] | None:
            run = await service.run(run_id)
            inputs = ("submit_failed", "submit_succeeded")
            return run if run["history"][-1]["input"] in inputs else None

        run = await service.wait(answered)
        assert len(service.vod.calls_of("ProcessFileByProcedure")) == 1
        last = run["history"][-1]
        assert last["detail"]["message"] == "not sent: the run had already ended (cancelled)"
        assert last["reason"] == (
            "not sent: the run had already ended (cancelled); ignored: the run already cancelled"
        )

        retried = await service.http.post(f"{url}/{run_id}/retry", json={})
        assert retried.json()["changed"] is True
        await service.submitted(2)
        assert service.vod.submitted[1].params["fileId"] == "b"


async def test_v3_recording_uploads_make_a_timed_stream_session(service: Service) -> None:
    """VOD's v3 NewFileUpload of a live recording names the stream and when it was recorded."""
    for n, (start, end) in enumerate([("10:00:00", "10:30:00"), ("10:31:00", "10:45:00")]):
        body = live_recording(
            "talk_9", f"2026-11-20T{start}Z", f"2026-11-20T{end}Z", file_id=f"v3seg{n}"
        )
        assert (await service.callback(body)).status_code == 200

    def session_calls() -> list[dict[str, str]]:
        return [c.params for c in service.vod.submitted if "gen.concat.dstType" in c.params]

    async def submitted() -> bool:
        return bool(session_calls())

    await service.wait(submitted)
    (params,) = session_calls()
    assert params["gen.clip.streamInfo.streamId"] == "talk_9"
    assert params["gen.clip.streamInfo.startTime"] == "1795168800"  # 2026-11-20T10:00:00Z
    assert params["gen.clip.streamInfo.endTime"] == "1795171500"  # 10:45:00Z


async def test_a_session_whose_workflow_was_removed_still_runs_with_its_last_version(
    tmp_path: Path, database_url: str
) -> None:
    """Recordings accepted into a stream session are not dropped when the workflow's file is
    removed (and vodflow restarted) before the session closes: its last version runs them."""
    slow = SESSION.replace("quiet: 1s", "quiet: 3s")
    body = recording("talk_9", "seg0", 1000, 1060)
    async with running_service(tmp_path, database_url, {"session": slow}) as service:
        assert (await service.callback(body, "/callbacks/lvb")).status_code == 200

        async def joined() -> bool:
            events = (await service.http.get(f"{service.base}/api/inbox")).json()["events"]
            return any(e["status"] == "applied" for e in events)

        await service.wait(joined)
        listed = (await service.http.get(f"{service.base}/api/workflows")).json()
        (version,) = [w["version"] for w in listed["workflows"]]
    (tmp_path / "workflows" / "session.yaml").unlink()
    others = {"transcode": TRANSCODE % {"timeout": "1h"}}
    async with running_service(tmp_path, database_url, others) as service:
        run_id = await service.one_run()
        run = await service.run(run_id)
        assert (run["workflow"], run["version"]) == ("session", version)
        assert run["context"]["fileIds"] == ["seg0"]
        started = run["history"][0]["detail"]["event"]
        gone = f"workflow session is no longer loaded, so its version {version} runs it"
        assert started.endswith(f"{gone} (the version it opened under)")
        await service.submitted()
        assert service.vod.submitted[0].params["gen.clip.streamInfo.streamId"] == "talk_9"


async def test_a_command_that_keeps_raising_fails_its_attempt_in_the_runs_history(
    tmp_path: Path, database_url: str
) -> None:
    """A fault in vodflow carrying out a command (here its webhook client breaking) is not
    tried forever out of sight while the run waits: after a few tries it is the attempt's
    failure, in the run's history, and the step's retry policy decides."""
    hook = """
name: hook
triggers: [{type: manual}]
retry: {max_attempts: 1}
steps:
  - name: tell
    notify: {url: "http://hooks.example/x"}
"""
    async with running_service(tmp_path, database_url, {"hook": hook}) as service:

        async def broken(*_args: Any, **_kwargs: Any) -> httpx.Response:
            raise RuntimeError("the webhook client broke")

        service.app.state.services.http.post = broken
        created = await service.http.post(f"{service.base}/api/runs", json={"workflow": "hook"})
        run = await service.status_is(created.json()["runId"], "failed")
        assert run["error"] == (
            "step tell failed: internal: notify failed 3 times in vodflow: "
            "RuntimeError: the webhook client broke (attempt 1 of 1, none left)"
        )
        assert run["history"][-1]["input"] == "submit_failed"


@pytest.mark.parametrize("host", ["[::1", "example.com:port"])
async def test_a_webhook_url_that_is_no_url_fails_its_step_at_once(
    tmp_path: Path, sqlite_url: str, host: str
) -> None:
    """A notify URL its template rendered into something unusable is refused on the first try
    (``rejected``, not retried): no later try could reach it."""
    hook = """
name: hook
triggers: [{type: manual, params: [host]}]
retry: {max_attempts: 3}
steps:
  - name: tell
    notify: {url: "http://{{ trigger.host }}/x"}
"""
    async with running_service(tmp_path, sqlite_url, {"hook": hook}) as service:
        created = await service.http.post(
            f"{service.base}/api/runs", json={"workflow": "hook", "params": {"host": host}}
        )
        run = await service.status_is(created.json()["runId"], "failed")
        assert run["error"].startswith("step tell failed: rejected: ")
        assert "is not a usable URL" in run["error"]
        assert [h["input"] for h in run["history"]].count("submit_failed") == 1


async def test_manual_trigger_with_idempotency_key(service: Service) -> None:
    url = f"{service.base}/api/runs"
    body = {"workflow": "transcode", "params": {"fileId": "f9"}, "idempotencyKey": "k1"}
    first = await service.http.post(url, json=body)
    again = await service.http.post(url, json=body)
    assert first.status_code == 201
    assert again.status_code == 200
    assert first.json()["runId"] == again.json()["runId"]
    other = await service.http.post(url, json={**body, "params": {"fileId": "f10"}})
    assert other.status_code == 409
    assert other.json()["error"] == (
        f"idempotency key 'k1' already started run {first.json()['runId']} with other params "
        '({"fileId": "f9"}); use a new key for a new run'
    )
    # The longest key the API takes (200 characters) works on every database, repeats too.
    long = {**body, "idempotencyKey": "k" * 200}
    first_long = await service.http.post(url, json=long)
    assert first_long.status_code == 201, first_long.text
    again_long = await service.http.post(url, json=long)
    assert (again_long.status_code, again_long.json()["runId"]) == (
        200,
        first_long.json()["runId"],
    )
    for params in ({}, {"fileId": None}, {"fileId": ""}):
        missing = await service.http.post(url, json={"workflow": "transcode", "params": params})
        assert missing.status_code == 422
        assert "needs params: fileId (each given, not null or empty)" in missing.json()["error"]
    empty_key = await service.http.post(url, json={**body, "idempotencyKey": " "})
    assert empty_key.status_code == 422
    assert empty_key.json()["error"].startswith("idempotencyKey is empty: give a key")
    unknown = await service.http.post(url, json={"workflow": "nope"})
    assert unknown.status_code == 404


async def test_bad_callbacks_are_refused_and_kept_for_inspection(service: Service) -> None:
    no_token = await service.http.post(f"{service.base}/callbacks/vod", json=new_file_upload("f"))
    assert no_token.status_code == 401
    junk = await service.http.post(
        f"{service.base}/callbacks/vod?token={TOKEN}", content=b"{not json"
    )
    assert junk.status_code == 400
    assert "not JSON" in junk.json()["error"]
    huge = await service.http.post(
        f"{service.base}/callbacks/vod?token={TOKEN}", content=b"x" * 2_000_000
    )
    assert huge.status_code == 413
    assert await service.runs() == []


async def test_the_callback_token_is_read_from_the_url_or_the_header(service: Service) -> None:
    base = f"{service.base}/callbacks/vod"
    body = transcode_complete("transcode-unknown-1", "f")
    wrong = await service.http.post(f"{base}?token=wrong", json=body)
    assert wrong.status_code == 401
    beside = await service.http.post(f"{base}?a=1&token={TOKEN}&b=2", json=body)
    assert beside.status_code == 200
    header = await service.http.post(base, json=body, headers={"X-Vodflow-Token": TOKEN})
    assert header.status_code == 200  # the same body again: accepted as a duplicate
    assert header.json()["message"].startswith("duplicate")
    again = await service.http.post(f"{base}?token=wrong", json=body)
    assert again.status_code == 401  # a URL refused before stays refused


async def test_two_replicas_on_one_database_run_each_job_once(
    tmp_path: Path, database_url: str
) -> None:
    """Invariant 6: claims are rows with leases. Two vodflow processes share a database and a
    VOD; callbacks land on either; every run completes and VOD sees one submit per run."""
    from orchestrator.app import create_app
    from orchestrator.config import load_settings
    from orchestrator.store import migrate
    from tests.conftest import free_port
    from tests.fakevod import FakeVod
    from tests.harness import SECRET_ID, SECRET_KEY
    from tests.servers import serving

    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "transcode.yaml").write_text(TRANSCODE % {"timeout": "1h"})
    migrate.upgrade(database_url)
    vod = FakeVod(SECRET_KEY)
    async with serving(vod.app()) as vod_base:
        ports = [free_port(), free_port()]
        apps = [
            create_app(
                load_settings(
                    data_dir=tmp_path / f"data{n}",
                    database_url=database_url,
                    workflows=folder,
                    port=port,
                    vod_endpoint=f"{vod_base}/v2/index.php",
                    vod_secret_id=SECRET_ID,
                    vod_secret_key=SECRET_KEY,
                    callback_token=TOKEN,
                    engine=False,
                    sweep_interval=0.2,
                    task_poll_after="1h",
                )
            )
            for n, port in enumerate(ports)
        ]
        async with (
            serving(apps[0], ports[0]) as a,
            serving(apps[1], ports[1]) as b,
            httpx.AsyncClient(timeout=10) as http,
        ):
            replicas = [Service(a, vod, http), Service(b, vod, http)]
            files = [f"f{n}" for n in range(12)]
            for n, file_id in enumerate(files):
                await replicas[n % 2].callback(new_file_upload(file_id))

            async def all_submitted() -> bool:
                return len(vod.submitted) >= len(files)

            await replicas[0].wait(all_submitted, 30)
            for n, sent in enumerate(list(vod.submitted)):
                file_id = sent.params["fileId"]
                await replicas[n % 2].callback(transcode_complete(sent.tasks["transcode"], file_id))
                await replicas[(n + 1) % 2].callback(
                    sprite_complete(sent.tasks["imageSprite"], file_id)
                )

            async def all_done() -> list[dict[str, Any]] | None:
                runs = await replicas[1].runs()
                done = [r for r in runs if r["status"] == "succeeded"]
                return runs if len(done) == len(files) else None

            runs = await replicas[0].wait(all_done, 30)
            await asyncio.sleep(0.5)  # let any double action show itself
            assert len(vod.submitted) == len(files) == len(runs)
            assert sorted(s.params["fileId"] for s in vod.submitted) == sorted(files)
            for run in runs:
                detail = await replicas[0].run(run["id"])
                inputs = [h["input"] for h in detail["history"]]
                assert inputs.count("submit_succeeded") == 1, inputs


async def test_a_task_query_answering_an_event_that_changed_nothing_applies_it(
    service: Service,
) -> None:
    """A task's callback came before any run recorded the task and was kept without effect (an
    orphan that expired as unmatched, say). When a run then waits on that task, the sweep's
    query gets the same event back: it is applied now, instead of being dropped as a duplicate
    and leaving the run waiting for its step timeout."""
    early = transcode_complete(f"transcode-{1:032x}", "f1")  # FakeVod's first task ID
    assert (await service.callback(early)).status_code == 200
    db = service.app.state.services.db
    await db.write(
        lambda conn: conn.execute(
            sa.text("UPDATE inbox_events SET status = 'unmatched' WHERE status = 'orphan'")
        )
    )
    await service.callback(new_file_upload("f1"))
    run_id = await service.one_run()
    await service.submitted()
    sent = service.vod.submitted[0]
    assert sent.tasks["transcode"] == early["data"]["vodTaskId"]
    await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
    service.vod.task_info[sent.tasks["transcode"]] = {
        "type": "transcode",
        "status": "FINISH",
        "data": early["data"],
    }
    run = await service.status_is(run_id, "succeeded")
    (event,) = [e for e in run["events"] if e["eventType"] == "TranscodeComplete"]
    assert event["status"] == "applied"


async def test_a_second_run_for_the_same_procedure_waits_for_its_own_job(
    service: Service,
) -> None:
    """Two runs ask for the same procedure on the same file; VOD refuses the second with 50005
    while the first's job runs. The job it lists is the first run's (a task ID belongs to one
    run), so the second run's attempt fails and is retried, with a job of its own, instead of
    waiting on events that go to the first run."""

    def already_running(params: dict[str, str]) -> dict[str, Any]:
        service.vod.accept(params)  # VOD had accepted an earlier, unrecorded request
        return {"code": 50005, "message": "procedure task already exists"}

    service.vod.script += [
        already_running,
        lambda _: {"code": 50005, "message": "procedure task already exists"},
    ]

    async def start(key: str) -> str:
        created = await service.http.post(
            f"{service.base}/api/runs",
            json={"workflow": "transcode", "params": {"fileId": "f1"}, "idempotencyKey": key},
        )
        run_id: str = created.json()["runId"]
        return run_id

    first = await start("first")
    await service.wait(lambda: _tasks_of(service, first))
    second = await start("second")
    await service.submitted(2)
    tasks = await service.wait(lambda: _tasks_of(service, second))
    assert [t["taskId"] for t in tasks] == list(service.vod.submitted[1].tasks.values())
    run = await service.run(second)
    assert any("is another run's" in h["reason"] for h in run["history"])
    assert run["steps"][0]["attempt"] == 2


async def _tasks_of(service: Service, run_id: str) -> list[dict[str, Any]]:
    run = await service.run(run_id)
    tasks: list[dict[str, Any]] = run["steps"][0]["tasks"]
    return tasks if run["status"] == "awaiting_callback" else []


VERIFIED = """
name: verified
triggers: [{type: recording.finished}]
retry: {max_attempts: 3, backoff: {initial: 300ms, jitter: 0}}
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    expected: 1h
"""


async def test_outputs_on_the_local_network_fail_the_step_unfetched_and_unretried(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Whoever can send VOD events names the output URLs: one on the local network (here
    another port of loopback) is refused by the output check, not fetched, and the step fails
    at once with the URL, the address and the setting that would allow it."""
    hits: list[str] = []

    async def internal(request: Request) -> Response:
        hits.append(f"{request.method} {request.url.path}")
        return Response("secret")

    app = Starlette(routes=[Route("/{path:path}", internal, methods=["GET", "HEAD"])])
    async with (
        serving(app) as inside,
        running_service(tmp_path, sqlite_url, {"verified": VERIFIED}) as service,
    ):
        await service.callback(new_file_upload("f1"))
        run_id = await service.one_run()
        await service.status_is(run_id, "awaiting_callback")
        sent = service.vod.submitted[0]
        done = transcode_complete(sent.tasks["transcode"], "f1")
        done["data"]["playSet"][0]["url"] = f"{inside}/admin"
        await service.callback(done)
        await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
        run = await service.status_is(run_id, "failed", "retrying")
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert (step["attempt"], step["errorClass"]) == (1, "rejected")
    assert run["error"] == (
        f"step transcode failed: outputs are not usable: output {inside}/admin refused: "
        "127.0.0.1 is a loopback "
        "address, and output checks do not fetch from the local network (allow it with "
        "VODFLOW_VERIFY_ALLOW_HOSTS)"
    )
    assert hits == []


async def test_reloading_the_workflows_serves_the_new_files_and_leaves_runs_in_flight(
    tmp_path: Path, database_url: str
) -> None:
    """`POST /api/workflows/reload` reads the files again: new runs start with the new version
    while a run in flight keeps its own and finishes with it; an invalid file changes nothing
    and names the problem; a removed file's workflow is no longer served."""
    first = TRANSCODE % {"timeout": "1h"}
    async with running_service(tmp_path, database_url, {"transcode": first}) as service:
        api = f"{service.base}/api"
        old = await service.http.post(
            f"{api}/runs", json={"workflow": "transcode", "params": {"fileId": "f1"}}
        )
        old_run = old.json()["runId"]
        await service.submitted()
        folder = tmp_path / "workflows"
        (folder / "transcode.yaml").write_text(first.replace("TranscodeAndSprite", "Other"))
        (folder / "session.yaml").write_text(SESSION)

        reloaded = await service.http.post(f"{api}/workflows/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json() == {
            "added": ["session"],
            "changed": ["transcode"],
            "removed": [],
            "unchanged": [],
        }
        listed = {
            w["name"]: w for w in (await service.http.get(f"{api}/workflows")).json()["workflows"]
        }
        assert sorted(listed) == ["session", "transcode"]
        new = await service.http.post(
            f"{api}/runs", json={"workflow": "transcode", "params": {"fileId": "f2"}}
        )
        new_run = new.json()["runId"]
        await service.submitted(2)
        assert [s.params["procedure"] for s in service.vod.submitted] == [
            "TranscodeAndSprite",
            "Other",
        ]
        assert (await service.run(new_run))["version"] == listed["transcode"]["version"]
        assert (await service.run(old_run))["version"] != listed["transcode"]["version"]

        # The run in flight finishes with the version it started with.
        sent = service.vod.submitted[0]
        await service.callback(transcode_complete(sent.tasks["transcode"], "f1"))
        await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
        await service.status_is(old_run, "succeeded")

        (folder / "session.yaml").write_text(SESSION.replace("quiet: 1s", "quiet: soon"))
        (folder / "transcode.yaml").unlink()
        refused = await service.http.post(f"{api}/workflows/reload")
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error.startswith("the workflows were not reloaded (nothing changed):")
        assert f"{folder / 'session.yaml'}:3:71: triggers[0].quiet: expected a duration" in error
        (first,) = refused.json()["problems"]  # the same, for a program to read
        assert (first["file"], first["line"], first["column"], first["path"]) == (
            str(folder / "session.yaml"),
            3,
            71,
            "triggers[0].quiet",
        )
        assert first["message"].startswith("expected a duration")
        after = {
            w["name"]: w["version"]
            for w in (await service.http.get(f"{api}/workflows")).json()["workflows"]
        }
        assert after == {name: w["version"] for name, w in listed.items()}

        (folder / "session.yaml").write_text(SESSION)
        reloaded = await service.http.post(f"{api}/workflows/reload")
        assert reloaded.json() == {
            "added": [],
            "changed": [],
            "removed": ["transcode"],
            "unchanged": ["session"],
        }
        gone = await service.http.post(
            f"{api}/runs", json={"workflow": "transcode", "params": {"fileId": "f3"}}
        )
        assert gone.status_code == 404, gone.text


async def test_a_timed_out_attempt_that_finishes_before_its_retry_is_not_run_again(
    tmp_path: Path, database_url: str
) -> None:
    """The step gave up waiting, but VOD's callbacks come in before the retry is sent: the step
    takes them, and VOD is asked once."""
    slow_retry = (TRANSCODE % {"timeout": "1s"}).replace(
        "initial: 300ms, max: 1s", "initial: 1m, max: 1m"
    )
    async with running_service(tmp_path, database_url, {"transcode": slow_retry}) as service:
        await service.callback(new_file_upload("f1"))
        run_id = await service.one_run()
        await service.submitted()
        await service.status_is(run_id, "retrying")
        sent = service.vod.submitted[0]
        await service.callback(transcode_complete(sent.tasks["transcode"], "f1"))
        await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))
        run = await service.status_is(run_id, "succeeded")
        assert run["steps"][0]["attempt"] == 1
        assert run["steps"][0]["outputs"]["play"][0]["url"] == "http://files.example/f1/f20.mp4"
        assert "before its retry was sent" in run["history"][-1]["reason"]
        assert [t["status"] for t in run["timers"] if t["kind"] == "retry"] == ["cancelled"]
        assert len(service.vod.submitted) == 1


async def test_a_retry_policy_naming_media_failures_retries_them(
    tmp_path: Path, database_url: str
) -> None:
    """The same documented failure as above, under a policy that names `media`: retried."""
    widened = (TRANSCODE % {"timeout": "1h"}).replace(
        "jitter: 0}}", "jitter: 0}, on: [internal, transport, timeout, verification, media]}"
    )
    async with running_service(tmp_path, database_url, {"transcode": widened}) as service:
        await service.callback(new_file_upload("f1"))
        run_id = await service.one_run()
        await service.submitted()
        assert (await service.callback(documented_failure(service))).status_code == 200
        await service.submitted(2)
        run = await service.run(run_id)
        assert run["steps"][0]["attempt"] == 2
        failure = next(h for h in run["history"] if h["toStatus"] == "retrying")
        assert failure["reason"].startswith("attempt 1 of 2 failed: transcode task failed:")
        assert "-43001" in failure["reason"]
