"""Correlating by fileId the events of a procedure whose task IDs no run recorded.

A run records the task IDs VOD's answer gave it, and an event is matched by its task ID. One
procedure has two kinds of IDs, its own and its sub-tasks' (transcode, image sprite, ...), and a
run may know only one kind: the sub-tasks' (the ``transcodeTaskId``, ... answer), or the
procedure's (the ``vodTaskId`` answer, or a job recovered after a crash and VOD's 50005, found by
fileId and procedure). The events of the other kind then name an ID no run knows. When the
procedure's event names its sub-tasks' IDs (the embedded engine's do), ``runner.procedure_of_tasks``
ties it by them; otherwise the only link is the file they all report on. These events are
recorded against their run here and never applied: the events of the kind the run recorded
already carry every result, so applying the others would apply each result twice.

* A procedure's own event whose ID no run recorded (and which names no sub-task IDs) belongs to
  the run that recorded the tasks of its file whose own events came in.
* A sub-task's event whose ID no run recorded belongs to the run that recorded the procedure whose
  event for the same file came in: the one whose sub-task list names this ID, else one that
  names no IDs. Until that procedure's event is in, the sub-task's event waits as an orphan (a
  run whose answer is still on its way may be the one that knows its ID); the sweeper looks
  again, and ``queues.wake_orphans`` hands it to a run that records its ID later.

Two runs reporting on the same file leave it undecided: a procedure's event is then recorded
against neither, naming both; a sub-task's keeps waiting as an orphan.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from orchestrator.store.tasks import FileEvent, recorded_events_of_files
from orchestrator.vod.errors import MalformedEvent
from orchestrator.vod.events import PROCEDURE_EVENT, parse_event


@dataclass(frozen=True)
class Stray:
    """An event whose task ID no run recorded."""

    task_id: str
    event_type: str
    file_id: str | None
    sub_task_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tie:
    """What to record: the run it belongs to (None when several could) and why."""

    run_id: str | None
    note: str


def by_file(conn: sa.Connection, strays: Collection[Stray]) -> dict[str, Tie]:
    """The ties found for these events, by their task ID; the others are left out."""
    files = {s.file_id for s in strays if s.file_id}
    if not files:
        return {}
    recorded = recorded_events_of_files(conn, files)
    ties: dict[str, Tie] = {}
    for stray in strays:
        if not stray.file_id:
            continue
        same_file = [e for e in recorded if e.file_id == stray.file_id]
        if stray.event_type == PROCEDURE_EVENT:
            tie = _procedure(stray, same_file)
        else:
            tie = _sub_task(stray, same_file)
        if tie is not None:
            ties[stray.task_id] = tie
    return ties


def _procedure(stray: Stray, recorded: list[FileEvent]) -> Tie | None:
    if stray.sub_task_ids:
        return None  # it names its tasks, and no run recorded them: not any run's we know
    tasks = [e for e in recorded if e.event_type != PROCEDURE_EVENT and e.kind != "procedure"]
    runs = sorted({e.run_id for e in tasks})
    if not runs:
        return None
    what = f"procedure {stray.task_id} of file {stray.file_id}"
    if len(runs) > 1:
        return Tie(
            None,
            f"{what}: runs {', '.join(runs)} each recorded tasks of this file; recorded against "
            "none, not applied (each task's own event applies its result)",
        )
    ids = ", ".join(dict.fromkeys(e.task_id for e in tasks))
    return Tie(
        runs[0],
        f"{what}, matched by fileId to step {tasks[0].step}'s tasks {ids}: recorded, not applied "
        "(each task's own event applies its result)",
    )


def _sub_task(stray: Stray, recorded: list[FileEvent]) -> Tie | None:
    procedures = [e for e in recorded if e.event_type == PROCEDURE_EVENT and e.kind == "procedure"]
    named: list[FileEvent] = []
    unnamed: list[FileEvent] = []
    for event in procedures:
        subs = sub_task_ids(event.body)
        if stray.task_id in subs:
            named.append(event)
        elif not subs:
            unnamed.append(event)
    found = named or unnamed
    runs = {e.run_id for e in found}
    if len(runs) != 1:
        return None
    procedure = found[0]
    how = "named by" if named else "matched by fileId to"
    return Tie(
        procedure.run_id,
        f"{stray.event_type} for task {stray.task_id}, {how} step {procedure.step}'s procedure "
        f"{procedure.task_id}: recorded, not applied (the procedure's event applies its result)",
    )


def sub_task_ids(body: str | None) -> tuple[str, ...]:
    """The sub-tasks' IDs a stored procedure event's body names (none for other bodies)."""
    if body is None:
        return ()
    try:
        return parse_event(body).sub_task_ids
    except MalformedEvent:
        return ()
