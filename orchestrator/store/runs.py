"""Runs in the database: create one, load its state for the machine, save a decision.

A run's state lives in normalized rows (``runs``, ``steps``, ``tasks``); :func:`load_run` builds the
machine's :class:`RunState` from them and :func:`save_decision` writes back only what changed,
with the decision's history entry and commands, inside the caller's transaction (one transaction
per transition: the state, the history and the outbox rows commit together or not at all).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator import machine as m
from orchestrator.store.sql import insert_ignore
from orchestrator.store.tables import HistoryRow, OutboxCommand, Run, StepRow, TaskRow, Timer
from orchestrator.vod.events import normalize_task_id

runs = Run.__table__  # type: ignore[attr-defined]
steps = StepRow.__table__  # type: ignore[attr-defined]
tasks = TaskRow.__table__  # type: ignore[attr-defined]
history = HistoryRow.__table__  # type: ignore[attr-defined]
outbox = OutboxCommand.__table__  # type: ignore[attr-defined]
timers = Timer.__table__  # type: ignore[attr-defined]

_STEP_FIELDS = tuple(f for f in m.StepState.model_fields if f not in ("name", "tasks"))
_TASK_FIELDS = tuple(m.TaskState.model_fields)


async def create_run(
    conn: AsyncConnection,
    state: m.RunState,
    kinds: dict[str, str],
    *,
    dedup_key: str | None,
    stream_id: str | None = None,
    file_id: str | None = None,
    trigger_event_id: int | None = None,
) -> bool:
    """Insert a new run and its steps. False when a run with the same dedup key exists."""
    result = await conn.execute(
        insert_ignore(conn, runs, ["dedup_key"])
        .values(
            id=state.run_id,
            workflow=state.workflow,
            version=state.version,
            status=str(state.status),
            dedup_key=dedup_key,
            context=state.context,
            stream_id=stream_id,
            file_id=file_id,
            trigger_event_id=trigger_event_id,
            created_at=state.created_at,
            updated_at=state.updated_at,
            deadline=state.deadline,
        )
        .returning(runs.c.id)
    )
    if result.first() is None:
        return False
    await conn.execute(
        steps.insert(),
        [
            {
                "run_id": state.run_id,
                "name": s.name,
                "position": i,
                "kind": kinds[s.name],
                **_step_values(s),
            }
            for i, s in enumerate(state.steps)
        ],
    )
    return True


async def load_run(
    conn: AsyncConnection, run_id: str, *, for_update: bool = False
) -> m.RunState | None:
    query = sa.select(runs).where(runs.c.id == run_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    step_rows = (
        (
            await conn.execute(
                sa.select(steps).where(steps.c.run_id == run_id).order_by(steps.c.position)
            )
        )
        .mappings()
        .all()
    )
    task_rows = (
        (
            await conn.execute(
                sa.select(tasks).where(tasks.c.run_id == run_id).order_by(tasks.c.position)
            )
        )
        .mappings()
        .all()
    )
    by_step: dict[str, list[m.TaskState]] = {}
    for t in task_rows:
        by_step.setdefault(t["step"], []).append(
            m.TaskState.model_validate({f: t[f] for f in _TASK_FIELDS})
        )
    return m.RunState(
        run_id=row["id"],
        workflow=row["workflow"],
        version=row["version"],
        status=m.RunStatus(row["status"]),
        context=row["context"] or {},
        steps=tuple(
            m.StepState.model_validate(
                {
                    "name": s["name"],
                    "tasks": tuple(by_step.get(s["name"], ())),
                    **{f: s[f] for f in _STEP_FIELDS},
                }
            )
            for s in step_rows
        ),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        deadline=row["deadline"],
        error=row["error"],
    )


def _step_values(step: m.StepState) -> dict[str, Any]:
    data = step.model_dump(mode="json", include=set(_STEP_FIELDS))
    # Datetimes go through the UTCDateTime column type, not as ISO strings.
    for field in _STEP_FIELDS:
        value = getattr(step, field)
        if isinstance(value, datetime) or value is None:
            data[field] = value
    return data


def _task_values(task: m.TaskState) -> dict[str, Any]:
    data = task.model_dump(mode="json")
    for field in _TASK_FIELDS:
        value = getattr(task, field)
        if isinstance(value, datetime) or value is None:
            data[field] = value
    return data


async def save_decision(
    conn: AsyncConnection, before: m.RunState, decision: m.Decision, *, now: datetime
) -> list[m.TaskState]:
    """Write what a decision changed. Returns the tasks that are new to the database."""
    after = decision.state
    await conn.execute(
        runs.update()
        .where(runs.c.id == after.run_id)
        .values(
            status=str(after.status),
            updated_at=after.updated_at,
            finished_at=after.finished_at,
            deadline=after.deadline,
            error=after.error,
        )
    )
    old_steps = {s.name: s for s in before.steps}
    new_tasks: list[m.TaskState] = []
    for step in after.steps:
        old = old_steps[step.name]
        if old.model_copy(update={"tasks": ()}) != step.model_copy(update={"tasks": ()}):
            await conn.execute(
                steps.update()
                .where(steps.c.run_id == after.run_id, steps.c.name == step.name)
                .values(**_step_values(step))
            )
        old_tasks = {t.task_id: t for t in old.tasks}
        for position, task in enumerate(step.tasks):
            previous = old_tasks.get(task.task_id)
            if previous == task:
                continue
            values = _task_values(task)
            values["next_poll_at"] = None if task.status.terminal else task.expected_at
            if previous is None:
                new_tasks.append(task)
                await conn.execute(
                    insert_ignore(conn, tasks, ["task_id"]).values(
                        run_id=after.run_id,
                        step=step.name,
                        position=position,
                        folded_id=normalize_task_id(task.task_id),
                        **values,
                    )
                )
            else:
                if previous.attempt == task.attempt and not task.status.terminal:
                    values.pop("next_poll_at")  # keep the sweeper's poll schedule
                await conn.execute(
                    tasks.update().where(tasks.c.task_id == task.task_id).values(**values)
                )
    await conn.execute(
        history.insert().values(
            run_id=after.run_id,
            at=decision.history.at,
            input=decision.history.input,
            step=decision.history.step,
            from_status=str(decision.history.from_status),
            to_status=str(decision.history.to_status),
            reason=decision.history.reason,
            detail=decision.history.detail,
        )
    )
    await apply_commands(conn, decision.commands, now=now)
    return new_tasks


async def apply_commands(
    conn: AsyncConnection, commands: tuple[m.Command, ...], *, now: datetime
) -> None:
    """Commands become rows: outbound calls in the outbox, timers in timers, in order."""
    for command in commands:
        if isinstance(command, m.OUTBOUND):
            await conn.execute(
                insert_ignore(conn, outbox, ["idempotency_key"]).values(
                    run_id=command.run_id,
                    step=command.step,
                    attempt=command.attempt,
                    kind=command.kind,
                    idempotency_key=command.idempotency_key,
                    payload=command.model_dump(mode="json"),
                    status="pending",
                    tries=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        elif isinstance(command, m.ScheduleTimer):
            await conn.execute(
                timers.insert().values(
                    run_id=command.run_id,
                    kind=command.timer,
                    step=command.step,
                    attempt=command.attempt,
                    due_at=command.due,
                    status="pending",
                )
            )
        elif isinstance(command, m.CancelTimers):
            query = timers.update().where(
                timers.c.run_id == command.run_id, timers.c.status == "pending"
            )
            if command.step is not None:
                query = query.where(timers.c.step == command.step)
            await conn.execute(query.values(status="cancelled"))
        # Finish: the run row already says so; the runner announces it after the commit.


async def run_history(conn: AsyncConnection, run_id: str) -> list[dict[str, Any]]:
    rows = (
        (
            await conn.execute(
                sa.select(history).where(history.c.run_id == run_id).order_by(history.c.id)
            )
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]
