"""The receiver: VOD's and the live service's callbacks into the durable inbox.

Every accepted body is committed to the inbox before the 2xx answer (nothing accepted is lost).
Commits are grouped: callbacks arriving together share one transaction, and each is answered
only after the transaction holding it committed, so the durable path keeps up with bursts that
one commit per request could not. Task events are applied in that same transaction (the runner
correlates them and commits their transitions with the inbox rows, or records them as orphans);
the rest (triggers, stream ends) are left pending for the runner. A resent body (same dedup key)
is answered 2xx and stored once.

Authentication: both endpoints need the callback token (``?token=`` in the URL configured in the
VOD / live console, or the ``X-Vodflow-Token`` header; compared in constant time). Live-service
bodies must also carry a valid ``sign`` (MD5(key + t)) that has not expired, when a live callback
key is configured. Unauthenticated requests get 401 and are not stored; authenticated but
malformed bodies get 400 with the reason and are kept as invalid events for inspection.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import parse_qsl

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.store import queues
from orchestrator.store.db import UNREACHABLE, Database
from orchestrator.store.queues import InboxStatus, NewInboxEvent
from orchestrator.vod.errors import MalformedEvent
from orchestrator.vod.events import VodEvent, lvb_sign_problem, parse_event

log = logging.getLogger("vodflow.receiver")


def inbox_row(
    event: VodEvent, body: str, source: str, received_at: datetime | None = None
) -> NewInboxEvent:
    return NewInboxEvent(
        source=source,
        event_type=event.kind[:80],
        dedup_key=event.dedup_key,
        body=body,
        task_id=event.task_id,
        file_id=event.file_id,
        stream_id=event.stream_id,
        received_at=received_at,
    )


@dataclass
class _Pending:
    event: NewInboxEvent
    parsed: VodEvent | None
    done: asyncio.Future[int | None]


Apply = Callable[[sa.Connection, list[tuple[int, VodEvent]], datetime], Callable[[], None]]


def _apply_nothing(
    _conn: sa.Connection, _received: list[tuple[int, VodEvent]], _now: datetime
) -> Callable[[], None]:
    return lambda: None


class InboxWriter:
    """Commits inbox rows in groups; ``add`` returns once the row's transaction committed.

    ``apply(conn, received, now)`` runs in that transaction with the new rows' ids and parsed
    events (the runner applies the task events among them there and then, so a callback is
    answered once its transition has committed too); what it returns is called after the commit.
    """

    def __init__(
        self,
        db: Database,
        *,
        apply: Apply = _apply_nothing,
        max_batch: int = 256,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.apply = apply
        self.max_batch = max_batch
        self.clock = clock
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches = 0
        self.rows = 0

    async def add(self, event: NewInboxEvent, parsed: VodEvent | None = None) -> int | None:
        """The new row's id, or None when the dedup key was already stored (a duplicate).

        ``parsed`` is the body as the receiver read it, handed to ``apply``.
        """
        done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(event, parsed, done))
        return await done

    def _commit(
        self, conn: sa.Connection, group: list[_Pending]
    ) -> tuple[list[int | None], Callable[[], None]]:
        now = self.clock()
        ids = queues.insert_inbox(conn, [p.event for p in group], now)
        received = [
            (row_id, p.parsed)
            for p, row_id in zip(group, ids, strict=True)
            if row_id is not None and p.parsed is not None
        ]
        return ids, self.apply(conn, received, now)

    async def serve(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self.max_batch and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                await self._commit_group(group)
            except Exception as exc:
                if len(group) == 1 or isinstance(exc, UNREACHABLE):
                    _settle(group, exc)
                    continue
                # One row the database refuses must not fail the callbacks committed with it:
                # each is committed alone, and only the one that fails again is answered so.
                log.warning(
                    "a group of %d callbacks failed to commit (%s); committing each alone",
                    len(group),
                    exc,
                )
                for pending in group:
                    try:
                        await self._commit_group([pending])
                    except Exception as alone:
                        _settle([pending], alone)

    async def _commit_group(self, group: list[_Pending]) -> None:
        ids, after_commit = await self.db.write(self._commit, group)
        # Committed: from here on nothing may send the group down the failure path (its rows
        # would be committed again).
        self.batches += 1
        self.rows += len(group)
        for pending, row_id in zip(group, ids, strict=True):
            if not pending.done.done():
                pending.done.set_result(row_id)
        try:
            after_commit()
        except Exception:
            log.exception("announcing a committed group of %d callbacks failed", len(group))


def _settle(group: list[_Pending], exc: Exception) -> None:
    for pending in group:
        if not pending.done.done():
            pending.done.set_exception(exc)


class Receiver:
    def __init__(
        self,
        writer: InboxWriter,
        *,
        callback_token: str,
        lvb_key: str | None,
        max_body: int,
        clock: Callable[[], float] = time.time,
        count: Callable[[str, str, str], None] = lambda source, kind, outcome: None,
    ) -> None:
        self.writer = writer
        self.count = count
        self.callback_token = callback_token
        self.lvb_key = lvb_key
        self.max_body = max_body
        self.clock = clock
        self.routes = [
            Route("/callbacks/vod", self.vod, methods=["POST"]),
            Route("/callbacks/lvb", self.lvb, methods=["POST"]),
        ]

    def _authorized(self, request: Request) -> bool:
        given = _query_token(request.scope["query_string"]) or request.headers.get(
            "x-vodflow-token", ""
        )
        return hmac.compare_digest(given.encode(), self.callback_token.encode())

    async def _body(self, request: Request) -> bytes | JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return _refuse(413, f"the body is {declared} bytes; at most {self.max_body} accepted")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return _refuse(413, f"the body exceeds {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def vod(self, request: Request) -> JSONResponse:
        return await self._accept(request, "vod")

    async def lvb(self, request: Request) -> JSONResponse:
        return await self._accept(request, "lvb")

    async def _accept(self, request: Request, source: str) -> JSONResponse:
        arrived = self.writer.clock()
        if not self._authorized(request):
            self.count(source, "-", "unauthorized")
            return _refuse(401, "missing or wrong callback token (?token= or X-Vodflow-Token)")
        body = await self._body(request)
        if isinstance(body, JSONResponse):
            self.count(source, "-", "too_large")
            return body
        if source == "lvb" and self.lvb_key is not None:
            # Before anything is read or stored: an unsigned body is refused, not kept.
            problem = lvb_sign_problem(body, self.lvb_key, self.clock())
            if problem is not None:
                self.count(source, "-", "bad_sign")
                return _refuse(401, problem)
        text = body.decode("utf-8", errors="replace")
        try:
            event = parse_event(body, source="lvb" if source == "lvb" else "vod")
        except MalformedEvent as exc:
            self.count(source, "-", "malformed")
            await self.writer.add(
                NewInboxEvent(
                    source=source,
                    event_type="malformed",
                    dedup_key=None,
                    body=text,
                    status=InboxStatus.INVALID,
                    note=str(exc),
                )
            )
            return _refuse(400, str(exc))
        if source != "lvb" and self.lvb_key is not None and event.kind.startswith("lvb."):
            # A live-service body sent to the VOD endpoint is held to the same sign.
            problem = lvb_sign_problem(event.raw, self.lvb_key, self.clock())
            if problem is not None:
                self.count(source, event.kind, "bad_sign")
                return _refuse(401, problem)
        row_id = await self.writer.add(inbox_row(event, text, source, arrived), event)
        if row_id is None:
            self.count(source, event.kind, "duplicate")
            return JSONResponse({"code": 0, "message": "duplicate: already received"})
        self.count(source, event.kind, "accepted")
        return JSONResponse({"code": 0, "message": "ok", "eventId": row_id})


@lru_cache(maxsize=64)
def _query_token(query: bytes) -> str:
    """The ``token`` parameter of a query string. Cached: a deployment's callbacks all come to
    the few URLs configured in the consoles, and parsing the query was a few percent of a
    callback's cost."""
    return dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)).get("token", "")


def _refuse(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"code": status, "error": reason}, status_code=status)
