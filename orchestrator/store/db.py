"""Connecting to the database: SQLite (the embedded default) or PostgreSQL (for scale-out).

Users give one URL (``sqlite:///data/vodflow.db`` or ``postgresql://user@host/db``); vodflow
derives the async driver URL for the server (aiosqlite, psycopg) and the sync one for Alembic.

SQLite is put in WAL mode with ``synchronous=NORMAL`` (durable across process crashes, which is
what the inbox promises; a power cut may lose the last transactions) and every write transaction
starts with ``BEGIN IMMEDIATE``: it takes the write lock up front, so two writers queue on the busy
timeout instead of one failing with "database is locked" when it upgrades a read lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


class DatabaseUrlError(ValueError):
    pass


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise DatabaseUrlError(
            f"VODFLOW_DATABASE_URL: {url!r} is not a database URL; expected "
            "sqlite:///path/to/file.db or postgresql://user@host:5432/dbname"
        ) from exc
    backend = parsed.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise DatabaseUrlError(
            f"VODFLOW_DATABASE_URL: unsupported database {backend!r}; expected sqlite or postgresql"
        )
    return parsed


def async_url(url: str) -> URL:
    parsed = _parse(url)
    return parsed.set(drivername=_ASYNC_DRIVERS[parsed.get_backend_name()])


def sync_url(url: str) -> URL:
    parsed = _parse(url)
    return parsed.set(drivername=_SYNC_DRIVERS[parsed.get_backend_name()])


def ensure_sqlite_dir(url: str) -> None:
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def configure_sqlite(engine: sa.Engine) -> None:
    """Pragmas and BEGIN IMMEDIATE for a (sync) SQLAlchemy engine on SQLite."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA busy_timeout=30000",
            "PRAGMA foreign_keys=ON",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get("vodflow_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    """The async engine and the two ways to use it: a write transaction, or a read."""

    def __init__(self, url: str, *, pool_size: int = 5, echo: bool = False) -> None:
        ensure_sqlite_dir(url)
        self.url = url
        target = async_url(url)
        self.backend = target.get_backend_name()
        options: dict[str, Any] = {"echo": echo}
        if self.backend == "postgresql":
            options.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(target, **options)
        if self.backend == "sqlite":
            configure_sqlite(self.engine.sync_engine)

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed when the block ends, rolled back on an exception."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (no write lock on SQLite)."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(vodflow_read_only=True)
            async with conn.begin():
                yield conn

    async def close(self) -> None:
        await self.engine.dispose()
