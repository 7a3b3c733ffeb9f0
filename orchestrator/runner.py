"""The runner: drains the inbox and the outbox through the state machine.

Inbox: every pending event is applied in a savepoint of one transaction per batch: triggers start
runs (or join a stream's session window), task events are correlated with the run that recorded
their task ID and fed to the machine, and the machine's commands become outbox and timer rows in
the same transaction. An event whose task is not known yet waits as an orphan; the transaction
that records a task ID makes its orphans pending again, so they are applied right after. A
procedure's event that no run recorded the ID of is matched by its sub-tasks' IDs instead, and
recorded on their run without being applied (``procedure_of_tasks`` says why); one naming no
sub-task IDs, and a sub-task's event of a procedure a run recorded by the procedure's ID, are tied
to their run by fileId and recorded there, not applied (``correlate`` says how).

Outbox: due commands are claimed with a lease, carried out (VOD calls, webhooks, output checks)
outside any transaction, and their outcome is applied to the machine in the transaction that
marks the command done. A process that dies between the call and that transaction leaves the
command in flight; when its lease expires the sweeper hands it back and it is sent again, looking
for the first send's tasks before sending (and VOD's 50005 covers the rest), so no job runs twice.

Leases are heartbeats, as a Temporal activity's or a pg-boss job's are: the runner claims no more
commands than it can start at once (its concurrency), and while it holds a command (waiting for the
shared VOD quota, or for VOD's answer) it extends the command's lease every third of the lease.
So a command is taken over only when its owner stopped renewing it (it died, or could not reach
the database for a whole lease), never because the quota made it wait.

Both loops wake at once when rows are added in this process and poll as a fallback for rows other
processes add.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import JsonValue, TypeAdapter

from orchestrator import correlate, triggers
from orchestrator import machine as m
from orchestrator.actions import Actions, Interrupted, failed
from orchestrator.registry import Registry
from orchestrator.spec import LoadedWorkflow, Manual, StreamSession, Workflow
from orchestrator.store import driver, queues, views, windows
from orchestrator.store.db import UNREACHABLE, Database, log_failure
from orchestrator.store.queues import InboxStatus, NewInboxEvent
from orchestrator.store.runs import (
    Changes,
    create_run,
    load_run,
    load_runs,
    save_decision,
    step_progress,
)
from orchestrator.store.tasks import TaskOwner, find_tasks
from orchestrator.vod.errors import ErrorClass, MalformedEvent
from orchestrator.vod.events import PROCEDURE_EVENT, VodEvent, parse_event

log = logging.getLogger("vodflow.runner")
COMMANDS: TypeAdapter[m.Command] = TypeAdapter(m.Command)

EVENT_TASK_KINDS = {
    "TranscodeComplete": "transcode",
    "CreateImageSpriteComplete": "imageSprite",
    PROCEDURE_EVENT: "procedure",
    "ClipComplete": "clip",
    "ConcatComplete": "concat",
    "CreateSnapshotByTimeOffsetComplete": "snapshotByTimeOffset",
}


def _is_task_event(event: VodEvent) -> bool:
    """A task's result (applied in groups), not a trigger that happens to carry a task ID."""
    return bool(event.task_id) and not triggers.contexts_for(event)


GIVE_UP_AFTER = 3
"""Tries of an outbox command that raised (a fault in vodflow, not an answer from VOD or a
webhook, which are outcomes) before its failure is given to the run as the attempt's outcome."""


INBOX_DEDUP_MAX = 200
"""The length of ``inbox_events.dedup_key``."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id(now: datetime) -> str:
    """Sortable by creation time: milliseconds in hex, then randomness."""
    return f"run_{int(now.timestamp() * 1000):012x}{secrets.token_hex(5)}"


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Transition:
    """A committed change to a run, for listeners (logs, metrics, live updates)."""

    run_id: str
    workflow: str
    entry: m.HistoryEntry
    status: m.RunStatus
    commands: tuple[m.Command, ...]
    state: m.RunState


Listener = Callable[[Transition], None]


@dataclass
class Batch:
    """What one transaction did, announced once it committed."""

    transitions: list[Transition] = field(default_factory=list)
    outbox_rows: int = 0
    woke_orphans: int = 0

    def take(self, other: Batch) -> None:
        """What ``other`` did, as part of this transaction's (a savepoint that held)."""
        self.transitions.extend(other.transitions)
        self.outbox_rows += other.outbox_rows
        self.woke_orphans += other.woke_orphans

    def record(self, decision: m.Decision) -> None:
        self.outbox_rows += sum(isinstance(c, m.OUTBOUND) for c in decision.commands)
        self.transitions.append(
            Transition(
                run_id=decision.state.run_id,
                workflow=decision.state.workflow,
                entry=decision.history,
                status=decision.state.status,
                commands=decision.commands,
                state=decision.state,
            )
        )


class TriggerRefused(Exception):
    """A manual trigger the workflow does not accept; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Runner:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        actions: Actions,
        *,
        default_expected: timedelta = m.DEFAULT_EXPECTED,
        clock: Callable[[], datetime] = utcnow,
        owner: str | None = None,
        batch: int = 64,
        lease: timedelta = timedelta(minutes=2),
        poll_every: float = 1.0,
        concurrency: int = 16,
    ) -> None:
        self.db = db
        self.registry = registry
        self.actions = actions
        self.default_expected = default_expected
        self.clock = clock
        self.owner = owner or replica_name()
        self.batch = batch
        self.lease = lease
        self.poll_every = poll_every
        self.inbox_wake = asyncio.Event()
        self.outbox_wake = asyncio.Event()
        self.listeners: list[Listener] = []
        self.concurrency = concurrency
        self._held: dict[int, str] = {}
        """Outbox commands this runner claimed and has not recorded yet: id -> idempotency key."""
        self._lost: set[int] = set()
        self._parsed: dict[int, VodEvent] = {}
        self._inflight: set[asyncio.Task[None]] = set()

    # --- the loops ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run both loops until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._loop(self.inbox_wake, self.drain_inbox, "inbox"))
            group.create_task(self._loop(self.outbox_wake, self.drain_outbox, "outbox"))
            group.create_task(self._heartbeat())

    async def _loop(self, wake: asyncio.Event, drain: Callable[[], Any], name: str) -> None:
        while True:
            wake.clear()
            try:
                busy = await drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log_failure(log, f"{name} drain")
                busy = 0
                await asyncio.sleep(self.poll_every)
            if busy:
                continue  # more may be waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.poll_every)

    def announce(self, batch: Batch) -> None:
        for transition in batch.transitions:
            step = transition.entry.step or "-"
            log.info(
                "%s -> %s: %s",
                transition.entry.from_status,
                transition.entry.to_status,
                transition.entry.reason,
                extra={
                    "run_id": transition.run_id,
                    "step": step,
                    "task_id": transition.entry.detail.get("task_id", "-"),
                    "input": transition.entry.input,
                },
            )
            for listener in self.listeners:
                try:
                    listener(transition)
                except Exception:
                    log.exception("a transition listener failed")
        if batch.outbox_rows:
            self.outbox_wake.set()
        if batch.woke_orphans:
            self.inbox_wake.set()

    # --- transitions ----------------------------------------------------------------------

    def transition(
        self, conn: sa.Connection, run_id: str, event: m.Input, now: datetime, batch: Batch
    ) -> m.Decision | None:
        """Load, decide, save: one transition inside the caller's transaction."""
        before = load_run(conn, run_id, for_update=True)
        if before is None:
            return None
        spec = self.registry.spec_for(conn, before.version)
        decision = self._decide(spec, before, event, now)
        self._save(conn, before, decision, now, batch)
        return decision

    def _decide(
        self, spec: Workflow, state: m.RunState, event: m.Input, now: datetime
    ) -> m.Decision:
        """The machine's decision, with this deployment's wait for a task's callback."""
        return m.decide(spec, state, event, now, expected=self.default_expected)

    def _save(
        self,
        conn: sa.Connection,
        before: m.RunState,
        decision: m.Decision,
        now: datetime,
        batch: Batch,
    ) -> None:
        new_tasks = save_decision(conn, before, decision, now=now)
        if new_tasks:
            batch.woke_orphans += queues.wake_orphans(conn, [t.task_id for t in new_tasks])
        batch.record(decision)

    def start_run(
        self,
        conn: sa.Connection,
        workflow: LoadedWorkflow,
        context: dict[str, JsonValue],
        *,
        dedup_key: str | None,
        now: datetime,
        batch: Batch,
        event_id: int | None = None,
        started_by: str = "",
    ) -> str | None:
        """Create a run and apply its trigger. None when the dedup key already started one."""
        spec = workflow.spec
        run_id = new_run_id(now)
        state = m.new_run(run_id, spec, workflow.version, context, now)
        stream_id = context.get("streamId")
        file_id = context.get("fileId")
        created = create_run(
            conn,
            state,
            {s.name: s.kind for s in spec.steps},
            dedup_key=dedup_key,
            stream_id=stream_id if isinstance(stream_id, str) else None,
            file_id=file_id if isinstance(file_id, str) else None,
            trigger_event_id=event_id,
        )
        if not created:
            return None
        decision = self._decide(spec, state, m.Trigger(event=started_by), now)
        self._save(conn, state, decision, now, batch)
        return run_id

    async def apply(self, run_id: str, event: m.Input) -> m.Decision | None:
        """Apply one input in its own transaction (operators' actions, timers, poll results)."""
        batch = Batch()
        decision = await self.db.write(self.transition, run_id, event, self.clock(), batch)
        self.announce(batch)
        return decision

    async def trigger_manual(
        self,
        workflow_name: str,
        params: dict[str, JsonValue],
        *,
        idempotency_key: str | None = None,
        actor: str = "api",
    ) -> tuple[str, bool]:
        """Start a run of a workflow with a manual trigger. Returns (run ID, newly started).

        The request is recorded in the inbox like every other event. With an idempotency key a
        repeated request returns the run the first one started; the same key with other params
        is refused (409), as a payment API refuses a reused key: it is a client's mistake, and
        answering with the first run would hide that the second request started nothing.
        """
        workflow = self.registry.current.get(workflow_name)
        if workflow is None:
            known = ", ".join(sorted(self.registry.current)) or "none"
            raise TriggerRefused(404, f"no workflow named {workflow_name!r} (known: {known})")
        manual = [t for t in workflow.spec.triggers if isinstance(t, Manual)]
        if not manual:
            raise TriggerRefused(
                422, f"workflow {workflow_name!r} has no manual trigger; add `- type: manual`"
            )
        # A null or empty value is no value: it would render as "null" or "" into a request.
        missing = [name for name in manual[0].params if params.get(name) in (None, "")]
        if missing:
            raise TriggerRefused(
                422,
                f"workflow {workflow_name!r} needs params: {', '.join(missing)} "
                "(each given, not null or empty)",
            )
        if idempotency_key is not None and not idempotency_key.strip():
            raise TriggerRefused(
                422, "idempotencyKey is empty: give a key, or leave it out for no deduplication"
            )
        if not manual[0].matches(params):
            raise TriggerRefused(
                422, f"params do not match the manual trigger's match: {manual[0].match}"
            )
        dedup = f"{workflow_name}/manual/{idempotency_key}" if idempotency_key else None
        # The inbox's dedup key column is shorter than a run's (200 against 300): a long key is
        # kept there as its hash (the run's dedup key, in full, is what answers a repeat).
        inbox_dedup = dedup
        if dedup is not None and len(dedup) > INBOX_DEDUP_MAX:
            digest = hashlib.sha256(dedup.encode()).hexdigest()
            inbox_dedup = f"{workflow_name}/manual/sha256:{digest}"
        body = json.dumps(
            {
                "workflow": workflow_name,
                "params": params,
                "actor": actor,
                "idempotencyKey": idempotency_key,
            },
            ensure_ascii=False,
        )
        row = NewInboxEvent(
            source="manual",
            event_type="manual",
            dedup_key=inbox_dedup,
            body=body,
            status=InboxStatus.APPLIED,
        )
        batch = Batch()

        def start(conn: sa.Connection) -> tuple[str, bool]:
            now = self.clock()
            (event_id,) = queues.insert_inbox(conn, [row], now)
            run_id = None
            if event_id is not None:
                run_id = self.start_run(
                    conn,
                    workflow,
                    params,
                    dedup_key=dedup,
                    now=now,
                    batch=batch,
                    event_id=event_id,
                    started_by=f"manual trigger by {actor}",
                )
            if run_id is None or event_id is None:
                existing = views.run_by_dedup_key(conn, dedup or "")
                if existing is None:
                    raise TriggerRefused(409, "an equal request is being processed; try again")
                existing_id, context = existing
                if context != params:
                    raise TriggerRefused(
                        409,
                        f"idempotency key {idempotency_key!r} already started run {existing_id} "
                        f"with other params ({json.dumps(context, ensure_ascii=False)}); "
                        "use a new key for a new run",
                    )
                return existing_id, False
            queues.mark_inbox(
                conn, event_id, InboxStatus.APPLIED, now=now, run_id=run_id, note="manual trigger"
            )
            return run_id, True

        result = await self.db.write(start)
        self.announce(batch)
        return result

    # --- inbox ----------------------------------------------------------------------------

    async def drain_inbox(self) -> int:
        batch = Batch()
        count = await self.db.write(self._drain_inbox, batch)
        self.announce(batch)
        return count

    def apply_received(
        self, conn: sa.Connection, received: list[tuple[int, VodEvent]], now: datetime
    ) -> Callable[[], None]:
        """Apply the task events among inbox rows just inserted, in the inserting transaction.

        Called by the receiver's group commit: a task callback's transition commits with its
        inbox row, and its answer waits for both. Everything else, and everything when applying
        fails (rolled back to a savepoint, logged), stays pending for ``drain_inbox``. Returns
        what to do once the transaction committed.
        """
        batch = Batch()
        tasks = [(event_id, event) for event_id, event in received if _is_task_event(event)]
        left = [(event_id, event) for event_id, event in received if not _is_task_event(event)]
        if tasks:
            try:
                with driver.savepoint(conn):
                    outcomes = self._apply_task_events(conn, tasks, now, batch)
                    queues.mark_inbox_many(conn, outcomes, now)
            except Exception:
                log.exception("applying %d task events on receipt failed; left pending", len(tasks))
                batch = Batch()
                left = received
        for event_id, event in left:
            self.remember(event_id, event)

        def after_commit() -> None:
            self.announce(batch)
            if left:
                self.inbox_wake.set()

        return after_commit

    def remember(self, event_id: int, event: VodEvent) -> None:
        """The receiver already parsed this inbox event: spare the runner parsing it again."""
        if len(self._parsed) > 10 * self.batch:
            self._parsed.clear()  # nobody is draining (another replica is): stop caching
        self._parsed[event_id] = event

    def _event_of(self, row: dict[str, Any]) -> VodEvent | MalformedEvent:
        event = self._parsed.pop(row["id"], None)
        if event is not None:
            return event
        try:
            return parse_event(row["body"], source=row["source"])
        except MalformedEvent as exc:
            return exc

    def _drain_inbox(self, conn: sa.Connection, batch: Batch) -> int:
        """Apply a batch of pending events in this transaction.

        Task events, the bulk of the traffic, are applied together: their tasks and runs are
        read with a few queries, the machine decides each in order (a run's events see each
        other's effect), and the changes are written with one statement per table. Triggers
        and the rest are applied one by one, each in a savepoint.
        """
        rows = queues.pending_inbox(conn, self.batch)
        now = self.clock()
        outcomes: list[tuple[int, str, str | None, str | None]] = []
        task_events: list[tuple[int, VodEvent]] = []
        for row in rows:
            event = self._event_of(row)
            if isinstance(event, MalformedEvent):
                outcomes.append((row["id"], InboxStatus.INVALID, None, str(event)))
                continue
            if _is_task_event(event):
                task_events.append((row["id"], event))
                continue
            try:
                with driver.savepoint(conn):
                    status, run_id, note = self._apply_event(conn, event, row, now, batch)
            except Exception as exc:
                log.exception("applying inbox event %s failed", row["id"])
                status, run_id, note = InboxStatus.FAILED, None, f"{type(exc).__name__}: {exc}"
            outcomes.append((row["id"], status, run_id, note))
        if task_events:
            outcomes.extend(self._apply_task_events_apart(conn, task_events, now, batch))
        queues.mark_inbox_many(conn, outcomes, now)
        return len(rows)

    def _apply_task_events_apart(
        self,
        conn: sa.Connection,
        items: list[tuple[int, VodEvent]],
        now: datetime,
        batch: Batch,
    ) -> list[tuple[int, str, str | None, str | None]]:
        """``_apply_task_events``, together in a savepoint; should the database refuse that
        (one event's change it cannot store), each event alone, so the one that fails is
        marked failed (for an operator to replay once fixed) and the others are applied,
        instead of the whole batch failing again at every drain."""
        tried = self._in_savepoint(conn, items, now, batch)
        if not isinstance(tried, Exception):
            return tried
        if len(items) > 1:
            log.warning(
                "applying %d task events together failed (%s); each alone", len(items), tried
            )
            tried_alone = [(item, self._in_savepoint(conn, [item], now, batch)) for item in items]
        else:
            tried_alone = [(items[0], tried)]
        outcomes: list[tuple[int, str, str | None, str | None]] = []
        for (event_id, _), result in tried_alone:
            if isinstance(result, Exception):
                log.error("applying inbox event %s failed", event_id, exc_info=result)
                note = f"{type(result).__name__}: {result}"
                outcomes.append((event_id, InboxStatus.FAILED, None, note))
            else:
                outcomes.extend(result)
        return outcomes

    def _in_savepoint(
        self, conn: sa.Connection, items: list[tuple[int, VodEvent]], now: datetime, batch: Batch
    ) -> list[tuple[int, str, str | None, str | None]] | Exception:
        """The events' outcomes, their effects added to ``batch``; or, rolled back to the
        savepoint, what made them fail."""
        part = Batch()
        try:
            with driver.savepoint(conn):
                outcomes = self._apply_task_events(conn, items, now, part)
        except UNREACHABLE:
            raise  # not these events' fault: the drain is tried again, nothing marked failed
        except Exception as exc:
            return exc
        batch.take(part)
        return outcomes

    def _apply_task_events(
        self,
        conn: sa.Connection,
        items: list[tuple[int, VodEvent]],
        now: datetime,
        batch: Batch,
    ) -> list[tuple[int, str, str | None, str | None]]:
        owners = find_tasks(conn, {event.task_id for _, event in items if event.task_id})
        states = load_runs(conn, {o.run_id for o in owners.values()}, for_update=True)
        unowned = [e for _, e in items if e.task_id not in owners and e.kind == PROCEDURE_EVENT]
        members = find_tasks(conn, {i for e in unowned for i in e.sub_task_ids}) if unowned else {}
        strays = [stray_of(e) for _, e in items if e.task_id not in owners]
        ties = correlate.by_file(conn, strays) if strays else {}
        changes = Changes()
        decided: list[m.Decision] = []
        outcomes: list[tuple[int, str, str | None, str | None]] = []
        for event_id, event in items:
            assert event.task_id is not None
            owner = owners.get(event.task_id)
            if owner is None:
                known = procedure_of_tasks(event, members)
                if known is not None:
                    outcomes.append((event_id, InboxStatus.IGNORED, *known))
                    continue
                tie = ties.get(event.task_id)
                if tie is not None:
                    outcomes.append((event_id, InboxStatus.IGNORED, tie.run_id, tie.note))
                    continue
                note = f"no run has recorded task {event.task_id} yet"
                if event.kind == PROCEDURE_EVENT and event.sub_task_ids:
                    note += f" (nor its tasks {', '.join(event.sub_task_ids)})"
                outcomes.append((event_id, InboxStatus.ORPHAN, None, note))
                continue
            state = states.get(owner.run_id)
            try:
                if state is None:
                    raise LookupError(f"run {owner.run_id} of task {owner.task_id} is missing")
                spec = self.registry.spec_for(conn, state.version)
                decision = self._decide(spec, state, task_input(event, owner.task_id), now)
            except Exception as exc:
                log.exception("applying inbox event %s failed", event_id)
                note = f"{type(exc).__name__}: {exc}"
                outcomes.append((event_id, InboxStatus.FAILED, owner.run_id, note))
                continue
            changes.add(state, decision, now)
            states[owner.run_id] = decision.state
            decided.append(decision)
            prefix = "" if owner.exact else f"matched {owner.task_id} by its case-folded ID; "
            outcomes.append(
                (event_id, _event_status(decision), owner.run_id, prefix + decision.history.reason)
            )
        new_tasks = changes.flush(conn)
        if new_tasks:
            batch.woke_orphans += queues.wake_orphans(conn, [t.task_id for t in new_tasks])
        for decision in decided:
            batch.record(decision)
        return outcomes

    def _apply_event(
        self,
        conn: sa.Connection,
        event: VodEvent,
        row: dict[str, Any],
        now: datetime,
        batch: Batch,
    ) -> tuple[str, str | None, str]:
        if triggers.contexts_for(event):
            return self._trigger(conn, event, row, now, batch)
        if event.kind == "lvb.stream_end" and event.stream_id:
            quiet = {
                w.spec.name: t.quiet
                for w in self.registry.all()
                for t in w.spec.triggers
                if isinstance(t, StreamSession)
            }
            touched = windows.touch_stream(conn, event.stream_id, now, quiet)
            what = f"stream {event.stream_id} ended"
            if touched:
                return InboxStatus.APPLIED, None, f"{what}: its session waits"
            return InboxStatus.IGNORED, None, f"{what}; no open session"
        return InboxStatus.IGNORED, None, f"{event.kind} carries no task ID to correlate"

    def _trigger(
        self,
        conn: sa.Connection,
        event: VodEvent,
        row: dict[str, Any],
        now: datetime,
        batch: Batch,
    ) -> tuple[str, str | None, str]:
        matches = triggers.match(event, self.registry.all())
        if not matches:
            return InboxStatus.IGNORED, None, "no workflow's trigger matches this event"
        notes: list[str] = []
        first_run: str | None = None
        for found in matches:
            spec = found.workflow.spec
            trigger = spec.triggers[found.trigger_index]
            if isinstance(trigger, StreamSession):
                stream_id = str(found.context.fields["streamId"])
                segment = dict(found.context.fields)
                collected = windows.add_segment(
                    conn,
                    workflow=spec.name,
                    stream_id=stream_id,
                    segment=segment,
                    now=now,
                    quiet=trigger.quiet,
                    max_length=trigger.max_length,
                    version=found.workflow.version,
                )
                session = f"{spec.name}'s session {collected.window_id} of stream {stream_id}"
                if collected.ended is not None:
                    notes.append(
                        f"recording {segment.get('fileId')} was in {session}, "
                        f"{collected.ended}: not collected again"
                    )
                else:
                    verb = "joined" if collected.added else "updated its recording in"
                    notes.append(f"{verb} {session}")
                continue
            run_id = self.start_run(
                conn,
                found.workflow,
                found.context.fields,
                dedup_key=found.dedup_key,
                now=now,
                batch=batch,
                event_id=row["id"],
                started_by=f"inbox event {row['id']} ({event.kind} from {event.source})",
            )
            if run_id is None:
                notes.append(f"{spec.name}: a run for {found.context.identity} already exists")
            else:
                first_run = first_run or run_id
                notes.append(f"started {spec.name} run {run_id}")
        return InboxStatus.APPLIED, first_run, "; ".join(notes)

    # --- outbox ---------------------------------------------------------------------------

    async def drain_outbox(self) -> int:
        """Claim as many due commands as can start now (never more: a claimed command waiting
        for a free slot would only wait out its lease) and start them."""
        free = min(self.batch, self.concurrency - len(self._held))
        if free <= 0:
            return 0  # a command that ends wakes the loop
        rows = await self.db.write(
            queues.claim_outbox, self.owner, self.clock(), self.lease, free, list(self._held)
        )
        for row in rows:
            self._held[row["id"]] = row["idempotency_key"]
            task = asyncio.create_task(self._perform(row))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(rows)

    async def renew_leases(self) -> int:
        """Extend the lease of every command this runner holds to a full lease from now.

        Only rows still in flight under this runner's name are extended: one the sweeper handed
        back (this runner missed a whole lease of renewals) is another's now, and is logged.
        Returns how many were renewed."""
        held = dict(self._held)
        if not held:
            return 0
        renewed, lost = await self.db.write(
            queues.renew_outbox_leases, self.owner, list(held), self.clock(), self.lease
        )
        for command_id in set(lost) - self._lost:
            self._lost.add(command_id)
            log.warning(
                "outbox command %s: lease lost while in progress (not renewed for a whole lease); "
                "another process may send it again",
                held[command_id],
            )
        return len(renewed)

    async def _heartbeat(self) -> None:
        """Renew held leases every third of the lease, so two renewals may fail in a row."""
        every = max(self.lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(every)
            try:
                await self.renew_leases()
            except asyncio.CancelledError:
                raise
            except Exception:
                log_failure(log, "renewing outbox leases")

    async def _perform(self, row: dict[str, Any]) -> None:
        command: m.Command | None = None
        try:
            command = COMMANDS.validate_python(row["payload"])
            outcome = await self.actions.perform(
                command,
                tries=row["tries"],
                since=row["created_at"],
                unwanted=lambda: self.db.write(
                    _unwanted, row, self.owner, self.clock(), self.lease, command
                ),
            )
            await self._record(row, outcome)
        except Interrupted as exc:
            log.info("outbox command %s handed back: %s", row["idempotency_key"], exc)
            await self._release(row, timedelta(0), str(exc))
        except Exception as exc:
            log.exception("outbox command %s failed", row["idempotency_key"])
            error = f"{type(exc).__name__}: {exc}"
            if command is not None and row["tries"] >= GIVE_UP_AFTER:
                # Tried often enough: the failure goes to the run (its history, its retry policy)
                # instead of the command being tried again forever, unseen, while the run waits.
                what = f"{command.kind} failed {row['tries']} times in vodflow: {error}"
                try:
                    await self._record(row, failed(command, what))
                    return
                except Exception:
                    log.exception("outbox command %s: recording its failure failed", row["id"])
            await self._release(row, timedelta(seconds=min(60, 2 ** row["tries"])), error)
        finally:
            self._held.pop(row["id"], None)
            self._lost.discard(row["id"])
            self.outbox_wake.set()  # a slot is free: claim what waits

    async def _release(self, row: dict[str, Any], after: timedelta, error: str) -> None:
        """Give a command this runner claimed back to the outbox, due ``after`` from now."""
        await self.db.write(
            queues.release_outbox,
            row["id"],
            self.owner,
            tries=row["tries"],
            retry_at=self.clock() + after,
            error=error,
        )

    async def _record(self, row: dict[str, Any], outcome: m.Input) -> None:
        """Mark the command done with its outcome and apply the outcome to its run, together."""
        batch = Batch()

        def record(conn: sa.Connection) -> None:
            now = self.clock()
            result = _not_anothers(conn, row["run_id"], outcome)
            mine = queues.finish_outbox(
                conn,
                row["id"],
                self.owner,
                tries=row["tries"],
                now=now,
                result=result.model_dump(mode="json"),
                error=getattr(result, "message", None),
            )
            if mine:
                self.transition(conn, row["run_id"], result, now, batch)
            else:
                log.warning(
                    "outbox command %s: lease lost before its outcome was recorded",
                    row["idempotency_key"],
                )

        await self.db.write(record)
        self.announce(batch)

    async def idle(self) -> None:
        """Wait until every command this runner started has been recorded (tests, shutdown)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)


SENT_WHILE = {
    m.Submit: m.StepStatus.SUBMITTING,
    m.Notify: m.StepStatus.SUBMITTING,
    m.Verify: m.StepStatus.VERIFYING,
}
"""The status of a command's step while the command is wanted (a Recover is never unwanted)."""


def _unwanted(
    conn: sa.Connection,
    row: Mapping[str, Any],
    owner: str,
    now: datetime,
    lease: timedelta,
    command: m.Command,
) -> str | None:
    """Why an outbox command is no longer to be carried out by this process, or None while it
    is; asked right before it goes out.

    A command waits in the outbox (behind others, or for VOD's quota) after the transition that
    wrote it; if its run was cancelled, or ended otherwise, meanwhile, sending it would start a
    VOD job (or a webhook, or a check) nobody waits for, as a workflow engine does not start the
    activities of a cancelled workflow. And a process that stood still past its lease (a paused
    VM, a database it could not reach) may find the command handed to another process, which
    has sent it: its lease is renewed here, or the command is not sent (see
    :func:`queues.hold_outbox_lease`)."""
    assert isinstance(command, m.OUTBOUND)
    if not queues.hold_outbox_lease(conn, row["id"], owner, row["tries"], now, lease):
        return "its lease ran out while this process held it: it was handed back for another try"
    run_id = row["run_id"]
    found = step_progress(conn, run_id, command.step)
    if found is None:
        return f"run {run_id} has no step {command.step}"
    status, step_status, attempt = m.RunStatus(found[0]), m.StepStatus(found[1]), found[2]
    if status.terminal:
        return f"the run had already ended ({status})"
    if attempt != command.attempt:
        return f"step {command.step} is on attempt {attempt}, this was attempt {command.attempt}"
    if step_status is not SENT_WHILE[type(command)]:
        return f"step {command.step} is {step_status} already"
    return None


def _not_anothers(conn: sa.Connection, run_id: str, outcome: m.Input) -> m.Input:
    """A recovered submit (VOD's 50005, or a resend finding its job) whose job another run
    recorded is not this run's: two runs asked for the same procedure on the same file, and VOD
    refused the second while the first's job runs. A task ID belongs to one run, so taking it
    would leave this run waiting on events that go to the other; the attempt fails instead, to
    be retried (with its own job) once the other is done."""
    if not isinstance(outcome, m.SubmitSucceeded) or not outcome.recovered:
        return outcome
    owners = find_tasks(conn, {t.task_id for t in outcome.tasks})
    taken = sorted({f"{o.task_id} (run {o.run_id})" for o in owners.values() if o.run_id != run_id})
    if not taken:
        return outcome
    return m.SubmitFailed(
        step=outcome.step,
        attempt=outcome.attempt,
        error_class=ErrorClass.INTERNAL,
        message=f"the job VOD runs for this request is another run's: {', '.join(taken)}",
    )


def procedure_of_tasks(event: VodEvent, members: Mapping[str, TaskOwner]) -> tuple[str, str] | None:
    """(run ID, note) when ``event`` is the ProcedureStateChanged of tasks a run recorded.

    With the answer shape that names each task (``transcodeTaskId``, ``imageSpriteTaskId``, ...),
    a run records its tasks' IDs and never the procedure's, so the procedure's own event carries
    an ID no run knows; it names its sub-tasks' IDs instead (the embedded engine's bodies do).
    Such an event is matched to the run by those IDs and recorded there, but it changes nothing:
    each sub-task's own event is what the step waits for and already applies that task's result,
    so applying the procedure's summary too would apply every result twice (and a lost per-task
    event is recovered by querying that task, not from the summary). When the run recorded the
    procedure's ID itself (the single-``vodTaskId`` answer), its event is the awaited one and is
    applied like any task event; that path never reaches this function.
    """
    if event.kind != PROCEDURE_EVENT:
        return None
    found = [(task_id, members[task_id]) for task_id in event.sub_task_ids if task_id in members]
    if not found:
        return None
    run_id, step = found[0][1].run_id, found[0][1].step
    tasks = ", ".join(member.task_id for _, member in found)
    note = (
        f"procedure {event.task_id} of step {step}'s tasks {tasks}: recorded, not applied "
        "(each task's own event applies its result)"
    )
    return run_id, note


def stray_of(event: VodEvent) -> correlate.Stray:
    """An event whose task ID no run recorded, for correlating by its file."""
    return correlate.Stray(event.task_id or "", event.kind, event.file_id, event.sub_task_ids)


def _event_status(decision: m.Decision) -> str:
    reason = decision.history.reason
    if reason.startswith("late "):
        return InboxStatus.LATE
    if reason.startswith("duplicate "):
        return InboxStatus.IGNORED
    return InboxStatus.APPLIED


def task_input(event: VodEvent, task_id: str) -> m.TaskEvent:
    """A VOD event as the machine's TaskEvent for the task vodflow knows as ``task_id``."""
    message = event.error_message or ""
    if not event.success and event.sub_tasks:
        failed = [s for s in event.sub_tasks if s.status != "SUCCESS"]
        message = message or "; ".join(
            f"{s.task_type} {s.status.lower()}: {s.message or s.error_code}" for s in failed
        )
    return m.TaskEvent(
        task_id=task_id,
        event_type=event.kind,
        event_key=event.dedup_key,
        terminal=event.terminal,
        success=bool(event.success),
        error_class=event.error_class,
        error_code=event.error_code,
        message=message,
        outputs=outputs_of(event),
    )


def outputs_of(event: VodEvent) -> dict[str, JsonValue]:
    """An event's outputs as the camelCase fields workflow templates read."""
    parts = [event.outputs, *(s.outputs for s in event.sub_tasks if s.status == "SUCCESS")]
    play: list[JsonValue] = []
    sprites: list[JsonValue] = []
    snapshots: list[JsonValue] = []
    files: list[JsonValue] = []
    cover: str | None = None
    duration: float | None = None
    for out in parts:
        play += [
            _drop_none(
                {
                    "url": p.url,
                    "definition": p.definition,
                    "width": p.width,
                    "height": p.height,
                    "bitrate": p.bitrate,
                    "size": p.size,
                    "duration": p.duration,
                    "container": p.container,
                }
            )
            for p in out.play
        ]
        sprites += [
            _drop_none(
                {
                    "definition": s.definition,
                    "totalCount": s.total_count,
                    "imageUrls": list(s.image_urls),
                    "webVttUrl": s.webvtt_url,
                }
            )
            for s in out.sprites
        ]
        snapshots += [
            _drop_none({"url": s.url, "timeOffset": s.time_offset_ms, "definition": s.definition})
            for s in out.snapshots
        ]
        files += [
            _drop_none({"fileId": f.file_id, "url": f.url, "fileType": f.file_type})
            for f in out.files
        ]
        cover = cover or out.cover_url
        if out.meta is not None and out.meta.duration and duration is None:
            duration = out.meta.duration
    file_id = event.file_id
    if event.kind in ("ClipComplete", "ConcatComplete") and files:
        first = files[0]
        file_id = first.get("fileId") if isinstance(first, dict) else file_id  # type: ignore[assignment]
    return _drop_none(
        {
            "fileId": file_id,
            "fileUrl": next(
                (f.get("url") for f in files if isinstance(f, dict) and f.get("fileId") == file_id),
                None,
            ),
            "play": play,
            "sprites": sprites,
            "snapshots": snapshots,
            "files": files,
            "coverUrl": cover,
            "duration": duration,
        }
    )


def _drop_none(values: dict[str, Any]) -> dict[str, JsonValue]:
    return {k: v for k, v in values.items() if v is not None}
