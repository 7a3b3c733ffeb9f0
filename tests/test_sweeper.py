"""The sweeper's jobs, driven directly on SQLite and PostgreSQL: orphans rematched after a race,
due timers, expired outbox leases, quiet sessions, and the sweeper watching itself."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa

from orchestrator import machine as m
from orchestrator.actions import Interrupted
from orchestrator.registry import Registry, versions
from orchestrator.runner import GIVE_UP_AFTER, Batch, Runner
from orchestrator.store import db as db_module
from orchestrator.store import jobs as job_store
from orchestrator.store import queues
from orchestrator.store.db import Database
from orchestrator.store.queues import NewInboxEvent
from orchestrator.sweeper import Sweeper
from orchestrator.vod.errors import ErrorClass, error_for_code
from orchestrator.vod.responses import PullEventResponse
from tests.fakevod import procedure_state_changed, transcode_complete

WORKFLOW = """
name: wf
triggers: [{type: manual}, {type: stream.session, quiet: 1m}]
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: P}
    timeout: 10m
    verify: false
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def parts(db: Database, tmp_path: Path) -> tuple[Runner, Sweeper, Clock]:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    registry = Registry.from_paths([tmp_path / "wf.yaml"])
    clock = Clock()
    runner = Runner(db, registry, actions=None, clock=clock)  # type: ignore[arg-type]
    sweeper = Sweeper(db, runner, client=None, interval=1.0)  # type: ignore[arg-type]
    return runner, sweeper, clock


async def _waiting_run(
    db: Database, runner: Runner, clock: Clock, task_id: str = "transcode-1", file_id: str = "f1"
) -> str:
    batch = Batch()
    workflow = runner.registry.current["wf"]
    await db.write(runner.registry.record_versions, clock.now)

    def start(conn: sa.Connection) -> str:
        run_id = runner.start_run(
            conn, workflow, {"fileId": file_id}, dedup_key=None, now=clock.now, batch=batch
        )
        assert run_id is not None
        return run_id

    run_id = await db.write(start)
    tasks = (m.TaskRef(task_id=task_id, kind="transcode"),)
    await runner.apply(run_id, m.SubmitSucceeded(step="transcode", attempt=1, tasks=tasks))
    return run_id


async def _status(db: Database, run_id: str) -> str:
    return str(
        await db.query(
            lambda conn: conn.execute(
                sa.text("SELECT status FROM runs WHERE id = :i"), {"i": run_id}
            ).scalar_one()
        )
    )


def _orphan(body: dict[str, Any], dedup_key: str) -> NewInboxEvent:
    """A VOD callback stored as an orphan, as a runner that could not match it leaves it."""
    return NewInboxEvent(
        source="vod",
        event_type=body["eventType"],
        dedup_key=dedup_key,
        body=json.dumps(body),
        task_id=body["data"]["vodTaskId"],
        status="orphan",
    )


async def test_an_orphan_whose_task_is_known_is_applied_on_the_next_sweep(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    runner, sweeper, clock = parts
    run_id = await _waiting_run(db, runner, clock)
    # The race: the event was judged an orphan by a transaction that could not yet see the
    # task ID another had just recorded.
    event = _orphan(transcode_complete("transcode-1", "f1"), "k1")
    await db.write(queues.insert_inbox, [event], clock.now)
    found = await sweeper.rematch_orphans()
    assert found == {"rematched": 1, "unmatched": 0}
    await runner.drain_inbox()
    assert await _status(db, run_id) == "succeeded"


async def test_an_orphan_procedure_event_is_rematched_by_its_sub_tasks_ids(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    runner, sweeper, clock = parts
    run_id = await _waiting_run(db, runner, clock)
    # Same race, for the event of the procedure whose tasks the run recorded (not its own ID).
    mine = procedure_state_changed("1250000001-procedurev2-1", "f1", {"Transcode": "transcode-1"})
    other = procedure_state_changed("1250000001-procedurev2-2", "f1", {"Transcode": "transcode-2"})
    events = [_orphan(body, body["data"]["vodTaskId"]) for body in (mine, other)]
    mine_id, other_id = await db.write(queues.insert_inbox, events, clock.now)
    assert await sweeper.rematch_orphans() == {"rematched": 1, "unmatched": 0}
    await runner.drain_inbox()

    def status(event_id: int | None) -> Any:
        return lambda conn: conn.execute(
            sa.text("SELECT status, run_id, note FROM inbox_events WHERE id = :i"),
            {"i": event_id},
        ).one()

    applied = await db.query(status(mine_id))
    assert (applied.status, applied.run_id) == ("ignored", run_id)
    assert "recorded, not applied" in applied.note
    assert (await db.query(status(other_id))).status == "orphan"
    assert await _status(db, run_id) == "awaiting_callback"  # the task's own event decides


async def test_recording_tasks_wakes_the_orphan_procedure_event_naming_them(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    _, _, clock = parts
    body = procedure_state_changed("1250000001-procedurev2-1", "f1", {"Transcode": "t_1%"})
    event = _orphan(body, "k1")
    await db.write(queues.insert_inbox, [event], clock.now)
    assert await db.write(queues.wake_orphans, ["tx1x"]) == 0  # LIKE's wildcards are escaped
    assert await db.write(queues.wake_orphans, ["t_1%"]) == 1


async def test_due_timers_fire_and_fired_ones_do_not_again(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    runner, sweeper, clock = parts
    run_id = await _waiting_run(db, runner, clock)
    none = {"fired": 0, "timeouts": 0, "retries": 0, "failed": 0}
    assert await sweeper.fire_timers() == none
    clock.now += timedelta(minutes=11)
    assert await sweeper.fire_timers() == {"fired": 1, "timeouts": 1, "retries": 0, "failed": 0}
    assert await _status(db, run_id) == "retrying"
    clock.now += timedelta(hours=1)
    fired = await sweeper.fire_timers()  # the retry timer, once
    assert fired == {"fired": 1, "timeouts": 0, "retries": 1, "failed": 0}
    assert (await sweeper.fire_timers())["fired"] == 0


async def test_a_timer_that_cannot_be_applied_is_marked_failed_and_the_others_fire(
    db: Database, parts: tuple[Runner, Sweeper, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, sweeper, clock = parts
    broken_run = await _waiting_run(db, runner, clock)
    clock.now += timedelta(seconds=1)
    other_run = await _waiting_run(db, runner, clock)
    transition = runner.transition

    def flaky(conn: sa.Connection, run_id: str, *args: Any) -> Any:
        if run_id == broken_run:
            conn.exec_driver_sql("UPDATE runs SET error = 'half applied'")
            raise RuntimeError("state unreadable")
        return transition(conn, run_id, *args)

    monkeypatch.setattr(runner, "transition", flaky)
    clock.now += timedelta(minutes=11)
    assert await sweeper.fire_timers() == {"fired": 1, "timeouts": 1, "retries": 0, "failed": 1}
    assert await _status(db, other_run) == "retrying"
    assert await _status(db, broken_run) == "awaiting_callback"
    rows = await db.query(
        lambda conn: conn.execute(
            sa.text("SELECT id, run_id, status, error FROM timers WHERE kind = 'step_timeout'")
        ).all()
    )
    assert sorted(tuple(r[1:]) for r in rows) == sorted(
        [(broken_run, "failed", "RuntimeError: state unreadable"), (other_run, "fired", None)]
    )
    errors = await db.query(lambda conn: conn.execute(sa.text("SELECT error FROM runs")).all())
    assert all(error is None for (error,) in errors)  # the failed one's writes were undone
    assert (await sweeper.fire_timers())["failed"] == 0  # not tried again

    # Once the cause is fixed, an operator replays it: it fires, and only once.
    monkeypatch.setattr(runner, "transition", transition)
    (failed_id,) = [r[0] for r in rows if r[1] == broken_run]
    assert await db.write(queues.replay_timer, failed_id) is True
    assert await db.write(queues.replay_timer, failed_id) is False  # pending now, not failed
    assert await sweeper.fire_timers() == {"fired": 1, "timeouts": 1, "retries": 0, "failed": 0}
    assert await _status(db, broken_run) == "retrying"


async def test_expired_outbox_leases_are_handed_back(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    runner, sweeper, clock = parts
    await _waiting_run(db, runner, clock)  # its submit is still in the outbox, undone
    lease = timedelta(seconds=30)
    (taken,) = await db.write(queues.claim_outbox, "a-replica-that-dies", clock.now, lease, 10)
    assert taken["tries"] == 1
    assert await db.write(queues.claim_outbox, "me", clock.now, lease, 10) == []
    assert await sweeper.expire_leases() == {"expired_leases": 0}
    clock.now += timedelta(seconds=31)
    assert await sweeper.expire_leases() == {"expired_leases": 1}
    (again,) = await db.write(queues.claim_outbox, "me", clock.now, lease, 10)
    assert (again["idempotency_key"], again["tries"]) == (taken["idempotency_key"], 2)


class Blocking:
    """Actions whose every command waits until released (as one waiting for the VOD quota)."""

    def __init__(self) -> None:
        self.started: list[m.Command] = []
        self.release = asyncio.Event()

    async def perform(self, command: m.Command, **_: Any) -> m.Input:
        self.started.append(command)
        await self.release.wait()
        assert isinstance(command, m.Submit)
        failed = {"error_class": ErrorClass.INTERNAL, "message": "test"}
        return m.SubmitFailed(step=command.step, attempt=command.attempt, **failed)


async def _submits_waiting(db: Database, runner: Runner, clock: Clock, count: int) -> None:
    """``count`` runs whose submit waits in the outbox."""
    await db.write(runner.registry.record_versions, clock.now)
    workflow = runner.registry.current["wf"]

    def start(conn: sa.Connection) -> None:
        for n in range(count):
            context: dict[str, Any] = {"fileId": f"f{n}"}
            runner.start_run(conn, workflow, context, dedup_key=None, now=clock.now, batch=Batch())

    await db.write(start)


async def _submits_waiting_one(db: Database, runner: Runner, clock: Clock) -> str:
    """One run whose submit waits in the outbox; its ID."""
    await _submits_waiting(db, runner, clock, 1)
    rows = await db.query(lambda conn: conn.execute(sa.text("SELECT id FROM runs")).all())
    return str(rows[0][0])


async def _leases(db: Database) -> list[tuple[str, str | None, datetime | None]]:
    rows = await db.query(
        lambda conn: conn.execute(
            sa.select(queues.outbox.c.status, queues.outbox.c.lease_owner)
            .add_columns(queues.outbox.c.lease_until)
            .order_by(queues.outbox.c.id)
        ).all()
    )
    return [tuple(r) for r in rows]


async def test_a_command_waiting_in_progress_keeps_its_lease_and_a_dead_owners_is_handed_back(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """The runner renews the lease of every command it holds (waiting for the quota, say), so
    the sweeper never hands it to another replica while its owner is alive; a runner that stops
    renewing (it died) loses it after one lease."""
    runner, sweeper, clock = parts
    actions = Blocking()
    runner.actions = actions  # type: ignore[assignment]
    runner.lease = timedelta(seconds=30)
    await _submits_waiting(db, runner, clock, 1)
    assert await runner.drain_outbox() == 1
    for _ in range(100):
        if actions.started:
            break
        await asyncio.sleep(0.01)
    assert len(actions.started) == 1  # in progress: waiting
    for _ in range(5):  # far longer than the lease in all, renewed every third of it
        clock.now += timedelta(seconds=10)
        assert await runner.renew_leases() == 1
        assert await sweeper.expire_leases() == {"expired_leases": 0}
    ((status, owner, until),) = await _leases(db)
    assert (status, owner, until) == ("in_flight", runner.owner, clock.now + runner.lease)
    assert await db.write(queues.claim_outbox, "another", clock.now, runner.lease, 10) == []

    # The owner dies (stops renewing): one lease later its command is handed back.
    clock.now += timedelta(seconds=29)
    assert await sweeper.expire_leases() == {"expired_leases": 0}
    clock.now += timedelta(seconds=2)
    assert await sweeper.expire_leases() == {"expired_leases": 1}
    (taken,) = await db.write(queues.claim_outbox, "another", clock.now, runner.lease, 10)
    assert taken["tries"] == 2
    assert await runner.renew_leases() == 0  # another's now: not renewed by the old owner
    ((status, owner, _),) = await _leases(db)
    assert (status, owner) == ("in_flight", "another")
    actions.release.set()
    await runner.idle()
    ((status, owner, _),) = await _leases(db)
    assert (status, owner) == ("in_flight", "another")  # the late outcome is not recorded


class AskingFirst(Blocking):
    """Actions that ask whether the command is still wanted once released, as the VOD client
    does once the quota lets a submit go, and send only if it is."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[m.Command] = []
        self.reasons: list[str | None] = []
        self.begun = asyncio.Event()

    async def perform(self, command: m.Command, **kw: Any) -> m.Input:
        self.started.append(command)
        self.begun.set()
        await self.release.wait()
        self.reasons.append(await kw["unwanted"]())
        if self.reasons[-1] is None:
            self.sent.append(command)
        assert isinstance(command, m.Submit)
        failed = {"error_class": ErrorClass.INTERNAL, "message": "test"}
        return m.SubmitFailed(step=command.step, attempt=command.attempt, **failed)


async def _stood_still(db: Database, runner: Runner, clock: Clock) -> AskingFirst:
    """A runner holding one run's submit (waiting, as for VOD's quota) that then stood still a
    second past its 30 s lease, renewing nothing."""
    runner.lease = timedelta(seconds=30)
    actions = AskingFirst()
    runner.actions = actions  # type: ignore[assignment]
    await _submits_waiting(db, runner, clock, 1)
    assert await runner.drain_outbox() == 1
    await asyncio.wait_for(actions.begun.wait(), 10)
    clock.now += timedelta(seconds=31)
    return actions


async def test_a_command_handed_over_while_its_owner_stood_still_is_not_sent_by_it(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """A runner that stood still past its lease (a paused VM) while a command waited for VOD's
    quota must not send it when it resumes: another process has it now, and may have sent it.
    Asked right before sending, the lease is renewed when it is still the runner's, and the
    command is not sent when it is not."""
    runner, sweeper, clock = parts
    for handed_over in (False, True):
        actions = await _stood_still(db, runner, clock)
        if handed_over:
            assert await sweeper.expire_leases() == {"expired_leases": 1}
            (taken,) = await db.write(queues.claim_outbox, "another", clock.now, runner.lease, 10)
            assert taken["tries"] == 2
        actions.release.set()
        await runner.idle()
        if handed_over:
            assert actions.sent == []
            assert actions.reasons == [HANDED_BACK]
            status, owner, _ = (await _leases(db))[-1]
            assert (status, owner) == ("in_flight", "another")  # its outcome is not recorded
        else:
            # Not handed over yet: the lease is the runner's again for a whole lease, and sent.
            assert actions.reasons == [None]
            assert len(actions.sent) == 1
            status, _, _ = (await _leases(db))[-1]
            assert status == "done"


HANDED_BACK = "its lease ran out while this process held it: it was handed back for another try"


async def test_a_command_handed_back_is_not_claimed_again_by_the_runner_still_holding_it(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """The same runner, resumed, must not claim again the command it still works on (two of
    its own sends of one command): it is left for another process, or for this one once that
    work is over, and the stale work does not send it."""
    runner, sweeper, clock = parts
    stale = await _stood_still(db, runner, clock)
    assert await sweeper.expire_leases() == {"expired_leases": 1}
    assert await runner.drain_outbox() == 0  # its own still: not claimed again
    fresh = AskingFirst()
    fresh.release.set()
    runner.actions = fresh  # type: ignore[assignment]
    stale.release.set()
    await runner.idle()
    assert (stale.sent, stale.reasons) == ([], [HANDED_BACK])
    assert await runner.drain_outbox() == 1  # the work is over: claimed afresh
    await runner.idle()
    assert len(fresh.sent) == 1
    ((status, _, _),) = await _leases(db)
    assert status == "done"


async def test_a_command_whose_step_moved_on_is_not_sent(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """A submit whose step is no longer waiting to be submitted (its answer recorded by
    another process that sent it) is not sent again, though its run goes on."""
    runner, _, clock = parts
    actions = AskingFirst()
    runner.actions = actions  # type: ignore[assignment]
    await _submits_waiting(db, runner, clock, 1)
    assert await runner.drain_outbox() == 1
    await asyncio.wait_for(actions.begun.wait(), 10)
    (command,) = actions.started
    assert isinstance(command, m.Submit)
    answered = m.SubmitSucceeded(
        step=command.step,
        attempt=command.attempt,
        tasks=(m.TaskRef(task_id="t-1", kind="transcode"),),
    )
    await db.write(
        lambda conn: runner.transition(conn, command.run_id, answered, clock.now, Batch())
    )
    actions.release.set()
    await runner.idle()
    assert actions.sent == []
    assert actions.reasons == [f"step {command.step} is awaiting_callback already"]


async def test_the_runner_claims_only_the_commands_it_can_start(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """A command claimed while every slot is busy would wait out its lease unstarted: it stays
    in the queue for a slot of this runner, or for another replica."""
    runner, _, clock = parts
    actions = Blocking()
    runner.actions = actions  # type: ignore[assignment]
    runner.concurrency = 2
    await _submits_waiting(db, runner, clock, 3)
    assert await asyncio.wait_for(runner.drain_outbox(), 10) == 2
    assert await asyncio.wait_for(runner.drain_outbox(), 10) == 0
    statuses = [status for status, _, _ in await _leases(db)]
    assert sorted(statuses) == ["in_flight", "in_flight", "pending"]
    actions.release.set()
    await runner.idle()
    assert await asyncio.wait_for(runner.drain_outbox(), 10) == 1


async def test_the_runners_heartbeat_renews_held_leases(
    db: Database, tmp_path: Path, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """The loop `serve` runs renews the leases by itself (real clock, a lease of a second)."""
    runner, _, clock = parts
    clock.now = datetime.now(UTC)
    actions = Blocking()
    lease = timedelta(seconds=1)
    live = Runner(db, runner.registry, actions, lease=lease)  # type: ignore[arg-type]
    await _submits_waiting(db, live, clock, 1)
    serving = asyncio.create_task(live.serve())
    try:

        async def lease_until() -> datetime | None:
            return (await _leases(db))[0][2]

        first = None
        for _ in range(400):
            first = first or await lease_until()
            if first is not None:
                break
            await asyncio.sleep(0.02)
        assert first is not None
        renewed = first
        for _ in range(400):  # a renewal comes every third of a second; allow for a slow host
            renewed = await lease_until() or first
            if renewed > first:
                break
            await asyncio.sleep(0.02)
        assert renewed > first
    finally:
        serving.cancel()
        actions.release.set()
        await asyncio.gather(serving, return_exceptions=True)
        await live.idle()


async def test_quiet_sessions_start_one_run(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    runner, sweeper, clock = parts
    await db.write(runner.registry.record_versions, clock.now)
    for n, (start, end) in enumerate([(100, 160), (160, 220)]):
        body = {
            "event_type": 100, "stream_id": "s", "file_id": f"f{n}", "start_time": start,
            "end_time": end, "t": 4102444800, "sign": "x",
        }  # fmt: skip
        row = NewInboxEvent("lvb", "lvb.recording", f"r{n}", json.dumps(body))
        await db.write(queues.insert_inbox, [row], clock.now)
        await runner.drain_inbox()
    assert await sweeper.close_sessions() == {"closed": 0, "runs_started": 0}
    clock.now += timedelta(minutes=2)
    assert await sweeper.close_sessions() == {"closed": 1, "runs_started": 1}
    runs = await db.query(lambda conn: conn.execute(sa.text("SELECT context FROM runs")).all())
    (context,) = [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in runs]
    assert (context["startTime"], context["endTime"], context["fileIds"]) == (
        100,
        220,
        ["f0", "f1"],
    )


async def test_the_sweeper_reports_a_job_that_stopped(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    _, sweeper, clock = parts
    await sweeper.run_job("timers")
    health = {j.name: j for j in await sweeper.health()}
    assert health["timers"].stalled is False
    clock.now += timedelta(seconds=10)  # three intervals of 1 s and more
    health = {j.name: j for j in await sweeper.health()}
    assert health["timers"].stalled is True


async def test_a_service_that_just_started_is_not_degraded(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Yesterday's heartbeat on record, or a first sweep still running, is not a stall: the clock
    starts when this sweeper does."""
    _, sweeper, clock = parts
    clock.now -= timedelta(days=1)
    await sweeper.run_job("timers")
    clock.now += timedelta(days=1)
    mine = {"replica": sweeper.replica}
    await db.write(job_store.job_started, "tasks", 1.0, clock.now, **mine)  # first sweep running
    sweeper.start()
    await sweeper.stop()
    health = {j.name: j for j in await sweeper.health()}
    assert (health["timers"].stalled, health["tasks"].stalled) == (False, False)
    clock.now += timedelta(seconds=10)
    health = {j.name: j for j in await sweeper.health()}
    assert (health["timers"].stalled, health["tasks"].stalled) == (True, True)


async def test_the_pull_jobs_long_poll_is_not_a_stall(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """PullEvent holds an idle poll for seconds, longer than three of the job's 1 s intervals:
    that is the job working, so /healthz must not flap to degraded while it waits."""
    runner, _, clock = parts
    client = type("Client", (), {"timeout": 10.0})()
    sweeper = Sweeper(db, runner, client, interval=1.0, reliable=True)  # type: ignore[arg-type]
    sweeper.started_at = clock.now
    mine = {"replica": sweeper.replica}
    await db.write(job_store.job_started, "pull", 1.0, clock.now, **mine)
    await db.write(job_store.job_finished, "pull", clock.now, findings={"pulled": 0}, **mine)
    await db.write(job_store.job_started, "pull", 1.0, clock.now, **mine)  # the next long poll
    clock.now += timedelta(seconds=6)
    health = {j.name: j for j in await sweeper.health()}
    assert health["pull"].stalled is False
    clock.now += timedelta(seconds=60)
    health = {j.name: j for j in await sweeper.health()}
    assert health["pull"].stalled is True


async def test_a_job_this_sweeper_does_not_run_is_not_reported(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """The pull job's heartbeat stays on record after reliable mode is turned off (or is another
    replica's): it must not keep this sweeper degraded."""
    _, sweeper, clock = parts
    yesterday = clock.now - timedelta(days=1)
    await db.write(job_store.job_started, "pull", 1.0, yesterday, replica=sweeper.replica)
    sweeper.started_at = clock.now
    await sweeper.run_job("timers")
    clock.now += timedelta(seconds=2)
    health = {j.name: j for j in await sweeper.health()}
    assert "pull" not in health
    assert health["timers"].stalled is False


async def test_a_job_hung_on_one_replica_is_not_hidden_by_anothers_runs(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Two replicas on one database run the same jobs. One's timers job hangs while the other's
    keeps succeeding: the hung one's /healthz is degraded, the other's is not, and the API's
    list names the replica whose job stalled."""
    runner, mine, clock = parts
    other = Sweeper(db, runner, client=None, interval=1.0, replica="b:8080")  # type: ignore[arg-type]
    assert mine.replica != other.replica
    for sweeper in (mine, other):
        sweeper.started_at = clock.now
        await sweeper.run_job("timers")
    for _ in range(10):  # mine hangs; the other's timers job goes on
        clock.now += timedelta(seconds=1)
        await other.run_job("timers")
    assert [(j.name, j.stalled) for j in await mine.health()] == [("timers", True)]
    assert [(j.name, j.stalled) for j in await other.health()] == [("timers", False)]
    everyone = {(j.replica, j.name): j.stalled for j in await other.all_health()}
    assert everyone == {(mine.replica, "timers"): True, ("b:8080", "timers"): False}

    # A replica that stops cleanly forgets its heartbeats; one that died is forgotten once none
    # of its jobs has started for a day.
    await other.forget()
    assert [j.replica for j in await mine.all_health()] == [mine.replica]
    await other.run_job("timers")
    clock.now += timedelta(days=1, seconds=1)
    await other.run_job("timers")
    assert (await other.prune())["forgot_jobs"] == 1
    assert [j.replica for j in await mine.all_health()] == ["b:8080"]


async def test_jobs_run_at_start_then_spread_over_their_interval(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Jobs due together would queue their transactions on the one writer at once, and the
    callbacks behind them would wait: after their first run, at start, they keep apart."""
    _, sweeper, _ = parts
    before = datetime.now(UTC)
    sweeper.start()
    assert sweeper.scheduler is not None
    jobs = {job.id: job for job in sweeper.scheduler.get_jobs()}
    succeeded: set[str] = set()
    for _ in range(200):  # every job's first run, at start
        succeeded = {j.name for j in await sweeper.health() if j.last_success_at is not None}
        if succeeded == set(sweeper.jobs):
            break
        await asyncio.sleep(0.05)
    await sweeper.stop()
    assert succeeded == set(sweeper.jobs)
    assert set(jobs) == set(sweeper.jobs)
    # the next runs: one per job, each in its own slot of its interval, and each later run one
    # interval after the previous (APScheduler's interval trigger), so the slots stay apart
    offsets = []
    for job in jobs.values():
        every = job.trigger.interval
        offset = (job.next_run_time - before) / every - 1
        assert 0 <= offset < 1
        assert job.trigger.get_next_fire_time(job.next_run_time, job.next_run_time) == (
            job.next_run_time + every
        )
        offsets.append(round(offset, 3))
    assert len(set(offsets)) == len(offsets)


async def test_a_job_still_running_when_it_comes_due_again_is_not_logged_each_time(
    db: Database, parts: tuple[Runner, Sweeper, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    """Like the pull job's long poll, which outlasts its interval: APScheduler skips the runs
    that come due meanwhile and would warn about each; the heartbeats still record the job."""
    _, sweeper, _ = parts

    async def long_poll() -> dict[str, int]:
        await asyncio.sleep(0.8)
        return {}

    sweeper.jobs = {"pull": (0.1, long_poll)}
    caplog.set_level(logging.INFO, logger="apscheduler")
    sweeper.start()
    assert sweeper.scheduler is not None
    for _ in range(100):
        await asyncio.sleep(0.05)
        found = await sweeper.health()  # no row until the job's first heartbeat
        if found and found[0].last_success_at is not None:  # the run at start
            break
    await asyncio.sleep(1.0)  # the scheduler's run now overlaps about ten of its due times
    ran = [r for r in caplog.records if r.name.startswith("apscheduler.executors")]
    await sweeper.stop()
    assert ran, "the scheduler never ran the job"
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == []
    (health,) = await sweeper.health()
    assert health.last_success_at is not None
    assert not health.stalled


async def test_a_job_whose_heartbeat_cannot_be_written_logs_one_line_a_minute(
    db: Database,
    parts: tuple[Runner, Sweeper, Clock],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the database down, the job's heartbeat write fails before the job runs: a warning
    naming the job and the error, once a minute, not a traceback from asyncio or APScheduler
    every time."""
    _, sweeper, _ = parts
    ran: list[int] = []

    async def job() -> dict[str, int]:
        ran.append(1)
        return {}

    real_write = db.write

    async def write(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn is job_store.job_started:
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return await real_write(fn, *args, **kwargs)

    monkeypatch.setattr(db, "write", write)
    sweeper.jobs = {"expire": (0.1, job)}
    monkeypatch.setattr(db_module, "_said_at", {})
    caplog.set_level(logging.DEBUG)
    sweeper.start()
    await asyncio.sleep(0.5)
    await sweeper.stop()
    assert ran == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "vodflow.sweeper"]
    # Every run failed alike (about five): said once, then again a minute later at the soonest.
    assert warnings == [
        "sweeper job expire: recording its run failed: the database does not answer "
        "(database is locked); trying again (said once a minute)"
    ]
    assert [r for r in caplog.records if r.exc_info] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_prune_forgets_handled_rows_past_retention_and_keeps_pending_work(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    runner, sweeper, clock = parts
    await _waiting_run(db, runner, clock)
    rows = [
        NewInboxEvent("vod", "X", f"k{status}", "{}", status=status)
        for status in ("applied", "orphan", "pending", "failed", "invalid")
    ]
    await db.write(queues.insert_inbox, rows, clock.now - timedelta(days=40))
    found = await sweeper.prune()
    assert found == {"pruned_inbox": 2, "pruned_outbox": 0, "pruned_timers": 0, "forgot_jobs": 0}
    left = await db.query(
        lambda conn: sorted(r[0] for r in conn.execute(sa.text("SELECT status FROM inbox_events")))
    )
    assert left == ["failed", "orphan", "pending"]


async def test_finished_runs_past_the_run_retention_go_with_every_row_of_theirs(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Opt-in (VODFLOW_RUN_RETENTION): a finished run last changed longer ago goes with its
    steps, tasks, history, timers and commands. A live run stays, as do a finished one still
    waiting on VOD (a cancelled run's task), one with a command not done, and one that finished
    within the retention."""
    runner, sweeper, clock = parts

    async def finished(task_id: str) -> str:
        run_id = await _waiting_run(db, runner, clock, task_id, f"f-{task_id}")
        done = m.TaskEvent(task_id=task_id, event_type="E", event_key=task_id, success=True)
        await runner.apply(run_id, done)
        return run_id

    def sent(conn: sa.Connection, run_ids: list[str]) -> None:
        # as the runner marks a command once VOD answered it (these tests send nothing)
        for run_id in run_ids:
            conn.execute(
                sa.text("UPDATE outbox SET status = 'done', done_at = :at WHERE run_id = :r"),
                {"at": clock.now, "r": run_id},
            )

    old = await finished("transcode-old")
    unsent = await finished("transcode-unsent")
    live = await _waiting_run(db, runner, clock, "transcode-live", "f-live")
    cancelled = await _waiting_run(db, runner, clock, "transcode-out", "f-out")
    await runner.apply(cancelled, m.Cancel(actor="ops"))
    await db.write(sent, [old, live, cancelled])
    clock.now += timedelta(days=91)
    recent = await finished("transcode-new")
    await db.write(sent, [recent])
    assert {r: await _status(db, r) for r in (old, unsent, live, cancelled, recent)} == {
        old: "succeeded",
        unsent: "succeeded",
        live: "awaiting_callback",
        cancelled: "cancelled",
        recent: "succeeded",
    }

    def rows(conn: sa.Connection) -> dict[str, set[str]]:
        tables = {"runs": "id", **dict.fromkeys(("steps", "tasks", "history", "timers"), "run_id")}
        return {
            table: {str(r[0]) for r in conn.execute(sa.text(f"SELECT {key} FROM {table}"))}
            for table, key in {**tables, "outbox": "run_id"}.items()
        }

    # Without a run retention (the default), every run stays.
    await sweeper.prune()
    before = await db.query(rows)
    assert before["runs"] == {old, unsent, live, cancelled, recent}
    assert all(old in before[t] for t in ("steps", "tasks", "history"))
    sweeper.run_retention = timedelta(days=90)
    assert (await sweeper.prune())["pruned_runs"] == 1
    after = await db.query(rows)
    assert after == {table: ids - {old} for table, ids in before.items()}
    assert (await sweeper.prune())["pruned_runs"] == 0


async def test_task_events_that_fail_on_receipt_stay_pending_for_the_runner(
    db: Database, parts: tuple[Runner, Sweeper, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Applying on receipt is an optimization: when it fails, what it wrote is undone, the
    inbox row still commits (the callback is answered 2xx) and the runner applies it later."""
    import asyncio

    from orchestrator.receiver import InboxWriter, inbox_row
    from orchestrator.vod.events import parse_event

    runner, _, clock = parts
    run_id = await _waiting_run(db, runner, clock)
    writer = InboxWriter(db, apply=runner.apply_received, clock=clock)
    serving = asyncio.create_task(writer.serve())

    def broken(conn: sa.Connection, *args: object) -> object:
        conn.exec_driver_sql("UPDATE runs SET error = 'half applied'")
        raise RuntimeError("registry unavailable")

    monkeypatch.setattr(runner, "_apply_task_events", broken)
    body = json.dumps(transcode_complete("transcode-1", "f1"))
    event = parse_event(body, source="vod")
    try:
        assert await writer.add(inbox_row(event, body, "vod"), event) is not None
    finally:
        serving.cancel()
    status = "SELECT status FROM inbox_events"
    assert await db.query(lambda conn: conn.execute(sa.text(status)).scalar()) == "pending"
    error = "SELECT error FROM runs"
    assert await db.query(lambda conn: conn.execute(sa.text(error)).scalar()) is None  # undone
    monkeypatch.undo()
    assert await runner.drain_inbox() == 1
    assert await db.query(lambda conn: conn.execute(sa.text(status)).scalar()) == "applied"
    assert await _status(db, run_id) == "succeeded"


async def test_a_task_query_batch_that_outlasts_its_lease_keeps_the_rest_of_its_tasks(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Queries wait on VOD's quota, so a batch of them can take longer than the lease the batch
    was claimed with: the sweeper renews the rest of the batch, and another sweeper finds none
    of it to ask about again."""
    from orchestrator.store import tasks as task_store

    runner, sweeper, clock = parts
    batch = Batch()
    await db.write(runner.registry.record_versions, clock.now)

    def start(conn: sa.Connection) -> str:
        workflow = runner.registry.current["wf"]
        run_id = runner.start_run(
            conn, workflow, {"fileId": "f1"}, dedup_key=None, now=clock.now, batch=batch
        )
        assert run_id is not None
        return run_id

    run_id = await db.write(start)
    refs = tuple(m.TaskRef(task_id=f"transcode-{n}", kind="transcode") for n in range(3))
    await runner.apply(run_id, m.SubmitSucceeded(step="transcode", attempt=1, tasks=refs))
    clock.now += timedelta(hours=1)  # every task is past its expected time
    lease = sweeper.lease
    sweeper.poll_gap = timedelta(hours=1)  # a task asked about is not due again in this test
    taken_by_another: list[str] = []

    class SlowVod:
        async def get_task_info(self, task_id: str) -> Any:
            clock.now += lease * 0.6  # waiting for the quota, then VOD answering
            rows = await db.write(task_store.claim_due_polls, "another", clock.now, lease, 10)
            taken_by_another.extend(r["task_id"] for r in rows)
            return type("Answer", (), {"status": "PROCESSING", "data": None})()

    sweeper.client = SlowVod()  # type: ignore[assignment]
    found = await sweeper.poll_tasks()
    assert found["asked"] == 3
    assert found["still_running"] + found["errors"] == 3, found
    assert taken_by_another == []


async def test_a_removed_workflows_session_runs_the_version_loaded_last_after_a_revert(
    db: Database, parts: tuple[Runner, Sweeper, Clock], tmp_path: Path
) -> None:
    """Edited (A, then B) and reverted (A again) before its file was removed while a session
    was open: the session runs A, the version loaded last, under which it collected."""
    runner, sweeper, clock = parts
    a = runner.registry
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "wf.yaml").write_text(WORKFLOW.replace("timeout: 10m", "timeout: 20m"))
    b = Registry.from_paths([tmp_path / "b" / "wf.yaml"])
    version_a, version_b = a.current["wf"].version, b.current["wf"].version
    assert version_a != version_b
    for registry in (a, b, a):  # one restart each
        await db.write(registry.record_versions, clock.now)
        clock.now += timedelta(minutes=1)
    body = {
        "event_type": 100, "stream_id": "s", "file_id": "f0", "start_time": 100,
        "end_time": 160, "t": 4102444800, "sign": "x",
    }  # fmt: skip
    row = NewInboxEvent("lvb", "lvb.recording", "r0", json.dumps(body))
    await db.write(queues.insert_inbox, [row], clock.now)
    await runner.drain_inbox()
    del runner.registry.current["wf"]  # its file removed, vodflow restarted
    clock.now += timedelta(minutes=2)
    assert await sweeper.close_sessions() == {"closed": 1, "runs_started": 1}
    versions = await db.query(lambda conn: conn.execute(sa.text("SELECT version FROM runs")).all())
    assert [r[0] for r in versions] == [version_a]


class _QueryFails:
    """A VOD whose task query answers one error code, always."""

    def __init__(self, code: int) -> None:
        self.code = code

    async def get_task_info(self, task_id: str) -> Any:
        raise error_for_code(self.code, f"about {task_id}", action="GetTaskInfo")


async def _poll_status(db: Database, task_id: str) -> tuple[str | None, object]:
    row = await db.query(
        lambda conn: conn.execute(
            sa.text("SELECT last_poll_status, next_poll_at FROM tasks WHERE task_id = :t"),
            {"t": task_id},
        ).one()
    )
    return row[0], row[1]


@pytest.mark.parametrize("code", [70014, 10008, 5000])
async def test_a_task_vod_no_longer_knows_is_lost_at_once(
    db: Database, parts: tuple[Runner, Sweeper, Clock], code: int
) -> None:
    """70014 is the task service's "the task does not exist" (5000 and 10008 its older
    words): asking again would never find it, and spend the query quota every sweep."""
    runner, sweeper, clock = parts
    await _waiting_run(db, runner, clock)
    clock.now += timedelta(hours=1)
    sweeper.client = _QueryFails(code)  # type: ignore[assignment]
    found = await sweeper.poll_tasks()
    assert (found["asked"], found["lost"], found["errors"]) == (1, 1, 0)
    assert await _poll_status(db, "transcode-1") == ("lost", None)


async def test_a_task_whose_queries_keep_failing_is_lost_after_vods_72_hours(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """An error VOD may get over (its internal error, an outage) is asked again later, but
    not for ever: past the 72 hours VOD keeps a task, no answer can come."""
    runner, sweeper, clock = parts
    await _waiting_run(db, runner, clock)
    sweeper.client = _QueryFails(10027)  # type: ignore[assignment]
    clock.now += timedelta(hours=71)
    assert (await sweeper.poll_tasks())["errors"] == 1
    status, next_poll = await _poll_status(db, "transcode-1")
    assert status == "error"
    assert next_poll is not None
    clock.now += timedelta(hours=2)
    found = await sweeper.poll_tasks()
    assert (found["lost"], found["errors"]) == (1, 0)
    assert await _poll_status(db, "transcode-1") == ("lost", None)


async def test_a_pulled_event_vodflow_cannot_read_is_kept_whole(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Once confirmed, VOD never delivers it again: the inbox keeps what VOD sent, for
    inspection and for a replay once vodflow reads it."""
    runner, _, _ = parts
    content = {"version": "4.0", "eventType": "TranscodeComplete", "data": {"status": 0}}
    answer = {
        "code": 0,
        "eventList": [
            {"msgHandle": "h-1", "eventContent": content},
            {"msgHandle": "h-2", "eventContent": transcode_complete("transcode-9", "f9")},
        ],
    }
    confirmed: list[list[str]] = []

    class Vod:
        timeout = 10.0

        async def pull_event(self) -> Any:
            return PullEventResponse.parse(json.dumps(answer))

        async def confirm_event(self, handles: list[str]) -> None:
            confirmed.append(handles)

    sweeper = Sweeper(db, runner, Vod(), interval=1.0, reliable=True)  # type: ignore[arg-type]
    assert await sweeper.pull_events() == {"pulled": 2}
    assert confirmed == [["h-1", "h-2"]]
    rows = await db.query(
        lambda conn: conn.execute(
            sa.text("SELECT status, body, note FROM inbox_events WHERE source = 'pull' ORDER BY id")
        ).all()
    )
    by_status = {status: (body, note) for status, body, note in rows}
    assert sorted(by_status) == ["invalid", "pending"]
    invalid_body, note = by_status["invalid"]
    assert json.loads(invalid_body) == content
    assert note == "msgHandle h-1: data.vodTaskId: required"


async def test_the_checkpoints_wal_size_is_recorded_not_logged_every_second(
    db: Database, parts: tuple[Runner, Sweeper, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint runs every second and the WAL is rarely empty: a log line each time
    would drown the log of an idle server. Its size stays on the job's heartbeat."""
    runner, sweeper, clock = parts
    await _waiting_run(db, runner, clock)  # something written, so the WAL holds frames
    caplog.set_level(logging.INFO, logger="vodflow.sweeper")
    findings = await sweeper.run_job("checkpoint")
    assert set(findings) == {"wal_frames"}
    assert [r.getMessage() for r in caplog.records if r.name == "vodflow.sweeper"] == []
    (job,) = [j for j in await sweeper.health() if j.name == "checkpoint"]
    assert job.findings == findings


async def test_an_event_the_database_refuses_fails_alone_and_the_rest_are_applied(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Task events are applied together; one whose change the database cannot store (here an
    error code beyond its integer column) must not hold the others back at every drain."""
    from orchestrator.receiver import inbox_row
    from orchestrator.vod.events import parse_event

    runner, _, clock = parts
    good_run = await _waiting_run(db, runner, clock, "transcode-1", "f1")
    await _waiting_run(db, runner, clock, "transcode-2", "f2")
    good = parse_event(json.dumps(transcode_complete("transcode-1", "f1")), source="vod")
    failed = parse_event(json.dumps(transcode_complete("transcode-2", "f2", ok=False)))
    bad = failed.model_copy(update={"error_code": 10**23})  # past the parser's own check
    rows = [inbox_row(e, json.dumps(e.raw), "vod") for e in (bad, good)]
    ids = await db.write(queues.insert_inbox, rows, clock.now)
    for event_id, event in zip(ids, (bad, good), strict=True):
        assert event_id is not None
        runner.remember(event_id, event)
    assert await runner.drain_inbox() == 2
    statuses = await db.query(
        lambda conn: dict(conn.execute(sa.text("SELECT id, status FROM inbox_events")).all())
    )
    assert statuses == {ids[0]: "failed", ids[1]: "applied"}
    assert await _status(db, good_run) == "succeeded"
    assert await runner.drain_inbox() == 0  # nothing left to fail again


async def test_a_callback_the_database_refuses_fails_alone_and_its_group_commits(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Callbacks arriving together share a commit; one that makes it fail is answered with the
    error, alone, and the others are committed (and answered 2xx) without it."""
    import asyncio

    from orchestrator.receiver import InboxWriter, inbox_row
    from orchestrator.vod.events import parse_event

    _, _, clock = parts

    def refuse_bad(conn: sa.Connection, received: list[Any], now: datetime) -> Any:
        if any(event.task_id == "transcode-bad" for _, event in received):
            raise ValueError("the database refuses this row")
        return lambda: None

    writer = InboxWriter(db, apply=refuse_bad, clock=clock)
    bodies = [transcode_complete(f"transcode-{n}", "f1") for n in ("a", "bad", "b")]
    events = [parse_event(json.dumps(body), source="vod") for body in bodies]
    adds = [writer.add(inbox_row(e, json.dumps(e.raw), "vod"), e) for e in events]
    added = asyncio.gather(*adds, return_exceptions=True)  # queued before the writer runs
    serving = asyncio.create_task(writer.serve())
    try:
        first, refused, second = await added
    finally:
        serving.cancel()
    assert isinstance(first, int)
    assert isinstance(second, int)
    assert isinstance(refused, ValueError)
    stored = await db.query(
        lambda conn: conn.execute(sa.text("SELECT task_id FROM inbox_events")).scalars().all()
    )
    assert sorted(stored) == ["transcode-a", "transcode-b"]


async def test_a_committed_group_is_never_committed_again(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """Once its transaction committed, what follows (announcing the transitions) failing must
    not send the group down the failure path: its rows would be stored twice and a first
    receipt answered as a duplicate."""
    import asyncio

    from orchestrator.receiver import InboxWriter, inbox_row
    from orchestrator.vod.events import parse_event

    _, _, clock = parts

    def after_commit_fails(conn: sa.Connection, received: list[Any], now: datetime) -> Any:
        def announce() -> None:
            raise RuntimeError("a listener broke")

        return announce

    writer = InboxWriter(db, apply=after_commit_fails, clock=clock)
    events = [
        parse_event(json.dumps(transcode_complete(f"transcode-{n}", "f1")), source="vod")
        for n in "ab"
    ]
    adds = [writer.add(inbox_row(e, json.dumps(e.raw), "vod"), e) for e in events]
    added = asyncio.gather(*adds)
    serving = asyncio.create_task(writer.serve())
    try:
        ids = await added
    finally:
        serving.cancel()
    assert all(isinstance(i, int) for i in ids)
    count = "SELECT count(*) FROM inbox_events"
    assert await db.query(lambda conn: conn.execute(sa.text(count)).scalar()) == 2


async def test_a_database_failing_as_a_whole_leaves_the_events_pending_not_failed(
    db: Database, parts: tuple[Runner, Sweeper, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock or a lost connection is not the events' fault: the drain fails and is tried
    again, and no event is marked failed (which would wait for an operator)."""
    from orchestrator.receiver import inbox_row
    from orchestrator.vod.events import parse_event

    runner, _, clock = parts
    await _waiting_run(db, runner, clock)
    event = parse_event(json.dumps(transcode_complete("transcode-1", "f1")), source="vod")
    await db.write(queues.insert_inbox, [inbox_row(event, json.dumps(event.raw), "vod")], clock.now)

    def deadlock(*_: object) -> NoReturn:
        raise sa.exc.OperationalError("UPDATE runs", {}, Exception("deadlock detected"))

    monkeypatch.setattr(runner, "_apply_task_events", deadlock)
    with pytest.raises(sa.exc.OperationalError):
        await runner.drain_inbox()
    status = "SELECT status FROM inbox_events"
    assert await db.query(lambda conn: conn.execute(sa.text(status)).scalar()) == "pending"
    monkeypatch.undo()
    assert await runner.drain_inbox() == 1
    assert await db.query(lambda conn: conn.execute(sa.text(status)).scalar()) == "applied"


async def test_a_version_stored_by_an_earlier_release_is_still_read(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """A version whose file an earlier release accepted (a notify step's `timeout`, refused
    since) is read back with its shape checked only, so its runs can still advance and be
    cancelled (every input of a run reads its version)."""
    runner, _, clock = parts
    source = WORKFLOW + "  - name: tell\n    notify: {url: /u}\n    timeout: 30s\n"

    def store(conn: sa.Connection) -> None:
        conn.execute(
            versions.insert().values(
                version="v-earlier", name="wf", path="wf.yaml", source=source, loaded_at=clock.now
            )
        )

    await db.write(store)
    spec = await db.query(runner.registry.spec_for, "v-earlier")
    assert [s.name for s in spec.steps] == ["transcode", "tell"]


async def test_a_command_interrupted_by_the_stop_goes_back_to_the_outbox(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """A command that was waiting to try again when the service stopped is handed back as it
    was, due now, for the next process; it is no failure of the run's attempt."""
    runner, _, clock = parts

    class Stopped:
        async def perform(self, command: m.Command, **_: Any) -> m.Input:
            raise Interrupted("the service stopped while output x answered HTTP 503")

    runner.actions = Stopped()  # type: ignore[assignment]
    run_id = await _submits_waiting_one(db, runner, clock)
    # Its last try before the runner would give up on it: an interruption is none of them.
    await db.write(
        lambda conn: conn.execute(queues.outbox.update().values(tries=GIVE_UP_AFTER - 1))
    )
    assert await runner.drain_outbox() == 1
    await runner.idle()
    ((status, owner, _),) = await _leases(db)
    assert (status, owner) == ("pending", None)
    due = await db.query(
        lambda conn: conn.execute(sa.select(queues.outbox.c.next_attempt_at)).scalar_one()
    )
    assert due.replace(tzinfo=UTC) == clock.now  # due at once, for the next process
    assert await _status(db, run_id) == "running"  # nothing went to the run


async def test_a_claim_is_fenced_by_its_try(
    db: Database, parts: tuple[Runner, Sweeper, Clock]
) -> None:
    """A claim is named by the try that made it: once its owner (under the same name, as a
    process restarted on the same host and port is) claims the command again, the earlier
    claim can neither send it nor record an outcome."""
    runner, sweeper, clock = parts
    await _submits_waiting(db, runner, clock, 1)
    lease = timedelta(seconds=30)
    (first,) = await db.write(queues.claim_outbox, "me", clock.now, lease, 10)
    clock.now += timedelta(seconds=31)
    assert await sweeper.expire_leases() == {"expired_leases": 1}
    (second,) = await db.write(queues.claim_outbox, "me", clock.now, lease, 10)
    assert (first["id"], first["tries"], second["tries"]) == (second["id"], 1, 2)

    def hold(tries: int) -> Callable[[sa.Connection], bool]:
        return lambda conn: queues.hold_outbox_lease(
            conn, first["id"], "me", tries, clock.now, lease
        )

    def finish(tries: int) -> Callable[[sa.Connection], bool]:
        return lambda conn: queues.finish_outbox(
            conn, first["id"], "me", tries=tries, now=clock.now, result={}
        )

    assert await db.write(hold(1)) is False
    assert await db.write(finish(1)) is False
    assert await db.write(hold(2)) is True
    assert await db.write(finish(2)) is True
