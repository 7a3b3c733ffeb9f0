"""``vodflow validate --dry-run EVENT.json``: what an event would start, before any video moves.

For each workflow the event would start, every step is shown with the exact ProcessFileByProcedure
parameters (flattened wire names, templates resolved) it would send. Values that depend on an
earlier step's outputs are not known before that step runs; they are shown as
``<steps.NAME.outputs.FIELD>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import JsonValue

from orchestrator import machine, template, triggers
from orchestrator.durations import format_duration
from orchestrator.spec import LoadedWorkflow, Step, StreamSession, match_value
from orchestrator.vod.errors import InvalidRequestParams, MalformedEvent
from orchestrator.vod.events import VodEvent, parse_event
from orchestrator.vod.params import ProcessFileByProcedureRequest, flatten


class DryRunError(Exception):
    pass


class _Unknown(Mapping[str, object]):
    """Stands for an output that exists only after its step has run; any field of it is unknown."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> _Unknown:
        return _Unknown(f"{self.path}.{key}")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __str__(self) -> str:
        return f"<{self.path}>"


def _plain(value: object) -> JsonValue:
    if isinstance(value, _Unknown):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value  # type: ignore[return-value]


def dry_run_event(path: Path, workflows: list[LoadedWorkflow], now: datetime | None = None) -> str:
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise DryRunError(f"cannot read the event file {path}: {exc.strerror}") from None
    try:
        event = parse_event(body)
    except MalformedEvent as exc:
        raise DryRunError(f"{path}: not an event vodflow understands: {exc}") from None
    return report(event, workflows, now or datetime.now(UTC))


def report(event: VodEvent, workflows: list[LoadedWorkflow], now: datetime) -> str:
    lines = [_describe(event)]
    matches = triggers.match(event, workflows)
    if not triggers.contexts_for(event):
        lines.append(
            "this event starts no run: it reports on a task "
            f"({event.task_id or 'no task ID'}) and would be matched to the run waiting for it"
        )
        return "\n".join(lines)
    started = {m.workflow.spec.name for m in matches}
    lines.append(f"starts {len(matches)} of {len(workflows)} workflow(s)")
    for found in matches:
        lines.append("")
        lines.extend(_describe_match(found, now))
    for workflow in workflows:
        if workflow.spec.name not in started:
            lines.append("")
            lines.append(f"not started: {workflow.spec.name} ({_why_not(event, workflow)})")
    return "\n".join(lines)


def _describe(event: VodEvent) -> str:
    facts = [f"{k} {v}" for k, v in (("fileId", event.file_id), ("streamId", event.stream_id)) if v]
    return f"event: {event.kind} from {event.source}" + (f" ({', '.join(facts)})" if facts else "")


def _describe_match(found: triggers.Match, now: datetime) -> list[str]:
    spec = found.workflow.spec
    trigger = spec.triggers[found.trigger_index]
    lines = [
        f"{spec.name} (version {found.workflow.version}) "
        f"by triggers[{found.trigger_index}] {trigger.type}"
    ]
    fields = found.context.fields
    if isinstance(trigger, StreamSession):
        fields = triggers.session_context([dict(fields)])
        lines.append(
            f"  the recording joins stream {found.context.fields.get('streamId')}'s session; "
            f"the run starts once the stream has been quiet for {format_duration(trigger.quiet)}."
        )
        lines.append("  shown for a session of this one recording:")
    lines.append(f"  trigger: {json.dumps(fields, ensure_ascii=False)}")
    context: dict[str, JsonValue] = {
        "trigger": fields,
        "run": {"id": "<run id>", "workflow": spec.name, "version": found.workflow.version},
        "steps": {},
    }
    steps_ctx: dict[str, object] = {}
    for step in spec.steps:
        full = {**context, "steps": steps_ctx}
        if step.process is not None:
            lines.append(f"  step {step.name}: ProcessFileByProcedure")
            lines.extend(f"    {line}" for line in _process_lines(step, full))
        else:
            assert step.notify is not None
            try:
                url = _plain(template.render(step.notify.url, full))  # type: ignore[arg-type]
            except template.TemplateError as exc:
                url = f"<cannot resolve: {exc}>"
            lines.append(f"  step {step.name}: notify POST {url}")
            lines.append("    (payload: the run's outputs; signed with Standard Webhooks headers)")
        steps_ctx[step.name] = {"outputs": _Unknown(f"steps.{step.name}.outputs")}
    return lines


def _process_lines(step: Step, context: Mapping[str, object]) -> list[str]:
    try:
        request = _plain(machine.resolve_request(step, context))  # type: ignore[arg-type]
    except template.TemplateError as exc:
        return [f"cannot resolve the request: {exc}"]
    try:
        params = ProcessFileByProcedureRequest.from_params(flatten(request)).to_params()
    except InvalidRequestParams as exc:
        flat = flatten(request)
        return [*(f"{k}={v}" for k, v in flat.items()), f"VOD would refuse this: {exc}"]
    return [f"{k}={v}" for k, v in params.items()]


def _why_not(event: VodEvent, workflow: LoadedWorkflow) -> str:
    reasons = []
    contexts = triggers.contexts_for(event)
    for index, trigger in enumerate(workflow.spec.triggers):
        wanted = "recording.finished" if trigger.type == "stream.session" else trigger.type
        same = [c for c in contexts if c.type == wanted]
        if not same:
            reasons.append(f"triggers[{index}] {trigger.type}: the event is not one")
            continue
        fields = same[0].fields
        misses = [
            f"{key} {fields.get(key)!r} does not match {want!r}"
            for key, want in trigger.match.items()
            if not match_value(fields.get(key), want)
        ]
        reasons.append(f"triggers[{index}] {trigger.type}: " + ("; ".join(misses) or "no match"))
    return "; ".join(reasons)
