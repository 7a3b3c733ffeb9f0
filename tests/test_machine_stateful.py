"""The state machine under random interleavings (hypothesis stateful testing).

A simulated world answers the machine's commands late, twice, or wrongly, delivers task events
duplicated, out of order, for earlier attempts and after the run ended, fires stale timers, and
lets operators cancel and retry at any moment. After every input the invariants must hold.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pydantic
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orchestrator import machine as m
from orchestrator.spec import parse_workflow

STATES = pydantic.TypeAdapter(m.RunState)

WORKFLOW = parse_workflow(
    """
name: wf
triggers: [{type: recording.finished}]
timeout: 2h
retry: {max_attempts: 3, backoff: {initial: 45s, max: 1m, jitter: 0.5}}
steps:
  - name: clip
    process: {fileId: "{{ trigger.fileId }}", procedure: P1}
    timeout: 10m
  - name: transcode
    process: {fileId: "{{ steps.clip.outputs.fileId }}", procedure: P2}
    wait_for: [transcode]
    timeout: 20m
    retry: {max_attempts: 2}
  - name: tell
    notify: {url: "http://hooks.example/x"}
"""
)
KINDS = ("transcode", "imageSprite", "procedure")
ERRORS = list(m.ErrorClass)
OUTBOUND = (m.Submit, m.Recover, m.Notify, m.Verify)


class RunMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = datetime(2026, 11, 26, tzinfo=UTC)
        self.state = m.new_run("r2", WORKFLOW, "v", {"fileId": "f0"}, self.now)
        self.pending: list[m.Command] = []
        self.answered: list[m.Command] = []
        self.timers: list[m.ScheduleTimer] = []
        self.task_ids: list[str] = []
        self.outstanding: set[tuple[str, int]] = set()
        self.inputs = 0
        self.feed(m.Trigger(event="e"))

    # --- driving ------------------------------------------------------------------------

    def feed(self, event: m.Input) -> None:
        before = self.state
        decision = m.decide(WORKFLOW, before, event, self.now)
        after = decision.state
        self.inputs += 1
        self.check_transition(before, after, event, decision)
        if isinstance(event, (m.SubmitSucceeded, m.SubmitFailed)):
            self.outstanding.discard((event.step, event.attempt))
        for command in decision.commands:
            if isinstance(command, (m.Submit, m.Notify, m.Recover)):
                key = (command.step, command.attempt)
                assert not any(s == command.step for s, _ in self.outstanding), (
                    f"{command.kind} for {command.step} while an earlier send is unanswered"
                )
                self.outstanding.add(key)
            if isinstance(command, OUTBOUND):
                self.pending.append(command)
            if isinstance(command, m.ScheduleTimer):
                self.timers.append(command)
                # A failed attempt's retry waits at most the policy's max, jitter included (a
                # throttled one waits as long as VOD or the limiter asks).
                step = command.step
                if command.timer == "retry" and step and not after.step(step).throttled:
                    policy = WORKFLOW.retry_for(WORKFLOW.step(step))
                    assert command.due - self.now <= policy.backoff.max
        self.state = after

    def check_transition(
        self, before: m.RunState, after: m.RunState, event: m.Input, decision: m.Decision
    ) -> None:
        assert decision.history.from_status == before.status
        assert decision.history.to_status == after.status
        assert decision.history.reason
        if before.status.terminal and not isinstance(event, m.ManualRetry):
            # Terminal states never change (a late answer may only record its task IDs).
            assert after.status == before.status
            assert after.error == before.error
            for old, new in zip(before.steps, after.steps, strict=True):
                assert old.status == new.status
                assert old.attempt == new.attempt
                assert old.outputs == new.outputs
        if isinstance(event, m.ManualRetry) and before.status is m.RunStatus.SUCCEEDED:
            assert after == before.model_copy(update={"updated_at": after.updated_at})
        # A task's terminal result is applied at most once and never changes.
        for old_step in before.steps:
            new_step = after.step(old_step.name)
            new_tasks = {t.task_id: t for t in new_step.tasks}
            for task in old_step.tasks:
                assert task.task_id in new_tasks
                if task.status.terminal:
                    new = new_tasks[task.task_id]
                    assert (new.status, new.outputs, new.finished_at) == (
                        task.status,
                        task.outputs,
                        task.finished_at,
                    )
        if after.status.terminal and not before.status.terminal:
            assert any(isinstance(c, m.Finish) for c in decision.commands)

    # --- the world's moves ---------------------------------------------------------------

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        command = data.draw(st.sampled_from(self.pending))
        self.pending.remove(command)
        self.answered.append(command)
        self.respond(command, data)

    @precondition(lambda self: self.answered)
    @rule(data=st.data())
    def answer_again(self, data: st.DataObject) -> None:
        """A duplicate or conflicting answer to something already answered."""
        self.respond(data.draw(st.sampled_from(self.answered)), data)

    def respond(self, command: m.Command, data: st.DataObject) -> None:
        assert isinstance(command, OUTBOUND)
        step, attempt = command.step, command.attempt
        if isinstance(command, m.Verify):
            if data.draw(st.booleans()):
                self.feed(m.VerifySucceeded(step=step, attempt=attempt))
            else:
                self.feed(m.VerifyFailed(step=step, attempt=attempt, reason="HEAD 404"))
            return
        if data.draw(st.integers(0, 3)) > 0:
            refs = []
            for _ in range(data.draw(st.integers(0, 2))):
                if self.task_ids and data.draw(st.integers(0, 4)) == 0:
                    task_id = data.draw(st.sampled_from(self.task_ids))  # an existing task
                else:
                    task_id = f"t{len(self.task_ids)}"
                    self.task_ids.append(task_id)
                refs.append(m.TaskRef(task_id=task_id, kind=data.draw(st.sampled_from(KINDS))))
            self.feed(
                m.SubmitSucceeded(
                    step=step,
                    attempt=attempt,
                    tasks=tuple(refs),
                    recovered=isinstance(command, m.Recover),
                    outputs={"fileId": "f1"},
                )
            )
        else:
            self.feed(
                m.SubmitFailed(
                    step=step,
                    attempt=attempt,
                    error_class=data.draw(st.sampled_from(ERRORS)),
                    message="boom",
                    retry_after=data.draw(st.none() | st.floats(0, 120)),
                )
            )

    @precondition(lambda self: self.task_ids)
    @rule(
        data=st.data(),
        success=st.booleans(),
        terminal=st.booleans(),
        error_class=st.none() | st.sampled_from(ERRORS),
    )
    def task_event(
        self,
        data: st.DataObject,
        success: bool,
        terminal: bool,
        error_class: m.ErrorClass | None,
    ) -> None:
        task_id = data.draw(st.sampled_from([*self.task_ids, "unknown"]))
        self.feed(
            m.TaskEvent(
                task_id=task_id,
                event_type="TranscodeComplete",
                event_key=f"k{self.inputs}",
                terminal=terminal,
                success=success,
                error_class=None if success else error_class,
                outputs={"fileId": "f9", "play": [{"url": "u"}]} if success else {},
            )
        )

    @precondition(lambda self: self.timers)
    @rule(data=st.data())
    def fire_timer(self, data: st.DataObject) -> None:
        timer = data.draw(st.sampled_from(self.timers))  # stale and cancelled ones too
        self.now = max(self.now, timer.due)
        self.feed(m.TimerFired(timer=timer.timer, step=timer.step, attempt=timer.attempt))

    @rule(seconds=st.integers(1, 3600))
    def wait(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def cancel(self) -> None:
        self.feed(m.Cancel(actor="ops"))

    @rule(step=st.none() | st.sampled_from(["clip", "transcode", "tell", "nope"]))
    def manual_retry(self, step: str | None) -> None:
        self.feed(m.ManualRetry(actor="ops", step=step))

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def retries_never_exceed_the_policy(self) -> None:
        for step in self.state.steps:
            policy = WORKFLOW.retry_for(WORKFLOW.step(step.name))
            assert step.attempt - step.budget_from <= policy.max_attempts

    @invariant()
    def every_failure_carries_a_reason(self) -> None:
        if self.state.status is m.RunStatus.FAILED:
            assert self.state.error
        for step in self.state.steps:
            if step.status is m.StepStatus.FAILED:
                assert step.error
                assert step.error_class is not None
            if step.status is m.StepStatus.RETRYING:
                assert step.retry_at is not None

    @invariant()
    def a_run_succeeds_only_if_every_awaited_task_succeeded(self) -> None:
        if self.state.status is not m.RunStatus.SUCCEEDED:
            return
        for step in self.state.steps:
            assert step.status is m.StepStatus.SUCCEEDED
            for task in step.current_tasks():
                if task.awaited:
                    assert task.status is m.TaskStatus.SUCCEEDED

    @invariant()
    def a_succeeded_step_waited_for_every_awaited_task(self) -> None:
        for step in self.state.steps:
            if step.status is m.StepStatus.SUCCEEDED:
                assert all(
                    t.status is m.TaskStatus.SUCCEEDED for t in step.current_tasks() if t.awaited
                )

    @invariant()
    def run_status_follows_the_current_step(self) -> None:
        if self.state.status.terminal:
            assert self.state.finished_at is not None
            return
        current = next(s for s in self.state.steps if not s.status.terminal)
        if current.status in (m.StepStatus.AWAITING_CALLBACK, m.StepStatus.RECOVERING):
            assert self.state.status is m.RunStatus.AWAITING_CALLBACK
        if current.status is m.StepStatus.RETRYING:
            assert self.state.status is m.RunStatus.RETRYING

    @invariant()
    def state_round_trips_through_json(self) -> None:
        assert STATES.validate_json(STATES.dump_json(self.state)) == self.state


TestRunMachine = RunMachine.TestCase
TestRunMachine.settings = settings(
    max_examples=int(os.environ.get("VODFLOW_HYPOTHESIS_EXAMPLES", "300")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
