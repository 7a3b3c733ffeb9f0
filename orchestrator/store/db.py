"""Connecting to the database: SQLite (the embedded default) or PostgreSQL (for scale-out).

Users give one URL (``sqlite:///data/vodflow.db`` or ``postgresql://user@host/db``); vodflow
derives the async driver URL for the server (aiosqlite, psycopg) and the sync one for Alembic.

SQLite is put in WAL mode with ``synchronous=FULL`` (each commit synced, so an answered callback
outlives a power cut as well as a crash; see ``configure_sqlite``) and every write transaction
starts with ``BEGIN IMMEDIATE``: it takes the write lock up front, so two writers queue on the busy
timeout instead of one failing with "database is locked" when it upgrades a read lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator import jsontext

T = TypeVar("T")
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


class DatabaseUrlError(ValueError):
    pass


UNREACHABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError)
"""The database failing as a whole (down, locked, a deadlock or a timeout), not refusing one
row: what applying rows one by one would meet again, and what a later try may not."""


_said_at: dict[str, float] = {}
SAY_AGAIN_AFTER = 60.0
"""Seconds before a loop says again that the database does not answer."""


def log_failure(logger: logging.Logger, what: str, then: str = "trying again") -> None:
    """Log the exception being handled by a loop that will try ``what`` again.

    A database that does not answer fails every loop, every second, the same way: that is one
    line without a traceback, said again at most once a minute per loop (``/healthz`` says it
    too); anything else is logged whole, each time."""
    exc = sys.exc_info()[1]
    if not isinstance(exc, UNREACHABLE):
        logger.exception("%s failed; %s", what, then)
        return
    now = time.monotonic()
    if _said_at.get(what, -SAY_AGAIN_AFTER) + SAY_AGAIN_AFTER > now:
        return
    _said_at[what] = now
    logger.warning(
        "%s failed: the database does not answer (%s); %s (said once a minute)",
        what,
        unreachable_reason(exc),
        then,
    )


def unreachable_reason(exc: BaseException) -> str:
    """The driver's own words for a database that does not answer, on one line."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def check_url(url: str) -> None:
    """Raises ``DatabaseUrlError`` naming the problem when vodflow cannot use ``url``."""
    _parse(url)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise DatabaseUrlError(
            f"VODFLOW_DATABASE_URL: {redact(url)!r} is not a database URL; expected "
            "sqlite:///path/to/file.db or postgresql://user@host:5432/dbname"
        ) from exc
    if parsed.drivername in ("postgres", "postgres+psycopg"):
        # libpq's and most hosts' spelling; SQLAlchemy knows only "postgresql".
        parsed = parsed.set(drivername="postgresql")
    backend = parsed.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise DatabaseUrlError(
            f"VODFLOW_DATABASE_URL: unsupported database {backend!r}; expected sqlite or postgresql"
        )
    if backend == "sqlite" and (parsed.host or not parsed.database):
        raise DatabaseUrlError(
            f"VODFLOW_DATABASE_URL: {redact(url)!r} names no SQLite file; expected three "
            "slashes before a relative path (sqlite:///data/vodflow.db), four before an absolute "
            "one (sqlite:////var/lib/vodflow/vodflow.db)"
        )
    return parsed


def redact(url: str) -> str:
    """The URL as it may be shown: without its password. SQLAlchemy renders one it can read;
    one it cannot (a typo) is masked as text: before the last ``@`` (a password may hold ``/``
    or ``@``), what follows the user's name (after the first ``//``, or from the start in a URL
    missing it), and a ``password=`` parameter, masking too much rather than too little."""
    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    if "@" in url:
        before, _, host = url.rpartition("@")
        head, slashes, userinfo = before.partition("//")
        if not slashes:
            head, userinfo = "", before
        user, colon, _ = userinfo.partition(":")
        url = f"{head}{slashes}{user}{':***' if colon else ''}@{host}"
    return re.sub(r"(password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def async_url(url: str) -> URL:
    parsed = _parse(url)
    return parsed.set(drivername=_ASYNC_DRIVERS[parsed.get_backend_name()])


def sync_url(url: str) -> URL:
    parsed = _parse(url)
    return parsed.set(drivername=_SYNC_DRIVERS[parsed.get_backend_name()])


def ensure_private_dir(path: Path) -> None:
    """Create the directory ``path`` if it is missing, mode 0700 (only its owner may enter:
    the SQLite file holds callbacks' raw bodies, ``secrets.json`` the keys). Parents it needs
    are made as ``mkdir -p`` makes them; a directory that exists keeps its mode."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return  # another process made it first: its mode stands
    path.chmod(0o700)  # whatever the umask took away


def ensure_sqlite_dir(url: str) -> None:
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        ensure_private_dir(Path(parsed.database).parent)


WAL_RESTART_FRAMES = 4096
"""WAL frames (of 4 KiB pages: 16 MiB) beyond which the writer finishes a checkpoint itself so
that the WAL starts over (see ``Database.checkpoint``)."""

WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes a WAL file is cut back to when it starts over after growing beyond them (a long
read transaction holds the WAL and it grows meanwhile; SQLite keeps the file's size otherwise)."""


def _checkpoint(raw: Any) -> int:
    """A PASSIVE checkpoint on a raw sqlite3 connection outside a transaction; the WAL's frames."""
    _busy, frames, _copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames)


def configure_sqlite(engine: sa.Engine, *, writer: bool = False) -> None:
    """Pragmas and BEGIN IMMEDIATE for a (sync) SQLAlchemy engine on SQLite.

    Every commit is synced to the disk before it returns (``synchronous=FULL``): a callback is
    answered 2xx once its commit returned, and VOD does not send it again, so a commit must
    outlive a power loss or a crash of the machine, not only of the process (with SQLite's
    usual ``NORMAL`` in WAL mode, the last commits before such a crash roll back). Commits
    are grouped, so the sync is paid once per group: the full path's rate did not change
    measurably (1 081 and 1 003 against 1 084 and 1 062 callbacks/s, runs in turn), and a
    sync of the WAL took 0.2 ms here (p99 0.5 ms).

    ``writer=True`` is for the process's single writer connection:

    - the WAL's automatic checkpoint is off: the writer's commits would otherwise now and then
      copy the WAL into the database file (with an fsync) while every waiting callback waits
      too. ``Database`` checkpoints from a reader connection in the background instead;
    - its page cache holds up to 64 MiB instead of SQLite's 2 MiB: a group of callbacks touches
      index pages all over the runs, tasks and inbox tables, and with the small cache most of
      them were read from the file again (about 6 reads per callback, counted with strace over
      4 400 callbacks for 2 000 runs; 1 with this cache).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA busy_timeout=30000",
            "PRAGMA foreign_keys=ON",
            *(
                (
                    "PRAGMA wal_autocheckpoint=0",
                    "PRAGMA cache_size=-65536",
                    f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}",
                )
                if writer
                else ()
            ),
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get("vodflow_read_only", False)
        # On the DBAPI cursor: SQLAlchemy's documented ``exec_driver_sql("BEGIN")`` runs the
        # statement through its whole execution path, which was 7 % of a lone callback's write.
        cursor = connection.connection.cursor()
        try:
            cursor.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")
        finally:
            cursor.close()


class Database:
    """Where vodflow's state lives, and the ways to reach it without blocking the event loop.

    The main way is ``await db.write(fn, ...)`` / ``await db.query(fn, ...)``: ``fn(conn, ...)``
    runs synchronously with a Core connection inside one transaction, on a thread of the
    database's own. A whole batch (a group of callbacks, a drain of the inbox) is one hop to
    that thread, and inside it each statement costs what SQLAlchemy's sync Core costs (about
    35 µs on SQLite here), where the async engine over aiosqlite pays a thread hop per statement
    (about 400 µs measured here): the hot path would be an order of magnitude slower.

    On SQLite all of a process's writes go through one connection on one thread, so in-process
    writers queue in order instead of in SQLite's busy handler (which sleeps in steps of up to
    100 ms); other processes still meet at the file's write lock. Reads have their own threads
    and connections (WAL lets them run beside the writer). On PostgreSQL writes use a small pool
    of threads and rely on row locks (``FOR UPDATE SKIP LOCKED`` for claims).

    ``transaction()`` and ``read()`` (async context managers on the async engine) remain for code
    that is not on a hot path and reads better with ``await`` per statement.
    """

    def __init__(self, url: str, *, pool_size: int = 5, echo: bool = False) -> None:
        ensure_sqlite_dir(url)
        self.url = url
        target = async_url(url)
        self.backend = target.get_backend_name()
        # JSON columns through orjson, as on the hot path's own statements (store/driver.py).
        options: dict[str, Any] = {
            "echo": echo,
            "json_serializer": jsontext.dumps,
            "json_deserializer": jsontext.loads,
        }
        sync_target = sync_url(url)
        if self.backend == "postgresql":
            pool = {"pool_size": pool_size, "max_overflow": pool_size, "pool_pre_ping": True}
            self.engine: AsyncEngine = create_async_engine(target, **options, **pool)
            self.reader: AsyncEngine = self.engine
            self.sync_writer = sa.create_engine(sync_target, **options, **pool)
            self.sync_reader = self.sync_writer
            writers = pool_size
        else:
            self.engine = create_async_engine(target, pool_size=1, max_overflow=0, **options)
            self.reader = create_async_engine(target, pool_size=pool_size, **options)
            self.sync_writer = sa.create_engine(sync_target, pool_size=1, max_overflow=0, **options)
            self.sync_reader = sa.create_engine(sync_target, pool_size=pool_size, **options)
            for engine in (self.engine.sync_engine, self.reader.sync_engine, self.sync_reader):
                configure_sqlite(engine)
            configure_sqlite(self.sync_writer, writer=True)
            writers = 1
        self._writer = ThreadPoolExecutor(writers, thread_name_prefix="vodflow-db-write")
        # SQLite's single writer thread keeps its connection between transactions (see write).
        self._write_conn: sa.Connection | None = None
        self.wal_restart_frames = WAL_RESTART_FRAMES
        self._reader = ThreadPoolExecutor(pool_size, thread_name_prefix="vodflow-db-read")

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    async def checkpoint(self) -> int:
        """Copy the SQLite WAL into the database file without blocking the writer; returns the
        frames the WAL held (0 on PostgreSQL).

        The copy runs on a reader connection (PASSIVE), beside the writer. The WAL starts over
        from its beginning only when the writer begins a transaction and finds it copied whole,
        which a writer committing without a pause never does: each of its commits lands while
        the copy runs. The WAL would grow for as long as such a burst lasts (a test wrote 1.5 s
        of commits through a WAL that never started over), the file system allocating new
        blocks for it all the while, and the file would keep that size. So once it holds more than
        ``wal_restart_frames``, the writer copies the few frames committed since, between two
        of its transactions, and its next transaction starts the WAL over.
        """
        if not self.is_sqlite:
            return 0

        def run() -> int:
            with self.sync_reader.connect() as conn:
                raw = conn.connection.driver_connection
                assert raw is not None
                return _checkpoint(raw)

        frames = await asyncio.get_running_loop().run_in_executor(self._reader, run)
        if frames > self.wal_restart_frames:

            def finish() -> None:
                raw = self._kept_write_conn().connection.driver_connection
                assert raw is not None
                _checkpoint(raw)

            await asyncio.get_running_loop().run_in_executor(self._writer, finish)
        return frames

    def _kept_write_conn(self) -> sa.Connection:
        """SQLite's one writer connection, on the writer thread: kept open between
        transactions. Checking it out of the pool and back for every transaction (and rolling
        it back on the way in) cost a sixth of a lone callback's write; a SQLite connection does
        not go stale as a server's can, so nothing is lost by keeping it (PostgreSQL's writers
        still check theirs out, pinged, every time)."""
        kept = self._write_conn
        if kept is None or kept.invalidated:
            kept = self._write_conn = self.sync_writer.connect()
        return kept

    async def write(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(conn, *args, **kwargs)`` in one write transaction, committed when it returns."""

        def run() -> T:
            if not self.is_sqlite:
                with self.sync_writer.begin() as conn:
                    return fn(conn, *args, **kwargs)
            kept = self._kept_write_conn()
            with kept.begin():
                return fn(kept, *args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def query(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(conn, *args, **kwargs)`` in a read-only snapshot."""

        def run() -> T:
            with self.sync_reader.connect() as conn:
                conn = conn.execution_options(vodflow_read_only=True)
                with conn.begin():
                    return fn(conn, *args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed when the block ends, rolled back on an exception."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (no write lock on SQLite)."""
        async with self.reader.connect() as conn:
            conn = await conn.execution_options(vodflow_read_only=True)
            async with conn.begin():
                yield conn

    async def close(self) -> None:
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _close_write_conn(self) -> None:
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None

    def _shutdown(self) -> None:
        self._writer.submit(self._close_write_conn).result()
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self.sync_writer.dispose()
        self.sync_reader.dispose()
