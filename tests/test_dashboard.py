"""The dashboard API over real HTTP: runs, look-ups, inbox, stats, actions, live events, access
tokens, metrics, and schemathesis fuzzing every operation against the published OpenAPI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.app import UnsafeBinding, create_app
from orchestrator.config import load_settings
from orchestrator.spec import WorkflowError
from orchestrator.store import views
from tests.fakevod import new_file_upload, sprite_complete, transcode_complete
from tests.harness import TIMES_OUT, Service, run_with_a_failed_timer, running_service
from tests.harness import vodflow_cli as _vodflow

pytestmark = pytest.mark.usefixtures("clean_env")

WORKFLOW = """
name: transcode
triggers: [{type: recording.finished}, {type: manual, params: [fileId]}]
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    expected: 1h
    verify: false
"""


@pytest.fixture
async def service(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Service]:
    async with running_service(tmp_path, sqlite_url, {"transcode": WORKFLOW}) as service:
        yield service


async def finished_run(service: Service, file_id: str = "f1") -> str:
    await service.callback(new_file_upload(file_id))
    await service.submitted(len(service.vod.submitted) + 1)
    sent = service.vod.submitted[-1]

    async def recorded() -> str | None:
        runs = [r for r in await service.runs() if r["fileId"] == file_id]
        if runs and runs[0]["status"] == "awaiting_callback":
            return str(runs[0]["id"])
        return None

    run_id: str = await service.wait(recorded)
    await service.callback(transcode_complete(sent.tasks["transcode"], file_id))
    await service.callback(sprite_complete(sent.tasks["imageSprite"], file_id))
    await service.status_is(run_id, "succeeded")
    return run_id


async def test_run_detail_shows_steps_tasks_history_and_callbacks(service: Service) -> None:
    run_id = await finished_run(service)
    run = await service.run(run_id)
    assert run["health"] == "succeeded"
    assert run["context"]["fileId"] == "f1"
    (step,) = run["steps"]
    assert step["status"] == "succeeded"
    assert step["request"] == {"fileId": "f1", "procedure": "TranscodeAndSprite"}
    kinds = [t["kind"] for t in step["tasks"]]
    assert kinds == ["transcode", "imageSprite"]
    task = step["tasks"][0]
    assert task["status"] == "succeeded"
    assert task["expectedSeconds"] == 3600
    assert task["waitedSeconds"] >= 0
    assert task["overdue"] is False
    assert [h["input"] for h in run["history"]][:2] == ["trigger", "submit_succeeded"]
    assert {e["eventType"] for e in run["events"]} == {
        "NewFileUpload",
        "TranscodeComplete",
        "CreateImageSpriteComplete",
    }


async def test_runs_filters_and_cursor_pages(service: Service) -> None:
    for n in range(5):
        await service.http.post(
            f"{service.base}/api/runs",
            json={"workflow": "transcode", "params": {"fileId": f"m{n}"}},
        )
    page = (await service.http.get(f"{service.base}/api/runs", params={"limit": 2})).json()
    assert len(page["runs"]) == 2
    seen = [r["id"] for r in page["runs"]]
    while page["nextCursor"]:
        page = (
            await service.http.get(
                f"{service.base}/api/runs", params={"limit": 2, "cursor": page["nextCursor"]}
            )
        ).json()
        seen += [r["id"] for r in page["runs"]]
    assert len(seen) == len(set(seen)) == 5
    assert seen == sorted(seen, reverse=True)  # newest first
    by_file = (await service.http.get(f"{service.base}/api/runs", params={"fileId": "m3"})).json()
    assert [r["fileId"] for r in by_file["runs"]] == ["m3"]
    waiting = await service.http.get(
        f"{service.base}/api/runs", params={"status": "awaiting_callback,running,pending"}
    )
    assert {r["health"] for r in waiting.json()["runs"]} <= {
        "awaiting_callback",
        "running",
        "pending",
    }
    bad = await service.http.get(f"{service.base}/api/runs", params={"limit": "many"})
    assert bad.status_code == 422
    assert "limit" in bad.json()["error"]


async def test_unknown_status_values_are_refused_naming_the_allowed_ones(
    service: Service, tmp_path: Path, sqlite_url: str
) -> None:
    for path, allowed in (
        ("runs", "pending, running, awaiting_callback, retrying, succeeded, failed, cancelled, "
         "overdue, failing"),
        ("timers", "pending, fired, cancelled, failed"),
        ("inbox", "pending, applied, orphan, late, ignored, unmatched, invalid, failed"),
    ):  # fmt: skip
        bad = await service.http.get(
            f"{service.base}/api/{path}", params={"status": "pending,bogus"}
        )
        assert bad.status_code == 422, path
        assert bad.json()["error"].startswith("query parameter status: 'bogus' is not "), path
        assert bad.json()["error"].endswith(f"; expected one of: {allowed}"), path
    out = await _vodflow(service, tmp_path, sqlite_url, "runs", "--status", "bogus", returncode=1)
    assert "vodflow: --status: 'bogus' is not a run status or health" in out  # what was typed
    out = await _vodflow(service, tmp_path, sqlite_url, "runs", "--limit", "0", returncode=1)
    assert "vodflow: --limit: Input should be greater than or equal to 1" in out


async def test_runs_filter_by_the_health_overdue_and_failing(
    service: Service, tmp_path: Path, sqlite_url: str
) -> None:
    created = await service.http.post(
        f"{service.base}/api/runs", json={"workflow": "transcode", "params": {"fileId": "f"}}
    )
    failing = created.json()["runId"]
    await service.submitted(1)
    await service.status_is(failing, "awaiting_callback")
    await service.callback(new_file_upload("o"))
    await service.submitted(2)
    waiting = (await service.wait(lambda: _run_of(service, "o", "awaiting_callback")))["id"]
    sent = service.vod.submitted[0]
    await service.callback(transcode_complete(sent.tasks["transcode"], "f", ok=False))
    await service.status_is(failing, "retrying")

    async def listed(*status: str) -> list[str]:
        answer = await service.http.get(f"{service.base}/api/runs", params={"status": status})
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["runs"]]

    assert await listed("failing") == [failing]
    assert (await service.run(failing))["health"] == "failing"
    # The CLI's list says why a failing run needs attention (its run has no error yet), as the
    # dashboard's list does; a list with nothing in it says so, without an empty table.
    out = await _vodflow(service, tmp_path, sqlite_url, "runs", "--status", "failing")
    assert "step transcode, attempt 1: " in out
    assert (await _vodflow(service, tmp_path, sqlite_url, "sessions")).strip() == ""
    assert await listed("overdue") == []  # its task is expected within the hour
    assert await listed("failed", "failing") == [failing]
    db = service.app.state.services.db
    later = datetime.now(UTC) + timedelta(hours=2)
    overdue = await db.query(views.list_runs, health=["overdue"], now=later)
    assert [r["id"] for r in overdue] == [waiting]
    both = await db.query(
        views.list_runs, status=["failed"], health=["overdue", "failing"], now=later
    )
    assert [r["id"] for r in both] == [waiting, failing]


async def _run_of(service: Service, file_id: str, status: str) -> dict[str, Any] | None:
    runs = [r for r in await service.runs() if r["fileId"] == file_id and r["status"] == status]
    return runs[0] if runs else None


async def test_lookup_by_task_id_and_missing_things(service: Service) -> None:
    run_id = await finished_run(service)
    task_id = service.vod.submitted[-1].tasks["transcode"]
    found = (await service.http.get(f"{service.base}/api/tasks/{task_id}")).json()
    assert found == {"taskId": task_id, "runId": run_id, "step": "transcode"}
    assert (await service.http.get(f"{service.base}/api/tasks/nope")).status_code == 404
    assert (await service.http.get(f"{service.base}/api/runs/nope")).status_code == 404


async def test_inbox_shows_orphans_and_invalid_bodies_and_replays(service: Service) -> None:
    await service.callback(transcode_complete("transcode-unknown", "f9"))
    await service.http.post(
        f"{service.base}/callbacks/vod?token=test-token", content=b'{"version": "4.0"}'
    )

    async def orphaned() -> list[dict[str, Any]] | None:
        events = (
            await service.http.get(f"{service.base}/api/inbox", params={"status": "orphan"})
        ).json()["events"]
        return events or None

    (orphan,) = await service.wait(orphaned)
    assert orphan["taskId"] == "transcode-unknown"
    assert json.loads(orphan["body"])["eventType"] == "TranscodeComplete"
    await service.callback(transcode_complete("transcode-other", "f8"))
    for where in ({"taskId": "transcode-unknown"}, {"fileId": "f9"}):
        found = (await service.http.get(f"{service.base}/api/inbox", params=where)).json()
        assert [e["id"] for e in found["events"]] == [orphan["id"]], where
    invalid = (
        await service.http.get(f"{service.base}/api/inbox", params={"status": "invalid"})
    ).json()["events"]
    assert invalid[0]["note"].startswith("eventType") or "eventType" in invalid[0]["note"]
    replay = await service.http.post(f"{service.base}/api/inbox/{orphan['id']}/replay")
    assert replay.json() == {"eventId": orphan["id"], "replayed": True}
    refused = await service.http.post(f"{service.base}/api/inbox/{invalid[0]['id']}/replay")
    assert refused.status_code == 409


async def test_replaying_an_applied_event_is_refused_and_keeps_its_record(
    service: Service, tmp_path: Path, sqlite_url: str
) -> None:
    run_id = await finished_run(service)
    before = await service.run(run_id)
    (completed,) = [e for e in before["events"] if e["eventType"] == "TranscodeComplete"]
    assert completed["status"] == "applied"
    refused = await service.http.post(f"{service.base}/api/inbox/{completed['id']}/replay")
    assert refused.status_code == 409
    reason = refused.json()["error"]
    assert reason.startswith(f"inbox event {completed['id']} is applied (")
    assert "would only record it anew as late or a duplicate" in reason
    out = await _vodflow(
        service, tmp_path, sqlite_url, "event", "replay", str(completed["id"]), returncode=1
    )
    assert f"inbox event {completed['id']} is applied" in out
    await asyncio.sleep(0.3)  # nothing was queued: the runner would have applied it by now
    after = await service.run(run_id)
    assert after["events"] == before["events"]
    assert after["history"] == before["history"]


async def test_actions_are_idempotent_and_recorded(service: Service) -> None:
    created = await service.http.post(
        f"{service.base}/api/runs", json={"workflow": "transcode", "params": {"fileId": "x"}}
    )
    run_id = created.json()["runId"]
    first = (await service.http.post(f"{service.base}/api/runs/{run_id}/cancel", json={})).json()
    again = (await service.http.post(f"{service.base}/api/runs/{run_id}/cancel", json={})).json()
    assert (first["status"], first["changed"]) == ("cancelled", True)
    assert (again["status"], again["changed"]) == ("cancelled", False)
    run = await service.run(run_id)
    # (VOD's answer to the run's submit may be recorded between the two cancels)
    cancels = [h for h in run["history"] if h["input"] == "cancel"]
    assert [h["reason"] for h in cancels] == [
        "cancelled by api",
        "cancel by api ignored: the run already cancelled",
    ]
    retried = (await service.http.post(f"{service.base}/api/runs/{run_id}/retry", json={})).json()
    assert "has not answered" in retried["reason"] or retried["changed"]


async def test_retrying_a_step_the_run_does_not_have_is_refused(
    service: Service, tmp_path: Path, sqlite_url: str
) -> None:
    run_id = await finished_run(service)
    retry = f"{service.base}/api/runs/{run_id}/retry"
    unknown = await service.http.post(retry, json={"step": "nosuch"})
    assert unknown.status_code == 422
    assert unknown.json()["error"] == (f"run {run_id} has no step 'nosuch'; its steps: transcode")
    nobody = await service.http.post(f"{service.base}/api/runs/nope/retry", json={"step": "x"})
    assert nobody.status_code == 404
    # A real step that cannot be retried now is answered, and recorded, as ignored.
    real = await service.http.post(retry, json={"step": "transcode"})
    assert real.status_code == 200
    assert real.json()["changed"] is False
    assert "ignored: the run succeeded" in real.json()["reason"]
    out = await _vodflow(
        service, tmp_path, sqlite_url, "retry", run_id, "--step", "nosuch", returncode=1
    )
    assert f"vodflow: run {run_id} has no step 'nosuch'; its steps: transcode" in out
    # An action the run ignores is not success for a script: the reason, and exit 1.
    out = await _vodflow(service, tmp_path, sqlite_url, "retry", run_id, returncode=1)
    assert "ignored: the run succeeded (start a new run instead)" in out
    out = await _vodflow(service, tmp_path, sqlite_url, "cancel", run_id, returncode=1)
    assert "ignored: the run already succeeded" in out


async def test_a_timer_that_could_not_be_applied_is_shown_and_replayed(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_service(tmp_path, sqlite_url, {"times-out": TIMES_OUT}) as service:
        run_id, fix = await run_with_a_failed_timer(service)

        async def failed_timers() -> int:
            stats = (await service.http.get(f"{service.base}/api/stats")).json()
            return int(stats["failedTimers"])

        assert await failed_timers() == 1
        run = await service.run(run_id)
        assert run["status"] == "awaiting_callback"  # left as it was: the timeout never applied
        (timer,) = [t for t in run["timers"] if t["status"] == "failed"]
        assert (timer["kind"], timer["step"]) == ("step_timeout", "transcode")
        assert timer["error"] == "RuntimeError: workflow store unreachable"
        listed = (await service.http.get(f"{service.base}/api/timers?status=failed")).json()
        assert [(t["id"], t["runId"]) for t in listed["timers"]] == [(timer["id"], run_id)]
        await service.app.state.services.sweeper.run_job("metrics")  # else every 5 s
        metrics = (await service.http.get(f"{service.base}/metrics")).text
        assert "vodflow_timers_failed 1.0" in metrics

        listed_by_cli = await _vodflow(service, tmp_path, sqlite_url, "timers", "--json")
        assert [t["id"] for t in json.loads(listed_by_cli)["timers"]] == [timer["id"]]
        shown = await _vodflow(service, tmp_path, sqlite_url, "run", "show", run_id)
        assert "workflow store unreachable" in shown
        assert "step_timeout transcode (attempt 1)" in shown
        failed_again = await _vodflow(
            service, tmp_path, sqlite_url, "timer", "replay", str(timer["id"]), returncode=1
        )
        assert f"timer {timer['id']} of run {run_id} failed again: RuntimeError" in failed_again

        replay = f"{service.base}/api/timers/{timer['id']}/replay"
        again = (await service.http.post(replay)).json()["timer"]
        assert (again["status"], again["error"]) == ("failed", timer["error"])  # still broken

        fix()  # the cause
        fired = await service.http.post(replay)
        assert fired.status_code == 200
        assert fired.json()["timer"] == {**timer, "runId": run_id, "status": "fired", "error": None}
        run = await service.run(run_id)
        assert run["status"] == "failed"  # the step timed out on its only attempt
        assert any(h["input"] == "timer_fired" for h in run["history"])
        assert await failed_timers() == 0
        twice = await service.http.post(replay)
        assert twice.status_code == 409
        assert "is fired: only a failed timer is replayed" in twice.json()["error"]
        assert (await service.http.post(f"{service.base}/api/timers/999/replay")).status_code == 404
        named = await service.http.post(f"{service.base}/api/timers/abc/replay")
        assert (named.status_code, named.json()["error"]) == (404, "no timer 'abc'")


async def test_stats(service: Service) -> None:
    await finished_run(service)
    stats = (await service.http.get(f"{service.base}/api/stats")).json()
    assert stats["runsByStatus"] == {"succeeded": 1}
    assert stats["stepDurationSeconds"]["count"] == 1
    assert stats["callbackLatencySeconds"]["count"] == 2
    # From the request's arrival to its transition's commit: never nothing (it read 0 when the
    # arrival was stamped with the commit's time), and not seconds either.
    assert 0 < stats["callbackLatencySeconds"]["p50"] <= stats["callbackLatencySeconds"]["p95"] < 5
    assert stats["callbacksPerMinute"] >= 3
    assert stats["quota"] == {
        "action": "ProcessFileByProcedure",
        "used": 1,
        "limit": 100,
        "windowSeconds": 60.0,
    }
    assert {job["name"] for job in stats["sweeper"]} >= {"timers", "tasks", "outbox", "sessions"}


async def test_live_events_stream_run_changes_as_they_commit(service: Service) -> None:
    received: list[dict[str, Any]] = []

    async def listen() -> None:
        async with service.http.stream("GET", f"{service.base}/api/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                    if any(r["status"] == "succeeded" for r in received):
                        return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    run_id = await finished_run(service)
    await asyncio.wait_for(listener, 10)
    mine = [r for r in received if r["runId"] == run_id]
    assert [r["input"] for r in mine][:2] == ["trigger", "submit_succeeded"]
    assert mine[-1]["status"] == "succeeded"


async def test_a_bad_body_is_refused_naming_the_field_once(service: Service) -> None:
    url = f"{service.base}/api/runs"
    cases = [
        (b'{"workflow": 5}', "body workflow: Input should be a valid string"),
        (b'{"workflow": "transcode", "params": []}', "body params: Input should be"),
        (b"[]", "body: Input should be an object"),
        (b"not json", "body: Invalid JSON: "),
    ]
    for content, start in cases:
        answer = await service.http.post(url, content=content)
        assert answer.status_code == 422, content
        assert answer.json()["error"].startswith(start), answer.json()


async def test_what_vodflow_cannot_store_or_find_is_a_4xx_not_a_500(service: Service) -> None:
    """Values a JSON parser or a URL lets through but no row can hold: NaN and numbers beyond
    a double (stored as null, they broke an idempotent repeat), NUL characters (PostgreSQL's
    text has none), ids beyond 64 bits, cursors this API never gave, times without an offset."""
    base, http = service.base, service.http
    trigger = {"workflow": "transcode", "idempotencyKey": "k"}
    for params, words in [
        (b'{"fileId": "x", "n": NaN}', "body params.n: expected a finite number"),
        (b'{"fileId": "x", "n": 1e400}', "body params.n: expected a finite number"),
        (b'{"fileId": "x\\u0000y"}', "body params.fileId: contains a NUL character"),
    ]:
        body = b'{"workflow": "transcode", "params": ' + params + b"}"
        answer = await http.post(f"{base}/api/runs", content=body)
        assert answer.status_code == 422, params
        assert answer.json()["error"].startswith(words), answer.json()
    key = await http.post(f"{base}/api/runs", json={**trigger, "idempotencyKey": "a\u0000b"})
    assert key.status_code == 422
    nul = await http.get(f"{base}/api/runs", params={"fileId": "\u0000abc"})
    assert nul.json()["error"].startswith("query parameter fileId: contains a NUL character")
    for path in ("/api/runs/a%00b", "/api/tasks/a%00b"):
        assert (await http.get(base + path)).status_code == 404, path
    huge = "99999999999999999999999"
    for method, path in [
        ("GET", "/api/inbox/%201"),  # int() would read " 1", "1_0" and other scripts' digits
        ("GET", "/api/inbox/1_0"),
        ("POST", "/api/sessions/%D9%A3/cancel"),
        ("GET", f"/api/inbox/{huge}"),
        ("POST", f"/api/inbox/{huge}/replay"),
        ("POST", f"/api/timers/{huge}/replay"),
    ]:
        assert (await http.request(method, base + path)).status_code == 404, path

    def cursor(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    for path in ("/api/runs", "/api/inbox", "/api/timers", "/api/sessions"):
        for value in (["x", "y"], [1, 2], ["2020-01-01", "y"], {"a": 1}, "abc", 10**30):
            answer = await http.get(base + path, params={"cursor": cursor(value)})
            assert answer.status_code == 422, (path, value)
            assert answer.json()["error"].startswith("query parameter cursor: not a cursor")
    for since in ("2030-01-01", "2020-01-01T00:00:00"):
        answer = await http.get(f"{base}/api/runs", params={"since": since})
        assert answer.status_code == 200, answer.text
    answer = await http.get(f"{base}/api/runs", params={"until": "2020-01-01T00:00:00"})
    assert answer.json()["runs"] == []


async def test_unknown_api_paths_and_methods_answer_in_the_apis_error_shape(
    service: Service,
) -> None:
    nowhere = await service.http.get(f"{service.base}/api/nope")
    assert nowhere.status_code == 404
    assert nowhere.json() == {
        "error": "no API operation at /api/nope (the operations: /openapi.json)",
        "status": 404,
    }
    wrong = await service.http.get(f"{service.base}/api/runs/r1/cancel")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json() == {
        "error": "GET is not an operation of /api/runs/r1/cancel; it takes: POST",
        "status": 405,
    }
    # A path with two operations names both (in Starlette's order, which a set gives).
    both = await service.http.delete(f"{service.base}/api/runs")
    assert both.status_code == 405
    assert set(both.headers["allow"].split(", ")) == {"HEAD", "GET", "POST"}
    said = "DELETE is not an operation of /api/runs; it takes: " + both.headers["allow"]
    assert both.json()["error"] == said
    assert (await service.http.head(f"{service.base}/api/runs")).status_code == 200
    page = await service.http.get(f"{service.base}/nope")  # not the API: as Starlette answers
    assert (page.status_code, page.text) == (404, "Not Found")


class Stream:
    """One client of /api/events: the events it received, and whether it is connected."""

    def __init__(self, service: Service, **params: str) -> None:
        self.received: list[dict[str, Any]] = []
        self.connected = asyncio.Event()
        self.answered = asyncio.Event()
        self.status: int | None = None
        self.task = asyncio.create_task(self._listen(service, params))

    async def _listen(self, service: Service, params: dict[str, str]) -> None:
        url = f"{service.base}/api/events"
        async with service.http.stream("GET", url, params=params) as stream:
            self.status = stream.status_code
            self.answered.set()
            async for line in stream.aiter_lines():
                if line == ": connected":
                    self.connected.set()
                if line.startswith("data: "):
                    self.received.append(json.loads(line[6:]))

    def statuses(self, run_id: str) -> list[str]:
        return [r["status"] for r in self.received if r["runId"] == run_id]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_live_streams_share_one_reader_of_the_history(service: Service) -> None:
    """However many streams are open, each history entry is read from the database once, and
    every stream gets it."""
    db = service.app.state.services.db
    query = db.query
    read: list[int] = []

    async def counting(fn: Any, *args: Any) -> Any:
        result = await query(fn, *args)
        if fn is views.history_since:
            read.extend(row["id"] for row in result)
        return result

    db.query = counting
    streams = [Stream(service) for _ in range(5)]
    for stream in streams:
        await asyncio.wait_for(stream.connected.wait(), 10)
    run_id = await finished_run(service)

    async def all_done() -> bool:
        return all("succeeded" in s.statuses(run_id) for s in streams)

    await service.wait(all_done)
    for stream in streams:
        await stream.close()
    ids = [r["historyId"] for r in streams[0].received]
    assert all([r["historyId"] for r in s.received] == ids for s in streams)
    assert sorted(read) == sorted(set(read))  # no entry read twice
    assert set(ids) <= set(read)


async def test_a_stream_resumed_from_an_entry_gets_what_it_missed(service: Service) -> None:
    run_id = await finished_run(service)
    history = (await service.run(run_id))["history"]
    first = min(h["id"] for h in history)
    stream = Stream(service, after=str(first))

    async def caught_up() -> bool:
        return "succeeded" in stream.statuses(run_id)

    await service.wait(caught_up)
    await stream.close()
    assert [r["historyId"] for r in stream.received] == sorted(
        h["id"] for h in history if h["id"] > first
    )


async def test_live_streams_are_capped(tmp_path: Path, sqlite_url: str) -> None:
    workflows = {"transcode": WORKFLOW}
    async with running_service(tmp_path, sqlite_url, workflows, events_max_streams=2) as service:
        streams = [Stream(service), Stream(service)]
        for stream in streams:
            await asyncio.wait_for(stream.connected.wait(), 10)
        refused = await service.http.get(f"{service.base}/api/events")
        assert refused.status_code == 503
        assert refused.json()["error"] == (
            "too many live streams: 2 are open, the most VODFLOW_EVENTS_MAX_STREAMS allows; "
            "try again later"
        )
        await streams[0].close()  # a stream that ends gives its place back

        async def reopened() -> Stream | None:
            again = Stream(service)
            await asyncio.wait_for(again.answered.wait(), 10)
            if again.status == 200:
                return again
            await again.close()
            return None

        again: Stream = await service.wait(reopened)
        await asyncio.wait_for(again.connected.wait(), 10)
        await again.close()
        await streams[1].close()


async def test_metrics(service: Service) -> None:
    await finished_run(service)
    text = (await service.http.get(f"{service.base}/metrics")).text
    assert (
        'vodflow_callbacks_total{outcome="accepted",source="vod",type="TranscodeComplete"} 1.0'
        in text
    )
    assert 'vodflow_vod_calls_total{action="ProcessFileByProcedure",code="0"} 1.0' in text
    assert "vodflow_step_duration_seconds_count" in text
    assert "vodflow_limiter_wait_seconds_bucket" in text
    # the gauges the sweeper's metrics job refreshes (at start, then every few seconds)
    assert 'vodflow_inbox_depth{status="orphan"} 0.0' in text
    assert "vodflow_outbox_depth " in text


async def test_event_types_vodflow_does_not_read_count_as_other(service: Service) -> None:
    # the type comes from the body: made-up types must not each become a series of their own
    for n in range(3):
        body = {"version": "4.0", "eventType": f"Invented{n}", "data": {"n": n}}
        assert (await service.callback(body)).status_code == 200
    text = (await service.http.get(f"{service.base}/metrics")).text
    assert 'vodflow_callbacks_total{outcome="accepted",source="vod",type="other"} 3.0' in text
    assert "Invented" not in text


async def test_tokens_guard_the_api(tmp_path: Path, sqlite_url: str) -> None:
    tokens = {"api_token": "admin-secret", "api_read_token": "read-secret"}
    async with running_service(tmp_path, sqlite_url, {"transcode": WORKFLOW}, **tokens) as service:
        url = f"{service.base}/api/runs"
        assert (await service.http.get(url)).status_code == 401
        read = {"Authorization": "Bearer read-secret"}
        admin = {"Authorization": "Bearer admin-secret"}
        assert (await service.http.get(url, headers=read)).status_code == 200
        body = {"workflow": "transcode", "params": {"fileId": "x"}}
        denied = await service.http.post(url, json=body, headers=read)
        assert denied.status_code == 403
        assert denied.json()["error"] == "a read-only token cannot change anything"
        assert (await service.http.post(url, json=body, headers=admin)).status_code == 201
        wrong = await service.http.get(url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        # A token with characters beyond ASCII is as unknown as any other (it was a 500).
        odd = "Bearer \u00e9".encode()
        for refused in (
            await service.http.get(url, headers={"Authorization": odd}),
            await service.http.get(url, params={"access_token": "\u00e9"}),
        ):
            assert refused.status_code == 401
            assert refused.json()["error"] == "unknown API token"
        query = await service.http.get(url, params={"access_token": "read-secret"})
        assert query.status_code == 200
        # In a URL only for what EventSource reads: a token there ends up in access logs.
        posted = await service.http.post(url, json=body, params={"access_token": "admin-secret"})
        assert posted.status_code == 401
        assert (await service.http.get(f"{service.base}/healthz")).status_code == 200
        sink = f"{service.base}/hooks/sink"
        assert (await service.http.get(sink)).status_code == 401
        assert (await service.http.get(sink, headers=read)).json() == {"deliveries": []}
        # The CLI of an operator given only the read token reads, and is told it cannot write.
        reader = {"VODFLOW_API_READ_TOKEN": "read-secret"}
        listed = await _vodflow(service, tmp_path, sqlite_url, "runs", "--json", env=reader)
        assert len(json.loads(listed)["runs"]) == 1
        args = ("trigger", "transcode", "--param", "fileId=x")
        refused = await _vodflow(service, tmp_path, sqlite_url, *args, returncode=1, env=reader)
        assert "a read-only token cannot change anything" in refused


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, host="0.0.0.0", workflows=Path("workflows"))
    with pytest.raises(UnsafeBinding, match="set VODFLOW_API_TOKEN"):
        create_app(settings)


def test_refuses_a_procedure_its_embedded_engine_does_not_define(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(TIMES_OUT.replace("TranscodeAndSprite", "NoSuchProcedure"))
    settings = load_settings(data_dir=tmp_path / "data", workflows=tmp_path)
    problem = f"{tmp_path / 'wf.yaml'}:6:47: steps[0].process.procedure: unknown procedure "
    with pytest.raises(WorkflowError, match=re.escape(problem + "'NoSuchProcedure'")):
        create_app(settings)


async def test_openapi_document_describes_every_operation(service: Service) -> None:
    doc = (await service.http.get(f"{service.base}/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {
        "/api/workflows",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/retry",
        "/api/tasks/{task_id}",
        "/api/inbox",
        "/api/stats",
        "/api/events",
    }
    assert "RunDetail" in doc["components"]["schemas"]


@pytest.mark.slow
async def test_schemathesis_finds_no_server_errors_and_responses_match(service: Service) -> None:
    await finished_run(service)
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{service.base}/openapi.json",
        "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
        "content_type_conformance",
        "--max-examples", "25",
        "--exclude-path", "/api/events",
        "--generation-deterministic",
        "--request-timeout", "10",
        "--suppress-health-check", "all",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 600)
    text = output.decode()
    assert proc.returncode == 0, text[-4000:]
    assert "passed" in text.lower()
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{service.base}/healthz")).status_code == 200


async def test_cli_starts_a_manual_run(service: Service, tmp_path: Path, sqlite_url: str) -> None:
    args = ("trigger", "transcode", "--param", "fileId=5285890784273533001")
    out = await _vodflow(service, tmp_path, sqlite_url, *args, "--idempotency-key", "k1")
    run_id = out.split(":")[0]
    assert out == f"{run_id}: started\n"
    run = await service.run(run_id)
    assert run["context"] == {"fileId": "5285890784273533001"}
    again = await _vodflow(service, tmp_path, sqlite_url, *args, "--idempotency-key", "k1")
    assert again == f"{run_id}: already started with this idempotency key\n"
    listed = ("--param", "ids=a", "--param", "ids=b", "--params", '{"fileId": "f", "n": 2}')
    out = await _vodflow(service, tmp_path, sqlite_url, "trigger", "transcode", *listed)
    run = await service.run(out.split(":")[0])
    assert run["context"] == {"fileId": "f", "n": 2, "ids": ["a", "b"]}
    out = await _vodflow(service, tmp_path, sqlite_url, "trigger", "transcode", returncode=1)
    assert "workflow 'transcode' needs params: fileId" in out


async def test_cli_talks_to_the_server_or_the_database(
    service: Service, tmp_path: Path, sqlite_url: str
) -> None:
    run_id = await finished_run(service)
    other = await finished_run(service, "f2")
    listed = json.loads(await _vodflow(service, tmp_path, sqlite_url, "runs", "--json"))
    assert [r["id"] for r in listed["runs"]] == [other, run_id]
    by_file = await _vodflow(service, tmp_path, sqlite_url, "runs", "--file-id", "f1", "--json")
    assert [r["id"] for r in json.loads(by_file)["runs"]] == [run_id]
    first = json.loads(
        await _vodflow(service, tmp_path, sqlite_url, "runs", "--limit", "1", "--json")
    )
    args = ("runs", "--limit", "1", "--cursor", first["nextCursor"], "--json")
    second = json.loads(await _vodflow(service, tmp_path, sqlite_url, *args))
    assert [r["id"] for r in first["runs"] + second["runs"]] == [other, run_id]
    later = ("runs", "--since", "2999-01-01", "--json")
    assert json.loads(await _vodflow(service, tmp_path, sqlite_url, *later))["runs"] == []
    table = await _vodflow(service, tmp_path, sqlite_url, "run", "show", run_id)
    assert "\nstarted by inbox event 1 (NewFileUpload from vod)\n" in table
    assert "submit_succeeded" in table
    assert "transcode" in table
    # what the dashboard's run page shows: the outputs and the callbacks received
    assert "  transcode: video 854x480 http://files.example/f1/f20.mp4\n" in table
    assert "  transcode: sprite index " in table
    assert "TranscodeComplete" in table
    assert "CreateImageSpriteComplete" in table
    direct = json.loads(
        await _vodflow(service, tmp_path, sqlite_url, "run", "show", run_id, "--json", "--direct")
    )
    assert direct["status"] == "succeeded"
    await service.callback(transcode_complete("transcode-lost", "f0"))

    async def orphan_listed() -> bool:
        out = await _vodflow(service, tmp_path, sqlite_url, "events", "--orphans", "--json")
        return any(e["taskId"] == "transcode-lost" for e in json.loads(out)["events"])

    await service.wait(orphan_listed)
    listed_orphans = await _vodflow(service, tmp_path, sqlite_url, "events", "--orphans", "--json")
    orphans = json.loads(listed_orphans)
    (lost,) = [e["id"] for e in orphans["events"] if e["taskId"] == "transcode-lost"]
    for where in (("--task", "transcode-lost"), ("--file", "f0")):
        out = await _vodflow(service, tmp_path, sqlite_url, "events", *where, "--json")
        assert [e["id"] for e in json.loads(out)["events"]] == [lost], where
    replayed = await _vodflow(service, tmp_path, sqlite_url, "event", "replay", str(lost))
    assert f"event {lost}: pending again" in replayed
    await service.wait(orphan_listed)  # applied again: still nobody's task
    created = await service.http.post(
        f"{service.base}/api/runs", json={"workflow": "transcode", "params": {"fileId": "c"}}
    )
    cancelled = await _vodflow(
        service, tmp_path, sqlite_url, "cancel", created.json()["runId"], "--reason", "test"
    )
    assert "cancelled" in cancelled
    run = await service.run(created.json()["runId"])
    assert run["history"][-1]["reason"] == "cancelled by api:cli: test"
    again = await _vodflow(service, tmp_path, sqlite_url, "cancel", created.json()["runId"])
    assert "ignored: the run already cancelled" in again  # as asked: exit 0
