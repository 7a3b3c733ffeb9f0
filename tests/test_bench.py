"""The ingest benchmark still runs, on both databases: at a small size, and without judging its
figures (speed is measured by running it, never asserted in a test)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import PG_ADMIN_URL, ROOT, require_pg

pytestmark = pytest.mark.slow

LINES = (
    "bare handler",
    "vodflow answered",
    "vodflow full path",
    "ratio full path / bare",
    "receiving alone",
    "at half the full-path rate",
    "sweep (500 due of    10,000 task rows)",
)


def run_bench(*extra: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            *("bench/ingest.py", "--runs", "200", "--sweep-rows", "10000", "20000"),
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def check(output: str, database: str) -> None:
    assert f"vodflow on {database}" in output.splitlines()[0]
    for line in LINES:
        assert line in output, (line, output)
    # every callback answered 200 (the resends included), and the server's figures printed
    assert output.count("statuses {200: 440}") == 3, output
    assert "statuses {200: 220}" in output, output
    assert len(re.findall(r"µs CPU per request, resident \d+ MiB", output)) == 4, output


def test_the_ingest_benchmark_runs_on_sqlite() -> None:
    check(run_bench(), "SQLite")


@pytest.mark.pg
def test_the_ingest_benchmark_runs_on_postgresql() -> None:
    require_pg()
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"))
    schemas = "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bench%'"
    with admin.connect() as conn:
        before = conn.execute(sa.text(schemas)).scalar_one()
    check(run_bench("--postgres", PG_ADMIN_URL), "PostgreSQL")
    with admin.connect() as conn:
        assert conn.execute(sa.text(schemas)).scalar_one() == before  # dropped afterwards
    admin.dispose()
