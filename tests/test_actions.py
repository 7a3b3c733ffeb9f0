"""Outbox actions over real HTTP: where a notify URL that is a path goes, a rendered URL that no
try could reach, and what a resent submit takes for its earlier try's job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator import machine as m
from orchestrator.actions import Actions
from orchestrator.machine import ErrorClass
from orchestrator.vod.client import VodClient
from tests.fakevod import FakeVod
from tests.harness import SECRET_ID, SECRET_KEY
from tests.servers import serving


def notify(url: str) -> m.Notify:
    return m.Notify(
        run_id="run_1",
        step="tell",
        attempt=1,
        idempotency_key="run_1/tell/1",
        url=url,
        payload={"type": "t", "data": {}},
        webhook_id="msg_run_1_tell",
        timeout=5.0,
    )


def transcode(run_id: str, request: dict[str, str]) -> m.Submit:
    """A run's first try at its transcode step."""
    return m.Submit(
        run_id=run_id,
        step="transcode",
        attempt=1,
        idempotency_key=f"{run_id}/transcode/1",
        request=dict(request),
    )


@asynccontextmanager
async def vod_actions() -> AsyncIterator[tuple[FakeVod, Actions]]:
    """Actions calling a fake VOD over real HTTP."""
    vod = FakeVod(SECRET_KEY)
    async with serving(vod.app()) as base, httpx.AsyncClient() as http:
        client = VodClient(
            f"{base}/v2/index.php", secret_id=SECRET_ID, secret_key=SECRET_KEY, region="gz"
        )
        try:
            yield vod, Actions(client, http, webhook_secret=None, checker=cast(Any, None))
        finally:
            await client.aclose()


async def test_a_path_is_delivered_on_this_vodflows_url_and_a_bad_url_is_not_retried() -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> JSONResponse:
        received.append({"path": request.url.path, "id": request.headers["webhook-id"]})
        return JSONResponse({})

    app = Starlette(routes=[Route("/hooks/sink", hook, methods=["POST"])])
    async with serving(app) as base, httpx.AsyncClient() as http:
        actions = Actions(
            cast(Any, None), http, webhook_secret=None, checker=cast(Any, None), base_url=base + "/"
        )
        done = await actions.perform(notify("/hooks/sink"), tries=1)
        assert isinstance(done, m.SubmitSucceeded)
        assert done.outputs["url"] == f"{base}/hooks/sink"
        assert received == [{"path": "/hooks/sink", "id": "msg_run_1_tell"}]

        # A templated URL that rendered into something that is not http(s): rejected, so the
        # step fails once instead of retrying a delivery that can never get through.
        refused = await actions.perform(notify("ftp://files.example/x"), tries=1)
        assert isinstance(refused, m.SubmitFailed)
        assert refused.error_class is ErrorClass.REJECTED
        assert refused.message == (
            "webhook ftp://files.example/x is not an http(s) URL or a path on this vodflow"
        )
        assert len(received) == 1


async def test_a_resent_submit_takes_only_a_job_started_since_it_was_written() -> None:
    """A submit sent again after its process died looks for the job its first try may have
    started. The file's job from before the command was written (another run's, or an earlier
    attempt's) is not it: taking it would leave this run waiting for events already spent."""
    async with vod_actions() as (vod, actions):
        request = {"fileId": "f1", "procedure": "TranscodeAndSprite"}
        vod.accept({"Action": "ProcessFileByProcedure", **request})  # another run's job
        written = datetime.now(UTC) + timedelta(hours=1)  # this command, written after it
        submit = transcode("run_2", request)
        sent = await actions.perform(submit, tries=2, since=written)
        assert isinstance(sent, m.SubmitSucceeded)
        assert not sent.recovered
        assert len(vod.calls_of("ProcessFileByProcedure")) == 1
        assert {t.task_id for t in sent.tasks} == set(vod.submitted[1].tasks.values())

        # the job its first try started (created since) is found, and nothing is sent again
        vod.submitted[1].created = int(written.timestamp())
        found = await actions.perform(submit, tries=3, since=written)
        assert isinstance(found, m.SubmitSucceeded)
        assert found.recovered
        assert [t.task_id for t in found.tasks] == [vod.submitted[1].procedure_id]
        assert len(vod.calls_of("ProcessFileByProcedure")) == 1


async def test_an_unwanted_resent_submit_hands_its_earlier_trys_job_to_the_run() -> None:
    """A run cancelled while its submit is resent after a crash: nothing is sent, but the job
    the first try may have started is looked for, so the run records its tasks (as an ended
    run does, for late events) rather than leaving their events to expire unmatched."""
    async with vod_actions() as (vod, actions):
        request = {"fileId": "f1", "procedure": "TranscodeAndSprite"}
        submit = transcode("run_3", request)
        written = datetime.now(UTC) - timedelta(minutes=1)

        async def cancelled() -> str:
            return "the run had already ended (cancelled)"

        first = await actions.perform(submit, tries=1, since=written, unwanted=cancelled)
        assert isinstance(first, m.SubmitFailed)
        assert first.message == "not sent: the run had already ended (cancelled)"
        nothing = await actions.perform(submit, tries=2, since=written, unwanted=cancelled)
        assert isinstance(nothing, m.SubmitFailed)  # no earlier try's job: nothing to record

        vod.accept({"Action": "ProcessFileByProcedure", **request})  # the first try's job
        found = await actions.perform(submit, tries=3, since=written, unwanted=cancelled)
        assert isinstance(found, m.SubmitSucceeded)
        assert found.recovered
        assert [t.task_id for t in found.tasks] == [vod.submitted[0].procedure_id]
        assert vod.calls_of("ProcessFileByProcedure") == []  # accepted directly, never sent


async def test_an_unwanted_recover_still_hands_the_duplicate_job_to_the_run() -> None:
    """A run cancelled while its Recover (after VOD's 50005) waits in the outbox: VOD said it
    runs that job, and looking it up starts nothing, so the job's tasks go to the run (recorded
    on the ended run, for late events) instead of its events expiring unmatched as orphans."""
    async with vod_actions() as (vod, actions):
        request = {"fileId": "f1", "procedure": "TranscodeAndSprite"}
        vod.accept({"Action": "ProcessFileByProcedure", **request})  # the job VOD said it runs
        recover = m.Recover(
            run_id="run_4",
            step="transcode",
            attempt=1,
            idempotency_key="run_4/transcode/1/recover",
            request=dict(request),
        )

        async def cancelled() -> str:
            return "the run had already ended (cancelled)"

        found = await actions.perform(recover, tries=1, since=datetime.now(UTC), unwanted=cancelled)
        assert isinstance(found, m.SubmitSucceeded)
        assert found.recovered
        assert [t.task_id for t in found.tasks] == [vod.submitted[0].procedure_id]
        assert vod.calls_of("ProcessFileByProcedure") == []
