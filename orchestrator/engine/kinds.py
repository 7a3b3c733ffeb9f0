"""The kinds of engine task and how each appears on the wire, and the engine's identifiers.

One table says, for every kind, its task-ID prefix (as in Tencent's answers: ``transcode-<32
hex>``, ``CreateImageSprite-<32 hex>``, ``clip-...``, ``concat-...``,
``CreateSnapshotByTimeOffset-...``; a procedure is ``<appid>-procedurev2-<32 hex>``), its field in
ProcessFileByProcedure's answer, its GetTaskInfo ``type``, the eventType it sends when done and its
``taskType`` in a procedure's ``processTaskList``; and what each kind is asked to do (the typed
``params`` of its row). File IDs are 19-digit numbers like Tencent's;
event msgHandles are 15-digit numbers like Tencent's PullEvent sample.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue
from pydantic.alias_generators import to_camel

Kind = Literal["procedure", "clip", "concat", "transcode", "image_sprite", "snapshot"]


@dataclass(frozen=True)
class KindInfo:
    prefix: str
    answer_field: str
    type: str
    """GetTaskInfo's ``type``; ``orchestrator.vod.events.TASK_TYPE_EVENTS`` reads it back."""
    event_type: str
    task_type: str | None
    """The processTaskList ``taskType`` (gen tasks are not part of the list)."""
    stage: int
    """Execution order inside a procedure: clips, then the concat, then the procedure's tasks."""


KINDS: dict[Kind, KindInfo] = {
    "procedure": KindInfo(
        "procedurev2", "vodTaskId", "procedure", "ProcedureStateChanged", None, -1
    ),
    "clip": KindInfo("clip", "clipTaskId", "clip", "ClipComplete", None, 0),
    "concat": KindInfo("concat", "concatTaskId", "concat", "ConcatComplete", None, 1),
    "transcode": KindInfo(
        "transcode", "transcodeTaskId", "transcode", "TranscodeComplete", "Transcode", 2
    ),
    "image_sprite": KindInfo(
        "CreateImageSprite",
        "imageSpriteTaskId",
        "CreateImageSprite",
        "CreateImageSpriteComplete",
        "ImageSprites",
        2,
    ),
    "snapshot": KindInfo(
        "CreateSnapshotByTimeOffset",
        "snapshotByTimeOffsetTaskId",
        "CreateSnapshotByTimeOffset",
        "CreateSnapshotByTimeOffsetComplete",
        "SnapshotByTimeOffset",
        2,
    ),
}


def new_task_id(kind: Kind, app_id: int) -> str:
    if kind == "procedure":
        return f"{app_id}-procedurev2-{secrets.token_hex(16)}"
    return f"{KINDS[kind].prefix}-{secrets.token_hex(16)}"


def new_file_id() -> str:
    """A fresh 19-digit file ID; the store refuses the rare collision and a new one is drawn."""
    return f"52858907{secrets.randbelow(10**11):011d}"


def new_msg_handle() -> str:
    return f"{secrets.randbelow(9 * 10**14) + 10**14}"


def kind_info(kind: str) -> KindInfo:
    """The wire names of a stored task's ``kind``."""
    for name, info in KINDS.items():
        if name == kind:
            return info
    raise ValueError(f"unknown engine task kind {kind!r}; expected one of {', '.join(KINDS)}")


# --- what each kind of task is asked to do (a task row's ``params``) ---------------------------


class _Params(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    def stored(self) -> dict[str, JsonValue]:
        return self.model_dump(mode="json", by_alias=True)


class ProcedureParams(_Params):
    request: dict[str, JsonValue]
    """The request as received (wire names, nested), which GetTaskList shows."""


class ClipParams(_Params):
    src_file_id: str
    start: float
    end: float | None
    """Seconds into the source; None: to its end."""
    new_file_id: str
    container: Literal["mp4", "flv", "ts"]
    name: str


class ConcatParams(_Params):
    inputs: list[str]
    dst_type: Literal["mp4", "flv", "ts"]
    new_file_id: str
    name: str


class MediaParams(_Params):
    """A transcode, image sprite or snapshot task: its template, copied when it was queued, so
    it runs as asked even if the procedures file changes meanwhile."""

    definition: int
    template: dict[str, Any]
    time_offset: list[int] = []
    """Snapshots only: milliseconds into the file."""
