"""What the outbox's commands do in the world, each turned back into an input for the machine.

``submit`` calls ProcessFileByProcedure; ``recover`` finds the tasks of a request VOD already
accepted (after its 50005 answer); ``notify`` POSTs a Standard Webhooks message; ``verify``
checks that a step's outputs are usable. Every outcome, success or failure, becomes a machine
input: this module decides nothing about runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import JsonValue
from standardwebhooks.webhooks import Webhook

from orchestrator import machine as m
from orchestrator.verify import OutputChecker, OutputRefused, OutputsUnreachable
from orchestrator.vod.client import VodClient
from orchestrator.vod.errors import ErrorClass, FrequencyLimit, InvalidRequestParams, VodError
from orchestrator.vod.params import ProcessFileByProcedureRequest, flatten
from orchestrator.vod.responses import TaskRef

log = logging.getLogger(__name__)
CLOCK_SKEW = timedelta(seconds=30)
"""How far VOD's clock may be behind ours when comparing a job's ``createTime`` with ours."""


CHECK_PATIENCE = 300.0
"""Seconds an output check waits, trying again, for an output server that does not answer
before the attempt fails."""

Unwanted = Callable[[], Awaitable[str | None]]
"""Why a command should no longer be carried out (its run ended, its step moved on), or None."""


class NotSent(Exception):
    """A command found unwanted just before it went out; it was not sent."""


class Interrupted(Exception):
    """A command that waited to try again (an output check whose server did not answer) when
    the service stopped: it goes back to the outbox as it was, for the next process."""


class Actions:
    def __init__(
        self,
        client: VodClient,
        http: httpx.AsyncClient,
        *,
        webhook_secret: str | None,
        checker: OutputChecker,
        base_url: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.http = http
        self.base_url = base_url.rstrip("/")
        """This vodflow's URL: a notify step's ``url`` that is a path is on it."""
        self.webhook = Webhook(webhook_secret) if webhook_secret else None
        self.checker = checker
        self.clock = clock
        self.check_patience = CHECK_PATIENCE
        self.stopping = asyncio.Event()

    async def perform(
        self,
        command: m.Command,
        *,
        tries: int,
        since: datetime | None = None,
        unwanted: Unwanted | None = None,
    ) -> m.Input:
        """Carry out one outbox command; ``tries`` > 1 means an earlier try may have got through.

        ``since`` is when the command was written: a job VOD started before then cannot be an
        earlier try's, so a resent submit does not take it for its own. ``unwanted`` is asked
        first, and again once VOD's quota lets a submit go: a command whose run was cancelled (or
        ended) meanwhile is not carried out, and its outcome says so (see :func:`not_sent`)."""
        if unwanted is not None and not isinstance(command, m.Recover):
            # A Recover follows VOD's 50005 (VOD runs the job) and only looks it up: carried out
            # whatever the run's state, it gives the run that job's tasks, late on an ended run.
            reason = await unwanted()
            if reason is not None:
                return await self._unwanted(command, reason, tries, since)
        if isinstance(command, m.Submit):
            return await self._submit(command, tries, since, unwanted)
        handlers: dict[type, Callable[[Any, int], Awaitable[m.Input]]] = {
            m.Recover: self._recover,
            m.Notify: self._notify,
            m.Verify: self._verify,
        }
        return await handlers[type(command)](command, tries)

    # --- submit / recover ---------------------------------------------------------------

    async def _submit(
        self, command: m.Submit, tries: int, since: datetime | None, unwanted: Unwanted | None
    ) -> m.Input:
        try:
            request = ProcessFileByProcedureRequest.from_params(flatten(command.request))
        except InvalidRequestParams as exc:
            return _failed(command, exc)
        earlier = await self._earlier_try(command, tries, since)
        if earlier is not None:
            return earlier

        async def before_send() -> None:
            reason = None if unwanted is None else await unwanted()
            if reason is not None:
                raise NotSent(reason)

        try:
            answer = await self.client.process_file(request, before_send=before_send)
        except VodError as exc:
            return _failed(command, exc)
        except NotSent as exc:
            return not_sent(command, str(exc))
        return m.SubmitSucceeded(step=command.step, attempt=command.attempt, tasks=answer.tasks)

    async def _earlier_try(
        self, command: m.Submit, tries: int, since: datetime | None
    ) -> m.SubmitSucceeded | None:
        """The job a resent submit's earlier try started, if VOD runs one.

        The previous send's outcome is unknown (its process died mid-call): VOD may have accepted
        it. It is looked for before sending again, so a crash never makes a second job (but only
        among jobs started since the command was written: an older one of the same file and
        procedure is another run's, or an earlier attempt's)."""
        if tries <= 1:
            return None
        found = await self._find_tasks(command.request, since=since)
        if not found:
            return None
        return m.SubmitSucceeded(
            step=command.step, attempt=command.attempt, tasks=found, recovered=True
        )

    async def _unwanted(
        self, command: m.Command, reason: str, tries: int, since: datetime | None
    ) -> m.Input:
        """A command no longer wanted is not carried out. A resent submit's earlier try may have
        started a job all the same: it is looked for, and its tasks go to the run (the machine
        records them on an ended run, so their events are matched as late ones instead of
        waiting as orphans until they expire unmatched)."""
        if isinstance(command, m.Submit):
            try:
                earlier = await self._earlier_try(command, tries, since)
            except VodError:
                earlier = None
            if earlier is not None:
                return earlier
        return not_sent(command, reason)

    async def _recover(self, command: m.Recover, tries: int) -> m.Input:
        try:
            found = await self._find_tasks(command.request, since=None)
        except VodError as exc:
            return _failed(command, exc)
        if not found:
            return m.SubmitFailed(
                step=command.step,
                attempt=command.attempt,
                error_class=ErrorClass.INTERNAL,
                message="VOD answered 50005 (duplicate task) but lists no task for this request",
            )
        return m.SubmitSucceeded(
            step=command.step, attempt=command.attempt, tasks=found, recovered=True
        )

    async def _find_tasks(
        self, request: dict[str, JsonValue], since: datetime | None
    ) -> tuple[TaskRef, ...]:
        """The procedure task VOD runs (or ran) for this request, found by fileId and procedure.

        Tencent's GetTaskList filters by fileId; a request that makes its file with ``gen`` has
        none, and is matched on the request itself where VOD echoes it (the embedded engine does).
        With ``since``, a task VOD says it created before then (allowing ``CLOCK_SKEW`` between
        VOD's clock and ours) is not this request's.
        """
        oldest = None if since is None else int((since - CLOCK_SKEW).timestamp())
        file_id = request.get("fileId")
        procedure = request.get("procedure")
        for status in ("PROCESSING", "WAITING", "FINISHED"):
            answer = await self.client.get_task_list(
                status, file_id=file_id if isinstance(file_id, str) else None
            )
            for entry in answer.task_list:
                extra = entry.model_extra or {}
                if (entry.type or "procedure").lower() != "procedure":
                    continue  # a sub-task, or another job: the procedure stands for its tasks
                if extra.get("procedure") not in (None, procedure):
                    continue
                echoed = extra.get("request")
                if not isinstance(file_id, str) and not _same_request(echoed, request):
                    continue
                if isinstance(file_id, str) and entry.file_id not in (None, file_id):
                    continue
                created = entry.create_time
                if oldest is not None and created is not None and created < oldest:
                    continue
                task_id = entry.vod_task_id or entry.task_id
                if task_id:
                    return _tasks_of(entry.model_dump(by_alias=True), task_id)
        return ()

    # --- notify -------------------------------------------------------------------------

    async def _notify(self, command: m.Notify, tries: int) -> m.Input:
        url = self.base_url + command.url if command.url.startswith("/") else command.url
        try:
            parts = urlsplit(url)
            httpx.URL(url)  # what the client will send it to, or its reason not to
        except (ValueError, httpx.InvalidURL) as exc:
            # a templated URL that rendered into something no try will ever reach
            return _notify_failed(command, ErrorClass.REJECTED, f"is not a usable URL: {exc}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return _notify_failed(
                command, ErrorClass.REJECTED, "is not an http(s) URL or a path on this vodflow"
            )
        command = command.model_copy(update={"url": url})
        body = json.dumps(command.payload, ensure_ascii=False, separators=(",", ":"))
        now = self.clock()
        headers = {
            "content-type": "application/json",
            "webhook-id": command.webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        if self.webhook is not None:
            headers["webhook-signature"] = self.webhook.sign(command.webhook_id, now, body)
        try:
            answer = await self.http.post(
                command.url, content=body.encode(), headers=headers, timeout=command.timeout
            )
        except httpx.TimeoutException:
            return _notify_failed(
                command, ErrorClass.TIMEOUT, f"no answer within {command.timeout:g}s"
            )
        except httpx.TransportError as exc:
            return _notify_failed(command, ErrorClass.TRANSPORT, f"cannot reach it: {exc!s}")
        if answer.is_success:
            outputs: dict[str, JsonValue] = {
                "status": answer.status_code,
                "webhookId": command.webhook_id,
                "url": command.url,
            }
            return m.SubmitSucceeded(step=command.step, attempt=command.attempt, outputs=outputs)
        # 4xx: the receiver refuses this message; 5xx, 408 and 429: it may take it later.
        retry = answer.status_code >= 500 or answer.status_code in (408, 429)
        cls = ErrorClass.INTERNAL if retry else ErrorClass.REJECTED
        return _notify_failed(
            command, cls, f"answered HTTP {answer.status_code}: {answer.text[:200]}"
        )

    # --- verify -------------------------------------------------------------------------

    def stop(self) -> None:
        """The service is stopping: commands waiting to try again give up their turn (see
        :class:`Interrupted`) instead of keeping the stop waiting."""
        self.stopping.set()

    async def _verify(self, command: m.Verify, tries: int) -> m.Input:
        started = time.monotonic()
        pause = 0.5
        while True:
            try:
                problem = await self.checker.check(
                    command.outputs,
                    tolerance=command.duration_tolerance,
                    slack=command.duration_slack,
                )
                break
            except OutputsUnreachable as exc:
                # Not a verdict on the outputs: their server is restarting, say. Checked again
                # for a while before the attempt fails (and the step's policy starts a new job).
                waited = time.monotonic() - started
                if waited >= self.check_patience:
                    return m.VerifyFailed(
                        step=command.step,
                        attempt=command.attempt,
                        reason=f"could not be checked for {waited:.0f} s: {exc}",
                        error_class=ErrorClass.TRANSPORT,
                    )
                pause = min(pause * 2, 30.0, self.check_patience - waited)
                log.warning(
                    "outputs of run %s: %s; checked again in %.0f s", command.run_id, exc, pause
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), pause)
                if self.stopping.is_set():
                    raise Interrupted(f"the service stopped while {exc}") from None
            except OutputRefused as exc:
                # Another attempt would be refused the same way: the step fails now.
                return m.VerifyFailed(
                    step=command.step,
                    attempt=command.attempt,
                    reason=str(exc),
                    error_class=ErrorClass.REJECTED,
                )
        if problem is None:
            return m.VerifySucceeded(step=command.step, attempt=command.attempt)
        return m.VerifyFailed(step=command.step, attempt=command.attempt, reason=problem)


def not_sent(command: m.Command, reason: str) -> m.Input:
    """The outcome of a command that was not carried out because ``reason``. Given to the
    machine like any outcome: it ignores it (the run ended, or the step is on a later attempt)
    and, for a send, notes the step is free to send again (so a cancelled run can be retried)."""
    if isinstance(command, m.Verify):
        return failed(command, f"not checked: {reason}")
    return failed(command, f"not sent: {reason}")


def failed(command: m.Command, what: str) -> m.Input:
    """An internal failure of a command, as the machine's input for its step's attempt (which
    the step's retry policy then retries)."""
    assert isinstance(command, m.OUTBOUND)
    if isinstance(command, m.Verify):
        return m.VerifyFailed(
            step=command.step,
            attempt=command.attempt,
            reason=what,
            error_class=ErrorClass.INTERNAL,
        )
    return m.SubmitFailed(
        step=command.step,
        attempt=command.attempt,
        error_class=ErrorClass.INTERNAL,
        message=what,
    )


def _same_request(echoed: object, request: dict[str, JsonValue]) -> bool:
    """VOD echoes parameters as the text it received: compare the flat wire forms."""
    if not isinstance(echoed, dict):
        return False
    try:
        return flatten(echoed) == flatten(request)
    except (TypeError, ValueError):
        return False


def _tasks_of(entry: dict[str, Any], task_id: str) -> tuple[TaskRef, ...]:
    kind = "procedure" if "procedure" in task_id.lower() else str(entry.get("type") or "procedure")
    return (TaskRef(task_id=task_id, kind=kind),)


def _failed(command: m.Submit | m.Recover, exc: VodError) -> m.SubmitFailed:
    retry_after = exc.retry_after if isinstance(exc, FrequencyLimit) else None
    return m.SubmitFailed(
        step=command.step,
        attempt=command.attempt,
        error_class=exc.error_class,
        code=exc.code,
        message=str(exc),
        retry_after=retry_after,
    )


def _notify_failed(command: m.Notify, cls: ErrorClass, what: str) -> m.SubmitFailed:
    return m.SubmitFailed(
        step=command.step,
        attempt=command.attempt,
        error_class=cls,
        message=f"webhook {command.url} {what}",
    )
