"""The durable store on SQLite and PostgreSQL: migrations, runs saved and loaded through
machine decisions, history, outbox and timers rows."""

from __future__ import annotations

import asyncio
import itertools
import stat
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from orchestrator import machine as m
from orchestrator.spec import parse_workflow
from orchestrator.store import driver, migrate, views, windows
from orchestrator.store.db import Database, sync_url
from orchestrator.store.runs import create_run, load_run, run_history, save_decision
from orchestrator.store.tables import OutboxCommand, metadata

WORKFLOW = parse_workflow(
    """
name: wf
triggers: [{type: recording.finished}]
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    timeout: 1h
  - name: tell
    notify: {url: "http://hooks.example/x"}
"""
)
KINDS = {s.name: s.kind for s in WORKFLOW.steps}


def test_migrations_match_the_models_and_go_down_again(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = sa.create_engine(sync_url(database_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        tables = set(sa.inspect(conn).get_table_names())
    assert {"runs", "steps", "tasks", "inbox_events", "outbox", "timers", "history"} <= tables
    command.downgrade(migrate.alembic_config(database_url), "base")
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    engine = sa.create_engine(sync_url(sqlite_url))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


async def test_the_sqlite_writer_checkpoints_in_the_background_and_caches_more(
    sqlite_url: str,
) -> None:
    """Every connection syncs each commit to the disk. The single writer connection neither
    checkpoints on commit nor rereads index pages a small cache dropped, and cuts a WAL that
    grew back to 64 MiB when it starts over; the others keep SQLite's defaults."""
    migrate.upgrade(sqlite_url)
    db = Database(sqlite_url)

    def pragmas(conn: sa.Connection) -> tuple[int, int, int, int]:
        autocheckpoint = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        cache = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        limit = conn.exec_driver_sql("PRAGMA journal_size_limit").scalar()
        synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        return int(autocheckpoint or 0), int(cache or 0), int(limit or 0), int(synchronous or 0)

    full = 2  # PRAGMA synchronous=FULL: each commit synced before it returns
    try:
        assert await db.write(pragmas) == (0, -65536, 64 * 1024 * 1024, full)
        assert await db.query(pragmas) == (1000, -2000, -1, full)
        async with db.transaction() as conn:
            assert await conn.run_sync(pragmas) == (1000, -2000, -1, full)
    finally:
        await db.close()


async def test_the_sqlite_wal_restarts_under_writes_that_never_pause(sqlite_url: str) -> None:
    """A background checkpoint alone never lets the WAL start over while the writer commits
    without a pause (each commit lands after the checkpoint began, so the writer never finds
    the WAL copied whole): the file would grow for as long as the burst lasts. Once the WAL
    holds more than ``wal_restart_frames``, the writer copies the rest itself between
    transactions and the WAL starts over from its beginning."""
    migrate.upgrade(sqlite_url)
    db = Database(sqlite_url)
    db.wal_restart_frames = 200
    wal = Path(sqlite_url.removeprefix("sqlite:///") + "-wal")

    def table(conn: sa.Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE filler (id INTEGER PRIMARY KEY, pad TEXT)")

    def fill(conn: sa.Connection) -> None:
        conn.exec_driver_sql(
            "INSERT INTO filler (pad) SELECT printf('%.2000c', 'x') FROM "
            "(SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4)"
        )

    stop = False

    async def writer() -> None:
        while not stop:
            await db.write(fill)

    try:
        await db.write(table)
        writers = [asyncio.create_task(writer()) for _ in range(3)]
        frames = []
        for _ in range(30):
            await asyncio.sleep(0.05)
            frames.append(await db.checkpoint())
        stop = True
        await asyncio.gather(*writers)
        rows = await db.query(
            lambda conn: conn.exec_driver_sql("SELECT count(*) FROM filler").scalar()
        )
        # Before closing: the last connection removes the WAL.
        wal_size = (await asyncio.to_thread(wal.stat)).st_size
    finally:
        await db.close()
    assert rows is not None
    assert rows > 2000, rows  # the writers kept writing meanwhile
    # The WAL started over (its frame count fell) and its file holds far less than the
    # 2 000 bytes per row written through it.
    assert any(after < before for before, after in itertools.pairwise(frames)), frames
    assert wal_size < rows * 2000 // 4, (wal_size, rows)


async def _start(db: Database, now: datetime, run_id: str = "run1") -> m.RunState:
    state = m.new_run(run_id, WORKFLOW, "v1", {"fileId": "f1"}, now)

    def start(conn: sa.Connection) -> m.RunState:
        assert create_run(conn, state, KINDS, dedup_key=f"wf/{run_id}", file_id="f1")
        decision = m.decide(WORKFLOW, state, m.Trigger(event="e"), now)
        save_decision(conn, state, decision, now=now)
        return decision.state

    return await db.write(start)


async def _apply(db: Database, run_id: str, event: m.Input, now: datetime) -> m.Decision:
    def apply(conn: sa.Connection) -> m.Decision:
        before = load_run(conn, run_id, for_update=True)
        assert before is not None
        decision = m.decide(WORKFLOW, before, event, now)
        save_decision(conn, before, decision, now=now)
        return decision

    return await db.write(apply)


async def test_a_run_round_trips_through_the_database(db: Database, now: datetime) -> None:
    started = await _start(db, now)
    assert await db.query(load_run, "run1") == started

    later = now + timedelta(seconds=2)
    submitted = await _apply(
        db,
        "run1",
        m.SubmitSucceeded(
            step="transcode",
            attempt=1,
            tasks=(
                m.TaskRef(task_id="Transcode-abc", kind="transcode"),
                m.TaskRef(task_id="sprite-1", kind="imageSprite"),
            ),
        ),
        later,
    )
    event = m.TaskEvent(
        task_id="Transcode-abc",
        event_type="TranscodeComplete",
        event_key="k1",
        success=True,
        outputs={"play": [{"url": "http://x/f20.mp4", "definition": 20}], "fileId": "f1"},
    )
    decided = await _apply(db, "run1", event, later + timedelta(seconds=5))
    loaded = await db.query(load_run, "run1")
    task = await db.query(
        lambda conn: (
            conn.execute(sa.text("SELECT * FROM tasks WHERE task_id = 'Transcode-abc'"))
            .mappings()
            .one()
        )
    )
    history = await db.query(run_history, "run1")
    assert loaded == decided.state
    assert submitted.state.status is m.RunStatus.AWAITING_CALLBACK
    assert task["status"] == "succeeded"
    assert task["folded_id"] == "transcode-abc"
    assert task["next_poll_at"] is None
    assert [h["input"] for h in history] == ["trigger", "submit_succeeded", "task_event"]
    assert history[0]["from_status"] == "pending"
    assert history[1]["to_status"] == "awaiting_callback"


async def test_commands_become_outbox_rows_and_timers(db: Database, now: datetime) -> None:
    await _start(db, now)
    async with db.read() as conn:
        outbox = (await conn.execute(sa.select(OutboxCommand.__table__))).mappings().all()
        timers = (await conn.execute(sa.text("SELECT * FROM timers"))).mappings().all()
    assert [(o["kind"], o["idempotency_key"], o["status"]) for o in outbox] == [
        ("submit", "run1/transcode/1/1", "pending")
    ]
    assert outbox[0]["payload"]["request"] == {"fileId": "f1", "procedure": "TranscodeAndSprite"}
    assert [(t["kind"], t["status"]) for t in timers] == [("run_timeout", "pending")]

    await _apply(db, "run1", m.Cancel(actor="ops"), now + timedelta(seconds=1))
    async with db.read() as conn:
        statuses = (await conn.execute(sa.text("SELECT status FROM timers"))).scalars().all()
        run = (await conn.execute(sa.text("SELECT status, error FROM runs"))).one()
    assert statuses == ["cancelled"]
    assert tuple(run) == ("cancelled", "cancelled by ops")


async def test_one_run_per_dedup_key(db: Database, now: datetime) -> None:
    await _start(db, now)
    again = m.new_run("run2", WORKFLOW, "v1", {"fileId": "f1"}, now)
    assert not await db.write(create_run, again, KINDS, dedup_key="wf/run1")
    async with db.read() as conn:
        assert (await conn.execute(sa.text("SELECT count(*) FROM runs"))).scalar() == 1


async def test_inbox_groups_store_each_dedup_key_once(db: Database, now: datetime) -> None:
    """A group's rows go in with one statement that returns their ids: a key stored before,
    and the second copy of a key within the group, come back as None (duplicates); rows with
    no key are always stored. More rows than one statement takes are split, ids still right."""
    from orchestrator.store.queues import NewInboxEvent, insert_inbox

    def event(key: str | None, body: str = "{}") -> NewInboxEvent:
        return NewInboxEvent(source="vod", event_type="TranscodeComplete", dedup_key=key, body=body)

    (first,) = await db.write(insert_inbox, [event("k1")], now)
    group = [event("k2", "a"), event("k1"), event(None), event("k2", "b"), event("k3")]
    many = [event(f"m{n}") for n in range(500)]  # 10 columns each: more than one statement
    ids = await db.write(insert_inbox, group + many, now)
    assert first is not None
    assert ids[1] is None
    assert ids[3] is None
    new = [i for i in ids if i is not None]
    assert len(new) == len(set(new)) == 503
    assert first not in new
    async with db.read() as conn:
        rows = (await conn.execute(sa.text("SELECT id, dedup_key, body FROM inbox_events"))).all()
    stored = {row.id: (row.dedup_key, row.body) for row in rows}
    assert len(stored) == 504
    assert stored[ids[0]] == ("k2", "a")
    assert stored[ids[2]] == (None, "{}")
    assert stored[ids[4]][0] == "k3"
    assert [stored[i][0] for i in ids[5:]] == [f"m{n}" for n in range(500)]


async def test_inbox_pages_by_task_and_file_read_an_index(db: Database, now: datetime) -> None:
    """The dashboard's inbox filters find their rows, and on SQLite by an index rather than by
    walking the whole inbox newest first (which grows with the table)."""
    from orchestrator.store import views
    from orchestrator.store.queues import NewInboxEvent, insert_inbox

    events = [
        NewInboxEvent(
            source="vod",
            event_type="TranscodeComplete",
            dedup_key=f"k{n}",
            body="{}",
            task_id=f"transcode-{n % 7}",
            file_id=f"file-{n % 5}",
        )
        for n in range(70)
    ]
    await db.write(insert_inbox, events, now)

    def page_and_plan(conn: sa.Connection, **where: str) -> tuple[list[int], str]:
        statements: list[tuple[str, Any]] = []

        def seen(_c: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
            statements.append((statement, params))

        sa.event.listen(conn, "before_cursor_execute", seen)
        try:
            rows = views.list_inbox(conn, limit=5, **where)  # type: ignore[arg-type]
        finally:
            sa.event.remove(conn, "before_cursor_execute", seen)
        plan = ""
        if conn.dialect.name == "sqlite":
            statement, params = statements[-1]
            found = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
            plan = " / ".join(str(row[-1]) for row in found)
        return [row["id"] for row in rows], plan

    for where, matches in (
        ({"task_id": "transcode-3"}, [n for n in range(70) if n % 7 == 3]),
        ({"file_id": "file-2"}, [n for n in range(70) if n % 5 == 2]),
    ):
        ids, plan = await db.query(page_and_plan, **where)
        assert len(ids) == 5
        assert ids == sorted(ids, reverse=True)
        async with db.read() as conn:
            keys = (
                await conn.execute(
                    sa.text("SELECT dedup_key FROM inbox_events WHERE id IN :ids").bindparams(
                        sa.bindparam("ids", expanding=True)
                    ),
                    {"ids": ids},
                )
            ).scalars()
            assert {int(k[1:]) for k in keys} == set(matches[-5:])
        if db.is_sqlite:
            assert "USING INDEX" in plan, (where, plan)
            assert "SCAN inbox_events" not in plan, (where, plan)


async def test_a_failed_transaction_leaves_nothing_behind(db: Database, now: datetime) -> None:
    state = m.new_run("run1", WORKFLOW, "v1", {"fileId": "f1"}, now)

    def crash(conn: sa.Connection) -> None:
        create_run(conn, state, KINDS, dedup_key="k")
        raise RuntimeError("crash between statements")

    with pytest.raises(RuntimeError):
        await db.write(crash)
    async with db.read() as conn:
        assert (await conn.execute(sa.text("SELECT count(*) FROM runs"))).scalar() == 0
        assert (await conn.execute(sa.text("SELECT count(*) FROM steps"))).scalar() == 0


async def test_rows_written_on_the_driver_read_back_through_core_and_back(db: Database) -> None:
    """The hot path's statements bypass SQLAlchemy's types (``store.driver``): what they write
    must read back identically through Core, and what Core writes through them."""
    from orchestrator.store.tables import Run, TaskRow

    runs, tasks = Run.__table__, TaskRow.__table__  # type: ignore[attr-defined]
    at = datetime(2026, 11, 30, 21, 7, 5, 120, tzinfo=timezone(timedelta(hours=8)))
    utc = at.astimezone(UTC)
    task = {
        "run_id": "r1", "step": "s", "position": 0, "attempt": 1, "kind": "transcode",
        "status": "waiting", "submitted_at": at, "expected_at": utc.replace(microsecond=0),
        "finished_at": None, "awaited": False, "polls": 0,
        "outputs": {"url": "http://x/视频.mp4", "sizes": [1, 2.5, None], "ok": True},
    }  # fmt: skip

    def write(conn: sa.Connection) -> None:
        conn.execute(
            runs.insert(),
            {"id": "r1", "workflow": "w", "version": "v", "status": "waiting", "context": {},
             "created_at": at, "updated_at": at},
        )  # fmt: skip
        driver.insert_many(conn, tasks, [{**task, "task_id": "t-driver", "folded_id": "t"}])
        conn.execute(tasks.insert(), {**task, "task_id": "t-core", "folded_id": "t"})
        driver.insert_many(
            conn,
            tasks,
            [{**task, "task_id": "t-driver", "folded_id": "t"}],
            ignore_conflict_on=["task_id"],
        )  # a second copy is ignored
        driver.update_many(conn, tasks, ["task_id"], [{"task_id": "t-core", "polls": 3}])

    await db.write(write)

    def read(conn: sa.Connection) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        core = [
            dict(r) for r in conn.execute(sa.select(tasks).order_by(tasks.c.task_id)).mappings()
        ]
        raw = driver.select_where_in(conn, tasks, "run_id", ["r1"], order_by=["task_id"])
        return core, raw

    core, raw = await db.query(read)
    assert core == raw
    assert [r["task_id"] for r in core] == ["t-core", "t-driver"]
    for row in core:
        assert row["submitted_at"] == utc
        assert row["submitted_at"].tzinfo == UTC  # type: ignore[attr-defined]
        assert row["outputs"] == task["outputs"]
        assert row["awaited"] is False
    assert [r["polls"] for r in core] == [3, 0]
    if db.is_sqlite:  # text another writer may have left: no microseconds, or an offset
        for text in ("2026-11-30 13:07:05", "2026-11-30 21:07:05+08:00"):
            sql = f"UPDATE tasks SET finished_at = '{text}' WHERE task_id = 't-core'"
            await db.write(lambda conn, sql=sql: conn.exec_driver_sql(sql))
            (row,) = await db.query(
                lambda conn: driver.select_where_in(conn, tasks, "task_id", ["t-core"])
            )
            assert row["finished_at"] == datetime(2026, 11, 30, 13, 7, 5, tzinfo=UTC)
    with pytest.raises(KeyError, match="table tasks has no column nope"):
        await db.query(lambda conn: driver.select_where_in(conn, tasks, "nope", ["x"]))


async def test_timer_commands_keep_their_order_when_grouped(db: Database, now: datetime) -> None:
    """Consecutive timer commands share a statement; a cancel still cancels only the timers
    scheduled before it, and one scheduled after it stays pending."""
    from orchestrator.store.runs import _timer_commands

    await _start(db, now)
    step = {"run_id": "run1", "timer": "step_timeout", "step": "transcode", "attempt": 1}
    commands: list[m.ScheduleTimer | m.CancelTimers] = [
        m.ScheduleTimer(**step, due=now),  # type: ignore[arg-type]
        m.ScheduleTimer(**step, due=now + timedelta(seconds=1)),  # type: ignore[arg-type]
        m.CancelTimers(run_id="run1", step="transcode"),
        m.ScheduleTimer(**step, due=now + timedelta(seconds=2)),  # type: ignore[arg-type]
        m.CancelTimers(run_id="run1", step="tell"),
    ]
    await db.write(_timer_commands, commands)
    query = "SELECT kind, status FROM timers ORDER BY id"
    rows = await db.query(lambda conn: [tuple(r) for r in conn.execute(sa.text(query))])
    assert rows == [
        ("run_timeout", "pending"),
        ("step_timeout", "cancelled"),
        ("step_timeout", "cancelled"),
        ("step_timeout", "pending"),
    ]


async def test_timer_commands_of_different_runs_share_statements_in_order(
    db: Database, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interleaved commands of many runs (as a group of callbacks makes them) take one
    statement per kind and round, and each run's own commands still apply in order."""
    from orchestrator.store.runs import _timer_commands

    run_ids = [f"run{n}" for n in range(1, 5)]
    for run_id in run_ids:
        await _start(db, now, run_id=run_id)
    commands: list[m.ScheduleTimer | m.CancelTimers] = []
    for run_id in run_ids:  # each run: schedule, cancel it, schedule again
        step = {"run_id": run_id, "timer": "step_timeout", "step": "transcode", "attempt": 1}
        commands.append(m.ScheduleTimer(**step, due=now))  # type: ignore[arg-type]
    for run_id in run_ids:
        commands.append(m.CancelTimers(run_id=run_id, step="transcode"))
        step = {"run_id": run_id, "timer": "step_timeout", "step": "transcode", "attempt": 2}
        commands.append(m.ScheduleTimer(**step, due=now))  # type: ignore[arg-type]
    statements: list[str] = []
    executemany = driver._executemany

    def counted(conn: sa.Connection, text: str, params: list[tuple[Any, ...]]) -> None:
        statements.append(text)
        executemany(conn, text, params)

    monkeypatch.setattr(driver, "_executemany", counted)
    await db.write(_timer_commands, commands)
    assert len(statements) == 3  # schedule, cancel, schedule
    query = "SELECT run_id, attempt, status FROM timers WHERE kind = 'step_timeout' ORDER BY id"
    rows = await db.query(lambda conn: [tuple(r) for r in conn.execute(sa.text(query))])
    assert sorted(rows) == sorted(
        [(run_id, 1, "cancelled") for run_id in run_ids]
        + [(run_id, 2, "pending") for run_id in run_ids]
    )


def test_a_recording_arriving_as_its_session_closes_opens_the_next_one(pg_url: str) -> None:
    """On PostgreSQL a replica's session sweep can close the stream's open window while a
    recording is joining it (the insert saw it open, the lock waits for the sweep): the
    recording opens the next session instead of failing with no window to join, unless the
    session that closed held it already."""
    migrate.upgrade(pg_url)
    engine = sa.create_engine(sync_url(pg_url))
    then = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    quiet = timedelta(minutes=1)
    session: dict[str, Any] = {"workflow": "wf", "stream_id": "s", "quiet": quiet}
    session["max_length"] = timedelta(hours=1)
    with engine.begin() as conn:
        closing = windows.add_segment(conn, segment={"fileId": "a"}, now=then, **session)
    # "b" joins as "a"'s session closes: it opens the next session. Then "b" is announced
    # again (the live service's callback after VOD's NewFileUpload) as that session closes:
    # it is not collected again, so it opens no third session and starts no second run.
    for round_, expected_new in ((1, True), (2, False)):
        now = then + 2 * round_ * quiet
        joined: list[windows.Collected] = []
        failed: list[BaseException] = []

        def join(now: datetime = now, joined: list = joined, failed: list = failed) -> None:
            try:
                with engine.begin() as conn:
                    segment = {"fileId": "b"}
                    joined.append(windows.add_segment(conn, segment=segment, now=now, **session))
            except BaseException as exc:
                failed.append(exc)

        with engine.connect() as sweep:
            with sweep.begin():
                (due,) = windows.claim_due_windows(sweep, now, 10)
                joining = threading.Thread(target=join)
                joining.start()
                time.sleep(0.5)  # the recording's lock now waits for the sweep's
                windows.close_window(sweep, due["id"], None)
            joining.join(10)
        assert failed == []
        (collected,) = joined
        if expected_new:
            assert collected.window_id != closing.window_id
            assert (collected.added, collected.ended) == (True, None)
            closing = collected
        else:
            assert collected == windows.Collected(closing.window_id, added=False, ended="closed")
    with engine.connect() as conn:
        still_open = conn.execute(
            sa.text("SELECT count(*) FROM stream_windows WHERE status = 'open'")
        ).scalar_one()
    engine.dispose()
    assert still_open == 0  # the window the second announcement opened is gone again


async def test_tasks_nothing_waits_on_any_more_are_not_late(db: Database, now: datetime) -> None:
    """A task of an attempt that timed out, or of a run that was cancelled, stays ``waiting``
    (VOD may never report on it), but it neither makes its run ``overdue`` nor counts among the
    dashboard's stalled tasks: only the tasks of the attempt a step awaits do."""
    await _start(db, now)
    first = (m.TaskRef(task_id="transcode-1", kind="transcode"),)
    await _apply(db, "run1", m.SubmitSucceeded(step="transcode", attempt=1, tasks=first), now)
    timed_out = now + timedelta(hours=1, seconds=1)
    fired = m.TimerFired(timer="step_timeout", step="transcode", attempt=1)
    retrying = (await _apply(db, "run1", fired, timed_out)).state
    retry_at = retrying.steps[0].retry_at
    assert retry_at is not None
    await _apply(db, "run1", m.TimerFired(timer="retry", step="transcode", attempt=1), retry_at)
    second = (m.TaskRef(task_id="transcode-2", kind="transcode"),)
    await _apply(db, "run1", m.SubmitSucceeded(step="transcode", attempt=2, tasks=second), retry_at)
    await _start(db, now, "run2")
    cancelled = (m.TaskRef(task_id="transcode-3", kind="transcode"),)
    await _apply(db, "run2", m.SubmitSucceeded(step="transcode", attempt=1, tasks=cancelled), now)
    await _apply(db, "run2", m.Cancel(actor="ops"), now + timedelta(minutes=1))

    async def late(at: datetime) -> tuple[list[str], int]:
        overdue = await db.query(views.list_runs, health=["overdue"], now=at)
        stats = await db.query(views.stats, at)
        return [r["id"] for r in overdue], stats["stalled_tasks"]

    assert await late(retry_at + timedelta(minutes=1)) == ([], 0)
    assert await late(retry_at + timedelta(minutes=11)) == (["run1"], 1)


@pytest.mark.usefixtures("clean_env")
async def test_the_data_directory_vodflow_creates_is_private(tmp_path: Path) -> None:
    """It holds callbacks' raw bodies (the SQLite file) and the keys: only its owner may enter.
    A directory that exists keeps the mode it has."""
    from orchestrator.config import load_settings
    from orchestrator.keys import load_keys

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    data = tmp_path / "new" / "data"
    migrate.upgrade(f"sqlite:///{data / 'vodflow.db'}")  # `vodflow db upgrade` comes first
    assert mode(data) == 0o700
    fresh = tmp_path / "fresh"
    load_keys(load_settings(data_dir=fresh))  # or `vodflow serve` writing secrets.json
    assert mode(fresh) == 0o700
    assert mode(fresh / "secrets.json") == 0o600
    database = Database(f"sqlite:///{tmp_path / 'db' / 'vodflow.db'}")
    await database.close()
    assert mode(tmp_path / "db") == 0o700

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    migrate.upgrade(f"sqlite:///{shared / 'vodflow.db'}")
    load_keys(load_settings(data_dir=shared))
    assert mode(shared) == 0o755
