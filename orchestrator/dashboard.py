"""The status dashboard's API: JSON under /api, described at /openapi.json.

Workflows; runs (filters, cursor pages, newest first); one run with its steps, tasks, history and
callbacks; look-ups by VOD task ID or fileId; inbox events (orphans, invalid bodies, with their raw
bodies); stats; actions (retry, cancel, replay an event or a failed timer, trigger a run),
idempotent and recorded in the run's history; and live updates as Server-Sent Events (/api/events).

Access: with ``VODFLOW_API_TOKEN`` (admin) and/or ``VODFLOW_API_READ_TOKEN`` (read-only) set,
every /api request needs ``Authorization: Bearer <token>`` (or ``?access_token=`` where a
browser cannot set headers, as for EventSource); read-only tokens may only GET. With no token
set the API is open, which vodflow allows only while it listens on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import statistics
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field, JsonValue, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator import __version__
from orchestrator import machine as m
from orchestrator.openapi import ApiModel, Endpoint, Problem, document
from orchestrator.runner import TriggerRefused
from orchestrator.spec import WorkflowError
from orchestrator.store import queues, views, windows
from orchestrator.store.db import Database, log_failure
from orchestrator.store.queues import INBOX_STATUSES, TIMER_STATUSES, InboxStatus
from orchestrator.store.tasks import find_task
from orchestrator.store.views import SESSION_STATUSES

Q = TypeVar("Q", bound=BaseModel)
log = logging.getLogger(__name__)
Health = Literal[
    "pending",
    "running",
    "awaiting_callback",
    "overdue",
    "retrying",
    "failing",
    "succeeded",
    "failed",
    "cancelled",
]

# --- response models ---------------------------------------------------------------------------


class StepRef(ApiModel):
    name: str
    kind: str


class WorkflowInfo(ApiModel):
    name: str
    description: str
    version: str
    path: str
    valid: bool = True
    triggers: list[str]
    steps: list[StepRef]
    run_counts: dict[str, int]


class WorkflowList(ApiModel):
    workflows: list[WorkflowInfo]


class ReloadResult(ApiModel):
    """Workflow names by what the reload did to them. Runs in flight keep their versions."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]


class RunSummary(ApiModel):
    id: str
    workflow: str
    version: str
    status: str
    health: Health = Field(
        description="awaiting_callback, overdue (past a task's expected "
        "time), retrying (throttled), failing (an attempt failed), ..."
    )
    stream_id: str | None
    file_id: str | None
    current_step: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: str | None


class RunPage(ApiModel):
    runs: list[RunSummary]
    next_cursor: str | None


class TaskInfo(ApiModel):
    task_id: str
    kind: str
    attempt: int
    awaited: bool
    status: str
    submitted_at: datetime
    expected_at: datetime
    finished_at: datetime | None
    waited_seconds: float = Field(description="From submit to its result (or to now).")
    expected_seconds: float = Field(description="How long its callback was expected to take.")
    overdue: bool
    error: str | None
    error_code: int | None
    outputs: dict[str, JsonValue]
    polls: int
    last_polled_at: datetime | None
    last_poll_status: str | None


class StepInfo(ApiModel):
    name: str
    position: int
    kind: str
    status: str
    attempt: int
    sends: int
    throttled: bool
    in_flight: bool
    request: dict[str, JsonValue] | None
    started_at: datetime | None
    submitted_at: datetime | None
    finished_at: datetime | None
    retry_at: datetime | None
    deadline: datetime | None
    error: str | None
    error_class: str | None
    outputs: dict[str, JsonValue]
    tasks: list[TaskInfo]


class HistoryInfo(ApiModel):
    id: int
    at: datetime
    input: str
    step: str | None
    from_status: str
    to_status: str
    reason: str
    detail: dict[str, JsonValue]


class EventInfo(ApiModel):
    id: int
    received_at: datetime
    source: str
    event_type: str
    status: str
    task_id: str | None
    file_id: str | None
    stream_id: str | None
    run_id: str | None
    note: str | None
    applied_at: datetime | None
    body: str | None = Field(None, description="The body as received (in event listings).")


class TimerInfo(ApiModel):
    id: int
    kind: str = Field(description="run_timeout, step_timeout or retry")
    step: str | None
    attempt: int | None
    due_at: datetime
    status: str = Field(description="pending, fired, cancelled, or failed (see error)")
    error: str | None = Field(description="Why applying it failed; replay it once fixed.")


class RunDetail(RunSummary):
    context: dict[str, JsonValue]
    deadline: datetime | None
    steps: list[StepInfo]
    history: list[HistoryInfo]
    events: list[EventInfo]
    timers: list[TimerInfo]


class TriggerRequest(ApiModel):
    workflow: str = Field(max_length=64)
    params: dict[str, JsonValue] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, max_length=200)


class TriggerResult(ApiModel):
    run_id: str
    created: bool


class CancelRequest(ApiModel):
    reason: str = Field("", max_length=500)


class RetryRequest(ApiModel):
    step: str | None = Field(None, max_length=64)


class ActionResult(ApiModel):
    run_id: str
    status: str
    changed: bool
    reason: str


class ReplayResult(ApiModel):
    event_id: int
    replayed: bool


class TimerDetail(TimerInfo):
    run_id: str


class TimerPage(ApiModel):
    timers: list[TimerDetail]
    next_cursor: str | None


class WorkflowProblem(ApiModel):
    file: str
    line: int
    column: int
    path: str = Field(description="Where in the file: steps[0].process.procedure, say.")
    message: str


class ReloadRefused(Problem):
    problems: list[WorkflowProblem] = Field(description="Every problem, for a program to read.")


class SessionInfo(ApiModel):
    id: int
    workflow: str
    stream_id: str
    status: str = Field(
        description="open (collecting recordings), closed (its run started) or cancelled"
    )
    opened_at: datetime
    last_activity_at: datetime = Field(description="The stream's last recording or end.")
    closes_at: datetime = Field(
        description="When an open session closes and its run starts, unless the stream is "
        "active again before (never later than opened_at + max_length)."
    )
    segments: list[dict[str, JsonValue]] = Field(
        description="The recordings collected, in arrival order (fileId, times, ...)."
    )
    run_id: str | None = Field(description="The run a closed session started.")
    version: str | None = Field(
        description="The workflow's version when the session opened: the one its run runs."
    )


class SessionCancelled(ApiModel):
    changed: bool = Field(description="False when it was cancelled already.")
    session: SessionInfo


class SessionPage(ApiModel):
    sessions: list[SessionInfo]
    next_cursor: str | None


class TimerReplayResult(ApiModel):
    timer: TimerDetail = Field(description="The timer after the sweep that fired it again.")


class TaskLookup(ApiModel):
    task_id: str
    run_id: str
    step: str


class EventPage(ApiModel):
    events: list[EventInfo]
    next_cursor: str | None


class Percentiles(ApiModel):
    count: int
    p50: float | None
    p95: float | None


class Quota(ApiModel):
    action: str
    used: int
    limit: int
    window_seconds: float


class JobInfo(ApiModel):
    name: str
    replica: str = Field(description="The replica (host:port) whose sweeper runs this job.")
    interval_seconds: float
    last_started_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    stalled: bool
    findings: dict[str, int]


class Stats(ApiModel):
    runs_by_status: dict[str, int]
    stalled_tasks: int = Field(description="Tasks waiting past their expected time.")
    oldest_pending_seconds: float | None
    callbacks_per_minute: int
    step_duration_seconds: Percentiles
    callback_latency_seconds: Percentiles = Field(
        description="From a callback's arrival to the run advancing (last hour)."
    )
    quota: Quota
    inbox: dict[str, int]
    outbox_pending: int
    failed_timers: int = Field(
        description="Timers that could not be applied: their runs wait until they are replayed."
    )
    open_sessions: int = Field(
        description="stream.session windows collecting recordings (/api/sessions lists them)."
    )
    replica: str = Field(description="The replica that answered (host:port).")
    sweeper: list[JobInfo] = Field(
        description="Every replica's sweeper jobs; a replica's /healthz reports only its own."
    )


# --- query models ------------------------------------------------------------------------------


RUN_STATUSES = tuple(s.value for s in m.RunStatus)
HEALTH_FILTERS = ("overdue", "failing")  # the healths that are not a status of their own


def _statuses(allowed: tuple[str, ...], description: str) -> Any:
    """A ``status`` query parameter: a list of these values (repeated or comma-separated)."""
    return Field(
        default_factory=list,
        description=description,
        json_schema_extra={"items": {"type": "string", "enum": list(allowed)}},
    )


def _only(allowed: tuple[str, ...], what: str) -> AfterValidator:
    """Refuses a value of a ``status`` list that is not one of ``allowed`` (``what`` they are)."""

    def check(values: list[str]) -> list[str]:
        unknown = next((v for v in values if v not in allowed), None)
        if unknown is not None:
            raise ValueError(f"{unknown!r} is not {what}; expected one of: {', '.join(allowed)}")
        return values

    return AfterValidator(check)


RunStatuses = Annotated[list[str], _only(RUN_STATUSES + HEALTH_FILTERS, "a run status or health")]
InboxStatuses = Annotated[list[str], _only(INBOX_STATUSES, "an inbox event status")]
TimerStatuses = Annotated[list[str], _only(TIMER_STATUSES, "a timer status")]
SessionStatuses = Annotated[list[str], _only(SESSION_STATUSES, "a session status")]


AwareTime = Annotated[datetime, AfterValidator(lambda t: t if t.tzinfo else t.replace(tzinfo=UTC))]
"""A time from a query: one without an offset is read as UTC, as vodflow's times are."""


class RunQuery(ApiModel):
    workflow: str | None = None
    status: RunStatuses = _statuses(
        RUN_STATUSES + HEALTH_FILTERS,
        "Run status, or the health overdue or failing (runs awaiting a callback past a task's "
        "expected time; retrying runs whose last attempt failed); repeat for several.",
    )
    stream_id: str | None = None
    file_id: str | None = None
    since: AwareTime | None = Field(
        None, description="Created at or after (ISO 8601; UTC when it names no offset)."
    )
    until: AwareTime | None = Field(
        None, description="Created before (ISO 8601; UTC when it names no offset)."
    )
    cursor: str | None = Field(None, description="nextCursor of the previous page.")
    limit: int = Field(50, ge=1, le=500)


class EventQuery(ApiModel):
    status: InboxStatuses = _statuses(
        INBOX_STATUSES, "pending, applied, orphan, invalid, late, ...; repeat for several."
    )
    source: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    file_id: str | None = Field(None, description="the media file the event is about")
    cursor: str | None = None
    limit: int = Field(50, ge=1, le=500)


class SessionQuery(ApiModel):
    status: SessionStatuses = _statuses(
        SESSION_STATUSES, "open, closed or cancelled; repeat for several."
    )
    workflow: str | None = None
    stream_id: str | None = None
    cursor: str | None = None
    limit: int = Field(50, ge=1, le=500)


class TimerQuery(ApiModel):
    status: TimerStatuses = _statuses(
        TIMER_STATUSES, "pending, fired, cancelled, failed; repeat for several."
    )
    run_id: str | None = None
    cursor: str | None = None
    limit: int = Field(50, ge=1, le=500)


# --- helpers -----------------------------------------------------------------------------------


class JSON(JSONResponse):
    """JSON with ISO 8601 times."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=False, separators=(",", ":"), default=_default
        ).encode()


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def ok(model: BaseModel, status: int = 200) -> JSON:
    return JSON(model.model_dump(mode="json", by_alias=True), status_code=status)


def problem(status: int, detail: str) -> JSON:
    return ok(Problem(error=detail, status=status), status)


class Invalid(Exception):
    """A request refused with ``status`` (422 unless said) and a problem body saying why."""

    def __init__(self, detail: str, status: int = 422) -> None:
        self.detail = detail
        self.status = status


ROW_IDS = range(2**63)
"""The ids a row can have (a 64-bit integer column)."""


def _id_param(request: Request, name: str, what: str) -> int:
    """A numeric ID from the path; any other text, or a number no row can have, names nothing
    there (404)."""
    given: str = request.path_params[name]
    # Digits only: int() also reads " 1", "1_0" and other scripts' digits.
    number = int(given) if given.isascii() and given.isdigit() else -1
    if number not in ROW_IDS:
        raise Invalid(f"no {what} {request.path_params[name]!r}", status=404)
    return number


def _errors(exc: ValidationError, where: str) -> str:
    """The first problem, named once: ``body workflow: ...`` for a field, ``body: ...`` for
    the whole (not JSON, not an object)."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    named = f"{where} {loc}" if loc else where
    return f"{named}: {str(first['msg']).removeprefix('Value error, ')}"


def parse_query(request: Request, model: type[Q]) -> Q:
    data: dict[str, Any] = {}
    for key in request.query_params:
        if key == "access_token":
            continue
        values = request.query_params.getlist(key)
        for value in values:
            _storable(value, f"query parameter {key}")
        field = _field(model, key)
        if field is not None and _is_list(model, field):
            data[key] = [v for value in values for v in value.split(",") if v]
        else:
            data[key] = values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(_errors(exc, "query parameter")) from None


def _field(model: type[BaseModel], key: str) -> str | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return name
    return None


def _is_list(model: type[BaseModel], name: str) -> bool:
    return getattr(model.model_fields[name].annotation, "__origin__", None) is list


async def parse_body(request: Request, model: type[Q]) -> Q:
    raw = await request.body()
    try:
        parsed = model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise Invalid(_errors(exc, "body")) from None
    _storable(parsed.model_dump(), "body")
    return parsed


def _storable(value: object, where: str) -> None:
    """Refuses what JSON parsers let through but vodflow cannot keep as given: ``NaN`` and
    ``Infinity`` (and numbers beyond a double, read as infinity) would be stored as null, and
    PostgreSQL's text holds no NUL character."""
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"{where}: expected a finite number, found {value!r}")
    if isinstance(value, str) and "\x00" in value:
        raise Invalid(f"{where}: contains a NUL character (\\u0000), which vodflow cannot store")
    if isinstance(value, dict):
        for key, item in value.items():
            _storable(key, where)
            _storable(item, f"{where} {key}" if where == "body" else f"{where}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _storable(item, f"{where}[{n}]")


def _encode_cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, default=_default).encode()).decode()


def _decode_cursor(value: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(value.encode()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise Invalid(f"query parameter cursor: not a cursor this API gave ({exc})") from None


def _run_cursor(cursor: Any) -> tuple[datetime, str]:
    """Where a page of runs ends: the last run's creation time (aware, UTC) and ID."""
    try:
        at, run_id = cursor
        when = datetime.fromisoformat(at)
    except (TypeError, ValueError):
        raise Invalid("query parameter cursor: not a cursor this API gave") from None
    if not isinstance(run_id, str) or when.tzinfo is None:
        raise Invalid("query parameter cursor: not a cursor this API gave")
    return when, run_id


def _id_cursor(value: str | None) -> int | None:
    """The id a page of newest-first rows ends at (inbox, timers, sessions)."""
    if value is None:
        return None
    cursor = _decode_cursor(value)
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor not in ROW_IDS:
        raise Invalid("query parameter cursor: not a cursor this API gave")
    return cursor


def _next_id_cursor(rows: list[dict[str, Any]], limit: int) -> str | None:
    """The cursor of the page after ``rows`` (a full page of newest-first rows), or None."""
    return _encode_cursor(rows[-1]["id"]) if len(rows) == limit else None


def _now() -> datetime:
    return datetime.now(UTC)


def _health(row: dict[str, Any], overdue: bool, step: dict[str, Any] | None) -> Health:
    status = row["status"]
    if status == "awaiting_callback":
        return "overdue" if overdue else "awaiting_callback"
    if status == "retrying":
        return "retrying" if step is not None and step["throttled"] else "failing"
    return status  # type: ignore[no-any-return]


def _summaries(conn: Any, rows: list[dict[str, Any]]) -> list[RunSummary]:
    ids = [r["id"] for r in rows]
    late = views.overdue_runs(conn, ids, _now())
    current = views.current_steps(conn, ids)
    return [
        RunSummary(
            id=r["id"],
            workflow=r["workflow"],
            version=r["version"],
            status=r["status"],
            health=_health(r, r["id"] in late, current.get(r["id"])),
            stream_id=r["stream_id"],
            file_id=r["file_id"],
            current_step=current[r["id"]]["name"] if r["id"] in current else None,
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            finished_at=r["finished_at"],
            error=r["error"],
        )
        for r in rows
    ]


def _task_info(t: dict[str, Any], now: datetime) -> TaskInfo:
    end = t["finished_at"] or now
    return TaskInfo(
        task_id=t["task_id"],
        kind=t["kind"],
        attempt=t["attempt"],
        awaited=t["awaited"],
        status=t["status"],
        submitted_at=t["submitted_at"],
        expected_at=t["expected_at"],
        finished_at=t["finished_at"],
        waited_seconds=(end - t["submitted_at"]).total_seconds(),
        expected_seconds=(t["expected_at"] - t["submitted_at"]).total_seconds(),
        overdue=t["status"] == "waiting" and now > t["expected_at"],
        error=t["error"],
        error_code=t["error_code"],
        outputs=t["outputs"] or {},
        polls=t["polls"],
        last_polled_at=t["last_polled_at"],
        last_poll_status=t["last_poll_status"],
    )


def _event_info(e: dict[str, Any], with_body: bool) -> EventInfo:
    return EventInfo(
        id=e["id"],
        received_at=e["received_at"],
        source=e["source"],
        event_type=e["event_type"],
        status=e["status"],
        task_id=e.get("task_id"),
        file_id=e.get("file_id"),
        stream_id=e.get("stream_id"),
        run_id=e.get("run_id"),
        note=e.get("note"),
        applied_at=e.get("applied_at"),
        body=e.get("body") if with_body else None,
    )


def _timer_info(t: dict[str, Any]) -> TimerInfo:
    return TimerInfo(**{k: t[k] for k in TimerInfo.model_fields})


def _services(request: Request) -> Any:
    return request.app.state.services


# --- handlers ----------------------------------------------------------------------------------


async def list_workflows(request: Request) -> Response:
    services = _services(request)
    counts = await services.db.query(views.run_counts)
    return ok(
        WorkflowList(
            workflows=[
                WorkflowInfo(
                    name=item.spec.name,
                    description=item.spec.description,
                    version=item.version,
                    path=str(item.path),
                    triggers=[t.type for t in item.spec.triggers],
                    steps=[StepRef(name=s.name, kind=s.kind) for s in item.spec.steps],
                    run_counts=counts.get(item.spec.name, {}),
                )
                for item in services.registry.all()
            ]
        )
    )


async def reload_workflows(request: Request) -> Response:
    """All files are checked first, as at start: one invalid file changes nothing (422 with
    every problem, by file, line and column)."""
    services = _services(request)
    try:
        reloaded = await services.registry.reload(services.db)
    except WorkflowError as exc:
        refused = ReloadRefused(
            error=f"the workflows were not reloaded (nothing changed):\n{exc}",
            status=422,
            problems=[WorkflowProblem(**asdict(p)) for p in exc.problems],
        )
        return ok(refused, 422)
    return ok(ReloadResult(**asdict(reloaded)))


async def list_runs(request: Request) -> Response:
    q = parse_query(request, RunQuery)
    before = None
    if q.cursor:
        before = _run_cursor(_decode_cursor(q.cursor))

    def page(conn: Any) -> RunPage:
        rows = views.list_runs(
            conn,
            workflow=q.workflow,
            status=[s for s in q.status if s in RUN_STATUSES],
            health=[s for s in q.status if s in HEALTH_FILTERS],
            now=_now(),
            stream_id=q.stream_id,
            file_id=q.file_id,
            since=q.since,
            until=q.until,
            before=before,
            limit=q.limit,
        )
        cursor = None
        if len(rows) == q.limit:
            cursor = _encode_cursor([rows[-1]["created_at"], rows[-1]["id"]])
        return RunPage(runs=_summaries(conn, rows), next_cursor=cursor)

    return ok(await _services(request).db.query(page))


async def get_run(request: Request) -> Response:
    run_id = request.path_params["run_id"]

    def detail(conn: Any) -> RunDetail | None:
        run = views.run_detail(conn, run_id)
        if run is None:
            return None
        (summary,) = _summaries(conn, [run])
        now = _now()
        return RunDetail(
            **summary.model_dump(),
            context=run["context"] or {},
            deadline=run["deadline"],
            steps=[
                StepInfo(
                    **{k: s[k] for k in StepInfo.model_fields if k not in ("tasks", "outputs")},
                    outputs=s["outputs"] or {},
                    tasks=[_task_info(t, now) for t in s["tasks"]],
                )
                for s in run["steps"]
            ],
            history=[
                HistoryInfo(
                    **{k: h[k] for k in HistoryInfo.model_fields if k != "detail"},
                    detail=h["detail"] or {},
                )
                for h in run["history"]
            ],
            events=[_event_info(e, with_body=False) for e in run["events"]],
            timers=[_timer_info(t) for t in run["timers"]],
        )

    found = await _services(request).db.query(detail)
    if found is None:
        return problem(404, f"no run {run_id!r}")
    return ok(found)


async def find_by_task(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    owner = await _services(request).db.query(find_task, task_id)
    if owner is None:
        return problem(404, f"no run recorded VOD task {task_id!r}")
    return ok(TaskLookup(task_id=owner.task_id, run_id=owner.run_id, step=owner.step))


async def trigger_run(request: Request) -> Response:
    body = await parse_body(request, TriggerRequest)
    try:
        run_id, created = await _services(request).runner.trigger_manual(
            body.workflow, body.params, idempotency_key=body.idempotency_key, actor="api"
        )
    except TriggerRefused as exc:
        return problem(exc.status, str(exc))
    return ok(TriggerResult(run_id=run_id, created=created), 201 if created else 200)


async def _act(request: Request, event: m.Input) -> Response:
    run_id = request.path_params["run_id"]
    decision = await _services(request).runner.apply(run_id, event)
    if decision is None:
        return problem(404, f"no run {run_id!r}")
    changed = decision.history.from_status != decision.history.to_status or bool(decision.commands)
    return ok(
        ActionResult(
            run_id=run_id,
            status=decision.state.status.value,
            changed=changed,
            reason=decision.history.reason,
        )
    )


async def cancel_run(request: Request) -> Response:
    body = await parse_body(request, CancelRequest)
    return await _act(request, m.Cancel(actor=_actor(request), reason=body.reason))


async def retry_run(request: Request) -> Response:
    """A step the run's workflow does not have is the caller's mistake (422), unlike a real
    step that cannot be retried now, which the machine answers (and records) as ignored."""
    body = await parse_body(request, RetryRequest)
    if body.step is not None:
        run_id = request.path_params["run_id"]
        names = await _services(request).db.query(views.step_names, run_id)
        if names is None:
            return problem(404, f"no run {run_id!r}")
        if body.step not in names:
            return problem(
                422,
                f"run {run_id} has no step {body.step!r}; its steps: {', '.join(names)}",
            )
    return await _act(request, m.ManualRetry(actor=_actor(request), step=body.step))


def _actor(request: Request) -> str:
    return (
        "api"
        if request.headers.get("x-vodflow-actor") is None
        else ("api:" + request.headers["x-vodflow-actor"][:40])
    )


async def list_events(request: Request) -> Response:
    q = parse_query(request, EventQuery)
    before = _id_cursor(q.cursor)
    rows = await _services(request).db.query(
        views.list_inbox,
        status=q.status or None,
        source=q.source,
        run_id=q.run_id,
        task_id=q.task_id,
        file_id=q.file_id,
        before=before,
        limit=q.limit,
    )
    cursor = _next_id_cursor(rows, q.limit)
    return ok(EventPage(events=[_event_info(e, with_body=True) for e in rows], next_cursor=cursor))


async def get_event(request: Request) -> Response:
    event_id = _id_param(request, "event_id", "inbox event")
    row = await _services(request).db.query(views.inbox_event, event_id)
    if row is None:
        return problem(404, f"no inbox event {event_id}")
    return ok(_event_info(row, with_body=True))


async def replay_event(request: Request) -> Response:
    event_id = _id_param(request, "event_id", "inbox event")
    services = _services(request)
    row = await services.db.query(views.inbox_event, event_id)
    if row is None:
        return problem(404, f"no inbox event {event_id}")
    refused = _replay_refusal(event_id, row)
    if refused is not None:
        return problem(409, refused)
    replayed = await services.db.write(queues.replay_inbox, event_id)
    if not replayed:  # its status changed in between
        row = await services.db.query(views.inbox_event, event_id)
        return problem(409, _replay_refusal(event_id, row) or f"inbox event {event_id} changed")
    services.runner.inbox_wake.set()
    return ok(ReplayResult(event_id=event_id, replayed=replayed))


def _replay_refusal(event_id: int, row: dict[str, Any] | None) -> str | None:
    """Why this inbox event is not replayed, or None when it may be (``queues.REPLAYABLE``)."""
    if row is None:
        return f"no inbox event {event_id}"
    status, note = row["status"], row["note"] or ""
    if status in queues.REPLAYABLE:
        return None
    what = f"inbox event {event_id} is {status}"
    if status == InboxStatus.INVALID:
        return f"{what} ({note}): nothing to replay"
    if status == InboxStatus.APPLIED:
        return (
            f"{what} ({note}): its effect is recorded, and applying it again would only record "
            "it anew as late or a duplicate"
        )
    if status == InboxStatus.PENDING:
        return f"{what}: the runner applies it shortly"
    return f"{what}: only {', '.join(queues.REPLAYABLE)} events are replayed"


async def list_timers(request: Request) -> Response:
    q = parse_query(request, TimerQuery)
    before = _id_cursor(q.cursor)
    rows = await _services(request).db.query(
        views.list_timers, status=q.status or None, run_id=q.run_id, before=before, limit=q.limit
    )
    cursor = _next_id_cursor(rows, q.limit)
    return ok(TimerPage(timers=[TimerDetail(**t) for t in rows], next_cursor=cursor))


async def list_sessions(request: Request) -> Response:
    q = parse_query(request, SessionQuery)
    before = _id_cursor(q.cursor)
    rows = await _services(request).db.query(
        views.list_sessions,
        status=q.status or None,
        workflow=q.workflow,
        stream_id=q.stream_id,
        before=before,
        limit=q.limit,
    )
    cursor = _next_id_cursor(rows, q.limit)
    return ok(SessionPage(sessions=[SessionInfo(**r) for r in rows], next_cursor=cursor))


async def cancel_session(request: Request) -> Response:
    """An open session cancelled: the recordings it collected start no run (a later recording
    of the stream opens a new session). A closed one started its run already: 409."""
    session_id = _id_param(request, "session_id", "session")

    def cancel(conn: Any) -> tuple[bool, dict[str, Any] | None]:
        return windows.cancel_window(conn, session_id), views.session(conn, session_id)

    changed, row = await _services(request).db.write(cancel)
    if row is None:
        return problem(404, f"no session {session_id}")
    if row["status"] == "closed":
        started = f"its run {row['run_id']}" if row["run_id"] else "no run (its workflow is gone)"
        return problem(409, f"session {session_id} has closed and started {started}")
    return ok(SessionCancelled(changed=changed, session=SessionInfo(**row)))


async def replay_timer(request: Request) -> Response:
    """A failed timer made pending again, and the timer sweep run at once: the answer says
    whether it fired this time or failed again (with the new error)."""
    timer_id = _id_param(request, "timer_id", "timer")
    services = _services(request)
    replayed = await services.db.write(queues.replay_timer, timer_id)
    if replayed:
        await services.sweeper.run_job("timers")
    row = await services.db.query(views.timer, timer_id)  # as it is now: fired or failed again
    if row is None:
        return problem(404, f"no timer {timer_id}")
    if not replayed:
        return problem(409, f"timer {timer_id} is {row['status']}: only a failed timer is replayed")
    return ok(TimerReplayResult(timer=TimerDetail(**row)))


def _percentiles(values: list[float]) -> Percentiles:
    if not values:
        return Percentiles(count=0, p50=None, p95=None)
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return Percentiles(count=len(ordered), p50=statistics.median(ordered), p95=p95)


async def get_stats(request: Request) -> Response:
    services = _services(request)
    raw = await services.db.query(views.stats, _now())
    action = "ProcessFileByProcedure"
    quota = services.limiter.quota(action)
    jobs = await services.sweeper.all_health()
    return ok(
        Stats(
            runs_by_status=raw["runs_by_status"],
            stalled_tasks=raw["stalled_tasks"],
            oldest_pending_seconds=raw["oldest_pending_seconds"],
            callbacks_per_minute=raw["callbacks_per_minute"],
            step_duration_seconds=_percentiles(raw["step_seconds"]),
            callback_latency_seconds=_percentiles(raw["callback_lag_seconds"]),
            quota=Quota(
                action=action,
                used=await services.limiter.usage(action),
                limit=quota.rate,
                window_seconds=quota.window,
            ),
            inbox=raw["inbox"],
            outbox_pending=raw["outbox_pending"],
            failed_timers=raw["failed_timers"],
            open_sessions=raw["open_sessions"],
            replica=services.sweeper.replica,
            sweeper=[
                JobInfo(
                    name=j.name,
                    replica=j.replica,
                    interval_seconds=j.interval,
                    last_started_at=j.last_started_at,
                    last_success_at=j.last_success_at,
                    last_error=j.last_error,
                    stalled=j.stalled,
                    findings=j.findings,
                )
                for j in jobs
            ],
        )
    )


def _sse(row: dict[str, Any]) -> bytes:
    data = {
        "historyId": row["id"],
        "runId": row["run_id"],
        "workflow": row["workflow"],
        "at": row["at"].isoformat(),
        "input": row["input"],
        "step": row["step"],
        "from": row["from_status"],
        "status": row["to_status"],
        "reason": row["reason"],
    }
    return f"id: {row['id']}\nevent: run\ndata: {json.dumps(data)}\n\n".encode()


async def live_events(request: Request) -> Response:
    """Server-Sent Events: every committed history entry, as ``event: run``."""
    services = _services(request)
    hub: LiveHub = services.live
    start = request.headers.get("last-event-id") or request.query_params.get("after")
    try:
        after = int(start) if start is not None else None
    except ValueError:
        return problem(422, "Last-Event-ID: expected a history id")
    sub = await hub.subscribe()
    if sub is None:
        return problem(
            503,
            f"too many live streams: {hub.max_streams} are open, the most "
            "VODFLOW_EVENTS_MAX_STREAMS allows; try again later",
        )

    async def stream() -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        last = sub.start if after is None else after
        # A stream resumed from an earlier entry reads what it missed itself, up to where the
        # shared poller took over for it.
        while last < sub.start:
            rows = [
                r for r in await hub.db.query(views.history_since, last) if r["id"] <= sub.start
            ]
            if not rows:
                break
            for row in rows:
                last = row["id"]
                yield _sse(row)
        quiet = 0.0
        while not (sub.overflowed or hub.closing or await request.is_disconnected()):
            try:
                rows = await asyncio.wait_for(sub.queue.get(), 1.0)
            except TimeoutError:
                quiet += 1.0
                if quiet >= 15:
                    yield b": keep-alive\n\n"
                    quiet = 0.0
                continue
            quiet = 0.0
            for row in rows:
                if row["id"] > last:
                    last = row["id"]
                    yield _sse(row)
        # Overflowed (the client read too slowly): the stream ends, and the browser's
        # EventSource reconnects with Last-Event-ID, reading what it missed.

    return _LiveResponse(
        hub,
        sub,
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


class _LiveResponse(StreamingResponse):
    """A live stream that gives its place back however it ends (even before it started)."""

    def __init__(self, hub: LiveHub, sub: Subscription, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.unsubscribe(self.sub)


class Subscription:
    """One live stream's place in the hub: the history entries after ``start`` arrive on
    ``queue`` in batches, as the shared poller reads them."""

    QUEUE_BATCHES = 1000

    def __init__(self, start: int) -> None:
        self.start = start
        self.queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(self.QUEUE_BATCHES)
        self.overflowed = False


class LiveHub:
    """Feeds every live stream of this process from one poller: one query per ``interval``
    (at once when this process commits a transition; other replicas' are found by the poll),
    however many streams are open, and none while no stream is. At most ``max_streams``
    streams are open at once."""

    PAGE = 200
    """History entries one query reads at most."""

    def __init__(self, db: Database, *, max_streams: int = 100, interval: float = 1.0) -> None:
        self.db = db
        self.max_streams = max_streams
        self.interval = interval
        self._wake = asyncio.Event()
        self._subs: set[Subscription] = set()
        self._poller: asyncio.Task[None] | None = None
        self._last = 0
        self._starting = asyncio.Lock()
        self.closing = False
        """Set when the server stops: every stream ends within a second (each browser's
        EventSource reconnects, to whichever server answers then)."""

    def notify(self, *_: object) -> None:
        self._wake.set()

    def end_streams(self) -> None:
        """End every stream (the server is stopping); safe from a signal handler."""
        self.closing = True

    @property
    def streams(self) -> int:
        return len(self._subs)

    async def subscribe(self) -> Subscription | None:
        """A place for one more stream, or None when ``max_streams`` are open."""
        if len(self._subs) >= self.max_streams:
            return None
        async with self._starting:
            if self._poller is None:
                self._last = await self.db.query(views.last_history_id)
                self._poller = asyncio.create_task(self._poll(), name="live-events")
            if len(self._subs) >= self.max_streams:
                return None
            sub = Subscription(self._last)
            self._subs.add(sub)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        if not self._subs and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    async def close(self) -> None:
        for sub in list(self._subs):
            self.unsubscribe(sub)

    async def _poll(self) -> None:
        while True:
            self._wake.clear()
            try:
                rows = await self.db.query(views.history_since, self._last, self.PAGE)
            except Exception:
                log_failure(log, "live events: reading the history")
                rows = []
            if rows:
                self._last = rows[-1]["id"]
                for sub in list(self._subs):
                    try:
                        sub.queue.put_nowait(rows)
                    except asyncio.QueueFull:
                        sub.overflowed = True
                if len(rows) == self.PAGE:
                    continue  # there is more to read now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)


ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/api/workflows", list_workflows, "Loaded workflows", WorkflowList),
    Endpoint(
        "POST",
        "/api/workflows/reload",
        reload_workflows,
        "Read the workflow files again and serve them",
        ReloadResult,
        scope="admin",
        errors=(422,),
    ),
    Endpoint(
        "GET", "/api/runs", list_runs, "Runs, newest first", RunPage, query=RunQuery, errors=(422,)
    ),
    Endpoint(
        "POST",
        "/api/runs",
        trigger_run,
        "Start a run of a workflow with a manual trigger",
        TriggerResult,
        scope="admin",
        body=TriggerRequest,
        status=201,
        errors=(404, 409, 422),
    ),
    Endpoint(
        "GET",
        "/api/runs/{run_id}",
        get_run,
        "A run: steps, tasks, history, callbacks",
        RunDetail,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/api/runs/{run_id}/cancel",
        cancel_run,
        "Cancel a run",
        ActionResult,
        scope="admin",
        body=CancelRequest,
        errors=(404, 422),
    ),
    Endpoint(
        "POST",
        "/api/runs/{run_id}/retry",
        retry_run,
        "Retry a failed run or a step waiting to retry",
        ActionResult,
        scope="admin",
        body=RetryRequest,
        errors=(404, 422),
    ),
    Endpoint(
        "GET",
        "/api/tasks/{task_id:path}",
        find_by_task,
        "The run that recorded a VOD task ID",
        TaskLookup,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/api/inbox",
        list_events,
        "Inbox events (orphans, invalid bodies, ...), newest first",
        EventPage,
        query=EventQuery,
        errors=(422,),
    ),
    Endpoint(
        "GET",
        "/api/inbox/{event_id}",
        get_event,
        "One inbox event with its raw body",
        EventInfo,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/api/inbox/{event_id}/replay",
        replay_event,
        "Apply an inbox event again",
        ReplayResult,
        scope="admin",
        errors=(404, 409),
    ),
    Endpoint(
        "GET",
        "/api/timers",
        list_timers,
        "Timers (failed ones: runs waiting on an operator), newest first",
        TimerPage,
        query=TimerQuery,
        errors=(422,),
    ),
    Endpoint(
        "POST",
        "/api/timers/{timer_id}/replay",
        replay_timer,
        "Fire a failed timer again",
        TimerReplayResult,
        scope="admin",
        errors=(404, 409),
    ),
    Endpoint(
        "GET",
        "/api/sessions",
        list_sessions,
        "stream.session windows (open ones collecting recordings), newest first",
        SessionPage,
        query=SessionQuery,
        errors=(422,),
    ),
    Endpoint(
        "POST",
        "/api/sessions/{session_id}/cancel",
        cancel_session,
        "Cancel an open stream session: its recordings start no run",
        SessionCancelled,
        scope="admin",
        errors=(404, 409),
    ),
    Endpoint("GET", "/api/stats", get_stats, "Overview for the dashboard and alerting", Stats),
    Endpoint(
        "GET",
        "/api/events",
        live_events,
        "Live run changes (Server-Sent Events)",
        None,
        media_type="text/event-stream",
        errors=(422,),
    ),
]


def _route(path: str, operations: list[Endpoint]) -> Route:
    """One route for every operation at ``path``: a method none of them takes is answered 405
    with all of theirs in ``Allow`` (with a route per operation, Starlette named only the first
    route's)."""
    handlers = {e.method: e.handler for e in operations}

    async def handle(request: Request) -> Response:
        if "\x00" in request.url.path:  # names nothing vodflow stores (nor can store)
            return problem(404, f"nothing at {request.url.path!r}")
        handler = handlers.get(request.method) or handlers["GET"]  # HEAD is a GET's
        try:
            return await handler(request)
        except Invalid as exc:
            return problem(exc.status, exc.detail)

    handle.__name__ = "_".join(e.handler.__name__ for e in operations)
    return Route(path, handle, methods=list(handlers))


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's answer for a path no route serves (404) or a method a route does not take
    (405): under ``/api`` in the API's error shape, as its operations answer, so a client reads
    every API error the same way; elsewhere as Starlette answers (plain text)."""
    assert isinstance(exc, HTTPException)
    path, method = request.url.path, request.method
    if not (path == "/api" or path.startswith("/api/")):
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no API operation at {path} (the operations: /openapi.json)"
    elif exc.status_code == 405:
        allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        detail = f"{method} is not an operation of {path}; it takes: {allowed}"
    answer = problem(exc.status_code, detail)
    answer.headers.update(exc.headers or {})
    return answer


async def openapi_json(request: Request) -> Response:
    return JSON(document(ENDPOINTS, title="vodflow dashboard API", version=__version__))


_operations: dict[str, list[Endpoint]] = {}
for _endpoint in ENDPOINTS:
    _operations.setdefault(_endpoint.path, []).append(_endpoint)

routes = [
    *(_route(path, operations) for path, operations in _operations.items()),
    Route("/openapi.json", openapi_json, methods=["GET"]),
]


class ApiAuth:
    """Bearer tokens for /api (read-only and admin scopes); see the module docstring."""

    def __init__(self, app: ASGIApp, *, admin: str | None, read: str | None) -> None:
        self.app = app
        self.admin = admin
        self.read = read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The built-in webhook sink's list of deliveries (full payloads, output URLs) is read
        # like the API; deliveries to it stay open (they carry their own signature).
        sink = scope.get("path") == "/hooks/sink" and scope.get("method") == "GET"
        if scope["type"] != "http" or not (scope["path"].startswith("/api/") or sink):
            await self.app(scope, receive, send)
            return
        if self.admin is None and self.read is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else None
        if token is None and request.method == "GET":  # EventSource sends no headers
            token = request.query_params.get("access_token")
        if token is None:
            await _deny(401, "this API needs Authorization: Bearer <token>", scope, receive, send)
            return
        # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500).
        given_bytes = token.encode()
        is_admin = self.admin is not None and hmac.compare_digest(given_bytes, self.admin.encode())
        is_read = self.read is not None and hmac.compare_digest(given_bytes, self.read.encode())
        if not (is_admin or is_read):
            await _deny(401, "unknown API token", scope, receive, send)
            return
        if not is_admin and request.method != "GET":
            await _deny(403, "a read-only token cannot change anything", scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _deny(status: int, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = JSON(
        Problem(error=detail, status=status).model_dump(), status_code=status, headers=headers
    )
    await response(scope, receive, send)
