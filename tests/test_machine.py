"""The pure state machine, input by input: every VOD error class, every event shape, timers,
operators' actions, and the invariants the design promises."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import machine as m
from orchestrator.spec import Workflow, parse_workflow

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

WORKFLOW_SOURCE = """
name: wf
triggers: [{type: recording.finished}]
timeout: 6h
retry: {max_attempts: 2, backoff: {initial: 10s, multiplier: 2, max: 1m, jitter: 0}}
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    timeout: 1h
    expected: 5m
  - name: tell
    notify: {url: "http://hooks.example/{{ trigger.streamId }}"}
"""
WORKFLOW = parse_workflow(WORKFLOW_SOURCE)


class Run:
    """A run driven by inputs, keeping every decision for assertions."""

    def __init__(self, workflow: Workflow = WORKFLOW, context: dict | None = None) -> None:
        self.workflow = workflow
        self.now = T0
        self.state = m.new_run(
            "run1", workflow, "v1", context or {"fileId": "f1", "streamId": "s1"}, self.now
        )
        self.decisions: list[m.Decision] = []

    def feed(self, event: m.Input, after: float = 1.0) -> m.Decision:
        self.now += timedelta(seconds=after)
        decision = m.decide(self.workflow, self.state, event, self.now)
        self.decisions.append(decision)
        self.state = decision.state
        return decision

    @property
    def last(self) -> m.Decision:
        return self.decisions[-1]

    def commands(self, kind: type) -> list:
        return [c for c in self.last.commands if isinstance(c, kind)]

    def step(self, name: str = "transcode") -> m.StepState:
        return self.state.step(name)

    def start(self) -> Run:
        self.feed(m.Trigger(event="inbox:1"))
        return self

    def submitted(self, attempt: int = 1, *ids: tuple[str, str]) -> Run:
        refs = ids or (("tr1", "transcode"), ("sp1", "imageSprite"))
        self.feed(
            m.SubmitSucceeded(
                step="transcode",
                attempt=attempt,
                tasks=tuple(m.TaskRef(task_id=i, kind=k) for i, k in refs),
            )
        )
        return self

    def event(self, task_id: str, success: bool = True, **kw: object) -> m.Decision:
        return self.feed(
            m.TaskEvent(
                task_id=task_id,
                event_type="TranscodeComplete",
                event_key=f"k-{task_id}-{len(self.decisions)}",
                success=success,
                **kw,
            )
        )


def test_trigger_submits_the_first_step_with_resolved_templates_and_a_run_timer() -> None:
    run = Run().start()
    (submit,) = run.commands(m.Submit)
    assert submit.request == {"fileId": "f1", "procedure": "TranscodeAndSprite"}
    assert submit.attempt == 1
    assert submit.idempotency_key == "run1/transcode/1/1"
    (timer,) = run.commands(m.ScheduleTimer)
    assert timer.timer == "run_timeout"
    assert timer.due == T0 + timedelta(seconds=1, hours=6)
    assert run.state.status is m.RunStatus.RUNNING
    assert run.step().status is m.StepStatus.SUBMITTING
    assert run.step().in_flight


def test_a_second_trigger_is_ignored() -> None:
    run = Run().start()
    run.feed(m.Trigger(event="again"))
    assert run.last.commands == ()
    assert "already started" in run.last.history.reason


def test_submit_success_awaits_every_task_and_is_awaiting_callback() -> None:
    run = Run().start().submitted()
    assert run.state.status is m.RunStatus.AWAITING_CALLBACK
    tasks = run.step().tasks
    assert [(t.task_id, t.awaited, t.status) for t in tasks] == [
        ("tr1", True, m.TaskStatus.WAITING),
        ("sp1", True, m.TaskStatus.WAITING),
    ]
    assert tasks[0].expected_at == run.now + timedelta(minutes=5)
    (timer,) = run.commands(m.ScheduleTimer)
    assert (timer.timer, timer.step, timer.attempt) == ("step_timeout", "transcode", 1)
    assert not run.step().in_flight


def test_the_verify_command_carries_the_steps_duration_tolerance() -> None:
    default = Run().start().submitted()
    default.event("tr1", outputs={"play": [{"url": "http://x/f20.mp4"}]})
    default.event("sp1")
    (verify,) = default.commands(m.Verify)
    assert (verify.duration_tolerance, verify.duration_slack) == (0.02, 1.0)
    source = WORKFLOW_SOURCE.replace(
        "    expected: 5m\n",
        "    expected: 5m\n    verify: {duration_tolerance: 0, duration_slack: 0.5}\n",
    )
    tight = Run(parse_workflow(source)).start().submitted()
    tight.event("tr1", outputs={"play": [{"url": "http://x/f20.mp4"}]})
    tight.event("sp1")
    (verify,) = tight.commands(m.Verify)
    assert (verify.duration_tolerance, verify.duration_slack) == (0.0, 0.5)


def test_all_awaited_tasks_succeeding_verifies_then_advances_to_notify() -> None:
    run = Run().start().submitted()
    run.event("tr1", outputs={"fileId": "f1", "play": [{"url": "http://x/f20.mp4"}]})
    assert run.state.status is m.RunStatus.AWAITING_CALLBACK
    run.event("sp1", outputs={"sprites": [{"webVttUrl": "http://x/s.vtt"}]})
    (verify,) = run.commands(m.Verify)
    assert verify.outputs["play"] == [{"url": "http://x/f20.mp4"}]
    assert verify.outputs["taskIds"] == {"transcode": "tr1", "imageSprite": "sp1"}
    assert run.step().status is m.StepStatus.VERIFYING
    run.feed(m.VerifySucceeded(step="transcode", attempt=1))
    assert run.step().status is m.StepStatus.SUCCEEDED
    (notify,) = run.commands(m.Notify)
    assert notify.url == "http://hooks.example/s1"
    assert notify.payload["type"] == "vodflow.run.outputs"
    assert notify.payload["data"]["outputs"]["transcode"]["fileId"] == "f1"
    assert notify.webhook_id.startswith("msg_run1_tell_")
    run.feed(m.SubmitSucceeded(step="tell", attempt=1, outputs={"status": 204}))
    assert run.state.status is m.RunStatus.SUCCEEDED
    (finish,) = run.commands(m.Finish)
    assert finish.status is m.RunStatus.SUCCEEDED
    assert finish.outputs["tell"] == {"status": 204}
    assert run.commands(m.CancelTimers)[-1].step is None


def test_wait_for_limits_which_tasks_complete_the_step() -> None:
    wf = parse_workflow(
        """
name: wf
triggers: [{type: manual}]
steps:
  - name: transcode
    process: {fileId: "f", procedure: P}
    wait_for: [transcode]
    verify: false
"""
    )
    run = Run(wf).start().submitted()
    assert [t.awaited for t in run.step().tasks] == [True, False]
    run.event("sp1", success=False, message="sprite broke")
    assert run.step().status is m.StepStatus.AWAITING_CALLBACK
    assert "does not wait for imageSprite" in run.last.history.reason
    run.event("tr1")
    assert run.state.status is m.RunStatus.SUCCEEDED


def test_wait_for_a_kind_vod_did_not_return_fails_the_step() -> None:
    wf = parse_workflow(
        """
name: wf
triggers: [{type: manual}]
steps:
  - name: transcode
    process: {fileId: "f", procedure: P}
    wait_for: [snapshotByTimeOffset]
"""
    )
    run = Run(wf).start().submitted()
    assert run.state.status is m.RunStatus.FAILED
    assert "waits for snapshotByTimeOffset" in (run.state.error or "")


def test_procedure_shape_single_vod_task_id() -> None:
    run = Run().start().submitted(1, ("1250000001-procedurev2-abc", "procedure"))
    run.event("1250000001-procedurev2-abc", outputs={"play": [{"url": "u"}]})
    assert run.step().status is m.StepStatus.VERIFYING


def test_an_answer_with_task_and_procedure_ids_lists_each_output_once() -> None:
    """VOD may answer the tasks' IDs and the procedure's (``engine_answer_shape: both``): the
    procedure's event repeats its tasks' outputs, which the step lists once."""
    run = Run().start().submitted(1, ("proc1", "procedure"), ("tr1", "transcode"), ("sp1", "x"))
    play = {"url": "http://x/f20.mp4", "definition": 20}
    sprite = {"webVttUrl": "http://x/s.vtt", "imageUrls": ["http://x/s.jpg"]}
    run.event("proc1", outputs={"fileId": "f1", "play": [{**play, "size": 1}], "sprites": [sprite]})
    run.event("tr1", outputs={"fileId": "f1", "play": [play]})
    run.event("sp1", outputs={"sprites": [sprite], "snapshots": [{"url": "http://x/1.jpg"}]})
    (verify,) = run.commands(m.Verify)
    assert verify.outputs["play"] == [play]  # the task's own entry, not the procedure's copy
    assert verify.outputs["sprites"] == [sprite]
    assert verify.outputs["snapshots"] == [{"url": "http://x/1.jpg"}]
    assert verify.outputs["fileId"] == "f1"


@pytest.mark.parametrize(
    "error_class",
    [
        m.ErrorClass.INVALID_PARAMS,
        m.ErrorClass.FILE_NOT_FOUND,
        m.ErrorClass.PROCEDURE_INVALID,
        m.ErrorClass.AUTH,
    ],
)
def test_non_retryable_submit_failures_fail_the_run_with_the_reason(
    error_class: m.ErrorClass,
) -> None:
    run = Run().start()
    run.feed(
        m.SubmitFailed(
            step="transcode", attempt=1, error_class=error_class, code=1000, message="bad fileId"
        )
    )
    assert run.state.status is m.RunStatus.FAILED
    assert run.step().error_class is error_class
    assert "bad fileId" in (run.state.error or "")
    assert "(code 1000)" in (run.state.error or "")
    assert not run.commands(m.Submit)
    assert run.commands(m.Finish)[0].error == run.state.error


@pytest.mark.parametrize("error_class", [m.ErrorClass.INTERNAL, m.ErrorClass.TRANSPORT])
def test_retryable_failures_retry_with_backoff_until_the_budget_is_spent(
    error_class: m.ErrorClass,
) -> None:
    run = Run().start()
    run.feed(m.SubmitFailed(step="transcode", attempt=1, error_class=error_class, message="e1"))
    assert run.state.status is m.RunStatus.RETRYING
    (timer,) = run.commands(m.ScheduleTimer)
    assert timer.timer == "retry"
    assert timer.due == run.now + timedelta(seconds=10)
    run.feed(m.TimerFired(timer="retry", step="transcode", attempt=1), after=10)
    (submit,) = run.commands(m.Submit)
    assert submit.attempt == 2
    run.feed(m.SubmitFailed(step="transcode", attempt=2, error_class=error_class, message="e2"))
    assert run.state.status is m.RunStatus.FAILED
    assert "attempt 2 of 2, none left" in (run.state.error or "")


def test_a_retry_policy_names_the_failure_classes_it_retries() -> None:
    """`retry.on` widens what is retried (a file VOD does not show yet) or narrows it (no
    retry after a timeout); the classes it leaves out fail the step at once."""
    wider = WORKFLOW_SOURCE.replace("jitter: 0}}", "jitter: 0}, on: [internal, file_not_found]}")
    run = Run(parse_workflow(wider)).start()
    run.feed(
        m.SubmitFailed(
            step="transcode", attempt=1, error_class=m.ErrorClass.FILE_NOT_FOUND, message="10008"
        )
    )
    assert run.state.status is m.RunStatus.RETRYING
    run.feed(m.TimerFired(timer="retry", step="transcode", attempt=1), after=10)
    assert run.commands(m.Submit)[0].attempt == 2

    narrower = WORKFLOW_SOURCE.replace("jitter: 0}}", "jitter: 0}, on: [internal]}")
    run = Run(parse_workflow(narrower)).start().submitted()
    run.feed(m.TimerFired(timer="step_timeout", step="transcode", attempt=1), after=3600)
    assert run.state.status is m.RunStatus.FAILED
    assert run.step().error_class is m.ErrorClass.TIMEOUT
    assert not run.commands(m.ScheduleTimer)


def test_frequency_limit_backs_off_without_spending_an_attempt() -> None:
    run = Run().start()
    for _ in range(5):
        run.feed(
            m.SubmitFailed(
                step="transcode",
                attempt=1,
                error_class=m.ErrorClass.FREQUENCY_LIMIT,
                code=4400,
                message="quota",
                retry_after=7,
            )
        )
        assert run.state.status is m.RunStatus.RETRYING
        assert run.commands(m.ScheduleTimer)[0].due == run.now + timedelta(seconds=7)
        run.feed(m.TimerFired(timer="retry", step="transcode", attempt=1), after=7)
        (submit,) = run.commands(m.Submit)
        assert submit.attempt == 1
    assert run.step().sends == 6
    assert submit.idempotency_key == "run1/transcode/1/6"


def test_duplicate_task_recovers_instead_of_resubmitting() -> None:
    run = Run().start()
    run.feed(
        m.SubmitFailed(
            step="transcode",
            attempt=1,
            error_class=m.ErrorClass.DUPLICATE_TASK,
            code=50005,
            message="dup",
        )
    )
    assert not run.commands(m.Submit)
    (recover,) = run.commands(m.Recover)
    assert recover.request == {"fileId": "f1", "procedure": "TranscodeAndSprite"}
    assert run.state.status is m.RunStatus.AWAITING_CALLBACK
    assert run.step().status is m.StepStatus.RECOVERING
    run.feed(
        m.SubmitSucceeded(
            step="transcode",
            attempt=1,
            tasks=(m.TaskRef(task_id="tr9", kind="transcode"),),
            recovered=True,
        )
    )
    assert run.step().status is m.StepStatus.AWAITING_CALLBACK
    assert "recovered tasks: tr9" in run.last.history.reason


def test_recovery_adopts_a_task_an_earlier_attempt_started() -> None:
    run = Run().start().submitted()
    run.feed(m.TimerFired(timer="step_timeout", step="transcode", attempt=1), after=3600)
    run.feed(m.TimerFired(timer="retry", step="transcode", attempt=1), after=10)
    run.feed(
        m.SubmitFailed(
            step="transcode", attempt=2, error_class=m.ErrorClass.DUPLICATE_TASK, message="dup"
        )
    )
    run.feed(
        m.SubmitSucceeded(
            step="transcode",
            attempt=2,
            tasks=(m.TaskRef(task_id="tr1", kind="transcode"),),
            recovered=True,
        )
    )
    assert "adopted from earlier attempts: tr1 (attempt 1)" in run.last.history.reason
    tr1 = next(t for t in run.step().tasks if t.task_id == "tr1")
    assert tr1.attempt == 2
    run.event("tr1")
    assert run.step().status is m.StepStatus.VERIFYING


def test_task_failure_retries_and_earlier_attempt_events_never_decide_the_new_attempt() -> None:
    run = Run().start().submitted()
    run.event("tr1", success=False, error_code=30010, message="system failure")
    assert run.state.status is m.RunStatus.RETRYING
    assert "errCode 30010" in (run.step().error or "")
    run.feed(m.TimerFired(timer="retry", step="transcode", attempt=1), after=10)
    run.submitted(2, ("tr2", "transcode"), ("sp2", "imageSprite"))
    # The first attempt's sprite finishes now: recorded, but attempt 2 is not affected.
    run.event("sp1")
    assert "belongs to attempt 1" in run.last.history.reason
    assert run.step().status is m.StepStatus.AWAITING_CALLBACK
    run.event("sp1", success=False)
    assert "duplicate" in run.last.history.reason
    run.event("tr2")
    run.event("sp2")
    assert run.step().status is m.StepStatus.VERIFYING


def test_media_failure_is_not_retried() -> None:
    run = Run().start().submitted()
    run.event("tr1", success=False, error_class=m.ErrorClass.MEDIA, error_code=30009)
    assert run.state.status is m.RunStatus.FAILED


def test_duplicate_task_event_is_applied_once() -> None:
    run = Run().start().submitted()
    run.event("tr1", outputs={"play": [{"url": "a"}]})
    before = run.state
    run.event("tr1", outputs={"play": [{"url": "b"}]})
    assert run.state.steps == before.steps
    assert run.last.commands == ()
    assert run.last.history.reason.startswith("duplicate")


def test_non_terminal_event_is_recorded_only() -> None:
    run = Run().start().submitted()
    before = run.state.steps
    run.feed(
        m.TaskEvent(
            task_id="tr1", event_type="ProcedureStateChanged", event_key="p", terminal=False
        )
    )
    assert run.state.steps == before
    assert "still processing" in run.last.history.reason


def test_unknown_task_is_ignored() -> None:
    run = Run().start().submitted()
    run.event("nope")
    assert "no such task" in run.last.history.reason


def test_late_event_after_terminal_is_recorded_not_applied() -> None:
    run = Run().start().submitted()
    run.feed(m.Cancel(actor="ops", reason="wrong file"))
    assert run.state.status is m.RunStatus.CANCELLED
    before = run.state
    run.event("tr1", outputs={"fileId": "f1"})
    assert run.state.status is m.RunStatus.CANCELLED
    assert run.last.history.reason.startswith("late")
    assert not run.last.commands
    (old,), (new,) = before.steps[:1], run.state.steps[:1]
    assert (new.status, new.attempt, new.outputs) == (old.status, old.attempt, old.outputs)
    # The task's result is recorded: it no longer waits (nor shows as overdue or stalled).
    tasks = {t.task_id: t for t in new.tasks}
    assert tasks["tr1"].status is m.TaskStatus.SUCCEEDED
    assert tasks["tr1"].outputs == {"fileId": "f1"}
    assert tasks["sp1"].status is m.TaskStatus.WAITING
    recorded = run.state.steps
    run.event("tr1", success=False)
    assert run.last.history.reason.startswith("late")
    assert run.state.steps == recorded


def test_submit_answer_after_the_run_ended_records_its_tasks_for_late_matching() -> None:
    run = Run().start()
    run.feed(m.Cancel(actor="ops"))
    assert run.step().in_flight
    run.feed(m.ManualRetry(actor="ops"))
    assert "has not answered" in run.last.history.reason
    run.submitted()
    assert not run.step().in_flight
    assert {t.task_id for t in run.step().tasks} == {"tr1", "sp1"}
    assert run.state.status is m.RunStatus.CANCELLED
    run.event("tr1")
    assert run.last.history.reason.startswith("late")


def test_step_timeout_fails_the_attempt_and_stale_timers_are_ignored() -> None:
    run = Run().start().submitted()
    run.feed(m.TimerFired(timer="step_timeout", step="transcode", attempt=1), after=3600)
    assert run.state.status is m.RunStatus.RETRYING
    assert run.step().error_class is m.ErrorClass.TIMEOUT
    assert "within 1h" in (run.step().error or "")
    before = run.state.steps
    run.feed(m.TimerFired(timer="step_timeout", step="transcode", attempt=1))
    assert run.state.steps == before
    assert "ignored" in run.last.history.reason


def test_a_timed_out_attempt_finishing_before_its_retry_is_sent_is_taken_not_run_again() -> None:
    """VOD finished the attempt after the step's timeout but before the retry's backoff ran
    out: its results are the step's, and no second job is submitted."""
    run = Run().start().submitted()
    run.feed(m.TimerFired(timer="step_timeout", step="transcode", attempt=1), after=3600)
    assert run.step().status is m.StepStatus.RETRYING
    run.event("tr1", outputs={"play": [{"url": "http://x/f20.mp4"}]})
    assert run.step().status is m.StepStatus.RETRYING  # one of its two tasks is done
    assert not run.last.commands
    run.event("sp1", outputs={"sprites": [{"webVttUrl": "http://x/s.vtt"}]})
    assert run.step().status is m.StepStatus.VERIFYING
    assert (run.step().attempt, run.step().error, run.step().retry_at) == (1, None, None)
    assert run.state.status is m.RunStatus.RUNNING
    assert run.last.history.reason.startswith(
        "TranscodeComplete for imageSprite task sp1 succeeded after attempt 1 timed out, "
        "before its retry was sent: the step takes its results instead of running it again"
    )
    cancel, verify = run.last.commands
    assert cancel == m.CancelTimers(run_id="run1", step="transcode")
    assert isinstance(verify, m.Verify)
    assert verify.outputs["play"] == [{"url": "http://x/f20.mp4"}]
    run.feed(m.TimerFired(timer="retry", step="transcode", attempt=1), after=10)
    assert "ignored" in run.last.history.reason
    assert not run.commands(m.Submit)


def test_a_timed_out_attempt_whose_task_fails_late_still_retries() -> None:
    run = Run().start().submitted()
    run.feed(m.TimerFired(timer="step_timeout", step="transcode", attempt=1), after=3600)
    run.event("tr1", success=False)
    run.event("sp1")
    assert run.step().status is m.StepStatus.RETRYING
    run.feed(m.TimerFired(timer="retry", step="transcode", attempt=1), after=10)
    assert run.step().attempt == 2
    assert run.commands(m.Submit)


def test_run_timeout_fails_the_run() -> None:
    run = Run().start().submitted()
    run.feed(m.TimerFired(timer="run_timeout"), after=6 * 3600)
    assert run.state.status is m.RunStatus.FAILED
    assert "timeout of 6h" in (run.state.error or "")
    assert run.step().status is m.StepStatus.FAILED


def test_cancel_is_idempotent() -> None:
    run = Run().start()
    run.feed(m.Cancel(actor="ops"))
    finished = run.state.finished_at
    run.feed(m.Cancel(actor="ops"))
    assert run.state.finished_at == finished
    assert "ignored" in run.last.history.reason


def test_manual_retry_of_a_failed_run_redrives_from_the_failed_step_with_a_fresh_budget() -> None:
    run = Run().start()
    run.feed(
        m.SubmitFailed(step="transcode", attempt=1, error_class=m.ErrorClass.AUTH, message="4100")
    )
    assert run.state.status is m.RunStatus.FAILED
    run.feed(m.ManualRetry(actor="alice"))
    assert run.state.status is m.RunStatus.RUNNING
    assert run.state.error is None
    (submit,) = run.commands(m.Submit)
    assert submit.attempt == 2
    assert run.step().budget_from == 1
    assert "retried by alice" in run.last.history.reason
    # The fresh budget allows max_attempts (2) more attempts, and says which attempt failed.
    run.feed(m.SubmitFailed(step="transcode", attempt=2, error_class="internal", message="x"))
    assert run.state.status is m.RunStatus.RETRYING
    assert run.last.history.reason.startswith("attempt 2, 1 of 2 since the retry by hand failed: ")


def test_manual_retry_of_a_retrying_step_runs_it_now() -> None:
    run = Run().start()
    run.feed(m.SubmitFailed(step="transcode", attempt=1, error_class="internal", message="x"))
    run.feed(m.ManualRetry(actor="bob", step="transcode"))
    assert run.commands(m.Submit)[0].attempt == 2
    assert run.commands(m.CancelTimers)[0].step == "transcode"


def test_manual_retry_is_refused_while_waiting_or_after_success() -> None:
    run = Run().start().submitted()
    run.feed(m.ManualRetry(actor="bob"))
    assert run.last.commands == ()
    assert "only a failed run" in run.last.history.reason
    run.event("tr1")
    run.event("sp1")
    run.feed(m.VerifySucceeded(step="transcode", attempt=1))
    run.feed(m.SubmitSucceeded(step="tell", attempt=1))
    run.feed(m.ManualRetry(actor="bob"))
    assert run.state.status is m.RunStatus.SUCCEEDED
    assert "start a new run" in run.last.history.reason


def test_verification_failure_retries_the_step() -> None:
    run = Run().start().submitted()
    run.event("tr1")
    run.event("sp1")
    run.feed(m.VerifyFailed(step="transcode", attempt=1, reason="HEAD http://x/f20.mp4: 404"))
    assert run.state.status is m.RunStatus.RETRYING
    assert run.step().error_class is m.ErrorClass.VERIFICATION
    assert "404" in (run.step().error or "")


def test_outputs_refused_fail_the_step_without_a_retry() -> None:
    run = Run().start().submitted()
    run.event("tr1")
    run.event("sp1")
    reason = "output http://10.0.0.5/x refused: 10.0.0.5 is a private address"
    run.feed(
        m.VerifyFailed(
            step="transcode", attempt=1, reason=reason, error_class=m.ErrorClass.REJECTED
        )
    )
    assert run.state.status is m.RunStatus.FAILED
    assert run.step().error_class is m.ErrorClass.REJECTED
    assert run.commands(m.ScheduleTimer) == []
    assert reason in (run.state.error or "")


def test_a_missing_template_field_fails_the_run_naming_it() -> None:
    run = Run(context={"streamId": "s1"}).start()
    assert run.state.status is m.RunStatus.FAILED
    assert run.step().error_class is m.ErrorClass.TEMPLATE
    assert "trigger.fileId is missing" in (run.state.error or "")


def test_every_input_appends_exactly_one_history_entry() -> None:
    run = Run().start().submitted()
    run.event("tr1")
    run.event("tr1")
    assert len(run.decisions) == 4
    entry = run.decisions[1].history
    assert (entry.input, entry.from_status, entry.to_status) == (
        "submit_succeeded",
        m.RunStatus.RUNNING,
        m.RunStatus.AWAITING_CALLBACK,
    )
    assert entry.detail["tasks"][0]["task_id"] == "tr1"


def test_a_notify_steps_event_type_is_templated_like_its_data() -> None:
    workflow = parse_workflow(
        WORKFLOW_SOURCE.replace(
            'notify: {url: "http://hooks.example/{{ trigger.streamId }}"}',
            'notify: {url: /u, event_type: "replay.{{ trigger.streamId }}", '
            'data: {n: "{{ trigger.fileSize }}"}}',
        )
    )
    run = Run(workflow, {"fileId": "f1", "streamId": "s1", "fileSize": 3}).start().submitted()
    run.event("tr1", outputs={"fileId": "f1"})
    run.event("sp1")
    run.feed(m.VerifySucceeded(step="transcode", attempt=1))
    (notify,) = run.commands(m.Notify)
    assert notify.payload["type"] == "replay.s1"
    assert notify.payload["data"]["n"] == 3


# A manual trigger's fields are not known when the file loads: a missing one fails at run time.
NOTIFY_DATA = WORKFLOW_SOURCE.replace("type: recording.finished", "type: manual").replace(
    'notify: {url: "http://hooks.example/{{ trigger.streamId }}"}',
    'notify: {url: /u, data: {note: "{{ trigger.note }}"}}',
)


def _at_notify(run: Run, transcode_task: str = "tr1", attempt: int = 1) -> Run:
    run.event(transcode_task, outputs={"fileId": transcode_task})
    run.event("sp1" if attempt == 1 else f"sp{attempt}")
    run.feed(m.VerifySucceeded(step="transcode", attempt=attempt))
    return run


def test_a_payload_that_cannot_be_built_fails_with_nothing_in_flight_and_can_be_retried() -> None:
    run = _at_notify(Run(parse_workflow(NOTIFY_DATA)).start().submitted())
    assert run.state.status is m.RunStatus.FAILED
    assert "cannot build the payload: trigger.note is missing" in (run.state.error or "")
    assert not run.step("tell").in_flight
    assert run.commands(m.Notify) == []
    run.feed(m.ManualRetry(actor="ops"))
    assert "retried by ops from step tell" in run.last.history.reason
    assert not run.step("tell").in_flight  # failed again: the same payload cannot be built


def test_a_webhook_id_is_kept_across_attempts_and_changes_with_the_message() -> None:
    run = _at_notify(Run().start().submitted())
    (first,) = run.commands(m.Notify)
    run.feed(m.SubmitFailed(step="tell", attempt=1, error_class="internal", message="503"))
    run.feed(m.TimerFired(timer="retry", step="tell", attempt=1), after=60)
    (second,) = run.commands(m.Notify)
    assert second.attempt == 2
    assert second.webhook_id == first.webhook_id
    assert second.payload["timestamp"] != first.payload["timestamp"]
    # A retry from the step before: other outputs, another message.
    run.feed(m.SubmitFailed(step="tell", attempt=2, error_class="internal", message="503"))
    run.feed(m.ManualRetry(actor="ops", step="transcode"))
    run.submitted(2, ("tr2", "transcode"), ("sp2", "imageSprite"))
    _at_notify(run, "tr2", attempt=2)
    (third,) = run.commands(m.Notify)
    assert third.payload["data"]["outputs"]["transcode"]["fileId"] == "tr2"
    assert third.webhook_id != first.webhook_id


def test_a_retry_by_hand_starts_the_steps_clock_again() -> None:
    run = Run().start()
    first_start = run.step().started_at
    run.feed(m.SubmitFailed(step="transcode", attempt=1, error_class="auth", message="4100"))
    run.feed(m.ManualRetry(actor="ops"), after=3600)
    assert run.step().started_at == run.now != first_start


def test_a_step_without_expected_waits_the_deployments_default() -> None:
    workflow = parse_workflow(WORKFLOW_SOURCE.replace("    expected: 5m\n", ""))
    state = m.new_run("r", workflow, "v1", {"fileId": "f1", "streamId": "s1"}, T0)
    state = m.decide(workflow, state, m.Trigger(), T0).state
    submitted = m.SubmitSucceeded(
        step="transcode", attempt=1, tasks=(m.TaskRef(task_id="t", kind="transcode"),)
    )
    default = m.decide(workflow, state, submitted, T0).state.step("transcode")
    assert default.tasks[0].expected_at == T0 + m.DEFAULT_EXPECTED == T0 + timedelta(minutes=10)
    chosen = m.decide(workflow, state, submitted, T0, expected=timedelta(seconds=20))
    assert chosen.state.step("transcode").tasks[0].expected_at == T0 + timedelta(seconds=20)


def test_backoff_is_exponential_capped_and_deterministic() -> None:
    policy = WORKFLOW.retry
    delays = [m.backoff_delay(policy, "r", "s", n).total_seconds() for n in range(1, 6)]
    assert delays == [10, 20, 40, 60, 60]
    jittered = parse_workflow(
        "name: x\ntriggers: [{type: manual}]\nsteps: [{name: a, notify: {url: /u}}]\n"
        "retry: {backoff: {initial: 100s, jitter: 0.5}}\n"
    ).retry
    a = m.backoff_delay(jittered, "r1", "s", 1)
    assert a == m.backoff_delay(jittered, "r1", "s", 1)
    assert timedelta(seconds=50) <= a <= timedelta(seconds=150)
    spread = {m.backoff_delay(jittered, f"r{i}", "s", 1) for i in range(20)}
    assert len(spread) > 10


@settings(max_examples=300, deadline=None)
@given(
    initial=st.integers(1, 3600),
    multiplier=st.floats(1.0, 10.0),
    cap=st.integers(1, 7200),
    jitter=st.floats(0.0, 1.0),
    attempt=st.integers(1, 100),
    run_id=st.text(min_size=1, max_size=8),
)
def test_backoff_never_exceeds_its_max_jitter_included(
    initial: int, multiplier: float, cap: int, jitter: float, attempt: int, run_id: str
) -> None:
    policy = parse_workflow(
        "name: x\ntriggers: [{type: manual}]\nsteps: [{name: a, notify: {url: /u}}]\n"
        f"retry: {{backoff: {{initial: {initial}s, multiplier: {multiplier!r}, max: {cap}s, "
        f"jitter: {jitter!r}}}}}\n"
    ).retry
    delay = m.backoff_delay(policy, run_id, "a", attempt).total_seconds()
    base = min(initial * multiplier ** (attempt - 1), cap)
    assert base * (1 - jitter) - 1e-6 <= delay <= cap


def test_state_round_trips_through_json() -> None:
    run = Run().start().submitted()
    run.event("tr1", outputs={"play": [{"url": "a", "definition": 20}]})
    states = pydantic.TypeAdapter(m.RunState)
    again = states.validate_json(states.dump_json(run.state))
    assert again == run.state


def test_a_restored_state_equals_the_validated_one_and_needs_every_field() -> None:
    task = m.TaskState(
        task_id="t-1", kind="transcode", attempt=1, awaited=True, submitted_at=T0, expected_at=T0
    )
    restored = m.TaskState.restore(dict(task.__dict__))
    assert restored == task
    assert dataclasses.asdict(restored) == dataclasses.asdict(task)
    assert restored != restored.model_copy(update={"attempt": 2})
    with pytest.raises(TypeError, match=r"missing \[.outputs.\], unknown \[\]"):
        m.TaskState.restore({k: v for k, v in task.__dict__.items() if k != "outputs"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        restored.status = m.TaskStatus.SUCCEEDED  # type: ignore[misc]  # still frozen


def test_a_copied_state_matches_a_replaced_dataclass_and_refuses_unknown_fields() -> None:
    task = m.TaskState(
        task_id="t-1", kind="transcode", attempt=1, awaited=True, submitted_at=T0, expected_at=T0
    )
    update = {"status": m.TaskStatus.SUCCEEDED, "outputs": {"url": "u"}}
    copied = task.model_copy(update=update)
    reference = dataclasses.replace(task, **update)
    assert copied == reference
    assert task.status is m.TaskStatus.WAITING  # the original is untouched
    assert task.model_copy() == task
    with pytest.raises(TypeError, match="TaskState has no field colour"):
        task.model_copy(update={"colour": "red"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        copied.status = m.TaskStatus.FAILED  # type: ignore[misc]  # still frozen
