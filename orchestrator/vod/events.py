"""Every inbound body (a VOD callback, a PullEvent entry, a task query, a live-service callback)
becomes one normalized, typed ``VodEvent``; anything unreadable raises ``MalformedEvent`` only.

Formats read: VOD "4.0" (``{"version": "4.0", "eventType", "data"}``), the v3 format
(``{"EventType", "<Type>Event": {...}}``), the live service's callbacks (``event_type`` 100, 0, 1,
200), PullEvent's ``eventList`` and GetTaskInfo answers. Unknown event types become a generic
event, never an error.

Decisions where the documents are silent or disagree:

* **Outcome.** A per-task event succeeds when its ``status`` is 0 (or ``"0"``, or ``SUCCESS``);
  ``ConcatComplete`` needs every ``fileInfo`` to succeed (``-1``/``4`` are failures). A
  ``ProcedureStateChanged`` is terminal only with status ``FINISH`` and then succeeds only if
  ``errCode`` is 0 *and* every sub-task is ``SUCCESS``: a procedure whose second transcode
  failed did not give the run what it asked for. Any other procedure status (``PROCESSING``,
  ``WAITING``, an unexpected number) is not terminal; the sweeper queries such tasks later.
* **Bitrates are bps.** ``playSet[].vbitrate`` and the v3 format are documented and observed in
  bps. The v2 ``metaData``/sub-task ``bitrate`` is documented in kbps (and the sample bodies
  agree: 1200 for a 1.4 Mbit/s file), yet Tencent's own example shows bps-sized values; so when
  ``size`` and ``duration`` are known the unit closer to ``size * 8 / duration`` is taken,
  otherwise the documented kbps.
* **Dedup keys** hash the event's content, not its envelope: for VOD 4.0 the ``eventType`` and
  ``data`` (so a push, the same ``eventContent`` pulled, and a GetTaskInfo whose ``data`` is
  identical share a key), for v3 the body without ``EventHandle``, for the live service the body
  without ``t`` and ``sign`` (a resend carries a new expiry and signature).
* **occurred_at** is taken from ``event_time`` (live service; for recordings without it, the
  recording's ``end_time``; for screenshots ``create_time``) and GetTaskInfo's ``finishTime``.
  VOD 4.0 callbacks carry no time: ``None``.
* **Task IDs** are kept exactly as given; ``normalize_task_id`` lower-cases the prefix before the
  first ``-`` (``Transcode-1edb...`` → ``transcode-1edb...``) for the fallback correlation, to be
  used only after an exact match failed, and logged when it decides.
* **Sub-task IDs.** Tencent documents no task ID on a ``processTaskList`` entry (nor on a v3
  ``MediaProcessResultSet`` task), and its sample bodies carry none; the embedded engine sends
  each entry's own ``vodTaskId``. When present it is read (``SubTask.task_id``,
  ``VodEvent.sub_task_ids``), so a ``ProcedureStateChanged`` can be tied to the run that
  recorded its tasks when the submit's answer gave the tasks' IDs, not the procedure's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, JsonValue, SkipValidation, ValidationError

from orchestrator import jsontext

from ._bodies import (
    ClipDataV2,
    ClipEventV3,
    ConcatDataV2,
    ConcatEventV3,
    FileInfoV2,
    FileInfoV3,
    FileUploadEventV3,
    GenericDataV2,
    GenericEventV3,
    ImageSpriteDataV2,
    ImageSpriteEventV3,
    LvbBody,
    MediaTaskV3,
    MetaDataV2,
    MetaDataV3,
    NewFileUploadDataV2,
    ProcedureDataV2,
    ProcedureEventV3,
    SnapshotDataV2,
    SnapshotEventV3,
    SubTaskV2,
    TranscodeDataV2,
    TranscodeEventV3,
)
from .errors import ErrorClass, MalformedEvent, task_error_class
from .responses import GetTaskInfoResponse, PullEventResponse

Source = Literal["vod", "lvb", "pull", "query", "manual"]
Body = bytes | str | Mapping[str, JsonValue]

LVB_KINDS: Mapping[int, str] = {
    100: "lvb.recording",
    0: "lvb.stream_end",
    1: "lvb.stream_start",
    200: "lvb.screenshot",
}

PROCEDURE_EVENT = "ProcedureStateChanged"
"""The eventType of a procedure's own event (its sub-tasks each send their own too)."""

#: GetTaskInfo ``type`` → the eventType of the callback the same task sends.
TASK_TYPE_EVENTS: Mapping[str, str] = {
    "procedure": PROCEDURE_EVENT,
    "transcode": "TranscodeComplete",
    "clip": "ClipComplete",
    "clipvideo": "ClipComplete",  # GetTaskInfo's documented type for a clip
    "concat": "ConcatComplete",
    "imagesprite": "CreateImageSpriteComplete",
    "createimagesprite": "CreateImageSpriteComplete",
    "snapshotbytimeoffset": "CreateSnapshotByTimeOffsetComplete",
    "createsnapshotbytimeoffset": "CreateSnapshotByTimeOffsetComplete",
    "pull": "PullComplete",
}

# v3 wraps each event in "<Type>Event"; these are the documented names that differ from the type.
_V3_EVENT_KEYS: Mapping[str, str] = {
    "ProcedureStateChanged": "ProcedureStateChangeEvent",
    "NewFileUpload": "FileUploadEvent",
    "TranscodeComplete": "TranscodeCompleteEvent",
    "ClipComplete": "ClipCompleteEvent",
    "ConcatComplete": "ConcatCompleteEvent",
    "CreateImageSpriteComplete": "CreateImageSpriteCompleteEvent",
    "CreateSnapshotByTimeOffsetComplete": "SnapshotByTimeOffsetCompleteEvent",
}


# --- the normalized event ------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlayOutput(_Frozen):
    """A playable rendition. ``bitrate`` is in bits per second (see the module docstring)."""

    url: str
    definition: int | None = None
    size: int | None = None
    bitrate: int | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    container: str | None = None


class SpriteOutput(_Frozen):
    definition: int | None = None
    total_count: int | None = None
    image_urls: tuple[str, ...] = ()
    webvtt_url: str | None = None


class SnapshotOutput(_Frozen):
    """A still image; ``time_offset_ms`` is None for sampled snapshots and screenshots."""

    url: str
    time_offset_ms: int | None = None
    definition: int | None = None


class FileOutput(_Frozen):
    """A media file: the new file of a clip/concat, an upload, a recording."""

    file_id: str | None = None
    url: str | None = None
    file_type: str | None = None


class MediaMeta(_Frozen):
    duration: float | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None
    container: str | None = None
    bitrate: int | None = None  # bps


class Outputs(_Frozen):
    play: tuple[PlayOutput, ...] = ()
    sprites: tuple[SpriteOutput, ...] = ()
    snapshots: tuple[SnapshotOutput, ...] = ()
    files: tuple[FileOutput, ...] = ()
    cover_url: str | None = None
    meta: MediaMeta | None = None


class SubTask(_Frozen):
    """One task of a procedure (``processTaskList`` / ``MediaProcessResultSet`` entry)."""

    task_type: str
    status: str  # SUCCESS, FAIL, PROCESSING (other words are kept as given, upper-cased)
    task_id: str | None = None
    """The sub-task's own task ID (the one its per-task event carries), when the body gives it."""
    error_code: int | None = None
    message: str | None = None
    definition: int | None = None
    outputs: Outputs = Outputs()


class Recording(_Frozen):
    """What the live service says about a recording file (event_type 100)."""

    start_time: int | None = None
    end_time: int | None = None
    duration: float | None = None
    file_url: str | None = None
    file_format: str | None = None
    file_size: int | None = None
    session_id: str | None = None
    app: str | None = None
    appname: str | None = None


class VodEvent(_Frozen):
    """One inbound event, whatever its format; ``raw`` keeps the body for the inbox."""

    source: Source
    kind: str
    task_id: str | None = None
    file_id: str | None = None
    file_name: str | None = None
    stream_id: str | None = None
    terminal: bool = True
    success: bool | None = None
    error_code: int | None = None
    error_message: str | None = None
    error_class: ErrorClass | None = None
    outputs: Outputs = Outputs()
    sub_tasks: tuple[SubTask, ...] = ()
    procedure_task_id: str | None = None
    source_type: str | None = None
    recording: Recording | None = None
    occurred_at: datetime | None = None
    dedup_key: str
    # Decoded JSON already (a body, or a PullEvent entry): walking it again to validate it as
    # JSON values cost a third of reading a callback.
    raw: Annotated[dict[str, JsonValue], SkipValidation]

    @property
    def sub_task_ids(self) -> tuple[str, ...]:
        """The task IDs of a procedure's sub-tasks that the body names (see the module notes)."""
        return tuple(task.task_id for task in self.sub_tasks if task.task_id)


# --- entry points --------------------------------------------------------------------------


def parse_event(body: Body, *, source: Source | None = None) -> VodEvent:
    """Read any inbound body. ``source`` overrides the one implied by the format."""
    obj = _load(body)
    try:
        if "event_type" in obj:
            return _storable(_lvb_event(obj, source or "lvb"))
        if "eventType" in obj or "version" in obj:
            return _storable(_v4_event(obj, source or "vod", occurred_at=None))
        if "EventType" in obj:
            return _storable(_v3_event(obj, source or "vod"))
    except ValidationError as exc:
        raise _malformed(exc) from None
    except RecursionError:
        raise MalformedEvent("the body nests too deeply to read") from None
    raise MalformedEvent(
        "expected a VOD 4.0 body (version, eventType, data), a v3 body (EventType) "
        "or a live-service body (event_type); found none of these fields"
    )


ID_MAX = 200
"""The longest task, file or stream ID vodflow stores (its columns' size); Tencent's are far
shorter."""


def _storable(event: VodEvent) -> VodEvent:
    """The event, unless an ID in it cannot be stored: longer than ``ID_MAX``, or holding a NUL
    character (PostgreSQL's text has none). Refused as malformed, a body that is no VOD's does
    not fail the group of callbacks committed with it."""
    for what, value in (
        ("event type", event.kind),
        ("task ID", event.task_id),
        ("fileId", event.file_id),
        ("stream ID", event.stream_id),
    ):
        if value is None:
            continue
        if "\x00" in value:
            raise MalformedEvent(f"the {what} contains a NUL character")
        if len(value) > ID_MAX:
            raise MalformedEvent(f"the {what} is {len(value)} characters; at most {ID_MAX}")
    return event


def parse_pull_event_response(body: Body) -> list[tuple[str, VodEvent]]:
    """PullEvent's answer as (msgHandle, event) pairs; code 4000 ("no events") gives ``[]``.

    A malformed ``eventContent`` raises ``MalformedEvent`` naming its msgHandle; use
    ``pull_event_items`` to get the readable ones and confirm the rest instead.
    """
    pairs: list[tuple[str, VodEvent]] = []
    for handle, event in pull_event_items(body):
        if isinstance(event, MalformedEvent):
            raise MalformedEvent(
                f"eventContent of msgHandle {handle}: {event.reason}", field=event.field
            )
        pairs.append((handle, event))
    return pairs


def pull_event_items(
    body: Body | PullEventResponse,
) -> list[tuple[str, VodEvent | MalformedEvent]]:
    """Like ``parse_pull_event_response``, but an unreadable entry is returned, not raised.

    Raises ``VodError`` for a failed call (``MalformedResponse`` for a body that is not one).
    """
    answer = body if isinstance(body, PullEventResponse) else PullEventResponse.parse(body)
    items: list[tuple[str, VodEvent | MalformedEvent]] = []
    for entry in answer.event_list:
        content = entry.event_content
        if isinstance(content, str):  # some deliveries carry the body as a JSON string
            content_body: Body = content
        elif isinstance(content, dict):
            content_body = content
        else:
            items.append(
                (entry.msg_handle, MalformedEvent("expected an object", field="eventContent"))
            )
            continue
        try:
            items.append((entry.msg_handle, parse_event(content_body, source="pull")))
        except MalformedEvent as problem:
            items.append((entry.msg_handle, problem))
    return items


def task_info_callback(
    info: GetTaskInfoResponse | Body, task_id: str | None = None
) -> dict[str, JsonValue] | None:
    """The callback body (VOD 4.0) a GetTaskInfo answer stands for, or None without ``data``.

    Tencent's GetTaskInfo documents ``data`` as "the same as the callback's data", yet its own
    examples leave out what the envelope already says: a ``procedure``'s data has no
    ``vodTaskId`` and may have no ``status`` (the flow status is the answer's ``status``), a
    ``transcode``'s data has no ``vodTaskId``, and ``errCode`` beside a status that is a word
    (``"status": "PROCESSING", "errCode": 0`` on the Chinese page) or instead of one (the
    English page). So a field the callback needs and ``data`` lacks is filled in: ``vodTaskId``
    with ``task_id`` (the ID that was asked about), a procedure's ``status`` with the answer's.
    A per-task callback's ``status`` is its error code (0 = success): where ``data`` has
    ``errCode`` and no status or a word other than ``WAITING``/``PROCESSING`` (a finished word
    says nothing of the outcome), the status becomes ``errCode``. Other fields are never
    changed, so an answer that does carry the callback's data whole still rebuilds that callback
    exactly.
    """
    if not isinstance(info, GetTaskInfoResponse):
        info = GetTaskInfoResponse.parse(info)
    if info.data is None:
        return None
    kind = _task_info_kind(info)
    data = dict(info.data)
    if task_id and not data.get("vodTaskId"):
        data["vodTaskId"] = task_id
    status, err_code = data.get("status"), data.get("errCode")
    if status is None and kind == PROCEDURE_EVENT:
        if info.status:
            data["status"] = info.status
    elif kind != PROCEDURE_EVENT and err_code is not None and _ended_word(status):
        data["status"] = err_code
    return {"version": "4.0", "eventType": kind, "data": data}


def _ended_word(status: JsonValue) -> bool:
    """No status, or a word that is not ``WAITING`` / ``PROCESSING`` (a number is kept)."""
    if status is None:
        return True
    return isinstance(status, str) and status.strip().upper() not in ("WAITING", "PROCESSING")


def _task_info_kind(info: GetTaskInfoResponse) -> str:
    task_type = info.type or ""
    return TASK_TYPE_EVENTS.get(task_type.lower(), task_type or "TaskInfo")


def event_from_task_info(info: GetTaskInfoResponse | Body, task_id: str | None = None) -> VodEvent:
    """The event the task's callback would have carried, rebuilt from a GetTaskInfo answer.

    ``task_id`` is the ID that was asked about; see ``task_info_callback`` for what it fills in.
    Same ``kind``, outcome and ``dedup_key`` as ``parse_event(task_info_callback(...))``;
    ``source`` is ``query``. A task that is not finished gives a non-terminal event. Raises the
    ``VodError`` of a failed answer, and ``MalformedEvent`` when a finished task's data is
    unreadable.
    """
    if not isinstance(info, GetTaskInfoResponse):
        info = GetTaskInfoResponse.parse(info)
    kind = _task_info_kind(info)
    occurred = _timestamp(info.finish_time)
    finished = info.status is None or info.status.upper() in FINISHED
    raw: dict[str, JsonValue] = info.model_dump(mode="json", by_alias=True, exclude_none=True)
    body = task_info_callback(info, task_id)
    if body is not None and (finished or kind == PROCEDURE_EVENT):
        # A running procedure's data already lists its sub-tasks' progress: worth reading.
        try:
            event = _v4_event(body, "query", occurred_at=occurred)
        except ValidationError as exc:
            if finished:
                raise _malformed(exc) from None
        except MalformedEvent:
            if finished:
                raise
        else:
            return event.model_copy(update={"raw": raw})
    # Nothing (or only progress) to read yet: correlate by the data's IDs where present.
    data = GenericDataV2.model_validate(info.data or {})
    return VodEvent(
        source="query",
        kind=kind,
        task_id=data.vod_task_id or task_id,
        file_id=data.file_id,
        terminal=False,
        occurred_at=occurred,
        dedup_key=_key("v4", {"eventType": kind, "data": info.data, "status": info.status}),
        raw=raw,
    )


def normalize_task_id(task_id: str) -> str:
    """``task_id`` with the prefix before its first ``-`` lower-cased, for fallback matching."""
    prefix, dash, rest = task_id.partition("-")
    return prefix.lower() + dash + rest


def lvb_sign_problem(body: Body, key: str, now: float | datetime) -> str | None:
    """Why a live-service body is not authentic and fresh, or None when it is.

    ``sign`` must equal lowercase hex MD5(key + t) and ``t`` (the expiry, Unix seconds) must not
    have passed at ``now``.
    """
    try:
        obj = _load(body)
    except MalformedEvent as problem:
        return problem.reason
    t, sign = obj.get("t"), obj.get("sign")
    if isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 10**12:
        t = str(t)
    if not isinstance(t, str) or not (t.isascii() and t.isdigit() and len(t) < 13):
        return "t: expected the expiry as Unix seconds"
    if not isinstance(sign, str) or not sign:
        return "sign: required"
    expected = hashlib.md5((key + str(t)).encode("utf-8"), usedforsecurity=False).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), sign.lower().encode("utf-8")):
        return "sign: does not match MD5(key + t); check the callback key"
    moment = now.timestamp() if isinstance(now, datetime) else now
    if int(t) < moment:
        return f"t: the notification expired at {t}"
    return None


def verify_lvb_sign(body: Body, key: str, now: float | datetime) -> bool:
    """True when the live-service body's ``sign`` is right and its ``t`` has not passed."""
    return lvb_sign_problem(body, key, now) is None


# --- reading -------------------------------------------------------------------------------


def _load(body: Body) -> dict[str, JsonValue]:
    if isinstance(body, Mapping):
        return dict(body)
    if not isinstance(body, bytes | str):
        raise MalformedEvent(f"expected a JSON body, got {type(body).__name__}")
    try:
        parsed = jsontext.loads(body)
    except RecursionError:
        raise MalformedEvent("the body nests too deeply to read") from None
    except ValueError as exc:
        raise MalformedEvent(f"the body is not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise MalformedEvent(f"expected a JSON object, got JSON {type(parsed).__name__}")
    return parsed


def _malformed(exc: ValidationError, prefix: str = "") -> MalformedEvent:
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    reason = "required" if error["type"] == "missing" else str(error["msg"])
    return MalformedEvent(reason.removeprefix("Value error, "), field=field or None)


_M = TypeVar("_M", bound=BaseModel)


def _read(model: type[_M], obj: JsonValue, where: str) -> _M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _malformed(exc, where) from None


def _key(fmt: str, content: object) -> str:
    try:
        text = jsontext.canonical(content)
    except (ValueError, TypeError, RecursionError) as exc:
        raise MalformedEvent(f"the body cannot be read back as JSON ({exc})") from None
    return f"{fmt}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()}"


def _timestamp(seconds: int | float | None) -> datetime | None:
    if seconds is None or seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


FINISHED = frozenset({"FINISH", "FINISHED"})
"""A task's ended status word: ``FINISH`` in a procedure's callback, ``FINISHED`` in
GetTaskInfo's table."""


def _outcome(status: int | str | None) -> tuple[bool | None, int | None]:
    """(success, error code) of a per-task status: 0 / "SUCCESS" succeed, anything else fails."""
    if status is None:
        return None, None
    if isinstance(status, int):
        return status == 0, None if status == 0 else status
    if status in {"SUCCESS", "FINISH"}:
        return True, None
    if status == "PROCESSING":
        return None, None
    return False, None


def _failure(success: bool | None, code: int | None, message: str | None) -> dict[str, object]:
    if success is not False:
        return {}
    return {
        "error_code": code,
        "error_message": message,
        "error_class": task_error_class(code) if code is not None else ErrorClass.INTERNAL,
    }


def _bps_from_v2(bitrate: int | None, size: int | None, duration: float | None) -> int | None:
    if bitrate is None:
        return None
    if size and duration and duration > 0:
        try:
            estimate = size * 8 / duration
            kbps_error = abs(bitrate * 1000 - estimate)
            bps_error = abs(bitrate - estimate)
        except OverflowError:  # absurd sizes: fall back to the documented unit
            return bitrate * 1000
        return bitrate * 1000 if kbps_error <= bps_error else bitrate
    return bitrate * 1000


def _meta_v2(meta: MetaDataV2 | None) -> MediaMeta | None:
    if meta is None:
        return None
    return MediaMeta(
        duration=meta.duration,
        size=meta.size,
        width=meta.width,
        height=meta.height,
        container=meta.container,
        bitrate=_bps_from_v2(meta.bitrate, meta.size, meta.duration),
    )


def _meta_v3(meta: MetaDataV3 | None) -> MediaMeta | None:
    if meta is None:
        return None
    return MediaMeta(
        duration=meta.duration,
        size=meta.size,
        width=meta.width,
        height=meta.height,
        container=meta.container,
        bitrate=meta.bitrate,
    )


def _str_field(obj: Mapping[str, JsonValue], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        got = "nothing" if value is None else repr(value)[:40]
        raise MalformedEvent(f"expected a non-empty string, got {got}", field=f"{where}{name}")
    return value


# --- VOD 4.0 -----------------------------------------------------------------------------


def _v4_event(
    obj: Mapping[str, JsonValue], source: Source, *, occurred_at: datetime | None
) -> VodEvent:
    version = obj.get("version")
    if not _is_v4(version):
        raise MalformedEvent(f'expected "4.0" (or 4), got {version!r}'[:80], field="version")
    kind = _str_field(obj, "eventType", "")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise MalformedEvent("expected an object with the event's fields", field="data")
    common: dict[str, object] = {
        "source": source,
        "kind": kind,
        "occurred_at": occurred_at,
        "dedup_key": _key("v4", {"eventType": kind, "data": data}),
        "raw": dict(obj),
    }
    reader = _V4_READERS.get(kind, _v4_generic)
    return VodEvent.model_validate({**common, **reader(data)})


def _is_v4(version: JsonValue) -> bool:
    """Tencent writes the version as ``"4.0"`` in most examples, and as the number ``4`` in
    others (the PullEvent example's ``eventContent``; the TranscodeComplete field table types it
    Integer): both, and ``4.0`` or ``"4"``, are read as version 4."""
    if isinstance(version, bool):
        return False
    if isinstance(version, int | float):
        return version == 4
    return isinstance(version, str) and version.strip() in ("4", "4.0")


def _v4_new_file(data: JsonValue) -> dict[str, object]:
    body = _read(NewFileUploadDataV2, data, "data")
    return {
        "file_id": body.file_id,
        "file_name": body.file_name,
        "stream_id": body.stream_id,
        "success": True,
        "procedure_task_id": body.procedure_task_id,
        "source_type": body.source_type,
        "outputs": Outputs(
            files=(FileOutput(file_id=body.file_id, url=body.file_url),),
            cover_url=body.cover_url,
            meta=_meta_v2(body.meta_data),
        ),
    }


def _v4_transcode(data: JsonValue) -> dict[str, object]:
    body = _read(TranscodeDataV2, data, "data")
    success, code = _outcome(body.status)
    play = tuple(
        PlayOutput(
            url=item.url,
            definition=item.definition,
            bitrate=item.vbitrate,
            width=item.vwidth,
            height=item.vheight,
            duration=body.duration,
        )
        for item in body.play_set
        if item.url
    )
    return {
        "task_id": body.vod_task_id,
        "file_id": body.file_id,
        "success": success,
        "terminal": success is not None,
        **_failure(success, code, body.message),
        "outputs": Outputs(
            play=play,
            cover_url=body.cover_url,
            meta=MediaMeta(duration=body.duration) if body.duration is not None else None,
        ),
    }


def _v4_image_sprite(data: JsonValue) -> dict[str, object]:
    body = _read(ImageSpriteDataV2, data, "data")
    success, code = _outcome(body.status)
    sprites = (
        SpriteOutput(
            definition=body.definition,
            total_count=body.total_count,
            image_urls=body.image_sprite_url,
            webvtt_url=body.web_vtt_url,
        ),
    )
    return {
        "task_id": body.vod_task_id,
        "file_id": body.file_id,
        "success": success,
        "terminal": success is not None,
        **_failure(success, code, body.message),
        "outputs": Outputs(sprites=sprites if success else ()),
    }


def _v4_snapshot(data: JsonValue) -> dict[str, object]:
    body = _read(SnapshotDataV2, data, "data")
    success, code = _outcome(body.status)
    if body.status is None:
        # No overall status is documented: every picture must have come out.
        failed = [pic for pic in body.pic_info if _outcome(pic.status)[0] is False]
        success = bool(body.pic_info) and not failed and all(pic.url for pic in body.pic_info)
        code = next((_outcome(pic.status)[1] for pic in failed), None)
    snapshots = tuple(
        SnapshotOutput(url=pic.url, time_offset_ms=pic.time_offset, definition=body.definition)
        for pic in body.pic_info
        if pic.url and _outcome(pic.status)[0] is not False
    )
    return {
        "task_id": body.vod_task_id,
        "file_id": body.file_id,
        "success": success,
        "terminal": success is not None,
        **_failure(success, code, body.message),
        "outputs": Outputs(snapshots=snapshots),
    }


def _file_outcome(info: FileInfoV2) -> tuple[bool, int | None]:
    if info.status is None:
        return info.file_id is not None, None
    success, code = _outcome(info.status)
    return success is True, code


def _v4_clip(data: JsonValue) -> dict[str, object]:
    body = _read(ClipDataV2, data, "data")
    success, code = _file_outcome(body.file_info)
    info = body.file_info
    files = (FileOutput(file_id=info.file_id, url=info.file_url, file_type=info.file_type),)
    return {
        "task_id": body.vod_task_id,
        "file_id": body.src_file_id,
        "success": success,
        **_failure(success, code, info.message),
        "outputs": Outputs(files=files if success else ()),
    }


def _v4_concat(data: JsonValue) -> dict[str, object]:
    body = _read(ConcatDataV2, data, "data")
    outcomes = [_file_outcome(info) for info in body.file_info]
    success = bool(outcomes) and all(ok for ok, _ in outcomes)
    failed = [
        (info, code) for info, (ok, code) in zip(body.file_info, outcomes, strict=True) if not ok
    ]
    code = failed[0][1] if failed else None
    message = failed[0][0].message if failed else None
    if not body.file_info:
        message = "ConcatComplete carried no fileInfo"
    files = tuple(
        FileOutput(file_id=info.file_id, url=info.file_url, file_type=info.file_type)
        for info, (ok, _) in zip(body.file_info, outcomes, strict=True)
        if ok
    )
    return {
        "task_id": body.vod_task_id,
        "success": success,
        **_failure(success, code, message),
        "outputs": Outputs(files=files),
    }


def _sub_task_v2(task: SubTaskV2) -> SubTask:
    status = task.status
    if isinstance(status, int):
        status = "SUCCESS" if status == 0 else "FAIL"
    status = status or "PROCESSING"
    definition = task.input.definition if task.input else None
    out = task.output
    outputs = Outputs()
    task_type = task.task_type or "Unknown"
    if out is not None and status == "SUCCESS":
        if task_type == "Transcode" and out.url:
            outputs = Outputs(
                play=(
                    PlayOutput(
                        url=out.url,
                        definition=definition,
                        size=out.size,
                        bitrate=_bps_from_v2(out.bitrate, out.size, out.duration),
                        width=out.width,
                        height=out.height,
                        duration=out.duration,
                        container=out.container,
                    ),
                )
            )
        elif task_type in {"ImageSprites", "ImageSprite"}:
            outputs = Outputs(
                sprites=(
                    SpriteOutput(
                        definition=definition,
                        total_count=out.total_count,
                        image_urls=out.url_list or out.image_urls,
                        webvtt_url=out.web_vtt_url,
                    ),
                )
            )
        elif task_type == "SnapshotByTimeOffset":
            outputs = Outputs(
                snapshots=tuple(
                    SnapshotOutput(
                        url=img.url, time_offset_ms=img.time_offset, definition=definition
                    )
                    for img in out.img_info
                    if img.url
                )
            )
        elif task_type == "SampleSnapshot":
            outputs = Outputs(
                snapshots=tuple(
                    SnapshotOutput(url=url, definition=definition) for url in out.image_urls
                )
            )
        elif task_type == "CoverBySnapshot":
            outputs = Outputs(cover_url=out.image_url[0] if out.image_url else None)
        elif task_type == "PullFile" and (out.file_id or out.url):
            outputs = Outputs(files=(FileOutput(file_id=out.file_id, url=out.url),))
    return SubTask(
        task_type=task_type,
        status=status,
        task_id=task.vod_task_id,
        error_code=task.err_code,
        message=task.message,
        definition=definition,
        outputs=outputs,
    )


def _merge(
    outputs: Sequence[Outputs], meta: MediaMeta | None, files: Sequence[FileOutput] = ()
) -> Outputs:
    return Outputs(
        play=tuple(play for out in outputs for play in out.play),
        sprites=tuple(sprite for out in outputs for sprite in out.sprites),
        snapshots=tuple(snap for out in outputs for snap in out.snapshots),
        files=(*files, *(file for out in outputs for file in out.files)),
        cover_url=next((out.cover_url for out in outputs if out.cover_url), None),
        meta=meta,
    )


def _procedure_fields(
    *,
    task_id: str,
    status: int | str,
    err_code: int | None,
    message: str | None,
    file_id: str | None,
    sub_tasks: tuple[SubTask, ...],
    meta: MediaMeta | None,
    files: Sequence[FileOutput] = (),
) -> dict[str, object]:
    terminal = status in FINISHED
    fields: dict[str, object] = {
        "task_id": task_id,
        "file_id": file_id,
        "terminal": terminal,
        "sub_tasks": sub_tasks,
        "outputs": _merge([task.outputs for task in sub_tasks], meta, files),
    }
    if not terminal:
        return fields
    failed = [task for task in sub_tasks if task.status != "SUCCESS"]
    success = (err_code or 0) == 0 and not failed
    code = err_code if err_code else next((t.error_code for t in failed if t.error_code), None)
    text = message or next((t.message for t in failed if t.message), None)
    if not success and text is None and failed:
        text = f"{failed[0].task_type} sub-task ended {failed[0].status}"
    return {**fields, "success": success, **_failure(success, code, text)}


def _v4_procedure(data: JsonValue) -> dict[str, object]:
    body = _read(ProcedureDataV2, data, "data")
    sub_tasks = tuple(_sub_task_v2(task) for task in body.process_task_list)
    return _procedure_fields(
        task_id=body.vod_task_id,
        status=body.status,
        err_code=body.err_code,
        message=body.message,
        file_id=body.file_id,
        sub_tasks=sub_tasks,
        meta=_meta_v2(body.meta_data),
    )


def _v4_generic(data: JsonValue) -> dict[str, object]:
    body = _read(GenericDataV2, data, "data")
    success, code = _outcome(body.status)
    if body.status is None and body.err_code is not None:
        success, code = body.err_code == 0, body.err_code or None
    return {
        "task_id": body.vod_task_id,
        "file_id": body.file_id,
        "stream_id": body.stream_id,
        "success": success,
        **_failure(success, code, body.message),
    }


_V4_READERS: Mapping[str, Callable[[JsonValue], dict[str, object]]] = {
    "NewFileUpload": _v4_new_file,
    "TranscodeComplete": _v4_transcode,
    "CreateImageSpriteComplete": _v4_image_sprite,
    "CreateSnapshotByTimeOffsetComplete": _v4_snapshot,
    "ClipComplete": _v4_clip,
    "ConcatComplete": _v4_concat,
    "ProcedureStateChanged": _v4_procedure,
}


# --- v3 ------------------------------------------------------------------------------------


def _v3_event(obj: Mapping[str, JsonValue], source: Source) -> VodEvent:
    kind = _str_field(obj, "EventType", "")
    key = _V3_EVENT_KEYS.get(kind)
    if key is None:
        key = next(
            (
                name
                for name, value in obj.items()
                if name.endswith("Event") and isinstance(value, dict)
            ),
            None,
        )
    event = obj.get(key) if key else None
    content = {name: value for name, value in obj.items() if name != "EventHandle"}
    common: dict[str, object] = {
        "source": source,
        "kind": kind,
        "dedup_key": _key("v3", content),
        "raw": dict(obj),
    }
    reader = _V3_READERS.get(kind)
    if reader is None:
        body = _read(GenericEventV3, event if isinstance(event, dict) else {}, key or "event")
        success, code = _outcome(body.status)
        if body.status is None and body.err_code is not None:
            success, code = body.err_code == 0, body.err_code or None
        fields: dict[str, object] = {
            "task_id": body.task_id,
            "file_id": body.file_id,
            "success": success,
            **_failure(success, code, body.message),
        }
    else:
        assert key is not None
        if not isinstance(event, dict):
            raise MalformedEvent(f"expected the {kind} event object", field=key)
        fields = reader(event, key)
    return VodEvent.model_validate({**common, **fields})


def _err_outcome(err_code: int | None, has_output: bool) -> tuple[bool, int | None]:
    if err_code is None:
        return has_output, None
    return err_code == 0, err_code or None


def _v3_procedure(event: JsonValue, where: str) -> dict[str, object]:
    body = _read(ProcedureEventV3, event, where)
    sub_tasks: list[SubTask] = []
    for index, item in enumerate(body.media_process_result_set):
        task_type = item.get("Type")
        task_type = task_type if isinstance(task_type, str) and task_type else "Unknown"
        task_obj = item.get(f"{task_type}Task")
        if not isinstance(task_obj, dict):
            task_obj = next(
                (v for k, v in item.items() if k.endswith("Task") and isinstance(v, dict)), {}
            )
        task = _read(MediaTaskV3, task_obj, f"{where}.MediaProcessResultSet.{index}")
        sub_tasks.append(_sub_task_v3(task_type, task))
    files = (FileOutput(file_id=body.file_id, url=body.file_url),) if body.file_url else ()
    return _procedure_fields(
        task_id=body.task_id,
        status=body.status,
        err_code=body.err_code,
        message=body.message,
        file_id=body.file_id,
        sub_tasks=tuple(sub_tasks),
        meta=_meta_v3(body.meta_data),
        files=files,
    )


def _sub_task_v3(task_type: str, task: MediaTaskV3) -> SubTask:
    status = task.status
    if isinstance(status, int):
        status = "SUCCESS" if status == 0 else "FAIL"
    status = status or ("SUCCESS" if task.err_code == 0 else "PROCESSING")
    definition = task.input.definition if task.input else None
    out = task.output
    outputs = Outputs()
    if out is not None and status == "SUCCESS":
        if task_type in {"Transcode", "AdaptiveDynamicStreaming"} and out.url:
            outputs = Outputs(
                play=(
                    PlayOutput(
                        url=out.url,
                        definition=definition if definition is not None else out.definition,
                        size=out.size,
                        bitrate=out.bitrate,
                        width=out.width,
                        height=out.height,
                        duration=out.duration,
                        container=out.container,
                    ),
                )
            )
        elif task_type in {"ImageSprites", "ImageSprite"}:
            outputs = Outputs(
                sprites=(
                    SpriteOutput(
                        definition=definition,
                        total_count=out.total_count,
                        image_urls=out.image_url_set,
                        webvtt_url=out.web_vtt_url,
                    ),
                )
            )
        elif task_type == "SnapshotByTimeOffset":
            outputs = Outputs(
                snapshots=tuple(
                    SnapshotOutput(
                        url=pic.url, time_offset_ms=pic.time_offset, definition=definition
                    )
                    for pic in out.pic_info_set
                    if pic.url
                )
            )
        elif task_type == "SampleSnapshot":
            outputs = Outputs(
                snapshots=tuple(
                    SnapshotOutput(url=url, definition=definition) for url in out.image_url_set
                )
            )
        elif task_type == "CoverBySnapshot":
            outputs = Outputs(cover_url=out.cover_url)
    return SubTask(
        task_type=task_type,
        status=status,
        task_id=task.task_id,
        error_code=task.err_code,
        message=task.message,
        definition=definition,
        outputs=outputs,
    )


def _v3_file_upload(event: JsonValue, where: str) -> dict[str, object]:
    body = _read(FileUploadEventV3, event, where)
    info = body.media_basic_info
    source_info = info.source_info if info else None
    live = source_info.live_record_info if source_info else None
    recording = None
    if live is not None:
        meta = body.meta_data
        recording = Recording(
            start_time=live.record_start_time,
            end_time=live.record_end_time,
            duration=meta.duration if meta else None,
            file_url=info.media_url if info else None,
            file_format=info.type if info else None,
            file_size=meta.size if meta else None,
        )
    return {
        "file_id": body.file_id,
        "file_name": info.name if info else None,
        "stream_id": live.stream_id if live else None,
        "recording": recording,
        "success": True,
        "procedure_task_id": body.procedure_task_id,
        "source_type": source_info.source_type if source_info else None,
        "outputs": Outputs(
            files=(FileOutput(file_id=body.file_id, url=info.media_url if info else None),),
            cover_url=info.cover_url if info else None,
            meta=_meta_v3(body.meta_data),
        ),
    }


def _v3_transcode(event: JsonValue, where: str) -> dict[str, object]:
    body = _read(TranscodeEventV3, event, where)
    play = tuple(
        PlayOutput(
            url=item.url,
            definition=item.definition,
            bitrate=item.bitrate,
            width=item.width,
            height=item.height,
            duration=body.duration,
        )
        for item in body.play_info_set
        if item.url
    )
    success, code = _err_outcome(body.err_code, bool(play))
    return {
        "task_id": body.task_id,
        "file_id": body.file_id,
        "success": success,
        **_failure(success, code, body.message),
        "outputs": Outputs(play=play, cover_url=body.cover_url),
    }


def _v3_file_info(info: FileInfoV3) -> tuple[bool, int | None]:
    return _err_outcome(info.err_code, info.file_id is not None)


def _v3_clip(event: JsonValue, where: str) -> dict[str, object]:
    body = _read(ClipEventV3, event, where)
    info = body.file_info
    if info is None:
        raise MalformedEvent("required", field=f"{where}.FileInfo")
    success, code = _v3_file_info(info)
    if body.err_code:
        success, code = False, body.err_code
    return {
        "task_id": body.task_id,
        "file_id": body.src_file_id,
        "success": success,
        **_failure(success, code, info.message or body.message),
        "outputs": Outputs(
            files=(FileOutput(file_id=info.file_id, url=info.file_url, file_type=info.file_type),)
            if success
            else ()
        ),
    }


def _v3_concat(event: JsonValue, where: str) -> dict[str, object]:
    body = _read(ConcatEventV3, event, where)
    outcomes = [_v3_file_info(info) for info in body.file_info_set]
    success = bool(outcomes) and all(ok for ok, _ in outcomes) and not body.err_code
    code = body.err_code or next((code for ok, code in outcomes if not ok), None)
    return {
        "task_id": body.task_id,
        "success": success,
        **_failure(success, code, body.message),
        "outputs": Outputs(
            files=tuple(
                FileOutput(file_id=info.file_id, url=info.file_url, file_type=info.file_type)
                for info, (ok, _) in zip(body.file_info_set, outcomes, strict=True)
                if ok
            )
        ),
    }


def _v3_image_sprite(event: JsonValue, where: str) -> dict[str, object]:
    body = _read(ImageSpriteEventV3, event, where)
    success, code = _err_outcome(body.err_code, bool(body.image_sprite_url_set))
    return {
        "task_id": body.task_id,
        "file_id": body.file_id,
        "success": success,
        **_failure(success, code, body.message),
        "outputs": Outputs(
            sprites=(
                SpriteOutput(
                    definition=body.definition,
                    total_count=body.total_count,
                    image_urls=body.image_sprite_url_set,
                    webvtt_url=body.web_vtt_url,
                ),
            )
            if success
            else ()
        ),
    }


def _v3_snapshot(event: JsonValue, where: str) -> dict[str, object]:
    body = _read(SnapshotEventV3, event, where)
    pics = body.snapshot_info_set
    failed = [pic for pic in pics if pic.err_code]
    success, code = _err_outcome(body.err_code, bool(pics) and not failed)
    if success and failed:
        success, code = False, failed[0].err_code
    return {
        "task_id": body.task_id,
        "file_id": body.file_id,
        "success": success,
        **_failure(success, code, body.message),
        "outputs": Outputs(
            snapshots=tuple(
                SnapshotOutput(
                    url=pic.url, time_offset_ms=pic.time_offset, definition=body.definition
                )
                for pic in pics
                if pic.url and not pic.err_code
            )
        ),
    }


_V3_READERS: Mapping[str, Callable[[JsonValue, str], dict[str, object]]] = {
    "ProcedureStateChanged": _v3_procedure,
    "NewFileUpload": _v3_file_upload,
    "TranscodeComplete": _v3_transcode,
    "ClipComplete": _v3_clip,
    "ConcatComplete": _v3_concat,
    "CreateImageSpriteComplete": _v3_image_sprite,
    "CreateSnapshotByTimeOffsetComplete": _v3_snapshot,
}


#: Every event type vodflow reads (other types are kept and ignored).
KNOWN_KINDS: frozenset[str] = (
    frozenset(_V4_READERS) | frozenset(_V3_READERS) | frozenset(LVB_KINDS.values())
)


# --- live service --------------------------------------------------------------------------


def _lvb_event(obj: Mapping[str, JsonValue], source: Source) -> VodEvent:
    raw_type = obj.get("event_type")
    if isinstance(raw_type, int) and not isinstance(raw_type, bool):
        event_type = raw_type
    elif isinstance(raw_type, str) and raw_type.isascii() and raw_type.isdigit():
        event_type = int(raw_type)
    else:
        raise MalformedEvent(
            f"expected an integer such as 100, got {raw_type!r}"[:80], field="event_type"
        )
    body = _read(LvbBody, dict(obj), "")
    kind = LVB_KINDS.get(event_type, f"lvb.event_{event_type}")
    stream_id = body.stream_id or body.channel_id
    content = {name: value for name, value in obj.items() if name not in {"t", "sign"}}
    fields: dict[str, object] = {
        "source": source,
        "kind": kind,
        "file_id": body.file_id,
        "stream_id": stream_id,
        "dedup_key": _key("lvb", content),
        "raw": dict(obj),
    }
    occurred = body.event_time
    if event_type == 100:
        if not body.file_id:
            raise MalformedEvent(
                "a recording callback names the recorded file; found no file_id", field="file_id"
            )
        extra = _callback_ext(body.callback_ext)
        width, height = _resolution(extra.get("resolution"))
        fields |= {
            "success": True,
            "recording": Recording(
                start_time=body.start_time,
                end_time=body.end_time,
                duration=body.duration,
                file_url=body.video_url,
                file_format=body.file_format,
                file_size=body.file_size,
                session_id=extra.get("session_id"),
                app=body.app,
                appname=body.appname,
            ),
            "outputs": Outputs(
                files=(
                    FileOutput(
                        file_id=body.file_id, url=body.video_url, file_type=body.file_format
                    ),
                ),
                meta=MediaMeta(
                    duration=body.duration,
                    size=body.file_size,
                    width=width,
                    height=height,
                    container=body.file_format,
                ),
            ),
        }
        occurred = occurred or body.end_time
    elif event_type == 200:
        url = body.pic_full_url or body.pic_url
        fields["success"] = True
        if url:
            fields["outputs"] = Outputs(snapshots=(SnapshotOutput(url=url),))
        occurred = occurred or body.create_time
    elif event_type == 0 and body.errmsg:
        # Why the stream ended (errcode 1 "closed by the pusher" is normal), not a failure.
        fields["error_message"] = body.errmsg
        fields["error_code"] = body.errcode
    fields["occurred_at"] = _timestamp(occurred)
    return VodEvent.model_validate(fields)


def _callback_ext(text: str | None) -> dict[str, str]:
    """``callback_ext`` is a JSON string; an unreadable one is ignored, not fatal."""
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {key: value for key, value in parsed.items() if isinstance(value, str)}


def _resolution(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    width, _, height = text.lower().partition("x")
    if width.isascii() and width.isdigit() and height.isascii() and height.isdigit():
        return int(width), int(height)
    return None, None


__all__ = [
    "LVB_KINDS",
    "TASK_TYPE_EVENTS",
    "FileOutput",
    "MalformedEvent",
    "MediaMeta",
    "Outputs",
    "PlayOutput",
    "Recording",
    "SnapshotOutput",
    "Source",
    "SpriteOutput",
    "SubTask",
    "VodEvent",
    "event_from_task_info",
    "lvb_sign_problem",
    "normalize_task_id",
    "parse_event",
    "parse_pull_event_response",
    "pull_event_items",
    "task_info_callback",
    "verify_lvb_sign",
]
