"""The VOD quota, shared by every process that uses the same database.

ProcessFileByProcedure allows 100 calls per minute per account (task queries 100, PullEvent
1000). vodflow keeps, per account and action, the times of the calls made in the last window in
one database row and decides under that row's lock, so any number of processes together never
exceed the quota in any sliding window (a token bucket would let a burst on top of the rate
through, which is more than VOD allows). ``burst`` paces the calls: at most ``burst`` calls in any
``burst × window / rate`` seconds, so a backlog drains evenly instead of in one spike.

When VOD answers with its frequency limit anyway (another client on the same account, or a quota
lower than configured), :meth:`Limiter.penalize` blocks the bucket for everyone.

Clocks: the decision uses this machine's wall clock; processes on several machines need their
clocks in sync (NTP) for the shared window to be exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.store.db import Database
from orchestrator.store.limits import bucket_usage, update_bucket


@dataclass(frozen=True)
class Quota:
    rate: int
    """Calls allowed per window."""
    burst: int
    window: float = 60.0

    def __post_init__(self) -> None:
        if self.rate < 1 or not 1 <= self.burst <= self.rate or self.window <= 0:
            raise ValueError(f"invalid quota {self}: need rate >= 1, 1 <= burst <= rate")


@dataclass(frozen=True)
class Grant:
    at: float | None
    """When the slot was taken (the limiter's clock), or None when none was free."""
    wait: float
    """Seconds until a slot may be free (try_acquire), or seconds waited (acquire)."""


def decide(
    calls: list[float], blocked_until: float, now: float, quota: Quota
) -> tuple[list[float], float | None]:
    """Pure: ``(calls kept, seconds to wait)``; the wait is None when the call is made now."""
    recent = [t for t in calls if t > now - quota.window]
    if blocked_until > now:
        return recent, blocked_until - now
    if len(recent) >= quota.rate:
        return recent, max(recent[-quota.rate] + quota.window - now, 1e-3)
    span = quota.burst * quota.window / quota.rate
    if len(recent) >= quota.burst and recent[-quota.burst] > now - span:
        return recent, max(recent[-quota.burst] + span - now, 1e-3)
    return [*recent, now], None


class Limiter:
    """Paces calls to one VOD account, across processes, through the database."""

    def __init__(
        self,
        db: Database,
        account: str,
        quotas: dict[str, Quota],
        default: Quota,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.account = account
        self.quotas = quotas
        self.default = default
        self.clock = clock

    def quota(self, action: str) -> Quota:
        return self.quotas.get(action, self.default)

    def key(self, action: str) -> str:
        return f"{self.account}/{action}"

    async def try_acquire(self, action: str) -> Grant:
        """Take a call slot now if there is one; else say how long until there may be."""
        quota = self.quota(action)

        def change(calls: list[float], blocked: float) -> tuple[list[float], float, Grant]:
            now = self.clock()
            kept, wait = decide(calls, blocked, now, quota)
            if wait is None:
                return kept, blocked, Grant(at=now, wait=0.0)
            return kept, blocked, Grant(at=None, wait=wait)

        return await self.db.write(update_bucket, self.key(action), change)

    async def acquire(self, action: str, max_wait: float = float("inf")) -> Grant:
        """Wait for a call slot. Raises TimeoutError when it would take longer than max_wait."""
        waited = 0.0
        while True:
            grant = await self.try_acquire(action)
            if grant.at is not None:
                return Grant(at=grant.at, wait=waited)
            if waited + grant.wait > max_wait:
                raise TimeoutError(f"no {action} call slot within {max_wait:g}s")
            await asyncio.sleep(grant.wait)
            waited += grant.wait

    async def penalize(self, action: str, seconds: float | None = None) -> float:
        """VOD said "frequency limit": nobody calls this action for a while. Returns the pause."""
        quota = self.quota(action)
        pause = seconds if seconds is not None else quota.window / quota.rate * quota.burst
        until = self.clock() + pause

        def change(calls: list[float], blocked: float) -> tuple[list[float], float, None]:
            return calls, max(blocked, until), None

        await self.db.write(update_bucket, self.key(action), change)
        return pause

    async def usage(self, action: str) -> int:
        """Calls made in the current window (for the dashboard)."""
        calls, _ = await self.db.query(bucket_usage, self.key(action))
        now = self.clock()
        return sum(1 for t in calls if t > now - self.quota(action).window)
