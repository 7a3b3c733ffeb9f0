"""Notify steps' deliveries over real HTTP: where a URL that is a path goes, and a rendered URL
that no try could reach."""

from __future__ import annotations

from typing import Any, cast

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator import machine as m
from orchestrator.actions import Actions
from orchestrator.machine import ErrorClass
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
