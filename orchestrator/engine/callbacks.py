"""The engine's callbacks: each VOD 4.0 event POSTed as JSON to the callback URL until it is
answered 2xx.

Events are rows (written in the transaction that finished their task), so a send that fails, or
a process that dies before sending, is retried, by this process or any other on the database.
A failed send is retried after ``engine_callback_backoff`` seconds, doubling each time up to
``engine_callback_backoff_max`` (with ±10% jitter so a recovering receiver is not hit by every
event at once). Sending never blocks task work: the workers only write rows and ring a bell.

Decisions: sends run up to eight at a time, so their order is not guaranteed (VOD does not
guarantee it either); an event still undelivered after 72 hours (VOD's task retention) is given
up, with its last error kept, and can still be pulled with PullEvent. Like VOD, the engine signs
nothing: the default callback URL carries vodflow's callback token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx

from orchestrator import __version__
from orchestrator.engine.wakeup import Wakeup
from orchestrator.store import engine as store
from orchestrator.store.db import Database, log_failure
from orchestrator.store.tables import EngineEvent

log = logging.getLogger(__name__)

GIVE_UP_AFTER = timedelta(hours=72)
SEND_TIMEOUT = 10.0
CONCURRENCY = 8
POLL_SECONDS = 1.0


def backoff(attempts: int, base: float, ceiling: float) -> float:
    """Seconds before the next send after ``attempts`` failed ones (without jitter)."""
    return float(min(ceiling, base * 2 ** max(0, attempts - 1)))


class CallbackSender:
    """Delivers pending events to one callback URL."""

    def __init__(
        self,
        db: Database,
        url: str,
        *,
        owner: str,
        base: float,
        ceiling: float,
        events_added: Wakeup,
        clock: Callable[[], float] = time.time,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.db = db
        self.url = url
        self.owner = owner
        self.base = base
        self.ceiling = ceiling
        self.events_added = events_added
        self.clock = clock
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(SEND_TIMEOUT),
            headers={"User-Agent": f"vodflow-engine/{__version__}"},
        )
        self._loop: asyncio.Task[None] | None = None
        self._quiet = False

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="engine-callbacks")

    def quiesce(self) -> None:
        """Start no more sends; those in flight finish. For a server about to stop listening
        (safe from a signal handler): an event sent to its own receiver then would fail and
        count an attempt, logged as a failure. Its events stay pending for the next start."""
        self._quiet = True

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        await self.http.aclose()

    async def _run(self) -> None:
        while not self._quiet:
            ticket = self.events_added.ticket()
            try:
                sent = await self.send_due()
            except Exception:
                log_failure(log, "engine callbacks: sending")
                sent = 0
            if sent == 0:
                await self.events_added.wait(await self._idle_time(), ticket)

    async def _idle_time(self) -> float:
        try:
            async with self.db.read() as conn:
                due = await store.next_push_at(conn)
        except Exception:
            return POLL_SECONDS
        if due is None:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.0, (due - self._now()).total_seconds()))

    async def send_due(self) -> int:
        """Send every event that is due (a batch at a time); how many were tried."""
        if self._quiet:
            return 0
        now = self._now()
        async with self.db.transaction() as conn:
            due = await store.claim_pushes(
                conn, self.owner, now, now + timedelta(seconds=SEND_TIMEOUT * 6), CONCURRENCY
            )
        await asyncio.gather(*(self._send(event) for event in due))
        return len(due)

    async def _send(self, event: EngineEvent) -> None:
        assert event.id is not None
        body = json.dumps(event.body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            answer = await self.http.post(
                self.url, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            error: str | None = f"{type(exc).__name__}: {exc}"
        else:
            error = None if answer.is_success else f"HTTP {answer.status_code}: {answer.text[:200]}"
        attempts = event.push_attempts + 1
        now = self._now()
        if error is None:
            log.debug("engine event %s (%s) delivered", event.msg_handle, event.event_type)
            status, next_at, delivered = "delivered", None, now
            error = event.push_error  # the last failure stays on record
        elif now - event.created_at > GIVE_UP_AFTER:
            log.error(
                "engine event %s (%s) undelivered for 72 hours, giving up: %s",
                event.msg_handle,
                event.event_type,
                error,
            )
            status, next_at, delivered = "failed", None, None
        else:
            wait = backoff(attempts, self.base, self.ceiling) * random.uniform(0.9, 1.1)
            log.warning(
                "engine event %s (%s) to %s failed (attempt %d): %s; next try in %.1fs",
                event.msg_handle,
                event.event_type,
                _redact(self.url),
                attempts,
                error,
                wait,
            )
            status, next_at, delivered = "pending", now + timedelta(seconds=wait), None
        async with self.db.transaction() as conn:
            await store.record_push(
                conn,
                event.id,
                self.owner,
                status=status,
                attempts=attempts,
                next_push_at=next_at,
                error=error,
                delivered_at=delivered,
            )


def _redact(url: str) -> str:
    """The URL without its query (the callback token)."""
    return url.split("?", 1)[0]
