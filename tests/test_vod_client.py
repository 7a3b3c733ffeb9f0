"""The VOD client over real HTTP: signed for the host it addresses, typed answers and errors,
retries with backoff, the shared limiter, timeouts. The peer here is a small signature-checking
server; the embedded engine's own tests drive the same client against the real engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.store.db import Database
from orchestrator.vod.client import VodClient
from orchestrator.vod.errors import (
    AuthError,
    DuplicateTask,
    FrequencyLimit,
    InternalError,
    InvalidParameter,
    TransportError,
    VodTimeout,
)
from orchestrator.vod.limiter import Limiter, Quota
from orchestrator.vod.params import ProcessFileByProcedureRequest
from orchestrator.vod.signing import verify
from tests.servers import serving

SECRET_ID, SECRET_KEY = "AKIDtest0000", "secret0000"
Handler = Callable[[dict[str, str]], Response]


class FakeVod:
    """Checks every signature like Tencent does, then answers with the handler's response."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, dict[str, str]]] = []

        async def endpoint(request: Request) -> Response:
            if request.method == "POST":
                params = {k: str(v) for k, v in (await request.form()).items()}
            else:
                params = dict(request.query_params)
            self.calls.append((request.method, params))
            host = request.headers["host"]
            if not verify(params, request.method, host, request.url.path, SECRET_KEY):
                return JSONResponse({"code": 4100, "message": "signature mismatch"})
            return self.handler(params)

        self.app = Starlette(routes=[Route("/v2/index.php", endpoint, methods=["GET", "POST"])])


def client(base: str, **kw: Any) -> VodClient:
    return VodClient(
        f"{base}/v2/index.php", secret_id=SECRET_ID, secret_key=SECRET_KEY, region="gz", **kw
    )


REQUEST = ProcessFileByProcedureRequest.model_validate(
    {"fileId": "5285890784273533001", "procedure": "TranscodeAndSprite"}
)


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("algorithm", ["HmacSHA1", "HmacSHA256"])
async def test_signed_request_and_both_answer_shapes(method: str, algorithm: str) -> None:
    answers = iter(
        [
            {
                "code": 0,
                "message": "",
                "transcodeTaskId": "transcode-1",
                "imageSpriteTaskId": "sp-1",
            },
            {"code": 0, "message": "", "codeDesc": "Success", "vodTaskId": "125-procedurev2-ab"},
        ]
    )
    vod = FakeVod(lambda _: JSONResponse(next(answers)))
    async with (
        serving(vod.app) as base,
        client(base, method=method, signature_method=algorithm) as c,
    ):
        seed = await c.process_file(REQUEST)
        later = await c.process_file(REQUEST)
    assert [(t.task_id, t.kind) for t in seed.tasks] == [
        ("transcode-1", "transcode"),
        ("sp-1", "imageSprite"),
    ]
    assert later.procedure_task_id == "125-procedurev2-ab"
    sent_method, params = vod.calls[0]
    assert sent_method == method
    assert params["Action"] == "ProcessFileByProcedure"
    assert params["fileId"] == "5285890784273533001"
    assert params["SignatureMethod"] == algorithm
    assert params["Region"] == "gz"
    assert params["SecretId"] == SECRET_ID
    assert vod.calls[0][1]["Nonce"] != vod.calls[1][1]["Nonce"]


async def test_nested_parameters_travel_as_seed_wire_names() -> None:
    vod = FakeVod(lambda _: JSONResponse({"code": 0, "transcodeTaskId": "t"}))
    request = ProcessFileByProcedureRequest.model_validate(
        {
            "gen": {
                "clip": {"streamInfo": {"streamId": "直播_45", "startTime": 10, "endTime": 20}},
                "concat": {"dstType": "mp4"},
            },
            "procedure": "P",
        }
    )
    async with serving(vod.app) as base, client(base) as c:
        await c.process_file(request)
    params = vod.calls[0][1]
    assert params["gen.clip.streamInfo.streamId"] == "直播_45"
    assert params["gen.clip.streamInfo.startTime"] == "10"
    assert params["gen.concat.dstType"] == "mp4"


@pytest.mark.parametrize(
    ("code", "error"),
    [(4100, AuthError), (50005, DuplicateTask), (1000, InvalidParameter)],
)
async def test_error_codes_become_typed_errors_and_are_not_retried(code: int, error: type) -> None:
    vod = FakeVod(lambda _: JSONResponse({"code": code, "message": "no"}))
    async with serving(vod.app) as base, client(base) as c:
        with pytest.raises(error) as info:
            await c.process_file(REQUEST)
    assert len(vod.calls) == 1
    assert info.value.code == code
    assert "ProcessFileByProcedure answered code" in str(info.value)


async def test_internal_errors_and_5xx_are_retried_then_succeed() -> None:
    answers = iter(
        [
            Response("upstream down", status_code=502),
            JSONResponse({"code": 10022, "message": "internal"}),
            JSONResponse({"code": 0, "transcodeTaskId": "t-ok"}),
        ]
    )
    vod = FakeVod(lambda _: next(answers))
    async with serving(vod.app) as base, client(base) as c:
        answer = await c.process_file(REQUEST)
    assert answer.tasks[0].task_id == "t-ok"
    assert len(vod.calls) == 3


async def test_a_4xx_that_is_not_vod_names_the_endpoint_and_is_not_retried() -> None:
    """A wrong VODFLOW_VOD_ENDPOINT (a path with no VOD behind it) is a configuration fault:
    said as such, once, not retried as if the network had failed."""
    vod = FakeVod(lambda _: Response("Not Found", status_code=404))
    async with serving(vod.app) as base, client(base) as c:
        with pytest.raises(InvalidParameter, match=r"answered HTTP 404 without a VOD answer"):
            await c.process_file(REQUEST)
    assert len(vod.calls) == 1
    # VOD's own envelope in a 4xx (the engine's upload endpoint answers so) is read as VOD's.
    vod = FakeVod(lambda _: JSONResponse({"code": 4100, "message": "bad key"}, status_code=401))
    async with serving(vod.app) as base, client(base) as c:
        with pytest.raises(AuthError, match="bad key"):
            await c.process_file(REQUEST)
    # 429 and 408 are a busy or slow server: worth another try.
    answers = iter([Response("slow down", status_code=429), JSONResponse({"code": 0})])
    vod = FakeVod(lambda _: next(answers))
    async with serving(vod.app) as base, client(base) as c:
        await c.get_task_info("t1")
    assert len(vod.calls) == 2


async def test_retries_give_up_after_the_attempts() -> None:
    vod = FakeVod(lambda _: JSONResponse({"code": 1, "message": "internal"}))
    async with serving(vod.app) as base, client(base, attempts=2) as c:
        with pytest.raises(InternalError):
            await c.process_file(REQUEST)
    assert len(vod.calls) == 2


async def test_frequency_limit_blocks_the_shared_limiter(db: Database) -> None:
    limiter = Limiter(db, SECRET_ID, {}, Quota(rate=100, burst=10))
    vod = FakeVod(lambda _: JSONResponse({"code": 4400, "message": "quota"}))
    async with serving(vod.app) as base, client(base, limiter=limiter) as c:
        with pytest.raises(FrequencyLimit) as info:
            await c.process_file(REQUEST)
    assert len(vod.calls) == 1
    assert info.value.retry_after == pytest.approx(6.0)
    grant = await limiter.try_acquire("ProcessFileByProcedure")
    assert grant.at is None
    assert grant.wait > 5


async def test_timeouts_and_unreachable_endpoints_are_transport_errors() -> None:
    async def endpoint(request: Request) -> Response:
        await asyncio.sleep(2)
        return JSONResponse({"code": 0})

    app = Starlette(routes=[Route("/v2/index.php", endpoint, methods=["POST"])])
    async with serving(app) as base, client(base, timeout=0.2, attempts=1) as c:
        with pytest.raises(VodTimeout, match=r"^GetTaskInfo: no answer from .* within 0\.2s$"):
            await c.get_task_info("t1")
    async with client("http://127.0.0.1:9", attempts=1) as c:
        # The action named once (it was "GetTaskInfo: GetTaskInfo: cannot reach ...").
        with pytest.raises(TransportError, match=r"^GetTaskInfo: cannot reach http://127"):
            await c.get_task_info("t1")


async def test_task_queries_and_pull_confirm() -> None:
    def handler(params: dict[str, str]) -> Response:
        action = params["Action"]
        if action == "GetVodTaskStatus":
            return JSONResponse(
                {"code": 0, "taskList": [{"taskId": params["taskId.0"], "status": "Finished"}]}
            )
        if action == "PullEvent":
            return JSONResponse({"code": 4000, "message": "no events"})
        if action == "ConfirmEvent":
            assert [params["msgHandle.0"], params["msgHandle.1"]] == ["a", "b"]
            return JSONResponse({"code": 0})
        return JSONResponse({"code": 4000, "message": f"unexpected {action}"})

    vod = FakeVod(handler)
    async with serving(vod.app) as base, client(base) as c:
        status = await c.get_task_status(["transcode-1"])
        pulled = await c.pull_event()
        await c.confirm_event(["a", "b"])
    assert status.task_list[0].status == "Finished"
    assert pulled.event_list == ()
