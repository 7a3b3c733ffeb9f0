"""The sweeper: APScheduler jobs that heal what stalls.

Jobs (each claims its rows with a lease or a row lock, so concurrent sweeps never double-act):

- ``timers``: due step/run timeouts and retries become machine inputs.
- ``tasks``: a task with no result by its expected time is asked about (GetTaskInfo); a finished
  task's answer is turned into the same event its callback would have been and goes through the
  inbox (so a late callback and the query result dedupe). Unfinished tasks are asked again with
  backoff, at least hourly, so every task is reconciled long before Tencent forgets it (72 h).
- ``outbox``: commands whose lease expired (their process died mid-call) are sent again.
- ``sessions``: stream sessions quiet for long enough start their run.
- ``orphans``: events whose task never appeared are marked unmatched after a day.
- ``pull`` (reliable-callback mode): PullEvent, commit to the inbox, then ConfirmEvent.
- ``prune``: handled inbox events, done outbox commands and spent timers older than the
  retention period are deleted; with a run retention, so are finished runs (with their steps,
  tasks and history) last changed longer ago than it. Without one, runs stay.

The sweeper watches itself: every job records when it last started and succeeded; a job that has
not succeeded within three of its intervals (plus, for the pull job, the time its long poll may
take) is reported as stalled (a sweeper can hang too). The clock starts at the later of the job's
last success and this sweeper's start, so a service that has just started (its first sweeps still
running, or yesterday's heartbeat on record) is not degraded. Heartbeats are kept per job and
replica: ``health`` (``/healthz``) reports only the jobs this sweeper runs, from its own rows, so
another replica's successful runs of the same job never hide one that hung here (and a heartbeat
for a job this sweeper does not run, such as the pull job after reliable mode was turned off,
says nothing about it); ``all_health`` (the API and metrics) reports every replica's jobs, each
with its replica. A replica that stops cleanly forgets its rows; one that died is reported
stalled until none of its jobs has started for a day (``SILENT_REPLICA``), then forgotten.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from orchestrator import correlate, triggers
from orchestrator import machine as m
from orchestrator.receiver import inbox_row
from orchestrator.runner import Batch, Runner
from orchestrator.spec import LoadedWorkflow
from orchestrator.store import driver, queues, tasks, windows
from orchestrator.store import jobs as job_store
from orchestrator.store import runs as run_store
from orchestrator.store.db import Database, log_failure
from orchestrator.store.queues import InboxStatus, NewInboxEvent
from orchestrator.vod.client import PULL_EVENT_WAIT, VodClient
from orchestrator.vod.errors import ErrorClass, MalformedEvent, VodError
from orchestrator.vod.events import (
    FINISHED,
    event_from_task_info,
    pull_event_items,
    task_info_callback,
)

log = logging.getLogger("vodflow.sweeper")
TASK_QUERY_WINDOW = timedelta(hours=72)
GAUGES = frozenset({"wal_frames"})
"""Findings that measure a size rather than count what a job did: not worth a log line."""
MAX_POLL_GAP = timedelta(hours=1)
STALLED_AFTER_INTERVALS = 3
SILENT_REPLICA = timedelta(days=1)
"""A replica none of whose jobs started for this long is gone: its heartbeats are forgotten."""


class _SkippedWhileRunning(logging.Filter):
    """Drops APScheduler's warning that a sweeper job's run came due while its previous run was
    still going. That is normal here: the pull job's PullEvent is a long poll that outlasts its
    one-second interval, so it would log the warning about once a second. A job that really
    hangs is reported by the sweeper's heartbeats (stalled, ``/healthz`` degraded) instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith('Execution of job "%s" skipped: maximum number'):
            return True
        job = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not isinstance(getattr(getattr(job, "func", None), "__self__", None), Sweeper)


_SKIPPED_WHILE_RUNNING = _SkippedWhileRunning()


@dataclass(frozen=True)
class JobHealth:
    name: str
    replica: str
    interval: float
    last_started_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    stalled: bool
    findings: dict[str, int]


def next_poll(polls: int, expected_gap: timedelta, now: datetime) -> datetime:
    """Ask again after expected_gap × 2^polls, at most an hour later."""
    return now + min(expected_gap * (1 << min(polls, 20)), MAX_POLL_GAP)


RUN_PRUNE_ROUNDS = 10
"""Transactions of finished runs (``runs.PRUNE_RUNS`` each) one prune may delete: a backlog of
millions, when a run retention is first set, is worked off within days."""


class Sweeper:
    def __init__(
        self,
        db: Database,
        runner: Runner,
        client: VodClient,
        *,
        interval: float = 5.0,
        reliable: bool = False,
        orphan_ttl: timedelta = timedelta(days=1),
        poll_gap: timedelta = timedelta(minutes=1),
        retention: timedelta = timedelta(days=30),
        run_retention: timedelta | None = None,
        batch: int = 200,
        lease: timedelta = timedelta(minutes=2),
        on_findings: Callable[[str, dict[str, int]], None] = lambda job, findings: None,
        replica: str | None = None,
    ) -> None:
        self.db = db
        self.runner = runner
        self.replica = replica or runner.owner
        """Whose heartbeats these are (``host:port`` of ``vodflow serve``)."""
        self.client = client
        self.interval = interval
        self.reliable = reliable
        self.orphan_ttl = orphan_ttl
        self.poll_gap = poll_gap
        self.retention = retention
        self.run_retention = run_retention
        self.batch = batch
        self.lease = lease
        self.on_findings = on_findings
        self.scheduler: AsyncIOScheduler | None = None
        self.started_at: datetime | None = None
        self._running: set[asyncio.Task[Any]] = set()
        self.jobs: dict[str, tuple[float, Callable[[], Awaitable[dict[str, int]]]]] = {
            "timers": (interval, self.fire_timers),
            "tasks": (interval, self.poll_tasks),
            "outbox": (interval, self.expire_leases),
            "sessions": (interval, self.close_sessions),
            "orphans": (interval, self.rematch_orphans),
            "checkpoint": (1.0, self.checkpoint),
            "prune": (max(interval, 300.0), self.prune),
        }
        self.allowance: dict[str, float] = {}
        """Seconds a job's run may take beyond its interval before it counts as stalled."""
        if reliable:
            self.jobs["pull"] = (1.0, self.pull_events)
            # PullEvent is a long poll: an idle run takes as long as VOD holds it
            self.allowance["pull"] = PULL_EVENT_WAIT + client.timeout

    @property
    def now(self) -> datetime:
        now: datetime = self.runner.clock()
        return now

    # --- scheduling -----------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = self.now
        self.scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        logging.getLogger("apscheduler.scheduler").addFilter(_SKIPPED_WHILE_RUNNING)
        # Every job runs once now, then on its interval from an offset of its own, spread over
        # the interval: jobs due together would queue their transactions on the database's one
        # writer at the same moment, and the callbacks waiting behind them would feel it (each
        # later run is due one interval after the previous one, so the offsets stay).
        now = datetime.now(UTC)
        spread = len(self.jobs)
        for position, (name, (every, _)) in enumerate(self.jobs.items()):
            self.scheduler.add_job(
                self._scheduled,
                "interval",
                seconds=every,
                next_run_time=now + timedelta(seconds=every * (1 + position / spread)),
                args=[name],
                id=name,
            )
        self.scheduler.start()
        for name in self.jobs:
            self._track(asyncio.get_running_loop().create_task(self._scheduled(name)))

    async def stop(self) -> None:
        """Stop scheduling and wait for the jobs that are running to end (cancelled)."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        running = [t for t in self._running if not t.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _scheduled(self, name: str) -> None:
        """A run the scheduler started: `stop` cancels it (and never a caller of `run_job`)."""
        task = asyncio.current_task()
        if task is not None:  # APScheduler's own task: `stop` must find it
            self._track(task)
        try:
            await self.run_job(name)
        except asyncio.CancelledError:
            # `stop` cancelled it: the service is shutting down, which is not the job failing
            # (APScheduler would log it as an error).
            log.debug("sweeper job %s cancelled by stop", name)
        except Exception:
            # Its heartbeat could not be written (the database is down): a line once a minute,
            # not a traceback from asyncio or APScheduler each time. /healthz reports it too.
            log_failure(log, f"sweeper job {name}: recording its run")

    async def run_job(self, name: str) -> dict[str, int]:
        """Run one job now, recording its heartbeat and findings."""
        every, job = self.jobs[name]
        replica = self.replica
        await self.db.write(
            job_store.job_started,
            name,
            every,
            self.now,
            replica=replica,
            sweeper_started_at=self.started_at,
        )
        try:
            findings = await job()
        except Exception as exc:
            log_failure(log, f"sweeper job {name}")
            error = f"{type(exc).__name__}: {exc}"
            await self.db.write(
                job_store.job_finished, name, self.now, replica=replica, error=error
            )
            return {}
        await self.db.write(
            job_store.job_finished, name, self.now, replica=replica, findings=findings
        )
        self.on_findings(name, findings)
        if any(count for key, count in findings.items() if key not in GAUGES):
            log.info("sweep %s: %s", name, findings, extra={"job": name})
        return findings

    async def sweep(self) -> dict[str, dict[str, int]]:
        """Every job once, in order (tests and `vodflow sweep`)."""
        return {name: await self.run_job(name) for name in self.jobs}

    async def health(self) -> list[JobHealth]:
        """This replica's jobs (``/healthz``): only the jobs it runs, from its own heartbeats."""
        return [
            job
            for job in await self.all_health()
            if job.replica == self.replica and job.name in self.jobs
        ]

    async def all_health(self) -> list[JobHealth]:
        """Every replica's jobs, by replica then name (the API and metrics)."""
        rows = await self.db.query(job_store.all_jobs)
        return [self._health(row, self.now) for row in rows]

    def _health(self, row: dict[str, Any], now: datetime) -> JobHealth:
        last = row["last_success_at"]
        began = row["sweeper_started_at"]
        if row["replica"] == self.replica and self.started_at is not None:
            began = self.started_at
        since = max((t for t in (last, began) if t is not None), default=None)
        limit = timedelta(
            seconds=row["interval_seconds"] * STALLED_AFTER_INTERVALS
            + self.allowance.get(row["name"], 0.0)
        )
        return JobHealth(
            name=row["name"],
            replica=row["replica"],
            interval=row["interval_seconds"],
            last_started_at=row["last_started_at"],
            last_success_at=last,
            last_error=row["last_error"],
            stalled=since is None or now - since > limit,
            findings=row["last_findings"] or {},
        )

    async def forget(self) -> None:
        """This replica is stopping cleanly: its heartbeats say nothing any more."""
        await self.db.write(job_store.forget_replica, self.replica)

    # --- jobs -----------------------------------------------------------------------------

    async def fire_timers(self) -> dict[str, int]:
        batch = Batch()

        def fire(conn: sa.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            """(the timers applied, the timers that could not be)"""
            now = self.now
            applied, failed = [], []
            for timer in queues.claim_due_timers(conn, now, self.batch):
                event = m.TimerFired(
                    timer=timer["kind"], step=timer["step"], attempt=timer["attempt"]
                )
                try:  # one timer that cannot be applied must not hold back the others
                    with driver.savepoint(conn):
                        self.runner.transition(conn, timer["run_id"], event, now, batch)
                except Exception as exc:
                    log.exception(
                        "%s timer %s of run %s (step %s) could not be applied; marked failed",
                        timer["kind"],
                        timer["id"],
                        timer["run_id"],
                        timer["step"] or "-",
                    )
                    failed.append({**timer, "error": f"{type(exc).__name__}: {exc}"})
                else:
                    applied.append(timer)
            queues.mark_timers_failed(conn, {t["id"]: t["error"] for t in failed})
            return applied, failed

        applied, failed = await self.db.write(fire)
        self.runner.announce(batch)
        timed_out = sum(1 for t in applied if t["kind"] != "retry")
        return {
            "fired": len(applied),
            "timeouts": timed_out,
            "retries": len(applied) - timed_out,
            "failed": len(failed),
        }

    async def poll_tasks(self) -> dict[str, int]:
        due = await self.db.write(
            tasks.claim_due_polls, self.runner.owner, self.now, self.lease, self.batch
        )
        # "asked", not "stalled": a task of an ended run or of an attempt that timed out is asked
        # about too (its result is recorded), though nothing waits on it (/api/stats' stalled).
        found = {"asked": len(due), "recovered": 0, "still_running": 0, "lost": 0, "errors": 0}
        held, held_until = {t["task_id"] for t in due}, self.now + self.lease
        for n, task in enumerate(due):
            if self.now >= held_until - self.lease / 2:
                # The queries wait on VOD's quota: keep the rest of the batch from being taken
                # over (and asked about again) by another sweeper.
                rest = [t["task_id"] for t in due[n:]]
                held_until = self.now + self.lease
                held = set(
                    await self.db.write(
                        tasks.renew_poll_leases, self.runner.owner, rest, self.now, self.lease
                    )
                )
            if task["task_id"] not in held:
                continue  # finished meanwhile, or another sweeper has it now
            outcome = await self._poll_one(task)
            found[outcome] += 1
        if found["recovered"] or found["lost"]:
            self.runner.inbox_wake.set()
        return found

    async def _poll_one(self, task: dict[str, Any]) -> str:
        task_id = task["task_id"]
        now = self.now
        try:
            answer = await self.client.get_task_info(task_id)
        except VodError as exc:
            if exc.error_class == ErrorClass.FILE_NOT_FOUND:  # 70014, 10008, 5000
                return await self._lost(task, f"VOD no longer knows task {task_id}: {exc}")
            if now - task["submitted_at"] > TASK_QUERY_WINDOW:
                # VOD keeps a task's details 72 hours: past them no answer will come, whatever
                # this one's error was.
                return await self._lost(
                    task, f"task {task_id} has not finished within 72 hours (last query: {exc})"
                )
            await self.db.write(
                tasks.record_poll,
                task_id,
                now=now,
                status="error",
                next_poll_at=now + self.poll_gap,
            )
            log.warning("asking VOD about task %s failed: %s", task_id, exc)
            return "errors"
        status = (answer.status or "").upper()
        if answer.data and (status in FINISHED or not status):
            try:
                event = event_from_task_info(answer, task_id)
            except MalformedEvent as exc:
                log.warning("VOD's answer about task %s is unreadable: %s", task_id, exc)
                event = None
            if event is not None and event.terminal:
                # Stored as the callback VOD would have sent, so it reads (and dedupes) like one.
                callback = task_info_callback(answer, task_id)
                body = json.dumps(callback, ensure_ascii=False)
                row = inbox_row(event, body, "query")

                def store(conn: sa.Connection) -> None:
                    (stored,) = queues.insert_inbox(conn, [row], now)
                    if stored is None and row.dedup_key is not None:
                        # VOD's answer is an event already received, which may have changed
                        # nothing then (no run had this task yet): it applies to this run now.
                        queues.requeue_unapplied(conn, row.dedup_key)
                    tasks.record_poll(conn, task_id, now=now, status=status, next_poll_at=None)

                await self.db.write(store)
                return "recovered"
        age = now - task["submitted_at"]
        if age > TASK_QUERY_WINDOW:
            return await self._lost(task, f"task {task_id} has not finished within 72 hours")
        gap = next_poll(task["polls"], self.poll_gap, now)
        await self.db.write(
            tasks.record_poll, task_id, now=now, status=status or "?", next_poll_at=gap
        )
        return "still_running"

    async def _lost(self, task: dict[str, Any], reason: str) -> str:
        now = self.now
        event = m.TaskEvent(
            task_id=task["task_id"],
            event_type="TaskQuery",
            event_key=f"lost/{task['task_id']}",
            success=False,
            error_class=ErrorClass.INTERNAL,
            message=reason,
        )
        batch = Batch()

        def give_up(conn: sa.Connection) -> None:
            tasks.record_poll(conn, task["task_id"], now=now, status="lost", next_poll_at=None)
            self.runner.transition(conn, task["run_id"], event, now, batch)

        await self.db.write(give_up)
        self.runner.announce(batch)
        return "lost"

    async def expire_leases(self) -> dict[str, int]:
        expired = await self.db.write(queues.expire_outbox_leases, self.now)
        if expired:
            self.runner.outbox_wake.set()
        return {"expired_leases": len(expired)}

    async def close_sessions(self) -> dict[str, int]:
        batch = Batch()

        def close(conn: sa.Connection) -> tuple[int, int]:
            now = self.now
            started = 0
            due = windows.claim_due_windows(conn, now, self.batch)
            for window in due:
                workflow, started_by = self._session_workflow(conn, window)
                run_id = None
                if workflow is not None:
                    context = triggers.session_context(list(window["segments"]))
                    run_id = self.runner.start_run(
                        conn,
                        workflow,
                        context,
                        dedup_key=f"{workflow.spec.name}/stream.session/{window['id']}",
                        now=now,
                        batch=batch,
                        started_by=started_by,
                    )
                    started += run_id is not None
                windows.close_window(conn, window["id"], run_id)
            return len(due), started

        closed, started = await self.db.write(close)
        self.runner.announce(batch)
        return {"closed": closed, "runs_started": started}

    def _session_workflow(
        self, conn: sa.Connection, window: dict[str, Any]
    ) -> tuple[LoadedWorkflow | None, str]:
        """The workflow a closing session runs, and what the run's history says started it.

        The version it opened under, as a run keeps the version it started with: its
        recordings were accepted under it, and a workflow changed since (or removed) may no
        longer collect sessions at all. A session opened before vodflow recorded that runs
        the version loaded now, or the one loaded last when the workflow is gone. Cancel the
        session (or its run) if it is not wanted."""
        name, stream_id = window["workflow"], window["stream_id"]
        started_by = (
            f"stream {stream_id} quiet since {window['last_activity_at'].isoformat()} "
            f"({len(window['segments'])} recording(s))"
        )
        opened_under = window.get("version")
        if opened_under is not None:
            workflow = self.runner.registry.loaded(conn, opened_under)
            current = self.runner.registry.current.get(name)
            if workflow is not None:
                if current is None:
                    why = f"workflow {name} is no longer loaded, so its version {opened_under}"
                elif current.version != opened_under:
                    why = f"workflow {name} is at version {current.version} now; {opened_under}"
                else:
                    return workflow, started_by
                log.warning("session %s of stream %s: %s runs it", window["id"], stream_id, why)
                return workflow, f"{started_by}; {why} runs it (the version it opened under)"
        workflow = self.runner.registry.current.get(name)
        if workflow is not None:
            return workflow, started_by
        gone = f"workflow {name} is no longer loaded"
        workflow = self.runner.registry.last_loaded(conn, name)
        if workflow is None:
            log.error(
                "%s and no version of it is recorded: session %s of stream %s closes without a run",
                *(gone, window["id"], stream_id),
            )
            return None, started_by
        log.warning(
            "%s; session %s of stream %s runs its version %s",
            *(gone, window["id"], stream_id, workflow.version),
        )
        return workflow, f"{started_by}; {gone}, so its version {workflow.version} runs it"

    async def prune(self) -> dict[str, int]:
        """Forget handled events, done commands and spent timers past the retention period, and
        finished runs past the run retention."""
        found = await self.db.write(queues.prune, self.now - self.retention)
        if self.run_retention is not None:
            # In transactions of their own, so callbacks are committed in between.
            cutoff, found["runs"] = self.now - self.run_retention, 0
            for _ in range(RUN_PRUNE_ROUNDS):
                gone = await self.db.write(run_store.prune_finished, cutoff)
                found["runs"] += gone
                if gone < run_store.PRUNE_RUNS:
                    break
        gone = await self.db.write(job_store.forget_silent, self.now - SILENT_REPLICA)
        return {**{f"pruned_{name}": count for name, count in found.items()}, "forgot_jobs": gone}

    async def checkpoint(self) -> dict[str, int]:
        return {"wal_frames": await self.db.checkpoint()}

    async def rematch_orphans(self) -> dict[str, int]:
        """Orphans whose task is known by now go back to the runner; old ones expire.

        An orphan procedure event also matches by its sub-tasks' IDs (see
        ``runner.procedure_of_tasks``), and a procedure's events whose IDs no run recorded by
        their fileId once their run's other events came in (see ``correlate``). The runner wakes
        an orphan in the transaction that records its task ID. On PostgreSQL that transaction
        can commit while another is still deciding the same event is an orphan (neither sees the
        other's write), so the sweep looks again: no event waits longer than one sweep interval
        for a task that exists, or for the event that ties it to its run by its file.
        """

        def rematch(conn: sa.Connection) -> tuple[int, int]:
            orphans = queues.orphans(conn, self.batch)
            waiting = {o.id: (o.task_id, *correlate.sub_task_ids(o.body)) for o in orphans}
            known = tasks.find_tasks(conn, {i for ids in waiting.values() for i in ids})
            ready = {o for o, ids in waiting.items() if any(i in known for i in ids)}
            strays = [
                correlate.Stray(o.task_id, o.event_type, o.file_id, waiting[o.id][1:])
                for o in orphans
                if o.id not in ready
            ]
            ties = correlate.by_file(conn, strays)
            ready |= {o.id for o in orphans if o.id not in ready and o.task_id in ties}
            found = queues.requeue(conn, sorted(ready))
            expired = queues.expire_orphans(conn, self.now - self.orphan_ttl, self.now)
            return found, expired

        found, expired = await self.db.write(rematch)
        if found:
            self.runner.inbox_wake.set()
        return {"rematched": found, "unmatched": expired}

    async def pull_events(self) -> dict[str, int]:
        answer = await self.client.pull_event()
        items = pull_event_items(answer)
        if not items:
            return {"pulled": 0}
        rows = []
        for entry, (handle, event) in zip(answer.event_list, items, strict=True):
            if isinstance(event, MalformedEvent):
                # Kept whole, as a pushed body vodflow cannot read is: once confirmed, VOD
                # never sends it again, so the inbox is the only copy left.
                content = entry.event_content
                rows.append(
                    NewInboxEvent(
                        source="pull",
                        event_type="malformed",
                        dedup_key=None,
                        body=(
                            content
                            if isinstance(content, str)
                            else json.dumps(content, ensure_ascii=False)
                        ),
                        status=InboxStatus.INVALID,
                        note=f"msgHandle {handle}: {event}",
                    )
                )
            else:
                rows.append(inbox_row(event, json.dumps(event.raw, ensure_ascii=False), "pull"))
        await self.db.write(queues.insert_inbox, rows, self.now)
        self.runner.inbox_wake.set()
        # Confirmed only after the inbox committed: a crash before this line means VOD sends
        # them again, and the dedup keys make the second copy a no-op.
        await self.client.confirm_event([handle for handle, _ in items])
        return {"pulled": len(items)}
