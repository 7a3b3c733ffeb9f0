"""The pure state machine of a run: ``decide(workflow, state, input, now) -> Decision``.

Everything that changes a run goes through :func:`decide`. It reads no clock, database or network
and draws no random numbers: time comes in as ``now``, the outside world comes in as inputs
(a trigger, the answer to a submit, a task's event, a timer firing, an operator's action) and goes
out as commands (submit to VOD, notify, verify outputs, schedule a timer, finish), which the runner
writes to the outbox in the same transaction as the new state. Every input appends exactly one
history entry, including the inputs that change nothing (a duplicate or late event is recorded,
not applied).

Lifecycle of a step attempt::

    pending ─► submitting ─► awaiting_callback ─► verifying ─► succeeded
                  │  ▲            │      ▲             │
                  │  └─ retrying ◄┴──────┼─────────────┘   (retryable failure, budget left)
                  │                      │
                  └─► recovering ────────┘   (VOD said 50005: already submitted; find its tasks)
    any non-retryable failure, or no budget left ─► failed   (the run fails with the reason)

Tasks belong to one attempt. An event for a task of an earlier attempt is recorded but never
completes or fails the current attempt, except that recovering after 50005 adopts the tasks VOD
is still running for an earlier attempt: that is the "already submitted, recover, don't resubmit"
rule, and the adoption is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, JsonValue, SkipValidation

from orchestrator import template
from orchestrator.durations import format_duration
from orchestrator.spec import DURATION_SLACK, DURATION_TOLERANCE, RetryPolicy, Step, Workflow
from orchestrator.vod.errors import ErrorClass
from orchestrator.vod.responses import TaskRef

# --- Vocabulary -----------------------------------------------------------------------------


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    AWAITING_CALLBACK = "awaiting_callback"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepStatus(StrEnum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    RECOVERING = "recovering"
    AWAITING_CALLBACK = "awaiting_callback"
    VERIFYING = "verifying"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED)


class TaskStatus(StrEnum):
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self is not TaskStatus.WAITING


TimerKind = Literal["step_timeout", "run_timeout", "retry"]


BuiltJson = Annotated[dict[str, JsonValue], SkipValidation]
"""A JSON object vodflow built itself from values already read and checked (a parsed event's
outputs, a dumped input): not walked again, value by value, on every callback."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_set = object.__setattr__  # past the records' frozen guard, as dataclasses' own __init__ does


# --- State ----------------------------------------------------------------------------------


class _Record:
    """A run's state records: frozen dataclasses, not pydantic models.

    The machine builds them from values already checked (parsed events, validated workflows)
    and the store restores them from rows vodflow wrote, so nothing here validates. Every task
    callback restores its run, reads it field by field while deciding and copies the parts it
    changes: plain attribute reads cost a third of a pydantic model's (whose ``__getattr__``
    sends every read through a slower path), which was a tenth of a callback's instructions.
    Copies and restores set the instance's ``__dict__`` whole, as pydantic's ``model_construct``
    does. Equality compares the field values; the records are not hashable (they hold dicts).
    """

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # set by @dataclass

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)  # the records declare no ClassVar or InitVar

    @classmethod
    def restore(cls, values: dict[str, Any]) -> Self:
        """A record from the values of all its fields, as vodflow wrote them (not checked)."""
        names = cls.__dataclass_fields__
        if len(values) != len(names):
            missing, unknown = names.keys() - values.keys(), values.keys() - names.keys()
            raise TypeError(
                f"{cls.__name__} is restored from all its fields and no others; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        return cls._built(values)

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with ``update`` applied (not checked), as pydantic's method of that name; an
        update naming a field the record does not have raises TypeError."""
        values = {**self.__dict__, **(update or {})}
        if len(values) != len(self.__dict__):
            unknown = sorted(values.keys() - self.__dict__.keys())
            raise TypeError(f"{type(self).__name__} has no field {', '.join(unknown)}")
        return self._built(values)

    @classmethod
    def _built(cls, values: dict[str, Any]) -> Self:
        record = cls.__new__(cls)
        _set(record, "__dict__", values)
        return record

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class TaskState(_Record):
    """One VOD task ID a step's attempt is waiting for (or learnt about)."""

    task_id: str
    kind: str
    attempt: int
    awaited: bool
    status: TaskStatus = TaskStatus.WAITING
    submitted_at: datetime
    expected_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    error_code: int | None = None
    outputs: dict[str, JsonValue] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class StepState(_Record):
    name: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    budget_from: int = 0
    """Attempts before this number don't count toward max_attempts (a manual retry resets it)."""
    sends: int = 0
    """Sends of the current attempt; a frequency-limit answer re-sends the same attempt."""
    throttled: bool = False
    in_flight: bool = False
    """A submit (or recover) was sent and its answer has not come back: never send another."""
    request: dict[str, JsonValue] | None = None
    started_at: datetime | None = None
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    retry_at: datetime | None = None
    deadline: datetime | None = None
    error: str | None = None
    error_class: ErrorClass | None = None
    outputs: dict[str, JsonValue] = dataclasses.field(default_factory=dict)
    tasks: tuple[TaskState, ...] = ()

    def current_tasks(self) -> tuple[TaskState, ...]:
        return tuple(t for t in self.tasks if t.attempt == self.attempt)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RunState(_Record):
    run_id: str
    workflow: str
    version: str
    status: RunStatus = RunStatus.PENDING
    context: dict[str, JsonValue] = dataclasses.field(default_factory=dict)
    steps: tuple[StepState, ...]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    deadline: datetime | None = None
    error: str | None = None

    def step(self, name: str) -> StepState:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def find_task(self, task_id: str) -> tuple[StepState, TaskState] | None:
        for step in self.steps:
            for task in step.tasks:
                if task.task_id == task_id:
                    return step, task
        return None

    def outputs(self) -> dict[str, dict[str, JsonValue]]:
        return {s.name: s.outputs for s in self.steps if s.status is StepStatus.SUCCEEDED}


def new_run(
    run_id: str, workflow: Workflow, version: str, context: Mapping[str, JsonValue], now: datetime
) -> RunState:
    """A run as it is before its trigger is applied."""
    return RunState(
        run_id=run_id,
        workflow=workflow.name,
        version=version,
        context=dict(context),
        steps=tuple(StepState(name=s.name) for s in workflow.steps),
        created_at=now,
        updated_at=now,
    )


# --- Inputs ---------------------------------------------------------------------------------


class Trigger(_Frozen):
    kind: Literal["trigger"] = "trigger"
    event: str = ""
    """What started the run (an inbox event key, or 'manual by <actor>')."""


class SubmitSucceeded(_Frozen):
    """A step's action was accepted: VOD answered with task IDs, or a webhook was delivered."""

    kind: Literal["submit_succeeded"] = "submit_succeeded"
    step: str
    attempt: int
    tasks: tuple[TaskRef, ...] = ()
    recovered: bool = False
    """The task IDs were found after a 50005 answer instead of being returned by the submit."""
    outputs: dict[str, JsonValue] = Field(default_factory=dict)


class SubmitFailed(_Frozen):
    kind: Literal["submit_failed"] = "submit_failed"
    step: str
    attempt: int
    error_class: ErrorClass
    code: int | None = None
    message: str
    retry_after: float | None = None
    """Seconds the limiter asks to wait (frequency limit)."""


class TaskEvent(_Frozen):
    """VOD reported on a task (a callback, a pulled event or a task query)."""

    kind: Literal["task_event"] = "task_event"
    task_id: str
    event_type: str
    event_key: str
    terminal: bool = True
    success: bool = False
    error_class: ErrorClass | None = None
    error_code: int | None = None
    message: str = ""
    outputs: BuiltJson = Field(default_factory=dict)


class VerifySucceeded(_Frozen):
    kind: Literal["verify_succeeded"] = "verify_succeeded"
    step: str
    attempt: int


class VerifyFailed(_Frozen):
    kind: Literal["verify_failed"] = "verify_failed"
    step: str
    attempt: int
    reason: str
    error_class: ErrorClass = ErrorClass.VERIFICATION
    """``rejected`` for outputs no attempt would check (a URL refused): the step fails at once."""


class TimerFired(_Frozen):
    kind: Literal["timer_fired"] = "timer_fired"
    timer: TimerKind
    step: str | None = None
    attempt: int | None = None


class Cancel(_Frozen):
    kind: Literal["cancel"] = "cancel"
    actor: str
    reason: str = ""


class ManualRetry(_Frozen):
    kind: Literal["manual_retry"] = "manual_retry"
    actor: str
    step: str | None = None


Input: TypeAlias = Annotated[
    Trigger
    | SubmitSucceeded
    | SubmitFailed
    | TaskEvent
    | VerifySucceeded
    | VerifyFailed
    | TimerFired
    | Cancel
    | ManualRetry,
    Field(discriminator="kind"),
]

# --- Commands -------------------------------------------------------------------------------


class _StepCommand(_Frozen):
    """An outbound call for one attempt of one step; the outbox dedupes on the idempotency key."""

    run_id: str
    step: str
    attempt: int
    idempotency_key: str


class Submit(_StepCommand):
    """Call ProcessFileByProcedure with ``request`` (nested wire names, templates resolved)."""

    kind: Literal["submit"] = "submit"
    request: dict[str, JsonValue]


class Recover(_StepCommand):
    """Find the tasks VOD is already running for this step (after a 50005 answer)."""

    kind: Literal["recover"] = "recover"
    request: dict[str, JsonValue]


class Notify(_StepCommand):
    """POST ``payload`` to ``url`` as a Standard Webhooks message with id ``webhook_id``."""

    kind: Literal["notify"] = "notify"
    url: str
    payload: dict[str, JsonValue]
    webhook_id: str
    timeout: float


class Verify(_StepCommand):
    """Check that a step's outputs are usable (they exist, durations match, sprites cover)."""

    kind: Literal["verify"] = "verify"
    outputs: dict[str, JsonValue]
    duration_tolerance: float = DURATION_TOLERANCE
    duration_slack: float = DURATION_SLACK.total_seconds()
    """The step's ``verify`` options (seconds)."""


class ScheduleTimer(_Frozen):
    kind: Literal["schedule_timer"] = "schedule_timer"
    run_id: str
    timer: TimerKind
    due: datetime
    step: str | None = None
    attempt: int | None = None


class CancelTimers(_Frozen):
    """Timers of this run (of one step, or all when ``step`` is None) are no longer needed."""

    kind: Literal["cancel_timers"] = "cancel_timers"
    run_id: str
    step: str | None = None


class Finish(_Frozen):
    kind: Literal["finish"] = "finish"
    run_id: str
    status: RunStatus
    error: str | None = None
    # The run's step outputs, which the machine built from parsed events: not walked again.
    outputs: Annotated[dict[str, dict[str, JsonValue]], SkipValidation] = Field(
        default_factory=dict
    )


Command: TypeAlias = Annotated[
    Submit | Recover | Notify | Verify | ScheduleTimer | CancelTimers | Finish,
    Field(discriminator="kind"),
]
OUTBOUND = _StepCommand
"""Commands that become outbox rows (everything else is a timer or bookkeeping)."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HistoryEntry:
    """What one input did to a run, as its history keeps it. Built by ``decide`` alone, from
    values it has checked, so a plain record like the states (see ``_Record``)."""

    at: datetime
    input: str
    step: str | None
    from_status: RunStatus
    to_status: RunStatus
    reason: str
    detail: dict[str, JsonValue] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """``decide``'s answer: the run's new state, the commands to carry out, the history entry."""

    state: RunState
    commands: tuple[Command, ...] = ()
    history: HistoryEntry


# --- The decision function --------------------------------------------------------------------


DEFAULT_EXPECTED = timedelta(minutes=10)
"""How long a task's callback is waited for before VOD is asked, for a step without
``expected``: ``VODFLOW_TASK_POLL_AFTER``'s default."""


def decide(
    workflow: Workflow,
    state: RunState,
    event: Input,
    now: datetime,
    *,
    expected: timedelta = DEFAULT_EXPECTED,
) -> Decision:
    """Apply one input to a run. Pure: the same arguments always give the same decision.

    ``expected`` is the deployment's wait for a task's callback, for steps that name none.
    """
    ctx = _Ctx(workflow, state, now, expected)
    reason = _HANDLERS[type(event)](ctx, event)
    new = ctx.state.model_copy(update={"status": _run_status(ctx.state), "updated_at": now})
    ended_now = not state.status.terminal or new.finished_at is None  # (re-opened by a retry)
    if new.status.terminal and ended_now:
        new = new.model_copy(update={"finished_at": now})
        ctx.commands.append(CancelTimers(run_id=new.run_id))
        ctx.commands.append(
            Finish(run_id=new.run_id, status=new.status, error=new.error, outputs=new.outputs())
        )
    entry = HistoryEntry(
        at=now,
        input=event.kind,
        step=ctx.step_name or getattr(event, "step", None),
        from_status=state.status,
        to_status=new.status,
        reason=reason,
        detail=_summary(event),
    )
    return Decision(state=new, commands=tuple(ctx.commands), history=entry)


class _Ctx:
    """Mutable scratch space for one decision; the inputs themselves are never mutated."""

    def __init__(
        self, workflow: Workflow, state: RunState, now: datetime, expected: timedelta
    ) -> None:
        self.workflow = workflow
        self.state = state
        self.now = now
        self.expected = expected
        self.commands: list[Command] = []
        self.step_name: str | None = None

    def spec(self, name: str) -> Step:
        return self.workflow.step(name)

    def set_step(self, step: StepState) -> None:
        self.state = self.state.model_copy(
            update={"steps": tuple(step if s.name == step.name else s for s in self.state.steps)}
        )

    def set_run(self, **changes: Any) -> None:
        self.state = self.state.model_copy(update=changes)


def _run_status(state: RunState) -> RunStatus:
    """A live run's status follows its current step; terminal statuses are set explicitly."""
    if state.status.terminal:
        return state.status
    current = next((s for s in state.steps if not s.status.terminal), None)
    if current is None:
        return state.status
    return {
        StepStatus.PENDING: RunStatus.PENDING,
        StepStatus.SUBMITTING: RunStatus.RUNNING,
        StepStatus.VERIFYING: RunStatus.RUNNING,
        StepStatus.RECOVERING: RunStatus.AWAITING_CALLBACK,
        StepStatus.AWAITING_CALLBACK: RunStatus.AWAITING_CALLBACK,
        StepStatus.RETRYING: RunStatus.RETRYING,
    }.get(current.status, RunStatus.RUNNING)


def _summary(event: BaseModel) -> dict[str, JsonValue]:
    """What the history keeps of an input: small, with outputs left to the step itself."""
    data: dict[str, JsonValue] = event.model_dump(mode="json", exclude={"kind", "outputs"})
    return {k: v for k, v in data.items() if v not in (None, "", (), [], {})}


# --- Handlers -------------------------------------------------------------------------------


def _on_trigger(ctx: _Ctx, event: Trigger) -> str:
    if ctx.state.status is not RunStatus.PENDING or any(s.attempt for s in ctx.state.steps):
        return "trigger ignored: the run has already started"
    deadline = ctx.now + ctx.workflow.timeout
    ctx.set_run(deadline=deadline)
    ctx.commands.append(ScheduleTimer(run_id=ctx.state.run_id, timer="run_timeout", due=deadline))
    first = ctx.state.steps[0]
    ctx.step_name = first.name
    return "run started; " + _begin_attempt(ctx, first)


def _answered(ctx: _Ctx, name: str, attempt: int) -> None:
    """The answer to a send came back: the step may send again (even if it moved on)."""
    try:
        step = ctx.state.step(name)
    except KeyError:
        return
    if step.attempt == attempt and step.in_flight:
        ctx.set_step(step.model_copy(update={"in_flight": False}))


def _on_submit_succeeded(ctx: _Ctx, event: SubmitSucceeded) -> str:
    _answered(ctx, event.step, event.attempt)
    stale = _stale(ctx, event.step, event.attempt, (StepStatus.SUBMITTING, StepStatus.RECOVERING))
    if stale:
        if event.tasks and ctx.state.status.terminal:
            _record_late_tasks(ctx, event)
            return stale + f"; its tasks are recorded ({', '.join(r.task_id for r in event.tasks)})"
        return stale
    step = ctx.state.step(event.step)
    spec = ctx.spec(step.name)
    if spec.kind == "notify":
        ctx.set_step(step.model_copy(update={"outputs": dict(event.outputs)}))
        return _succeed_step(ctx, ctx.state.step(step.name), "webhook delivered")

    expected = ctx.now + (spec.expected or ctx.expected)
    tasks = list(step.tasks)
    adopted = []
    for ref in event.tasks:
        # A procedure task stands for all of its sub-tasks (its event reports on each of them).
        awaited = spec.wait_for == "all" or ref.kind in spec.wait_for or ref.kind == "procedure"
        existing = next((i for i, t in enumerate(tasks) if t.task_id == ref.task_id), None)
        if existing is None:
            tasks.append(
                TaskState(
                    task_id=ref.task_id,
                    kind=ref.kind,
                    attempt=event.attempt,
                    awaited=awaited,
                    submitted_at=ctx.now,
                    expected_at=expected,
                )
            )
        else:
            # Recovery after 50005 found a task an earlier attempt started: this attempt adopts it.
            old = tasks[existing]
            adopted.append(f"{old.task_id} (attempt {old.attempt})")
            tasks[existing] = old.model_copy(update={"attempt": event.attempt, "awaited": awaited})
    step = step.model_copy(
        update={
            "tasks": tuple(tasks),
            "status": StepStatus.AWAITING_CALLBACK,
            "submitted_at": ctx.now,
            "throttled": False,
        }
    )
    awaited_now = [t for t in step.current_tasks() if t.awaited]
    if isinstance(spec.wait_for, list) and event.tasks and not awaited_now:
        returned = ", ".join(sorted({r.kind for r in event.tasks}))
        ctx.set_step(step)
        return _fail_step(
            ctx,
            ctx.state.step(step.name),
            ErrorClass.INVALID_PARAMS,
            f"step waits for {', '.join(spec.wait_for)} but VOD returned only: {returned}",
        )
    if spec.timeout is not None:
        step = step.model_copy(update={"deadline": ctx.now + spec.timeout})
        ctx.commands.append(
            ScheduleTimer(
                run_id=ctx.state.run_id,
                timer="step_timeout",
                due=ctx.now + spec.timeout,
                step=step.name,
                attempt=event.attempt,
            )
        )
    ctx.set_step(step)
    ids = ", ".join(r.task_id for r in event.tasks) or "none"
    how = "recovered tasks" if event.recovered else "submitted; tasks"
    reason = f"{how}: {ids}"
    if adopted:
        reason += f"; adopted from earlier attempts: {', '.join(adopted)}"
    return reason + "; " + _check_step_done(ctx, ctx.state.step(step.name))


def _record_late_tasks(ctx: _Ctx, event: SubmitSucceeded) -> None:
    """A run ended while VOD was answering: keep its task IDs so their events match as late."""
    step = ctx.state.step(event.step)
    known = {t.task_id for t in step.tasks}
    extra = tuple(
        TaskState(
            task_id=r.task_id,
            kind=r.kind,
            attempt=event.attempt,
            awaited=False,
            submitted_at=ctx.now,
            expected_at=ctx.now,
        )
        for r in event.tasks
        if r.task_id not in known
    )
    ctx.set_step(step.model_copy(update={"tasks": step.tasks + extra}))


def _on_submit_failed(ctx: _Ctx, event: SubmitFailed) -> str:
    _answered(ctx, event.step, event.attempt)
    stale = _stale(ctx, event.step, event.attempt, (StepStatus.SUBMITTING, StepStatus.RECOVERING))
    if stale:
        # What became of the request ("not sent: the run had already ended") comes first.
        return f"{event.message}; {stale}"
    step = ctx.state.step(event.step)
    code = f" (code {event.code})" if event.code is not None else ""
    what = f"{event.error_class}{code}: {event.message}"
    recoverable = (
        event.error_class is ErrorClass.DUPLICATE_TASK
        and step.status is StepStatus.SUBMITTING
        and step.request is not None
        and ctx.spec(step.name).kind == "process"
    )
    if recoverable:
        assert step.request is not None
        ctx.set_step(step.model_copy(update={"status": StepStatus.RECOVERING, "in_flight": True}))
        ctx.commands.append(
            Recover(
                run_id=ctx.state.run_id,
                step=step.name,
                attempt=step.attempt,
                request=step.request,
                idempotency_key=f"{ctx.state.run_id}/{step.name}/{step.attempt}/recover",
            )
        )
        return f"VOD already runs this procedure ({what}); recovering its task IDs"
    if event.error_class is ErrorClass.FREQUENCY_LIMIT:
        policy = ctx.workflow.retry_for(ctx.spec(step.name))
        delay = timedelta(seconds=event.retry_after or policy.backoff.initial.total_seconds())
        return _schedule_retry(
            ctx, step, delay, throttled=True, reason=f"throttled by VOD ({what})"
        )
    return _fail_attempt(ctx, step, event.error_class, what)


def _on_task_event(ctx: _Ctx, event: TaskEvent) -> str:
    found = ctx.state.find_task(event.task_id)
    if found is None:
        return f"{event.event_type} for task {event.task_id} ignored: the run has no such task"
    step, task = found
    ctx.step_name = step.name
    outcome = "succeeded" if event.success else "failed"
    label = f"{event.event_type} for {task.kind} task {task.task_id}"
    late = f"late {label} recorded, not applied: the run already {ctx.state.status}"
    if ctx.state.status.terminal and (task.status.terminal or not event.terminal):
        return late
    if task.status.terminal:
        return f"duplicate {label} ignored: the task already {task.status}"
    if not event.terminal:
        return f"{label}: still processing"
    error = None if event.success else _task_error(event)
    updated = task.model_copy(
        update={
            "status": TaskStatus.SUCCEEDED if event.success else TaskStatus.FAILED,
            "finished_at": ctx.now,
            "error": error,
            "error_code": event.error_code,
            "outputs": dict(event.outputs),
        }
    )
    step = step.model_copy(
        update={"tasks": tuple(updated if t.task_id == task.task_id else t for t in step.tasks)}
    )
    ctx.set_step(step)
    if ctx.state.status.terminal:
        # The task's result is kept (it no longer shows as waiting, overdue or stalled, and a
        # retry that adopts the task knows it finished); the ended run and its steps stay as
        # they are.
        return late
    if task.attempt != step.attempt:
        return (
            f"{label} ({outcome}) recorded: it belongs to attempt {task.attempt}, "
            f"the step is on attempt {step.attempt}"
        )
    if not task.awaited:
        return f"{label} ({outcome}) recorded; the step does not wait for {task.kind}"
    if step.status is not StepStatus.AWAITING_CALLBACK:
        if _finished_after_timeout(step):
            return _take_timed_out_attempt(ctx, step, label)
        return f"{label} ({outcome}) recorded; the step is {step.status}, not waiting"
    if not event.success:
        return _fail_attempt(
            ctx, step, event.error_class or ErrorClass.INTERNAL, f"{task.kind} task failed: {error}"
        )
    return f"{label} succeeded; " + _check_step_done(ctx, step)


def _on_verify(ctx: _Ctx, event: VerifySucceeded | VerifyFailed) -> str:
    stale = _stale(ctx, event.step, event.attempt, (StepStatus.VERIFYING,))
    if stale:
        # What became of the check ("not checked: the run had already ended") comes first.
        return f"{event.reason}; {stale}" if isinstance(event, VerifyFailed) else stale
    step = ctx.state.step(event.step)
    if isinstance(event, VerifyFailed):
        return _fail_attempt(
            ctx, step, event.error_class, f"outputs are not usable: {event.reason}"
        )
    return _succeed_step(ctx, step, "outputs verified")


def _on_timer(ctx: _Ctx, event: TimerFired) -> str:
    if ctx.state.status.terminal:
        return f"{event.timer} timer ignored: the run already {ctx.state.status}"
    if event.timer == "run_timeout":
        limit = ctx.workflow.timeout
        reason = f"the run did not finish within its timeout of {_fmt(limit)}"
        current = next((s for s in ctx.state.steps if not s.status.terminal), None)
        if current is not None:
            ctx.step_name = current.name
            ctx.set_step(_ended(current, StepStatus.FAILED, ctx.now, reason, ErrorClass.TIMEOUT))
        ctx.set_run(status=RunStatus.FAILED, error=reason)
        return reason
    assert event.step is not None
    waiting = (StepStatus.AWAITING_CALLBACK, StepStatus.RECOVERING, StepStatus.VERIFYING)
    if event.timer == "step_timeout":
        stale = _stale(ctx, event.step, event.attempt, waiting)
        if stale:
            return stale
        step = ctx.state.step(event.step)
        step_limit = ctx.spec(step.name).timeout
        return _fail_attempt(
            ctx, step, ErrorClass.TIMEOUT, f"no result from VOD within {_fmt(step_limit)}"
        )
    stale = _stale(ctx, event.step, event.attempt, (StepStatus.RETRYING,))
    if stale:
        return stale
    step = ctx.state.step(event.step)
    if step.throttled:
        return "retry due after throttling; " + _send(ctx, step, resend=True)
    return "retry due; " + _begin_attempt(ctx, step)


def _on_cancel(ctx: _Ctx, event: Cancel) -> str:
    if ctx.state.status.terminal:
        return f"cancel by {event.actor} ignored: the run already {ctx.state.status}"
    reason = f"cancelled by {event.actor}" + (f": {event.reason}" if event.reason else "")
    for step in ctx.state.steps:
        if not step.status.terminal and step.attempt:
            ctx.step_name = step.name
            ctx.set_step(_ended(step, StepStatus.CANCELLED, ctx.now, reason, None))
    ctx.set_run(status=RunStatus.CANCELLED, error=reason)
    return reason


def _on_manual_retry(ctx: _Ctx, event: ManualRetry) -> str:
    state = ctx.state
    if state.status is RunStatus.SUCCEEDED:
        return f"retry by {event.actor} ignored: the run succeeded (start a new run instead)"
    if event.step is not None and event.step not in {s.name for s in state.steps}:
        return f"retry by {event.actor} ignored: the run has no step {event.step!r}"
    if not state.status.terminal:
        step = next(s for s in state.steps if not s.status.terminal)
        if event.step not in (None, step.name) or step.status is not StepStatus.RETRYING:
            return (
                f"retry by {event.actor} ignored: step {step.name} is {step.status}; "
                "only a failed run or a step waiting to retry can be retried"
            )
        ctx.step_name = step.name
        ctx.commands.append(CancelTimers(run_id=state.run_id, step=step.name))
        if step.throttled:
            return f"retried now by {event.actor}; " + _send(ctx, step, resend=True)
        return f"retried now by {event.actor}; " + _begin_attempt(ctx, step)
    busy = next((s for s in state.steps if s.in_flight), None)
    if busy is not None:
        return (
            f"retry by {event.actor} ignored: VOD has not answered step {busy.name}'s last "
            "request yet; retry once it has (see the outbox)"
        )
    # A failed or cancelled run is driven again from the step that did not succeed (or the named
    # step, whose later steps run again too), with a fresh retry budget: like a redrive.
    names = [s.name for s in state.steps]
    first_open = next(i for i, s in enumerate(state.steps) if s.status is not StepStatus.SUCCEEDED)
    start = names.index(event.step) if event.step else first_open
    if start > first_open:
        return (
            f"retry by {event.actor} ignored: step {names[first_open]} comes before "
            f"{event.step} and did not succeed; retry from it (or from an earlier step)"
        )
    for step in state.steps[start:]:
        ctx.set_step(
            step.model_copy(
                update={
                    "status": StepStatus.PENDING,
                    "budget_from": step.attempt,
                    "started_at": None,  # a new start: its duration counts from it
                    "error": None,
                    "error_class": None,
                    "finished_at": None,
                    "retry_at": None,
                    "deadline": None,
                    "throttled": False,
                }
            )
        )
    deadline = ctx.now + ctx.workflow.timeout
    was = state.status
    ctx.set_run(status=RunStatus.RUNNING, error=None, finished_at=None, deadline=deadline)
    ctx.commands.append(ScheduleTimer(run_id=state.run_id, timer="run_timeout", due=deadline))
    step = ctx.state.steps[start]
    ctx.step_name = step.name
    return f"{was} run retried by {event.actor} from step {step.name}; " + _begin_attempt(ctx, step)


_HANDLERS: dict[type, Any] = {
    Trigger: _on_trigger,
    SubmitSucceeded: _on_submit_succeeded,
    SubmitFailed: _on_submit_failed,
    TaskEvent: _on_task_event,
    VerifySucceeded: _on_verify,
    VerifyFailed: _on_verify,
    TimerFired: _on_timer,
    Cancel: _on_cancel,
    ManualRetry: _on_manual_retry,
}

# --- Step mechanics ---------------------------------------------------------------------------


def _stale(
    ctx: _Ctx, name: str, attempt: int | None, statuses: tuple[StepStatus, ...]
) -> str | None:
    """Why an input about (step, attempt) no longer applies, or None when it does."""
    ctx.step_name = name
    if ctx.state.status.terminal:
        return f"ignored: the run already {ctx.state.status}"
    try:
        step = ctx.state.step(name)
    except KeyError:
        return f"ignored: the run has no step {name!r}"
    if attempt != step.attempt:
        return f"ignored: it is about attempt {attempt}, the step is on attempt {step.attempt}"
    if step.status not in statuses:
        return f"ignored: the step is {step.status}"
    return None


def _template_context(ctx: _Ctx) -> dict[str, JsonValue]:
    steps: dict[str, JsonValue] = {
        s.name: {"outputs": s.outputs, "status": str(s.status), "error": s.error}
        for s in ctx.state.steps
        if s.status.terminal
    }
    return {
        "trigger": ctx.state.context,
        "steps": steps,
        "run": {
            "id": ctx.state.run_id,
            "workflow": ctx.state.workflow,
            "version": ctx.state.version,
        },
    }


def resolve_request(spec: Step, context: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """A step's ProcessFileByProcedure request, templates resolved (dry-run uses it too)."""
    assert spec.process is not None
    resolved = template.render_tree(spec.process.wire(), context)
    assert isinstance(resolved, dict)
    return resolved


def notify_payload(
    spec: Step, state: RunState, context: Mapping[str, JsonValue], now: datetime
) -> dict[str, JsonValue]:
    """The Standard Webhooks payload a notify step sends: type, timestamp and data."""
    assert spec.notify is not None
    extra = template.render_tree(dict(spec.notify.data), context)
    event_type = template.render(spec.notify.event_type, context)
    data: dict[str, JsonValue] = {
        "runId": state.run_id,
        "workflow": state.workflow,
        "version": state.version,
        "trigger": state.context,
        "outputs": dict(state.outputs()),
    }
    if isinstance(extra, dict):
        data.update(extra)
    kind = event_type if isinstance(event_type, str) else json.dumps(event_type)
    return {"type": kind, "timestamp": now.isoformat(), "data": data}


def webhook_id(run_id: str, step: str, payload: Mapping[str, JsonValue]) -> str:
    """A notify message's ``webhook-id``: the same for every delivery of one message (attempts,
    retries by hand), so receivers dedupe them, as Standard Webhooks asks; another when the
    message says something else (a retry from an earlier step that produced other outputs), so
    a receiver that dedupes does not drop it. The timestamp is not part of the message."""
    content = {"type": payload.get("type"), "data": payload.get("data")}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"msg_{run_id}_{step}_{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _begin_attempt(ctx: _Ctx, step: StepState) -> str:
    spec = ctx.spec(step.name)
    attempt = step.attempt + 1
    step = step.model_copy(
        update={
            "attempt": attempt,
            "sends": 0,
            "status": StepStatus.SUBMITTING,
            "started_at": step.started_at or ctx.now,
            "retry_at": None,
            "deadline": None,
            "throttled": False,
            "error": None,
            "error_class": None,
        }
    )
    try:
        if spec.kind == "process":
            request = resolve_request(spec, _template_context(ctx))
        else:
            assert spec.notify is not None
            url = template.render(spec.notify.url, _template_context(ctx))
            request = {"url": url if isinstance(url, str) else str(url)}
    except template.TemplateError as exc:
        ctx.set_step(step)
        return _fail_step(ctx, step, ErrorClass.TEMPLATE, f"cannot build the request: {exc}")
    step = step.model_copy(update={"request": request})
    ctx.set_step(step)
    return _send(ctx, step, resend=False)


def _send(ctx: _Ctx, step: StepState, *, resend: bool) -> str:
    """Emit the command that performs the current attempt's action."""
    spec = ctx.spec(step.name)
    payload: dict[str, JsonValue] = {}
    if spec.kind == "notify":
        # Built before the step counts as sent: a payload that cannot be built fails the step
        # with nothing in flight, so the run can be retried.
        try:
            payload = notify_payload(spec, ctx.state, _template_context(ctx), ctx.now)
        except template.TemplateError as exc:
            return _fail_step(ctx, step, ErrorClass.TEMPLATE, f"cannot build the payload: {exc}")
    sends = step.sends + 1
    step = step.model_copy(
        update={
            "sends": sends,
            "status": StepStatus.SUBMITTING,
            "retry_at": None,
            "in_flight": True,
        }
    )
    ctx.set_step(step)
    assert step.request is not None
    key = f"{ctx.state.run_id}/{step.name}/{step.attempt}/{sends}"
    if spec.kind == "process":
        ctx.commands.append(
            Submit(
                run_id=ctx.state.run_id,
                step=step.name,
                attempt=step.attempt,
                request=step.request,
                idempotency_key=key,
            )
        )
    else:
        assert spec.notify is not None
        ctx.commands.append(
            Notify(
                run_id=ctx.state.run_id,
                step=step.name,
                attempt=step.attempt,
                url=str(step.request["url"]),
                payload=payload,
                webhook_id=webhook_id(ctx.state.run_id, step.name, payload),
                timeout=spec.notify.timeout.total_seconds(),
                idempotency_key=key,
            )
        )
    what = "re-sent" if resend else "submitted"
    return f"attempt {step.attempt} of step {step.name} {what}"


def _finished_after_timeout(step: StepState) -> bool:
    """The step's attempt timed out waiting on VOD, its retry is not sent yet, and VOD has
    now finished every task the attempt waits for, successfully."""
    if step.status is not StepStatus.RETRYING or step.error_class is not ErrorClass.TIMEOUT:
        return False
    awaited = [t for t in step.current_tasks() if t.awaited]
    return bool(awaited) and all(t.status is TaskStatus.SUCCEEDED for t in awaited)


def _take_timed_out_attempt(ctx: _Ctx, step: StepState, label: str) -> str:
    """A late success is still the attempt's work: taking it spares a second job on VOD (the
    retry timer, cancelled here, would be ignored anyway once the step is not retrying)."""
    step = step.model_copy(
        update={
            "status": StepStatus.AWAITING_CALLBACK,
            "retry_at": None,
            "error": None,
            "error_class": None,
        }
    )
    ctx.set_step(step)
    ctx.commands.append(CancelTimers(run_id=ctx.state.run_id, step=step.name))
    return (
        f"{label} succeeded after attempt {step.attempt} timed out, before its retry was "
        "sent: the step takes its results instead of running it again; "
        + _check_step_done(ctx, step)
    )


def _check_step_done(ctx: _Ctx, step: StepState) -> str:
    awaited = [t for t in step.current_tasks() if t.awaited]
    failed = [t for t in awaited if t.status is TaskStatus.FAILED]
    if failed:
        task = failed[0]
        return _fail_attempt(
            ctx, step, ErrorClass.INTERNAL, f"{task.kind} task {task.task_id} failed: {task.error}"
        )
    waiting = [t for t in awaited if t.status is TaskStatus.WAITING]
    if waiting:
        return f"waiting for {len(waiting)} task{'' if len(waiting) == 1 else 's'}"
    outputs = _merge_outputs(step)
    step = step.model_copy(update={"outputs": outputs})
    options = ctx.spec(step.name).verify_options
    if options is not None and awaited:
        step = step.model_copy(update={"status": StepStatus.VERIFYING})
        ctx.set_step(step)
        ctx.commands.append(
            Verify(
                run_id=ctx.state.run_id,
                step=step.name,
                attempt=step.attempt,
                outputs=outputs,
                duration_tolerance=options.duration_tolerance,
                duration_slack=options.duration_slack.total_seconds(),
                idempotency_key=f"{ctx.state.run_id}/{step.name}/{step.attempt}/verify",
            )
        )
        return "every awaited task succeeded; verifying outputs"
    ctx.set_step(step)
    return _succeed_step(ctx, step, "every awaited task succeeded")


_LIST_OUTPUTS = ("play", "sprites", "snapshots", "files")


_ORDER = {"clip": 0, "concat": 1, "procedure": 3}


def _merge_outputs(step: StepState) -> dict[str, JsonValue]:
    """One step's outputs from its current attempt's tasks.

    Lists (play, sprites, ...) are joined in task order: gen's clip and concat first, the
    procedure's own tasks, then the procedure itself. An entry naming what an earlier one named
    (the same ``url``, ``webVttUrl`` or ``fileId``) is left out: when VOD answers both the tasks'
    IDs and the procedure's, the procedure's event lists again every output its tasks reported.
    For single values the later tasks win over gen's clip and concat: ``fileId`` is the file the
    procedure ran on.
    """
    merged: dict[str, JsonValue] = {}
    lists: dict[str, list[JsonValue]] = {key: [] for key in _LIST_OUTPUTS}
    named: set[tuple[str, str]] = set()
    task_ids: dict[str, JsonValue] = {}
    done = [t for t in step.current_tasks() if t.status is TaskStatus.SUCCEEDED]
    for task in sorted(done, key=lambda t: _ORDER.get(t.kind, 2)):
        task_ids[task.kind] = task.task_id
        for key, value in task.outputs.items():
            if key in lists and isinstance(value, list):
                for item in value:
                    name = _output_name(key, item)
                    if name is not None and name in named:
                        continue
                    if name is not None:
                        named.add(name)
                    lists[key].append(item)
            elif value not in (None, ""):
                merged[key] = value
    merged.update(lists)
    merged["taskIds"] = task_ids
    return merged


def _output_name(kind: str, item: JsonValue) -> tuple[str, str] | None:
    """What a listed output is, for leaving out a second entry of it: its URL or file ID."""
    if not isinstance(item, dict):
        return None
    for field in ("url", "webVttUrl", "fileId"):
        value = item.get(field)
        if isinstance(value, str) and value:
            return kind, value
    return None


def _succeed_step(ctx: _Ctx, step: StepState, why: str) -> str:
    step = step.model_copy(
        update={"status": StepStatus.SUCCEEDED, "finished_at": ctx.now, "deadline": None}
    )
    ctx.set_step(step)
    ctx.commands.append(CancelTimers(run_id=ctx.state.run_id, step=step.name))
    index = [s.name for s in ctx.state.steps].index(step.name)
    if index + 1 < len(ctx.state.steps):
        following = ctx.state.steps[index + 1]
        return f"{why}; step {step.name} succeeded; " + _begin_attempt(ctx, following)
    ctx.set_run(status=RunStatus.SUCCEEDED)
    return f"{why}; step {step.name} succeeded; run succeeded"


def _fail_attempt(ctx: _Ctx, step: StepState, error_class: ErrorClass, what: str) -> str:
    policy = ctx.workflow.retry_for(ctx.spec(step.name))
    used = step.attempt - step.budget_from
    if error_class not in policy.on:  # the policy's classes (spec.DEFAULT_RETRY_ON unless named)
        return _fail_step(ctx, step, error_class, what)
    count = f"{used} of {policy.max_attempts}"
    if step.budget_from:  # numbered on from the attempts before an operator's retry
        count = f"{step.attempt}, {count} since the retry by hand"
    if used >= policy.max_attempts:
        return _fail_step(ctx, step, error_class, f"{what} (attempt {count}, none left)")
    delay = backoff_delay(policy, ctx.state.run_id, step.name, used)
    step = step.model_copy(update={"error": what, "error_class": error_class})
    return _schedule_retry(
        ctx, step, delay, throttled=False, reason=f"attempt {count} failed: {what}"
    )


def _schedule_retry(
    ctx: _Ctx, step: StepState, delay: timedelta, *, throttled: bool, reason: str
) -> str:
    due = ctx.now + delay
    step = step.model_copy(
        update={
            "status": StepStatus.RETRYING,
            "retry_at": due,
            "throttled": throttled,
            "deadline": None,
        }
    )
    ctx.set_step(step)
    ctx.commands.append(CancelTimers(run_id=ctx.state.run_id, step=step.name))
    ctx.commands.append(
        ScheduleTimer(
            run_id=ctx.state.run_id, timer="retry", due=due, step=step.name, attempt=step.attempt
        )
    )
    return f"{reason}; retrying in {_fmt(delay)}"


def _fail_step(ctx: _Ctx, step: StepState, error_class: ErrorClass, what: str) -> str:
    reason = f"step {step.name} failed: {what}"
    ctx.set_step(_ended(step, StepStatus.FAILED, ctx.now, what, error_class))
    ctx.set_run(status=RunStatus.FAILED, error=reason)
    return reason


def _ended(
    step: StepState, status: StepStatus, now: datetime, error: str, cls: ErrorClass | None
) -> StepState:
    return step.model_copy(
        update={
            "status": status,
            "finished_at": now,
            "error": error,
            "error_class": cls,
            "deadline": None,
            "retry_at": None,
        }
    )


def _task_error(event: TaskEvent) -> str:
    code = f" (errCode {event.error_code})" if event.error_code is not None else ""
    return (event.message or "VOD reported a failure") + code


def backoff_delay(policy: RetryPolicy, run_id: str, step: str, attempt: int) -> timedelta:
    """Delay before retry number ``attempt``: exponential, with deterministic jitter, capped.

    The jitter spreads retries of many runs apart without a random number generator: it is
    derived from the run, the step and the attempt, so the same decision is always the same.
    ``max`` caps the delay with its jitter, as a retry policy's maximum interval does elsewhere
    (Temporal, Step Functions): no retry waits longer than it.
    """
    b = policy.backoff
    cap = b.max.total_seconds()
    base = min(b.initial.total_seconds() * b.multiplier ** max(attempt - 1, 0), cap)
    digest = hashlib.sha256(f"{run_id}/{step}/{attempt}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64 * 2 - 1  # in [-1, 1)
    return timedelta(seconds=min(max(base * (1 + b.jitter * unit), 0.0), cap))


def _fmt(delta: timedelta | None) -> str:
    return format_duration(delta) if delta is not None else "its limit"
