"""Runs in the database: create one, load its state for the machine, save a decision.

A run's state lives in normalized rows (``runs``, ``steps``, ``tasks``); :func:`load_run` builds the
machine's :class:`RunState` from them and :func:`save_decision` writes back only what changed,
with the decision's history entry and commands, inside the caller's transaction (one transaction
per transition: the state, the history and the outbox rows commit together or not at all).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from enum import Enum
from typing import Any

import sqlalchemy as sa

from orchestrator import machine as m
from orchestrator.store import driver
from orchestrator.store.sql import insert_ignore
from orchestrator.store.tables import HistoryRow, OutboxCommand, Run, StepRow, TaskRow, Timer
from orchestrator.vod.errors import ErrorClass
from orchestrator.vod.events import normalize_task_id

runs = Run.__table__  # type: ignore[attr-defined]
steps = StepRow.__table__  # type: ignore[attr-defined]
tasks = TaskRow.__table__  # type: ignore[attr-defined]
history = HistoryRow.__table__  # type: ignore[attr-defined]
outbox = OutboxCommand.__table__  # type: ignore[attr-defined]
timers = Timer.__table__  # type: ignore[attr-defined]

_STEP_FIELDS = tuple(f for f in m.StepState.field_names() if f not in ("name", "tasks"))
_TASK_FIELDS = m.TaskState.field_names()


def create_run(
    conn: sa.Connection,
    state: m.RunState,
    kinds: dict[str, str],
    *,
    dedup_key: str | None,
    stream_id: str | None = None,
    file_id: str | None = None,
    trigger_event_id: int | None = None,
) -> bool:
    """Insert a new run and its steps. False when a run with the same dedup key exists."""
    result = conn.execute(
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
    conn.execute(
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


_CANCEL_TIMERS = "UPDATE timers SET status = 'cancelled' WHERE run_id = ? AND status = 'pending'"


def load_run(conn: sa.Connection, run_id: str, *, for_update: bool = False) -> m.RunState | None:
    return load_runs(conn, [run_id], for_update=for_update).get(run_id)


def load_runs(
    conn: sa.Connection, run_ids: Collection[str], *, for_update: bool = False
) -> dict[str, m.RunState]:
    """Several runs' states with three queries in all (locked on PostgreSQL when asked).

    On the hot path (every task callback loads its run), so read through ``driver``."""
    if not run_ids:
        return {}
    ids = list(run_ids)
    # In id order, so that two transactions locking overlapping groups of runs on PostgreSQL
    # take the locks in the same order instead of deadlocking.
    rows = driver.select_where_in(
        conn, runs, "id", ids, columns=_RUN_COLUMNS, order_by=("id",), for_update=for_update
    )
    step_rows: dict[str, list[Any]] = {}
    for s in driver.select_where_in(
        conn, steps, "run_id", ids, columns=_STEP_COLUMNS, order_by=("run_id", "position")
    ):
        step_rows.setdefault(s["run_id"], []).append(s)
    task_states: dict[tuple[str, str], list[m.TaskState]] = {}
    for t in driver.select_where_in(
        conn, tasks, "run_id", ids, columns=_TASK_STATE_COLUMNS, order_by=("run_id", "position")
    ):
        task_states.setdefault((t["run_id"], t["step"]), []).append(_task_state(t))
    return {
        row["id"]: m.RunState.restore(
            {
                "run_id": row["id"],
                "workflow": row["workflow"],
                "version": row["version"],
                "status": m.RunStatus(row["status"]),
                "context": row["context"] or {},
                "steps": tuple(
                    _step_state(s, tuple(task_states.get((row["id"], s["name"]), ())))
                    for s in step_rows.get(row["id"], ())
                ),
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
                "finished_at": row["finished_at"],
                "deadline": row["deadline"],
                "error": row["error"],
            }
        )
        for row in rows
    }


_RUN_COLUMNS = (
    *("id", "workflow", "version", "status", "context"),
    *("created_at", "updated_at", "finished_at", "deadline", "error"),
)
_STEP_COLUMNS = ("run_id", "name", *_STEP_FIELDS)
_TASK_STATE_COLUMNS = ("run_id", "step", *_TASK_FIELDS)


# Rows are what vodflow itself wrote, so states are restored without validating them again,
# converting only what the columns store differently (enums as text).


def _task_state(row: dict[str, Any]) -> m.TaskState:
    values = {f: row[f] for f in _TASK_FIELDS}
    values["status"] = m.TaskStatus(values["status"])
    values["outputs"] = values["outputs"] or {}
    return m.TaskState.restore(values)


def _step_state(row: dict[str, Any], tasks: tuple[m.TaskState, ...]) -> m.StepState:
    values = {f: row[f] for f in _STEP_FIELDS}
    values["status"] = m.StepStatus(values["status"])
    if values["error_class"] is not None:
        values["error_class"] = ErrorClass(values["error_class"])
    values["outputs"] = values["outputs"] or {}
    return m.StepState.restore({"name": row["name"], **values, "tasks": tasks})


def _column(value: Any) -> Any:
    """A state field as its column stores it: enums by value; JSON fields hold JSON values
    already (JsonValue) and datetimes go as they are."""
    return value.value if isinstance(value, Enum) else value


def _changed(
    old: m.StepState | m.TaskState, new: m.StepState | m.TaskState, fields: tuple[str, ...]
) -> dict[str, Any]:
    """The column values of ``fields`` that differ (updates write only those). Read from the
    states' ``__dict__``: most fields of a copied state are the very objects of the old one, so
    the identity test settles them without comparing values (``getattr`` by name cost more than
    the comparisons)."""
    before, after = old.__dict__, new.__dict__
    return {
        f: _column(after[f]) for f in fields if after[f] is not before[f] and after[f] != before[f]
    }


def _values(model: m.StepState | m.TaskState, fields: tuple[str, ...]) -> dict[str, Any]:
    """Column values of a state model."""
    return {f: _column(getattr(model, f)) for f in fields}


def _step_values(step: m.StepState) -> dict[str, Any]:
    return _values(step, _STEP_FIELDS)


def _task_values(task: m.TaskState) -> dict[str, Any]:
    return _values(task, _TASK_FIELDS)


class Changes:
    """What a group of decisions changed, written with one statement per table at ``flush``.

    Decisions are added in order; several may concern the same run (each one's ``before`` is
    the previous one's state). Rows keep that order: inserts before the updates that may follow
    them, history in sequence, and timer commands one by one (a cancel must not overtake the
    schedule it follows).
    """

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.steps: dict[tuple[str, str], dict[str, Any]] = {}
        self.task_inserts: dict[str, dict[str, Any]] = {}
        self.task_updates: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []
        self.timer_commands: list[m.ScheduleTimer | m.CancelTimers] = []
        self.new_tasks: list[m.TaskState] = []

    def add(self, before: m.RunState, decision: m.Decision, now: datetime) -> None:
        after = decision.state
        self.runs[after.run_id] = {
            "id": after.run_id,
            "status": after.status.value,
            "updated_at": after.updated_at,
            "finished_at": after.finished_at,
            "deadline": after.deadline,
            "error": after.error,
        }
        old_steps = {s.name: s for s in before.steps}
        for step in after.steps:
            old = old_steps[step.name]
            if old is step:  # untouched by the decision: nor are its tasks
                continue
            changed = _changed(old, step, _STEP_FIELDS)
            if changed:
                key = {"run_id": after.run_id, "name": step.name}
                self.steps.setdefault((after.run_id, step.name), key).update(changed)
            old_tasks = {t.task_id: t for t in old.tasks}
            for position, task in enumerate(step.tasks):
                previous = old_tasks.get(task.task_id)
                if previous is task or previous == task:
                    continue
                self._task(after.run_id, step.name, position, previous, task)
        entry = decision.history
        self.history.append(
            {
                "run_id": after.run_id,
                "at": entry.at,
                "input": entry.input,
                "step": entry.step,
                "from_status": entry.from_status.value,
                "to_status": entry.to_status.value,
                "reason": entry.reason,
                "detail": entry.detail,
            }
        )
        for command in decision.commands:
            if isinstance(command, m.OUTBOUND):
                self.outbox.append(
                    {
                        "run_id": command.run_id,
                        "step": command.step,
                        "attempt": command.attempt,
                        "kind": command.kind,
                        "idempotency_key": command.idempotency_key,
                        "payload": command.model_dump(mode="json"),
                        "status": "pending",
                        "tries": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                )
            elif isinstance(command, m.ScheduleTimer | m.CancelTimers):
                self.timer_commands.append(command)

    def _task(
        self,
        run_id: str,
        step: str,
        position: int,
        previous: m.TaskState | None,
        task: m.TaskState,
    ) -> None:
        next_poll = None if task.status.terminal else task.expected_at
        if task.task_id in self.task_inserts:  # new in this group: insert its latest state
            self.task_inserts[task.task_id].update(_task_values(task), next_poll_at=next_poll)
        elif previous is None:
            self.new_tasks.append(task)
            self.task_inserts[task.task_id] = {
                **_task_values(task),
                "next_poll_at": next_poll,
                "run_id": run_id,
                "step": step,
                "position": position,
                "folded_id": normalize_task_id(task.task_id),
                "polls": 0,
            }
        else:
            # A task still running in the same attempt keeps the sweeper's poll schedule; once
            # an update in this group reset it, the reset stands.
            row = self.task_updates.setdefault(task.task_id, {"task_id": task.task_id})
            row.update(_changed(previous, task, _TASK_FIELDS))
            if previous.attempt != task.attempt or task.status.terminal:
                row["next_poll_at"] = next_poll

    def flush(self, conn: sa.Connection) -> list[m.TaskState]:
        """Write everything (straight on the driver: see ``driver``); returns the tasks new to
        the database."""
        driver.update_many(conn, runs, ["id"], self.runs.values())
        driver.update_many(conn, steps, ["run_id", "name"], self.steps.values())
        driver.insert_many(conn, tasks, self.task_inserts.values(), ignore_conflict_on=["task_id"])
        driver.update_many(conn, tasks, ["task_id"], self.task_updates.values())
        driver.insert_many(conn, history, self.history)
        driver.insert_many(conn, outbox, self.outbox, ignore_conflict_on=["idempotency_key"])
        _timer_commands(conn, self.timer_commands)
        return self.new_tasks


def save_decision(
    conn: sa.Connection, before: m.RunState, decision: m.Decision, *, now: datetime
) -> list[m.TaskState]:
    """Write what one decision changed. Returns the tasks that are new to the database."""
    changes = Changes()
    changes.add(before, decision, now)
    return changes.flush(conn)


def _timer_commands(conn: sa.Connection, commands: list[m.ScheduleTimer | m.CancelTimers]) -> None:
    """Timer commands with as few statements as their order allows.

    A run's commands keep their order (a cancel never overtakes the schedule before it, nor the
    reverse); commands of different runs touch different rows, so they may share a statement.
    Each command joins the round of its run's previous command when it is of the same kind, or
    the next round otherwise; a round runs one statement per kind. A group's callbacks, each
    cancelling one step's timers, cost one statement instead of one each."""
    rounds: list[dict[str, list[m.ScheduleTimer | m.CancelTimers]]] = []
    last: dict[str, tuple[int, str]] = {}
    for command in commands:
        kind = _timer_kind(command)
        previous = last.get(command.run_id)
        number = 0 if previous is None else previous[0] + (previous[1] != kind)
        last[command.run_id] = (number, kind)
        if number == len(rounds):
            rounds.append({})
        rounds[number].setdefault(kind, []).append(command)
    for round_ in rounds:
        for kind, group in round_.items():
            if kind == "schedule":
                rows = [_timer_row(c) for c in group if isinstance(c, m.ScheduleTimer)]
                driver.insert_many(conn, timers, rows)
            elif kind == "cancel_run":
                driver.execute_many(conn, _CANCEL_TIMERS, [(c.run_id,) for c in group])
            else:
                params = [(c.run_id, c.step) for c in group]
                driver.execute_many(conn, _CANCEL_TIMERS + " AND step = ?", params)


def _timer_kind(command: m.ScheduleTimer | m.CancelTimers) -> str:
    if isinstance(command, m.ScheduleTimer):
        return "schedule"
    return "cancel_run" if command.step is None else "cancel_step"


def _timer_row(command: m.ScheduleTimer) -> dict[str, Any]:
    return {
        "run_id": command.run_id,
        "kind": command.timer,
        "step": command.step,
        "attempt": command.attempt,
        "due_at": command.due,
        "status": "pending",
    }


def step_progress(conn: sa.Connection, run_id: str, step: str) -> tuple[str, str, int] | None:
    """(the run's status, the step's status, its attempt), or None when the run has no such
    step."""
    row = conn.execute(
        sa.select(runs.c.status, steps.c.status, steps.c.attempt)
        .join(steps, steps.c.run_id == runs.c.id)
        .where(runs.c.id == run_id, steps.c.name == step)
    ).first()
    return None if row is None else (str(row[0]), str(row[1]), int(row[2]))


def run_history(conn: sa.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = (
        (conn.execute(sa.select(history).where(history.c.run_id == run_id).order_by(history.c.id)))
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


FINISHED = tuple(status.value for status in m.RunStatus if status.terminal)
PRUNE_RUNS = 500
"""Runs ``prune_finished`` deletes at most in one transaction."""


def prune_finished(conn: sa.Connection, older_than: datetime, limit: int = PRUNE_RUNS) -> int:
    """Delete finished runs last changed before ``older_than``, with their steps, tasks,
    history, timers and outbox commands; how many runs went.

    A run with work still out is kept: a task VOD may still report on (a cancelled run's tasks
    are still asked about) or a command not done. Retrying a run by hand changes it, so its
    retention starts again. At most ``limit`` runs per call, found through the index on
    (status, updated_at) without sorting them, so neither a backlog nor one long transaction
    holds the writer; on PostgreSQL a run another transaction holds (a retry by hand) is
    skipped, and a retry waiting for it then finds none.
    """
    unfinished_task = sa.exists().where(tasks.c.run_id == runs.c.id, tasks.c.status == "waiting")
    open_command = sa.exists().where(outbox.c.run_id == runs.c.id, outbox.c.status != "done")
    ids = list(
        conn.execute(
            sa.select(runs.c.id)
            .where(
                runs.c.status.in_(FINISHED),
                runs.c.updated_at < older_than,
                ~unfinished_task,
                ~open_command,
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if ids:
        for table in (history, timers, outbox, tasks, steps, runs):
            column = table.c.id if table is runs else table.c.run_id
            conn.execute(table.delete().where(column.in_(ids)))
    return len(ids)
