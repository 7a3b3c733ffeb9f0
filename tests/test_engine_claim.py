"""One embedded engine per database (orchestrator/engine/claim.py): engines on real ports over a
real SQLite file and PostgreSQL; tests/test_cli.py runs it with `vodflow serve` processes."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.engine.claim import CLAIM, EngineTaken
from orchestrator.store import claims, migrate
from orchestrator.store.db import Database
from tests.conftest import free_port
from tests.engine_support import running_engine

HOST = socket.gethostname()


async def _holds(db: Database, holder: str, *, lease_until: datetime) -> None:
    """Write the claim as if an engine at ``holder`` had taken it."""
    now = datetime.now(UTC)
    owner = f"{holder.split(':')[0]}:1:gone"

    def write(conn: sa.Connection) -> None:
        conn.execute(claims.claims.delete())
        lease = lease_until - now
        claims.take(conn, CLAIM, holder=holder, owner=owner, now=now, lease=lease)

    await db.write(write)


async def test_a_second_engine_refuses_to_start_naming_the_first(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    async with running_engine(database_url, tmp_path / "a", port=port) as first:
        with pytest.raises(EngineTaken) as refused:
            async with running_engine(database_url, tmp_path / "b"):
                pass
        message = str(refused.value)
        assert f"on the database {migrate.redact(database_url)}: {HOST}:{port} holds it since " in (
            message
        )
        assert "set VODFLOW_ENGINE=false here and VODFLOW_VOD_ENDPOINT to " in message
        assert "a killed one's claim lapses 60s after its last renewal" in message
        assert "\n" not in message
        assert first.engine.runner._loops  # the first one goes on
    # The first stopped cleanly and gave its claim up: the next one starts at once.
    async with running_engine(database_url, tmp_path / "b"):
        pass


@pytest.mark.parametrize(
    ("holder", "lease_left", "starts"),
    [
        ("gone-host:8080", -1, True),  # its lease ran out
        ("gone-host:8080", 60, False),  # another machine's, still fresh
        ("here", 60, True),  # this host:port's, and the port is free: it restarted here
    ],
)
async def test_a_claim_passes_on_when_its_lease_lapsed_or_its_holder_restarts_in_place(
    database_url: str, tmp_path: Path, holder: str, lease_left: int, starts: bool
) -> None:
    port = free_port()
    holder = f"{HOST}:{port}" if holder == "here" else holder
    await asyncio.to_thread(migrate.upgrade, database_url)
    db = Database(database_url)
    try:
        lease_until = datetime.now(UTC) + timedelta(seconds=lease_left)
        await _holds(db, holder, lease_until=lease_until)
    finally:
        await db.close()
    if not starts:
        with pytest.raises(EngineTaken, match=f": {holder} holds it since "):
            async with running_engine(database_url, tmp_path / "vod", port=port):
                pass
        return
    async with running_engine(database_url, tmp_path / "vod", port=port) as vod:
        async with vod.db.read() as conn:
            held = await conn.run_sync(lambda sync: claims.current(sync, CLAIM))
        assert held is not None
        assert (held.holder, held.lease_owner) == (f"{HOST}:{port}", vod.engine.owner)


async def test_an_engine_whose_claim_another_took_stops_taking_tasks(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="vodflow.engine")
    async with running_engine(database_url, tmp_path / "vod", engine_task_lease=3) as vod:
        # Cut off for a whole lease, then another engine claimed the database.
        later = datetime.now(UTC) + timedelta(seconds=60)
        await _holds(vod.db, "other-host:8080", lease_until=later)

        for _ in range(100):
            if not vod.engine.runner._loops:
                break
            await asyncio.sleep(0.1)
        assert not vod.engine.runner._loops
    (said,) = [r.getMessage() for r in caplog.records if "claim" in r.getMessage()]
    assert "other-host:8080 took it" in said
    assert "this engine stops taking tasks" in said
