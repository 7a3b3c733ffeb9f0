"""Shared fixtures: databases (SQLite file and PostgreSQL), workflows, clocks.

PostgreSQL tests skip on a machine without a server, except in CI (CI=true), where a missing
server is a failure: the scale-out engine must never go untested by accident.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.store import migrate
from orchestrator.store.db import Database

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("VODFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
    except OSError:
        return False
    try:
        engine = sa.create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception:
        return False
    return True


def require_pg() -> None:
    if pg_available():
        return
    message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}"
    if IN_CI:
        pytest.fail(f"{message}: with CI=true PostgreSQL tests must run, not skip")
    pytest.skip(message)


@pytest.fixture
def now() -> datetime:
    return datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'vodflow.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards."""
    require_pg()
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    url = f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database-backed test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vodflow.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database, on each engine."""
    migrate.upgrade(database_url)
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No VODFLOW_* settings leak in from the machine running the tests."""
    for key in list(os.environ):
        if key.startswith("VODFLOW_"):
            monkeypatch.delenv(key)
