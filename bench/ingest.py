"""Callback ingest: the durable full path against a bare handler, on the same server stack.

    python bench/ingest.py [--runs 10000] [--connections 64] [--postgres URL]

Measured in one run, with the same load generator (bench/loadgen.py) and the same server stack
(uvicorn with uvloop and httptools, one process):

1. a bare Starlette handler that only answers 200: the stack's ceiling;
2. vodflow's receiver on SQLite: every callback is committed to the inbox, correlated with the
   run that recorded its task ID, fed to the state machine and its new state committed, all in
   the group transaction its answer waits for (so the answer latency is the full path's).
   Throughput counts until no inbox event is pending, so work left to the runner is not hidden;
3. the receiving half alone (authenticate, read, commit to the inbox, answer; nothing applied),
   to show where the full path's cost lies;
4. latency at half of vodflow's maximum rate (open loop);
5. the sweeper's stalled-task query with 10k and 1M task rows in the table.

Each load line ends with where the CPU went: the cores the server process and the load generator
kept busy (from /proc, on Linux), the server's CPU time per request, which sizes a deployment
(one core handles about a million divided by it callbacks per second), and the server's resident
memory at the end and at its peak. vodflow's server sits at one core, held by the GIL, while the
bare handler's run uses both.

With ``--postgres URL`` (a database vodflow may create schemas in, such as
postgresql://postgres@127.0.0.1:5432/test), vodflow's runs use a fresh schema of that database
instead of a SQLite file, dropped afterwards; the sweep's cost is still measured on SQLite.

Each callback is a real TranscodeComplete or CreateImageSpriteComplete for a task of a run that
waits for it; one in ten is sent twice (a resend, which must change nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen
from orchestrator import machine as m
from orchestrator.spec import parse_workflow
from orchestrator.store import migrate
from orchestrator.store.db import Database
from orchestrator.store.runs import create_run, save_decision
from orchestrator.store.tables import InboxEvent, Run, TaskRow
from orchestrator.store.tasks import claim_due_polls
from orchestrator.vod.responses import TaskRef

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.applications import Starlette

WORKFLOW = """\
name: bench
triggers: [{type: manual}]
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    verify: false
"""
TOKEN = "bench-token"


def bare_app():  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ok(request):  # type: ignore[no-untyped-def]
        await request.body()
        return JSONResponse({"code": 0, "message": "ok"})

    return Starlette(routes=[Route("/callbacks/vod", ok, methods=["POST"])])


def full_app() -> Starlette:
    from orchestrator.app import create_app
    from orchestrator.config import load_settings

    return create_app(load_settings())


def receive_only_app() -> Starlette:
    """vodflow applying nothing: callbacks are authenticated, read, committed to the inbox in
    groups and answered, and left pending (the runner does not run): the receiving half alone."""
    app = full_app()
    services = app.state.services
    services.writer.apply = lambda conn, received, now: lambda: None

    async def idle() -> None:
        await asyncio.Event().wait()

    services.runner.serve = idle
    return app


async def populate(url: str, runs: int) -> list[bytes]:
    """Runs waiting for two tasks each; returns the callback bodies that complete them."""
    from orchestrator.registry import versions
    from orchestrator.spec import version_of

    spec = parse_workflow(WORKFLOW)
    version = version_of(spec)
    db = Database(url)
    now = datetime.now(UTC)
    bodies: list[bytes] = []

    def make(conn: sa.Connection, first: int, last: int) -> None:
        if first == 0:
            conn.execute(
                sa.insert(versions),
                [
                    {
                        "version": version,
                        "name": "bench",
                        "path": "-",
                        "source": WORKFLOW,
                        "loaded_at": now,
                    }
                ],
            )
        for n in range(first, last):
            run_id = f"run_bench_{n:08d}"
            file_id = f"52858907800{n:08d}"
            state = m.new_run(run_id, spec, version, {"fileId": file_id}, now)
            create_run(conn, state, {"transcode": "process"}, dedup_key=None)
            d1 = m.decide(spec, state, m.Trigger(), now)
            save_decision(conn, state, d1, now=now)
            tasks = (
                TaskRef(task_id=f"transcode-{n:032x}", kind="transcode"),
                TaskRef(task_id=f"CreateImageSprite-{n:032x}", kind="imageSprite"),
            )
            submitted = m.SubmitSucceeded(step="transcode", attempt=1, tasks=tasks)
            d2 = m.decide(spec, d1.state, submitted, now)
            save_decision(conn, d1.state, d2, now=now)
            bodies.append(_transcode(tasks[0].task_id, file_id))
            bodies.append(_sprite(tasks[1].task_id, file_id))
        conn.execute(sa.text("DELETE FROM outbox"))
        conn.execute(sa.text("DELETE FROM timers"))

    for first in range(0, runs, 1000):
        await db.write(make, first, min(first + 1000, runs))
    await db.close()
    random.Random(7).shuffle(bodies)
    return bodies + bodies[::10]


def _transcode(task_id: str, file_id: str) -> bytes:
    return json.dumps(
        {
            "version": "4.0",
            "eventType": "TranscodeComplete",
            "data": {
                "status": 0,
                "message": "",
                "vodTaskId": task_id,
                "fileId": file_id,
                "duration": 600,
                "playSet": [
                    {
                        "url": f"http://vod.example/{file_id}/f20.mp4",
                        "definition": 20,
                        "vbitrate": 300000,
                        "vheight": 480,
                        "vwidth": 854,
                    }
                ],
            },
        }
    ).encode()


def _sprite(task_id: str, file_id: str) -> bytes:
    return json.dumps(
        {
            "version": "4.0",
            "eventType": "CreateImageSpriteComplete",
            "data": {
                "status": 0,
                "message": "",
                "vodTaskId": task_id,
                "fileId": file_id,
                "definition": 10,
                "totalCount": 60,
                "imageSpriteUrl": [f"http://vod.example/{file_id}/sprite/1.jpg"],
                "webVttUrl": f"http://vod.example/{file_id}/sprite/sprite.vtt",
            },
        }
    ).encode()


class Server:
    def __init__(self, factory: str, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                factory,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )

    async def ready(self) -> None:
        for _ in range(300):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used (user + system), where /proc tells it."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> str | None:
        """The server process's resident memory now and at its peak, where /proc tells it."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        kib = dict(line.split(":", 1) for line in status.splitlines() if line.startswith("Vm"))
        now, peak = (int(kib[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM"))
        return f"resident {now} MiB (peak {peak})"


class CpuWatch:
    """How many cores the server process and this load generator kept busy over a stretch: a
    server near 1.00 is bound by one core (the GIL), whatever the machine has free."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.wall = time.monotonic()
        self.ours = time.process_time()
        self.theirs = server.cpu_seconds()

    def report(self, requests: int) -> str:
        """Cores kept busy, and the server's CPU time per request: the cost of one callback,
        which a slower or busier machine changes far less than the rates."""
        wall = time.monotonic() - self.wall
        now = self.server.cpu_seconds()
        ours = (time.process_time() - self.ours) / wall
        if now is None or self.theirs is None:
            return f"load generator {ours:.2f} cores"
        used = now - self.theirs
        each = used / requests * 1e6
        memory = self.server.memory()
        return (
            f"server {used / wall:.2f} cores, {each:.0f} µs CPU per request"
            + (f", {memory}" if memory else "")
            + f"; load generator {ours:.2f} cores, of {os.cpu_count()}"
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_applied(url: str, expected: int) -> float:
    """Wait until every event is stored and none is pending; return when."""
    db = Database(url)
    inbox = InboxEvent.__table__  # type: ignore[attr-defined]
    while True:
        async with db.read() as conn:
            pending = (
                await conn.execute(sa.select(sa.func.count()).where(inbox.c.status == "pending"))
            ).scalar_one()
            total = (await conn.execute(sa.select(sa.func.count()).select_from(inbox))).scalar_one()
        if pending == 0 and total >= expected:
            break
        await asyncio.sleep(0.05)
    await db.close()
    return time.time()


async def measure_full(
    workdir: Path,
    runs: int,
    connections: int,
    rate: float | None,
    *,
    factory: str = "bench.ingest:full_app",
    until_applied: bool = True,
    postgres: str | None = None,
) -> tuple[loadgen.Result, float]:
    """The load generator's result, and the rate until no event is pending (or, with
    ``until_applied=False`` for an app that leaves them pending, the answered rate).
    vodflow's database is a SQLite file, or a fresh schema of the ``postgres`` database."""
    data = workdir / f"data-{time.time_ns()}"
    data.mkdir()
    with fresh_database(data, postgres) as url:
        return await _measure_full(data, url, runs, connections, rate, factory, until_applied)


@contextlib.contextmanager
def fresh_database(data: Path, postgres: str | None) -> Iterator[str]:
    """A SQLite file in ``data``, or a new schema of ``postgres`` dropped afterwards."""
    if postgres is None:
        yield f"sqlite:///{data / 'vodflow.db'}"
        return
    schema = f"bench_{data.name.replace('-', '_')}"
    admin = sa.create_engine(postgres.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{postgres}{'&' if '?' in postgres else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


async def _measure_full(
    data: Path,
    url: str,
    runs: int,
    connections: int,
    rate: float | None,
    factory: str,
    until_applied: bool,
) -> tuple[loadgen.Result, float]:
    migrate.upgrade(url)
    wf = data / "workflows"
    wf.mkdir()
    (wf / "bench.yaml").write_text(WORKFLOW)
    bodies = await populate(url, runs)
    unique = len(bodies) - len(bodies[::10]) + 0
    port = free_port()
    env = {
        "VODFLOW_DATA_DIR": str(data),
        "VODFLOW_DATABASE_URL": url,
        "VODFLOW_WORKFLOWS": str(wf),
        "VODFLOW_PORT": str(port),
        "VODFLOW_ENGINE": "false",
        "VODFLOW_VOD_ENDPOINT": "http://127.0.0.1:9/v2/index.php",
        "VODFLOW_VOD_SECRET_ID": "AKIDbench",
        "VODFLOW_VOD_SECRET_KEY": "bench",
        "VODFLOW_CALLBACK_TOKEN": TOKEN,
        "VODFLOW_LOG_LEVEL": "WARNING",
    }
    server = Server(factory, port, env)
    try:
        await server.ready()
        start = time.time()
        watch = CpuWatch(server)
        result = await loadgen.run(
            "127.0.0.1",
            port,
            f"/callbacks/vod?token={TOKEN}",
            bodies,
            connections=connections,
            rate=rate,
        )
        done = await wait_applied(url, unique) if until_applied else None
        result.cpu = watch.report(len(result.latencies))
    finally:
        server.stop()
    return result, result.rate if done is None else len(bodies) / (done - start)


async def measure_bare(bodies: list[bytes], connections: int) -> loadgen.Result:
    port = free_port()
    server = Server("bench.ingest:bare_app", port, {})
    try:
        await server.ready()
        watch = CpuWatch(server)
        result = await loadgen.run(
            "127.0.0.1", port, "/callbacks/vod", bodies, connections=connections
        )
        result.cpu = watch.report(len(result.latencies))
        return result
    finally:
        server.stop()


async def sweep_cost(workdir: Path, rows: int) -> float:
    url = f"sqlite:///{workdir / f'sweep-{rows}.db'}"
    migrate.upgrade(url)
    db = Database(url)
    tasks = TaskRow.__table__  # type: ignore[attr-defined]
    runs = Run.__table__  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    later = now + timedelta(days=1)
    run = {"id": "r", "workflow": "w", "version": "v", "status": "waiting", "context": {}}
    await db.write(
        lambda conn: conn.execute(runs.insert(), [{**run, "created_at": now, "updated_at": now}])
    )
    chunk = 50_000
    for start in range(0, rows, chunk):
        values = [
            {
                "task_id": f"transcode-{n:032x}",
                "folded_id": f"transcode-{n:032x}",
                "run_id": "r",
                "step": "s",
                "position": 0,
                "attempt": 1,
                "kind": "transcode",
                "awaited": True,
                # most tasks are finished; 500 of the waiting ones are due now
                "status": "waiting" if n % 20 == 0 else "succeeded",
                "submitted_at": now,
                "expected_at": now,
                "next_poll_at": (now - timedelta(seconds=1))
                if n % 20 == 0 and n < 20 * 500
                else later,
                "polls": 0,
            }
            for n in range(start, min(start + chunk, rows))
        ]
        await db.write(lambda conn, v=values: conn.execute(tasks.insert(), v))
    timings = []

    def sweep(conn: sa.Connection) -> list[dict[str, object]]:
        t0 = time.perf_counter()
        due = claim_due_polls(conn, "bench", now, timedelta(seconds=0), 500)
        timings.append(time.perf_counter() - t0)
        conn.rollback()
        return due

    for _ in range(20):
        found = await db.write(sweep)
    await db.close()
    assert len(found) == 500, len(found)
    return sorted(timings)[len(timings) // 2]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", type=int, default=10_000, help="runs (2 callbacks each, +10%% resends)"
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sweep-rows", type=int, nargs=2, default=[10_000, 1_000_000])
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run vodflow on a fresh schema of this PostgreSQL database instead of SQLite",
    )
    args = parser.parse_args()
    database = "SQLite" if args.postgres is None else "PostgreSQL"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        resends = args.runs * 2 // 10
        print(
            f"callbacks: {args.runs * 2} (+{resends} resends), {args.connections} connections, "
            f"vodflow on {database}"
        )
        full, full_rate = await measure_full(
            workdir, args.runs, args.connections, None, postgres=args.postgres
        )
        bare = await measure_bare([b'{"x":1}'] * len(full.latencies), args.connections)
        print(f"bare handler      : {bare.summary()}")
        print(f"vodflow answered  : {full.summary()}")
        print(
            f"vodflow full path : {full_rate:8.0f} callbacks/s until the last transition committed"
        )
        print(f"ratio full path / bare: {full_rate / bare.rate:.2f}  (goal >= 0.40)")
        received, _ = await measure_full(
            workdir,
            args.runs,
            args.connections,
            None,
            factory="bench.ingest:receive_only_app",
            until_applied=False,
            postgres=args.postgres,
        )
        print(
            f"receiving alone   : {received.summary()}  (nothing applied; "
            f"{received.rate / bare.rate:.2f} of bare)"
        )
        half = full_rate / 2
        paced, _ = await measure_full(
            workdir, args.runs // 2, args.connections, half, postgres=args.postgres
        )
        print(f"at half the full-path rate ({half:.0f}/s): {paced.summary()}  (goal p99 < 50 ms)")
        for rows in args.sweep_rows:
            cost = await sweep_cost(workdir, rows)
            print(f"sweep (500 due of {rows:>9,} task rows): {cost * 1000:6.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
