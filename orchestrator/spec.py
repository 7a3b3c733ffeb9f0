"""Workflow files: the YAML schema, loading with positions, and errors a person can act on.

A workflow (``workflows/*.yaml``) names its triggers and its steps. The models below are the
schema (``vodflow schema`` prints them as JSON Schema for editors). Keys that configure vodflow are
snake_case (``max_attempts``, ``wait_for``); keys that mirror VOD's ProcessFileByProcedure
parameters keep the wire names (``fileId``, ``gen.clip.streamInfo.startTime``) so Tencent's
documentation can be followed as it is written.

Loading reports every problem at once, each as ``file:line:column: path: message`` with what was
found and what was expected, and a "did you mean" for unknown keys and fields. Procedure names are
checked only when the caller knows which exist (``KnownProcedures``): this module does not know
which VOD the workflows will run against.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from orchestrator import template, yamldoc
from orchestrator.durations import format_duration, parse_duration
from orchestrator.yamldoc import PathElem, Positions

# --- Field types -------------------------------------------------------------------------------

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$|^\d+(\.\d+)?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 30s, 10m, 1h30m, 2d, or seconds.",
        }
    ),
]


def _stored(info: ValidationInfo) -> bool:
    """Whether a version read back from the database is validated: checks added after it was
    stored must not refuse it (see :func:`parse_workflow`)."""
    return bool(info.context and info.context.get("stored"))


def _positive(value: timedelta, info: ValidationInfo) -> timedelta:
    if value <= timedelta(0) and not _stored(info):
        raise ValueError("expected a duration greater than 0, such as 30s, 10m or 2h; found 0")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A timeout, an expected time or a session's quiet: zero would make it fire at once."""


def _check_template(value: str) -> str:
    template.parse(value)
    return value


def _must_be_template(value: str) -> str:
    if not template.is_template(value):
        raise ValueError("a {{ template }}")
    return _check_template(value)


def _ids_as_text(value: object) -> object:
    # VOD fileIds are long digit strings that YAML reads as integers when unquoted.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Text = Annotated[str, BeforeValidator(_ids_as_text), AfterValidator(_check_template)]
"""A string that may contain ``{{ references }}``."""

TemplateRef = Annotated[str, AfterValidator(_must_be_template)]


def _check_webhook_url(value: str, info: ValidationInfo) -> str:
    """An http(s) URL, or a path on this vodflow (``/hooks/sink``: the sender prefixes its public
    URL). A templated URL is checked when it is sent (a stored one too)."""
    if template.is_template(value) or value.startswith("/") or _stored(info):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"expected an http(s) URL or a path on this vodflow such as /hooks/sink; got {value!r}"
        )
    return value


WebhookUrl = Annotated[Text, AfterValidator(_check_webhook_url)]
"""A string that must be a template (stands in for a non-string value resolved at run time)."""

TemplatedInt = int | TemplateRef
MatchValue = str | int | float | bool | list[str | int | float]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


# --- Policies ----------------------------------------------------------------------------------


class Backoff(_Model):
    """Exponential backoff between attempts: initial × multiplier^(n-1) with jitter, capped
    by ``max`` (jitter included)."""

    initial: Duration = timedelta(seconds=30)
    multiplier: float = Field(2.0, ge=1.0, le=10.0)
    max: Duration = timedelta(minutes=10)
    jitter: float = Field(0.1, ge=0.0, le=1.0, description="± fraction of each delay.")


RetryOn = Literal[
    "internal", "transport", "timeout", "verification",
    "invalid_params", "file_not_found", "procedure_invalid", "auth", "rejected", "media",
    "template",
]  # fmt: skip
"""The failure classes a retry policy may name: every class but VOD's frequency limit (backed
off without spending an attempt) and duplicate tasks (recovered). ``template`` is read (earlier
releases accepted it, and their stored versions still load) but refused in a workflow file:
another attempt would render the same values, so the step fails, to be retried by hand once
the workflow or the trigger's fields are fixed."""

RETRY_CLASSES = tuple(c for c in typing.get_args(RetryOn) if c != "template")
"""The classes a workflow file may name in ``retry.on`` (its JSON schema lists these)."""

DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("internal", "transport", "timeout", "verification")
"""Failures another attempt can fix; the others fail the step at once unless a policy names
them (a file VOD does not show yet, say: ``on: [..., file_not_found]``)."""


class RetryPolicy(_Model):
    """How often a failed step is tried again. max_attempts counts the first attempt."""

    max_attempts: int = Field(3, ge=1, le=100)
    backoff: Backoff = Backoff()
    on: Annotated[
        tuple[RetryOn, ...],
        WithJsonSchema({"type": "array", "items": {"type": "string", "enum": list(RETRY_CLASSES)}}),
    ] = Field(
        DEFAULT_RETRY_ON,
        description="The failure classes another attempt is tried for (default: internal, "
        "transport, timeout, verification).",
    )


# --- Triggers ----------------------------------------------------------------------------------

RECORDING_FIELDS = (
    "source", "fileId", "streamId", "fileName", "fileUrl", "fileFormat", "fileSize",
    "startTime", "endTime", "duration", "app", "appname", "sessionId", "sourceType",
)  # fmt: skip
UPLOAD_FIELDS = ("source", "fileId", "fileName", "fileUrl", "sourceType", "streamId")
SESSION_FIELDS = (
    "streamId", "startTime", "endTime", "duration", "fileIds", "segmentCount", "app", "appname",
    "untimedFileIds",
)  # fmt: skip


class _Trigger(_Model):
    match: dict[str, MatchValue] = Field(
        default_factory=dict,
        description="Event fields that must match: exact value, glob (*, ?, [..]) or a list of "
        "either (any of).",
    )

    def matches(self, context: Mapping[str, object]) -> bool:
        return all(match_value(context.get(key), want) for key, want in self.match.items())


def match_value(value: object, want: MatchValue) -> bool:
    """One ``match:`` entry: exact (numbers by value), glob for strings, any-of for lists."""
    if isinstance(want, list):
        return any(match_value(value, item) for item in want)
    if value is None:
        return False
    if isinstance(want, str) and any(ch in want for ch in "*?["):
        return fnmatch.fnmatchcase(str(value), want)
    if isinstance(want, bool) or isinstance(value, bool):
        return want is value
    if isinstance(want, int | float) and isinstance(value, int | float):
        return want == value
    return str(value) == str(want)


class RecordingFinished(_Trigger):
    """A live recording file is ready: VOD's NewFileUpload with sourceType Record, or the live
    service's recording callback (event_type 100). One run per workflow per fileId."""

    type: Literal["recording.finished"]
    fields: typing.ClassVar[tuple[str, ...]] = RECORDING_FIELDS


class StreamSession(_Trigger):
    """Collects a stream's recordings until the stream has been quiet for ``quiet``, then starts
    one run for the whole session (trigger.startTime..trigger.endTime, trigger.fileIds)."""

    type: Literal["stream.session"]
    quiet: PositiveDuration = Field(
        timedelta(minutes=5), description="Silence that ends a session."
    )
    max_length: PositiveDuration = Field(
        timedelta(hours=12), description="A session is closed after this long regardless."
    )
    fields: typing.ClassVar[tuple[str, ...]] = SESSION_FIELDS


class FileUploaded(_Trigger):
    """Any new file in VOD (NewFileUpload of any sourceType)."""

    type: Literal["file.uploaded"]
    fields: typing.ClassVar[tuple[str, ...]] = UPLOAD_FIELDS


class Manual(_Trigger):
    """Started by ``POST /api/runs`` or ``vodflow trigger``; ``params`` must be given."""

    type: Literal["manual"]
    params: list[str] = Field(default_factory=list, description="Required trigger fields.")
    fields: typing.ClassVar[tuple[str, ...]] = ()


Trigger = Annotated[
    RecordingFinished | StreamSession | FileUploaded | Manual, Field(discriminator="type")
]
TRIGGER_TYPES: dict[str, type[_Trigger]] = {
    "recording.finished": RecordingFinished,
    "stream.session": StreamSession,
    "file.uploaded": FileUploaded,
    "manual": Manual,
}

# --- Steps -------------------------------------------------------------------------------------


class ClipFile(_Model):
    file_id: Text = Field(alias="fileId")
    start_time_offset: TemplatedInt | None = Field(
        None, alias="startTimeOffset", description="Seconds into the file; negative: from its end."
    )
    end_time_offset: TemplatedInt | None = Field(
        None,
        alias="endTimeOffset",
        description="Seconds into the file; negative: from its end; absent: to the end.",
    )


class StreamInfo(_Model):
    stream_id: Text = Field(alias="streamId")
    start_time: TemplatedInt = Field(alias="startTime", description="Recording time, Unix s.")
    end_time: TemplatedInt = Field(alias="endTime", description="Recording time, Unix s.")


class Clip(_Model):
    file_list: list[ClipFile] | TemplateRef | None = Field(None, alias="fileList")
    stream_info: StreamInfo | None = Field(None, alias="streamInfo")


class Concat(_Model):
    file_id_list: list[Text] | TemplateRef | None = Field(None, alias="fileIdList")
    dst_type: Text = Field(alias="dstType", description="Container of the joined file: mp4, ...")


class Gen(_Model):
    clip: Clip | None = None
    concat: Concat | None = None


class ProcessAction(_Model):
    """One ProcessFileByProcedure call: on ``fileId``, or on the file ``gen`` makes."""

    file_id: Text | None = Field(None, alias="fileId")
    gen: Gen | None = None
    procedure: Text | None = None

    def wire(self) -> dict[str, Any]:
        """The request as VOD's nested parameter names, templates still unresolved."""
        dumped: dict[str, Any] = self.model_dump(by_alias=True, exclude_none=True)
        return dumped


class NotifyAction(_Model):
    """POST the run's outputs to ``url``, signed the Standard Webhooks way."""

    url: WebhookUrl = Field(
        description="Where to POST: an http(s) URL, or a path on this vodflow (/hooks/sink)."
    )
    event_type: Text = Field("vodflow.run.outputs", description="The payload's `type` (templated).")
    data: dict[str, Any] = Field(
        default_factory=dict, description="Extra fields for the payload's data (templated)."
    )
    timeout: PositiveDuration = timedelta(seconds=10)


DURATION_TOLERANCE = 0.02
DURATION_SLACK = timedelta(seconds=1)


class VerifyOptions(_Model):
    """How a step's outputs are checked (``verify: true`` takes these defaults).

    A transcode passes when its duration is within ``max(duration_slack, duration_tolerance ×
    the input's duration)`` of its input's. The defaults (2 %, at least 1 s) allow for
    recordings whose timestamps jump (a transcode may close such gaps, or fill them), and let
    a truncation of up to 2 % pass (144 s of a 2-hour recording): tighten them for sources
    known to be clean."""

    duration_tolerance: float = Field(
        DURATION_TOLERANCE,
        ge=0.0,
        le=1.0,
        description="How far a transcode's duration may be from its input's, as a fraction of "
        "the input's (0.02: 2 %).",
    )
    duration_slack: Duration = Field(
        DURATION_SLACK, description="... and at least this far (for short inputs)."
    )


TASK_KINDS = (
    "procedure", "transcode", "imageSprite", "snapshotByTimeOffset", "sampleSnapshot",
    "animatedGraphics", "coverBySnapshot", "clip", "concat",
)  # fmt: skip


class Step(_Model):
    """One step of a workflow: exactly one of ``process`` or ``notify``."""

    name: Name
    process: ProcessAction | None = None
    notify: NotifyAction | None = None
    wait_for: Literal["all"] | list[str] = Field(
        "all",
        description="Task kinds the step waits for (transcode, imageSprite, procedure, ...); "
        "default: every task ID VOD's answer returns.",
    )
    timeout: PositiveDuration | None = Field(
        None, description="Give up on an attempt after this long waiting on VOD."
    )
    expected: PositiveDuration | None = Field(
        None,
        description="When a task's callback is expected; after it, vodflow asks VOD. "
        "Default: VODFLOW_TASK_POLL_AFTER.",
    )
    verify: bool | VerifyOptions = Field(
        True,
        description="Check outputs are usable before the step succeeds: true, false, or "
        "options ({duration_tolerance: 0.005, duration_slack: 2s}).",
    )
    retry: RetryPolicy | None = Field(None, description="Default: the workflow's retry.")

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        if (self.process is None) == (self.notify is None):
            raise ValueError("a step needs exactly one of 'process' or 'notify'")
        return self

    @property
    def kind(self) -> Literal["process", "notify"]:
        return "process" if self.process is not None else "notify"

    @property
    def verify_options(self) -> VerifyOptions | None:
        """How outputs are checked; None when they are not."""
        if self.verify is True:
            return VerifyOptions()
        return self.verify or None


class Workflow(_Model):
    """A workflow file."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="vodflow workflow",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    name: Name
    description: str = ""
    triggers: list[Trigger] = Field(min_length=1)
    steps: list[Step] = Field(min_length=1)
    timeout: PositiveDuration = Field(
        timedelta(hours=24), description="A run fails after this long."
    )
    retry: RetryPolicy = Field(RetryPolicy(), description="Default retry for every step.")

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def retry_for(self, step: Step) -> RetryPolicy:
        return step.retry or self.retry


def json_schema() -> dict[str, Any]:
    return Workflow.model_json_schema(by_alias=True)


# --- Errors with positions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a workflow file, where it is, and what was expected."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.column}: {where}{self.message}"


class WorkflowError(Exception):
    """A workflow file (or set of files) is invalid; ``problems`` lists every problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class LoadedWorkflow:
    """A valid workflow with where it came from and its version (a hash of its content)."""

    spec: Workflow
    path: Path
    source: str
    version: str


@dataclass(frozen=True)
class KnownProcedures:
    """The procedure names the VOD that will run the workflows defines, when they are known at
    load; ``source`` says where they are defined, for the message naming them."""

    names: frozenset[str]
    source: str


def version_of(spec: Workflow) -> str:
    """The content hash of a workflow's meaning: comments and key order do not change it."""
    canonical = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _dotted(path: Sequence[PathElem]) -> str:
    out = ""
    for elem in path:
        out += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if out else str(elem))
    return out


def _allowed_keys(loc: Sequence[PathElem]) -> list[str]:
    """The keys a mapping at ``loc`` (a pydantic location) accepts, for "did you mean"."""
    current: Any = Workflow
    for elem in loc:
        current = _step_type(current, elem)
        if current is None:
            return []
    for member in _members(current):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return [f.alias or n for n, f in member.model_fields.items()]
    return []


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def _tag_of(member: Any) -> str:
    """The name pydantic gives a union member in error locations."""
    if typing.get_origin(member) is list:
        return f"list[{_tag_of(_unwrap(typing.get_args(member)[0]))}]"
    return getattr(member, "__name__", str(member))


def _step_type(tp: Any, elem: PathElem) -> Any:
    members = _members(tp)
    if len(members) > 1 and isinstance(elem, str):
        for member in members:
            tags: tuple[Any, ...] = ()
            if isinstance(member, type) and issubclass(member, BaseModel):
                tag = member.model_fields.get("type")
                tags = typing.get_args(tag.annotation) if tag else ()
            if elem in tags or elem == _tag_of(member):
                return member
    for member in members:
        origin = typing.get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(elem, str):
            for name, field in member.model_fields.items():
                if elem in (name, field.alias):
                    return field.annotation
        if origin is list and isinstance(elem, int):
            return typing.get_args(member)[0]
        if origin is dict and isinstance(elem, str):
            return typing.get_args(member)[1]
    return None


_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems_from_validation(
    exc: ValidationError, positions: Positions, file: str
) -> list[Problem]:
    grouped: dict[tuple[PathElem, ...], list[dict[str, Any]]] = {}
    order: list[tuple[PathElem, ...]] = []
    for details in exc.errors():
        path = tuple(positions.doc_path(details["loc"], missing_last=details["type"] == "missing"))
        if path not in grouped:
            grouped[path] = []
            order.append(path)
        grouped[path].append(dict(details))
    # A union reports one error per alternative; the alternative that got deeper into the value
    # is the one the author meant, so shallower reports on the same value are dropped.
    paths = [p for p in order if not any(q != p and q[: len(p)] == p for q in order)]
    problems = []
    for path in paths:
        errs = grouped[path]
        first = errs[0]
        kind = first["type"]
        dotted = _dotted(path)
        if kind == "extra_forbidden":
            key = str(path[-1])
            allowed = _allowed_keys(first["loc"][:-1])
            hint = get_close_matches(key, allowed, n=1, cutoff=0.6)
            msg = f"unknown key {key!r}"
            msg += f"; did you mean {hint[0]!r}?" if hint else ""
            if allowed:
                msg += f" (expected one of: {', '.join(allowed)})"
            line, col = positions.of(path, key=True)
        elif kind == "missing":
            msg = f"required key {str(path[-1])!r} is missing"
            line, col = positions.of(path[:-1])
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            tags = ", ".join(TRIGGER_TYPES)
            found = first.get("ctx", {}).get("tag")
            msg = f"unknown trigger type {found!r}; expected one of: {tags}"
            if kind == "union_tag_not_found":
                msg = f"a trigger needs 'type'; expected one of: {tags}"
            elif isinstance(found, str) and (hint := get_close_matches(found, TRIGGER_TYPES, n=1)):
                msg += f"; did you mean {hint[0]!r}?"
            line, col = positions.of((*path, "type"))
        else:
            expected: list[str] = []
            for err in errs:
                text = _EXPECTED.get(err["type"])
                if text is None:
                    text = str(err["msg"]).removeprefix("Value error, ")
                    if text.startswith("Input should be "):
                        text = text.removeprefix("Input should be ")
                        if text.startswith(("greater", "less")):
                            text = "a value " + text
                    elif text.startswith("List should have at least"):
                        text = "a list with at least" + text.split("at least", 1)[1]
                        text = text.split(" after validation")[0]
                    text = text[0].lower() + text[1:] if text else text
                if text not in expected:
                    expected.append(text)
            msg = f"expected {' or '.join(expected)}; found {_describe(first.get('input'))}"
            if first["type"] == "value_error" and len(errs) == 1:
                msg = expected[0]
            line, col = positions.of(path)
        problems.append(Problem(file, line, col, dotted, msg))
    return sorted(problems, key=lambda p: (p.line, p.column))


# --- Semantic checks (after the schema passed) --------------------------------------------------

RUN_FIELDS = ("id", "workflow", "version")
STEP_REF_FIELDS = ("outputs", "status", "error")
PROCESS_OUTPUTS = (
    "fileId", "fileUrl", "play", "sprites", "snapshots", "files", "coverUrl", "taskIds",
    "duration",
)  # fmt: skip
NOTIFY_OUTPUTS = ("status", "webhookId", "url")
NOT_FOR_NOTIFY = {
    "wait_for": "the VOD tasks a step waits for",
    "timeout": "the wait for VOD's tasks (a notify step's request has notify.timeout)",
    "expected": "when a VOD task's callback is due",
    "verify": "checks of VOD's outputs",
}
"""Step options that mean nothing to a notify step, refused rather than silently ignored."""


def _check_semantics(spec: Workflow, doc: Mapping[str, Any]) -> list[tuple[list[PathElem], str]]:
    found: list[tuple[list[PathElem], str]] = []
    trigger_fields = _trigger_fields(spec)

    for t_index, trig in enumerate(spec.triggers):
        known = list(type(trig).fields)
        if isinstance(trig, Manual):
            continue
        for key in trig.match:
            if key not in known:
                hint = get_close_matches(key, known, n=1)
                msg = f"{trig.type} events have no field {key!r}"
                msg += f"; did you mean {hint[0]!r}?" if hint else ""
                msg += f" (fields: {', '.join(known)})"
                found.append((["triggers", t_index, "match", key], msg))

    policies: list[tuple[list[PathElem], RetryPolicy | None]] = [(["retry"], spec.retry)]
    policies += [(["steps", n, "retry"], step.retry) for n, step in enumerate(spec.steps)]
    for where_retry, policy in policies:
        if policy is not None and "template" in policy.on:
            found.append(
                (
                    [*where_retry, "on", policy.on.index("template")],
                    "a template that cannot be rendered is not retried (another attempt "
                    "would render the same); expected one of: " + ", ".join(RETRY_CLASSES),
                )
            )

    seen: dict[str, int] = {}
    for s_index, step in enumerate(spec.steps):
        where: list[PathElem] = ["steps", s_index]
        if step.name in seen:
            found.append(
                (
                    [*where, "name"],
                    f"step name {step.name!r} is already used by steps[{seen[step.name]}]",
                )
            )
        seen.setdefault(step.name, s_index)
        if step.process is not None:
            found.extend(_check_process(step.process, [*where, "process"]))
        if isinstance(step.wait_for, list):
            for k_index, kind in enumerate(step.wait_for):
                if kind not in TASK_KINDS:
                    hint = get_close_matches(kind, TASK_KINDS, n=1)
                    msg = f"unknown task kind {kind!r}"
                    msg += f"; did you mean {hint[0]!r}?" if hint else ""
                    msg += f" (expected one of: {', '.join(TASK_KINDS)})"
                    found.append(([*where, "wait_for", k_index], msg))
        if step.kind == "notify":
            for key, why in NOT_FOR_NOTIFY.items():
                if key in step.model_fields_set:
                    found.append(([*where, key], f"only process steps have {key}: {why}"))
        earlier = {s.name: s for s in spec.steps[:s_index]}
        later = [s.name for s in spec.steps[s_index + 1 :]]
        step_doc = doc["steps"][s_index]
        for key in ("process", "notify"):
            if key in step_doc:
                found.extend(
                    _check_refs(
                        step_doc[key], [*where, key], trigger_fields, earlier, step.name, later
                    )
                )
    return found


def _check_procedures(spec: Workflow, known: KnownProcedures) -> list[tuple[list[PathElem], str]]:
    """Each literal procedure name that ``known`` does not define; a templated one is resolved,
    and so checked by VOD, only at run time."""
    found: list[tuple[list[PathElem], str]] = []
    for s_index, step in enumerate(spec.steps):
        name = step.process.procedure if step.process is not None else None
        if name is None or template.is_template(name) or name in known.names:
            continue
        defined = ", ".join(sorted(known.names)) or "none"
        found.append(
            (
                ["steps", s_index, "process", "procedure"],
                f"unknown procedure {name!r}{_suggest(name, sorted(known.names))} "
                f"({known.source} defines: {defined})",
            )
        )
    return found


def _trigger_fields(spec: Workflow) -> list[str] | None:
    """Fields every trigger of the workflow provides; None when a manual trigger allows any."""
    common: list[str] | None = None
    for trig in spec.triggers:
        if isinstance(trig, Manual):
            return None
        fields = list(type(trig).fields)
        common = fields if common is None else [f for f in common if f in fields]
    return common


def _check_process(
    action: ProcessAction, where: list[PathElem]
) -> list[tuple[list[PathElem], str]]:
    found: list[tuple[list[PathElem], str]] = []
    gen = action.gen
    if action.file_id is None and gen is None:
        found.append((where, "needs 'fileId' or 'gen' (a clip and/or concat that makes the file)"))
    if action.file_id is not None and gen is not None:
        found.append(
            (
                [*where, "gen"],
                "'fileId' and 'gen' both given: VOD ignores gen when fileId is present; keep one",
            )
        )
    if gen is None:
        return found
    g_where: list[PathElem] = [*where, "gen"]
    clip = gen.clip
    if clip is not None and (clip.file_list is None) == (clip.stream_info is None):
        found.append(([*g_where, "clip"], "needs exactly one of 'fileList' or 'streamInfo'"))
    if clip is not None and isinstance(clip.file_list, list) and not clip.file_list:
        found.append(([*g_where, "clip", "fileList"], "expected at least one file; found none"))
    info = clip.stream_info if clip else None
    literal = info and isinstance(info.start_time, int) and isinstance(info.end_time, int)
    if info and literal and info.end_time <= info.start_time:  # type: ignore[operator]
        found.append(
            (
                [*g_where, "clip", "streamInfo", "endTime"],
                f"endTime must be after startTime ({info.start_time}); found {info.end_time}",
            )
        )
    if gen.concat is None:
        found.append((g_where, "gen needs 'concat' with 'dstType' (the container of the new file)"))
    elif clip is None and gen.concat.file_id_list is None:
        found.append(
            ([*g_where, "concat"], "needs 'fileIdList' (or a 'clip' whose results are joined)")
        )
    return found


def _check_refs(
    value: object,
    where: list[PathElem],
    trigger_fields: list[str] | None,
    earlier: Mapping[str, Step],
    this_step: str,
    later: Sequence[str],
) -> list[tuple[list[PathElem], str]]:
    found: list[tuple[list[PathElem], str]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            found.extend(
                _check_refs(item, [*where, key], trigger_fields, earlier, this_step, later)
            )
        return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(
                _check_refs(item, [*where, index], trigger_fields, earlier, this_step, later)
            )
        return found
    if not isinstance(value, str) or not template.is_template(value):
        return found
    try:
        refs = template.parse(value).refs
    except template.TemplateError as exc:
        return [(where, str(exc))]
    for ref in refs:
        problem = _check_ref(ref.path, trigger_fields, earlier, this_step, later)
        if problem:
            found.append((where, f"{{{{ {ref.dotted} }}}}: {problem}"))
    return found


def _suggest(name: str, options: Iterable[str]) -> str:
    hint = get_close_matches(name, list(options), n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def _check_ref(
    path: tuple[str, ...],
    trigger_fields: list[str] | None,
    earlier: Mapping[str, Step],
    this_step: str,
    later: Sequence[str],
) -> str | None:
    roots = ("trigger", "steps", "run")
    root = path[0]
    if root not in roots:
        return f"unknown root {root!r}{_suggest(root, roots)} (expected one of: {', '.join(roots)})"
    if len(path) < 2:
        return f"{root} alone is not a value; name a field of it"
    field = path[1]
    if root == "trigger":
        if trigger_fields is not None and field not in trigger_fields:
            return (
                f"not every trigger of this workflow has a field {field!r}"
                f"{_suggest(field, trigger_fields)} (fields: {', '.join(trigger_fields)})"
            )
        return None
    if root == "run":
        if field not in RUN_FIELDS:
            return f"run has no field {field!r}{_suggest(field, RUN_FIELDS)}"
        return None
    if field == this_step:
        return "a step cannot use its own outputs"
    if field in later:
        return (
            f"step {field!r} runs after this one ({this_step!r}); "
            "a step can use only the outputs of steps before it"
        )
    if field not in earlier:
        return f"no earlier step is named {field!r}{_suggest(field, earlier)}"
    if len(path) < 3 or path[2] not in STEP_REF_FIELDS:
        got = path[2] if len(path) > 2 else "nothing"
        return f"expected steps.{field}.outputs (or .status, .error); found {got!r}"
    if path[2] == "outputs" and len(path) > 3:
        known = PROCESS_OUTPUTS if earlier[field].kind == "process" else NOTIFY_OUTPUTS
        if path[3] not in known:
            return (
                f"a {earlier[field].kind} step has no output {path[3]!r}{_suggest(path[3], known)} "
                f"(outputs: {', '.join(known)})"
            )
    return None


# --- Loading -----------------------------------------------------------------------------------


def parse_workflow(
    source: str,
    file: str = "<workflow>",
    procedures: KnownProcedures | None = None,
    *,
    stored: bool = False,
) -> Workflow:
    """Parse and validate one workflow document; raise WorkflowError listing every problem.
    With ``procedures``, a literal procedure name it does not define is one of them.

    ``stored``: a version runs were started with, read back from the database. It passed the
    checks of the release that loaded it; checks added since (a notify step's ``timeout``, say)
    must not leave its runs unable to advance or be cancelled, so only its shape is checked."""
    try:
        doc = yamldoc.load(source)
    except yamldoc.YamlSyntaxError as exc:
        problem = Problem(file, exc.line, exc.column, "", f"not valid YAML: {exc.reason}")
        raise WorkflowError([problem]) from None
    positions = Positions(doc)
    if not isinstance(doc, Mapping):
        raise WorkflowError(
            [
                Problem(
                    file,
                    1,
                    1,
                    "",
                    f"expected a mapping with name, triggers and steps; found {_describe(doc)}",
                )
            ]
        )
    try:
        spec = Workflow.model_validate(yamldoc.plain(doc), context={"stored": stored})
    except ValidationError as exc:
        raise WorkflowError(_problems_from_validation(exc, positions, file)) from None
    if stored:
        return spec
    problems = [
        Problem(file, *positions.of(path), _dotted(path), msg)
        for path, msg in _check_semantics(spec, doc)
    ]
    if procedures is not None:
        problems += [
            Problem(file, *positions.of(path, key=True), _dotted(path), msg)
            for path, msg in _check_procedures(spec, procedures)
        ]
    problems.sort(key=lambda p: (p.line, p.column))
    if problems:
        raise WorkflowError(problems)
    return spec


def load_workflow(path: Path, procedures: KnownProcedures | None = None) -> LoadedWorkflow:
    source = path.read_text(encoding="utf-8")
    spec = parse_workflow(source, str(path), procedures)
    return LoadedWorkflow(spec=spec, path=path, source=source, version=version_of(spec))


def workflow_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to their *.yaml / *.yml files, sorted; keep files as given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            out.append(path)
    return out


def load_workflows(
    paths: Iterable[Path], procedures: KnownProcedures | None = None
) -> list[LoadedWorkflow]:
    """Load every workflow; raise one WorkflowError with all problems of all files. With
    ``procedures``, every literal procedure name must be one it defines."""
    loaded: list[LoadedWorkflow] = []
    problems: list[Problem] = []
    names: dict[str, Path] = {}
    for path in workflow_files(paths):
        if not path.exists():
            problems.append(Problem(str(path), 1, 1, "", "no such file or directory"))
            continue
        try:
            item = load_workflow(path, procedures)
        except WorkflowError as exc:
            problems.extend(exc.problems)
            continue
        if item.spec.name in names:
            line, col = Positions(yamldoc.load(item.source)).of(["name"])
            problems.append(
                Problem(
                    str(path),
                    line,
                    col,
                    "name",
                    f"workflow name {item.spec.name!r} is already used by {names[item.spec.name]}",
                )
            )
            continue
        names[item.spec.name] = path
        loaded.append(item)
    if problems:
        raise WorkflowError(problems)
    return loaded
