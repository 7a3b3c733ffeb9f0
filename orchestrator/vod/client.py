"""The VOD v2 API client: signed requests over one pooled httpx connection, typed answers.

The same client drives Tencent Cloud (``https://vod.api.qcloud.com/v2/index.php``) and the
embedded engine: only the endpoint differs. Each call

1. waits for a slot from the shared :class:`~orchestrator.vod.limiter.Limiter` (when one is set),
2. signs the parameters for the endpoint's host (signature method v1, HmacSHA1 or HmacSHA256),
3. POSTs them form-encoded (or sends a GET) with a timeout,
4. parses the envelope and raises the typed :mod:`~orchestrator.vod.errors` error on failure.

Transport failures and VOD's internal errors are retried a few times with exponential backoff
and jitter (tenacity). A frequency-limit answer is not retried here: it blocks the shared limiter
for every process and surfaces as :class:`FrequencyLimit` with ``retry_after``, so the state
machine backs the step off without spending an attempt. Retrying ProcessFileByProcedure after a
transport failure is safe: if the first request did reach VOD, the second is answered with 50005
(duplicate task) and vodflow recovers the first request's task IDs.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from orchestrator import __version__
from orchestrator.vod.errors import (
    FrequencyLimit,
    InvalidParameter,
    TransportError,
    VodError,
    VodTimeout,
)
from orchestrator.vod.limiter import Limiter
from orchestrator.vod.params import (
    ConfirmEventRequest,
    GetProcedureInfoRequest,
    GetTaskInfoRequest,
    GetTaskListRequest,
    GetVideoInfoRequest,
    GetVodTaskStatusRequest,
    ProcessFileByProcedureRequest,
    PullEventRequest,
    VodRequest,
)
from orchestrator.vod.responses import (
    ConfirmEventResponse,
    GetProcedureInfoResponse,
    GetTaskInfoResponse,
    GetTaskListResponse,
    GetVideoInfoResponse,
    GetVodTaskStatusResponse,
    ProcessFileByProcedureResponse,
    PullEventResponse,
    VodResponse,
)
from orchestrator.vod.signing import SignatureMethod, signed_params

log = logging.getLogger(__name__)
R = TypeVar("R", bound=VodResponse)

PULL_EVENT_WAIT = 5.0
"""PullEvent holds the request up to 5 s when no event waits (long poll)."""


def _code_of(body: bytes) -> int:
    """The answer's ``code`` for metrics (-2 when it has none)."""
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return -2
    return code if isinstance(code, int) else -2


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, VodError) and exc.retryable and not isinstance(exc, FrequencyLimit)


class VodClient:
    """One VOD account at one endpoint."""

    def __init__(
        self,
        endpoint: str,
        *,
        secret_id: str,
        secret_key: str,
        region: str,
        signature_method: SignatureMethod = "HmacSHA256",
        limiter: Limiter | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        method: str = "POST",
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        observe: Callable[[str, int, float], None] | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"VOD endpoint {endpoint!r}: expected an http(s) URL")
        self.endpoint = endpoint
        # Tencent signs the host the client addresses, with the port only when one is given.
        self.host = parts.netloc.rsplit("@", 1)[-1]
        self.path = parts.path or "/v2/index.php"
        self.secret_id = secret_id
        self._secret_key = secret_key
        self.region = region
        self.signature_method = signature_method
        self.limiter = limiter
        self.timeout = timeout
        self.attempts = attempts
        self.method = method.upper()
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            headers={"User-Agent": f"vodflow/{__version__}"},
        )
        self.clock = clock
        self.observe = observe
        """Told (action, result code, seconds waited for the quota) after every attempt."""

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> VodClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the calls the orchestrator makes ----------------------------------------------------

    async def process_file(
        self,
        request: ProcessFileByProcedureRequest,
        *,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> ProcessFileByProcedureResponse:
        """``before_send`` is awaited once the quota grants each send, right before it goes out;
        an exception it raises stops the call unsent (the run it was for may have ended while
        the call waited for the quota)."""
        return await self.call(request, ProcessFileByProcedureResponse, before_send=before_send)

    async def get_task_info(self, vod_task_id: str) -> GetTaskInfoResponse:
        return await self.call(GetTaskInfoRequest(vod_task_id=vod_task_id), GetTaskInfoResponse)

    async def get_task_status(self, task_ids: list[str]) -> GetVodTaskStatusResponse:
        request = GetVodTaskStatusRequest(task_ids=tuple(task_ids))
        return await self.call(request, GetVodTaskStatusResponse)

    async def get_task_list(
        self, status: Literal["WAITING", "PROCESSING", "FINISHED"], *, file_id: str | None = None
    ) -> GetTaskListResponse:
        request = GetTaskListRequest(status=status, file_id=file_id)
        return await self.call(request, GetTaskListResponse)

    async def get_procedure_info(self, vod_task_id: str) -> GetProcedureInfoResponse:
        request = GetProcedureInfoRequest(vod_task_id=vod_task_id)
        return await self.call(request, GetProcedureInfoResponse)

    async def pull_event(self) -> PullEventResponse:
        return await self.call(
            PullEventRequest(), PullEventResponse, wait=self.timeout + PULL_EVENT_WAIT
        )

    async def confirm_event(self, msg_handles: list[str]) -> ConfirmEventResponse:
        request = ConfirmEventRequest(msg_handles=tuple(msg_handles))
        return await self.call(request, ConfirmEventResponse)

    async def get_video_info(self, file_id: str) -> GetVideoInfoResponse:
        return await self.call(GetVideoInfoRequest(file_id=file_id), GetVideoInfoResponse)

    # --- the machinery -------------------------------------------------------------------------

    async def call(
        self,
        request: VodRequest,
        response: type[R],
        *,
        wait: float | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> R:
        """Send one request (retrying what can be retried) and parse its answer."""
        action = response.ACTION
        params = request.to_params()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=5.0),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                body = await self._send(action, params, wait or self.timeout, before_send)
                try:
                    return response.parse(body)
                except FrequencyLimit as exc:
                    pause = 0.0
                    if self.limiter is not None:
                        pause = await self.limiter.penalize(action)
                    exc.retry_after = pause or 60.0
                    raise
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _send(
        self,
        action: str,
        params: Mapping[str, str],
        wait: float,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> bytes:
        waited = 0.0
        if self.limiter is not None:
            waited = (await self.limiter.acquire(action)).wait
        if before_send is not None:
            await before_send()
        try:
            body = await self._post(action, params, wait)
        except VodError:
            self._observe(action, -1, waited)
            raise
        self._observe(action, _code_of(body), waited)
        return body

    def _observe(self, action: str, code: int, waited: float) -> None:
        if self.observe is not None:
            self.observe(action, code, waited)

    async def _post(self, action: str, params: Mapping[str, str], wait: float) -> bytes:
        signed = signed_params(
            action,
            params,
            secret_id=self.secret_id,
            secret_key=self._secret_key,
            region=self.region,
            timestamp=int(self.clock()),
            nonce=secrets.randbelow(2**31 - 1) + 1,
            method="POST" if self.method == "POST" else "GET",
            host=self.host,
            path=self.path,
            algorithm=self.signature_method,
            request_client=f"vodflow/{__version__}",
        )
        url = self.endpoint.split("?", 1)[0]
        try:
            if self.method == "POST":
                answer = await self.http.post(url, data=signed, timeout=wait)
            else:
                answer = await self.http.get(url, params=signed, timeout=wait)
        except httpx.TimeoutException as exc:
            raise VodTimeout(
                f"no answer from {self.endpoint} within {wait:g}s",
                action=action,
            ) from exc
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach {self.endpoint}: {exc!s}", action=action) from exc
        if answer.status_code >= 500:
            raise TransportError(
                f"{self.endpoint} answered HTTP {answer.status_code}", action=action
            )
        if answer.status_code >= 400 and not _is_json_object(answer.content):
            # VOD answers its errors in a 200 (the engine's upload endpoint in a 4xx, with the
            # same envelope). A 4xx without one is not VOD: a wrong endpoint, not worth a retry.
            status = answer.status_code
            if status in (408, 429):
                raise TransportError(f"{self.endpoint} answered HTTP {status}", action=action)
            raise InvalidParameter(
                f"{self.endpoint} answered HTTP {status} without a VOD answer: check "
                "VODFLOW_VOD_ENDPOINT (Tencent's is https://vod.api.qcloud.com/v2/index.php, "
                "a vodflow engine's ends in /v2/index.php)",
                action=action,
            )
        log.debug("vod call", extra={"action": action, "http_status": answer.status_code})
        return answer.content


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False
