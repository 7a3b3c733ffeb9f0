"""One embedded engine per database: the engine's claim, a leased row its heartbeat renews.

Each engine keeps its media in its own directory but takes any task from the database, so a
second engine on the same database would run tasks whose files are on the other machine. The
engine claims the database before it starts its workers, and a second one refuses to start while
that claim is held and renewed, naming who holds it. The lease is the engine's task lease
(``VODFLOW_ENGINE_TASK_LEASE``): renewed every third of it, lost when not renewed for a whole
one. A clean stop gives the claim up; a killed engine's claim lapses after one lease, when its
tasks' leases do, except that an engine restarted at the same host:port takes it over at once
(its port was free to bind, so whoever held the claim from there is gone).
``VODFLOW_ENGINE_SHARED_MEDIA`` turns the claim off where every engine sees the same media.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.store import claims
from orchestrator.store.db import Database, log_failure, redact, sync_url

log = logging.getLogger("vodflow.engine")

CLAIM = "engine"


class EngineTaken(Exception):
    """Another engine holds this database; the message names it and what to do."""


def holder_name(settings: Settings) -> str:
    """Where this engine serves, as people and the sweeper's heartbeats name it."""
    return f"{socket.gethostname()}:{settings.port}"


def port_is_free(host: str, port: int) -> bool:
    """Nothing listens at ``host:port`` (binding it works), so no engine serves there now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError:
        return False
    return True


def refusal(claim: claims.Claim, url: str, lease: timedelta) -> EngineTaken:
    since = claim.claimed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return EngineTaken(
        f"the embedded VOD engine already runs on the database {redact(url)}: {claim.holder} "
        f"holds it since {since}. Run one engine per database: set VODFLOW_ENGINE=false here "
        f"and VODFLOW_VOD_ENDPOINT to http(s)://{claim.holder}/v2/index.php (or where it is "
        f"reached), or stop that engine first (a killed one's claim lapses "
        f"{lease.total_seconds():g}s after its last renewal)"
    )


class EngineClaim:
    """This engine's claim: taken at start, renewed by a heartbeat, given up at stop."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        owner: str,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.settings = settings
        self.owner = owner
        self.holder = holder_name(settings)
        self.lease = timedelta(seconds=settings.engine_task_lease)
        self.clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _take(self, conn: sa.Connection, now: datetime, successor: bool) -> claims.Claim | None:
        return claims.take(
            conn,
            CLAIM,
            holder=self.holder,
            owner=self.owner,
            now=now,
            lease=self.lease,
            successor=successor,
        )

    def take_before_serving(self) -> None:
        """Claim the database on a connection of its own, before the server starts (and before
        it binds its port): ``vodflow serve`` refuses with one line instead of a traceback."""
        engine = sa.create_engine(sync_url(self.settings.sqlalchemy_url), poolclass=sa.NullPool)
        try:
            with engine.begin() as conn:
                other = self._take(conn, self._now(), self._restarted_here())
        finally:
            engine.dispose()
        if other is not None:
            raise refusal(other, self.settings.sqlalchemy_url, self.lease)

    async def take(self) -> None:
        """Claim the database (again, when ``take_before_serving`` did: renewed) or raise."""
        successor = self._restarted_here()
        other = await self.db.write(self._take, self._now(), successor)
        if other is not None:
            raise refusal(other, self.settings.sqlalchemy_url, self.lease)

    def _restarted_here(self) -> bool:
        return port_is_free(self.settings.host, self.settings.port)

    async def heartbeat(self, lost: Callable[[], Awaitable[None]]) -> None:
        """Renew the claim every third of the lease. When it was lost (not renewed for a whole
        lease) and another engine took it, ``lost`` stops this engine's work."""
        every = max(self.lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(every)
            try:
                now = self._now()
                if await self.db.write(claims.renew, CLAIM, self.owner, now, self.lease):
                    continue
                other = await self.db.write(self._take, now, False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_failure(log, "engine: renewing its claim on the database")
                continue
            if other is None:
                log.warning("engine: its claim on the database had lapsed; claimed it again")
                continue
            log.error(
                "engine: its claim on the database lapsed and %s took it (since %s): this "
                "engine stops taking tasks; restart it once only one engine should run",
                other.holder,
                other.claimed_at.isoformat(timespec="seconds"),
            )
            await lost()
            return

    async def release(self) -> None:
        await self.db.write(claims.release, CLAIM, self.owner)
