"""Typed answers of the VOD v2 API: the envelope (``code``, ``message``, ``codeDesc``) and each
call's fields. A non-zero ``code`` raises the matching ``VodError``; an answer that is not a VOD
envelope raises ``MalformedResponse``.

Choices where the reference is silent or unverified:

* ProcessFileByProcedure answers task IDs in two shapes (the seed's ``transcodeTaskId``,
  ``imageSpriteTaskId``, ... and a later single ``vodTaskId``); every non-empty ``*TaskId`` field
  becomes a ``TaskRef`` whose kind is the field name without ``TaskId``, ``vodTaskId`` giving kind
  ``procedure``. Empty strings mean "this procedure has no such task" and are skipped.
* PullEvent's ``code`` 4000 means "no events" (Tencent's demo server treats it so): an empty list.
* GetTaskList, GetProcedureInfo and GetVideoInfo are modelled leniently from the commonly
  documented fields; unknown fields are kept (``model_extra``) and missing ones are ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError

from orchestrator import jsontext

from ._bodies import (
    MetaDataV2,
    OptInt,
    OptStr,
    Strings,
    SubTaskV2,
    V2Body,
    _object,
    _objects,
)
from .errors import MalformedResponse, error_for_code

Body = bytes | str | Mapping[str, JsonValue]


def load_answer(body: Body, action: str) -> dict[str, JsonValue]:
    """The answer as a JSON object, after raising the ``VodError`` for a non-zero ``code``."""
    answer = _json_object(body, action)
    code = answer.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        raise MalformedResponse(f"answer has no integer 'code' (got {code!r})", action=action)
    if code != 0:
        message = answer.get("message")
        code_desc = answer.get("codeDesc")
        raise error_for_code(
            code,
            message if isinstance(message, str) else "",
            code_desc if isinstance(code_desc, str) else None,
            action,
        )
    return answer


def _json_object(body: Body, action: str) -> dict[str, JsonValue]:
    if isinstance(body, Mapping):
        return dict(body)
    try:
        parsed = jsontext.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedResponse(f"answer is not JSON ({exc})", action=action) from None
    if not isinstance(parsed, dict):
        raise MalformedResponse(
            f"answer is JSON {type(parsed).__name__}, expected an object", action=action
        )
    return parsed


class VodResponse(V2Body):
    """A successful answer; ``parse`` checks the envelope, then reads the call's fields."""

    ACTION: ClassVar[str]

    code: int = 0
    message: OptStr = None
    code_desc: OptStr = None

    @classmethod
    def parse(cls, body: Body) -> Self:
        return cls._from_answer(load_answer(body, cls.ACTION))

    @classmethod
    def _from_answer(cls, answer: Mapping[str, JsonValue]) -> Self:
        try:
            return cls.model_validate(answer)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise MalformedResponse(f"{where}: {error['msg']}", action=cls.ACTION) from None


class TaskRef(BaseModel):
    """One VOD task a call started: its ID as given and what kind of task it is."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    kind: str  # "transcode", "imageSprite", ... or "procedure" for a vodTaskId


class ProcessFileByProcedureResponse(VodResponse):
    ACTION: ClassVar[str] = "ProcessFileByProcedure"

    tasks: tuple[TaskRef, ...] = ()

    @classmethod
    def _from_answer(cls, answer: Mapping[str, JsonValue]) -> Self:
        tasks: list[TaskRef] = []
        for name, value in answer.items():
            if not name.endswith("TaskId") or name == "TaskId":
                continue
            kind = "procedure" if name == "vodTaskId" else name.removesuffix("TaskId")
            ids = value if isinstance(value, list) else [value]
            for task_id in ids:
                if task_id is None or task_id == "":
                    continue
                if not isinstance(task_id, str):
                    raise MalformedResponse(
                        f"{name}: expected a task ID string, got {task_id!r}", action=cls.ACTION
                    )
                tasks.append(TaskRef(task_id=task_id, kind=kind))
        base = super()._from_answer(answer)
        return base.model_copy(update={"tasks": tuple(tasks)})

    @property
    def procedure_task_id(self) -> str | None:
        """The single ``vodTaskId`` of the later answer shape, if that is what came back."""
        return next((task.task_id for task in self.tasks if task.kind == "procedure"), None)


class GetTaskInfoResponse(VodResponse):
    """``data`` is the same object the task's callback carries as its ``data``."""

    model_config = ConfigDict(extra="allow")  # kept whole: the inbox records the answer as sent
    ACTION: ClassVar[str] = "GetTaskInfo"

    type: OptStr = None  # procedure, transcode, pull, clip, ...
    status: OptStr = None  # WAITING / PROCESSING / FINISH where given
    err_code: OptInt = None
    create_time: OptInt = None
    begin_process_time: OptInt = None
    finish_time: OptInt = None
    data: Annotated[dict[str, JsonValue] | None, BeforeValidator(_object)] = None


class TaskStatusEntry(V2Body):
    task_id: str
    status: str  # Queuing, Processing, Finished, NotFound (after 72 hours)


class GetVodTaskStatusResponse(VodResponse):
    ACTION: ClassVar[str] = "GetVodTaskStatus"

    task_list: Annotated[tuple[TaskStatusEntry, ...], BeforeValidator(_objects)] = ()


class TaskListEntry(V2Body):
    model_config = ConfigDict(extra="allow")

    vod_task_id: OptStr = Field(default=None, validation_alias="vodTaskId")
    task_id: OptStr = None
    type: OptStr = None
    status: OptStr = None
    file_id: OptStr = None
    create_time: OptInt = None
    begin_process_time: OptInt = None
    finish_time: OptInt = None


class GetTaskListResponse(VodResponse):
    """The tasks listed, whatever their group.

    Tencent documents the answer grouped by status: ``data: [{status, next, taskList: [...]}]``
    (the field table calls the list ``vodTaskList``, the example ``taskList``; both are read,
    and an entry without a ``status`` takes its group's). A flat top-level ``taskList`` (what
    the engine also sends, for orchestrators older than this) is read when the groups list
    nothing. ``next`` (the group's last ID, for paging) is not followed: a task is looked for by
    fileId, whose recent tasks fit in the ``maxCount`` of 100 asked for.
    """

    ACTION: ClassVar[str] = "GetTaskList"

    total_count: OptInt = None
    task_list: Annotated[tuple[TaskListEntry, ...], BeforeValidator(_objects)] = ()

    @classmethod
    def _from_answer(cls, answer: Mapping[str, JsonValue]) -> Self:
        groups = answer.get("data")
        if not isinstance(groups, list):
            return super()._from_answer(answer)
        entries: list[JsonValue] = []
        for group in groups:
            if not isinstance(group, dict):
                continue
            listed = group.get("taskList", group.get("vodTaskList"))
            for entry in listed if isinstance(listed, list) else ():
                if isinstance(entry, dict) and "status" not in entry:
                    entry = {"status": group.get("status"), **entry}
                entries.append(entry)
        if not entries:  # grouped data with nothing listed in it: a flat list, if any
            return super()._from_answer({**answer, "data": None})
        return super()._from_answer({**answer, "taskList": entries})


class GetProcedureInfoResponse(VodResponse):
    """Flow status (PROCESSING / FINISH), the file's metaData and every sub-task."""

    model_config = ConfigDict(extra="allow")
    ACTION: ClassVar[str] = "GetProcedureInfo"

    vod_task_id: OptStr = None
    status: OptStr = None
    err_code: OptInt = None
    file_id: OptStr = None
    meta_data: Annotated[MetaDataV2 | None, BeforeValidator(_object)] = None
    process_task_list: Annotated[tuple[SubTaskV2, ...], BeforeValidator(_objects)] = ()


class PulledEventBody(V2Body):
    """One ``eventList`` entry; ``event_content`` is exactly the body a push would have sent."""

    msg_handle: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]
    event_content: JsonValue


class PullEventResponse(VodResponse):
    ACTION: ClassVar[str] = "PullEvent"

    event_list: Annotated[tuple[PulledEventBody, ...], BeforeValidator(_objects)] = ()

    @classmethod
    def parse(cls, body: Body) -> Self:
        answer = _json_object(body, cls.ACTION)
        if answer.get("code") == 4000:  # "no events", per Tencent's demo server
            return cls.model_validate({"code": 4000, "message": answer.get("message")})
        return cls._from_answer(load_answer(answer, cls.ACTION))


class ConfirmEventResponse(VodResponse):
    ACTION: ClassVar[str] = "ConfirmEvent"


class BasicInfo(V2Body):
    model_config = ConfigDict(extra="allow")

    name: OptStr = None
    size: OptInt = None
    duration: OptInt = None
    description: OptStr = None
    status: OptStr = None
    type: OptStr = None
    create_time: OptInt = None
    update_time: OptInt = None
    expire_time: OptInt = None
    classification_id: OptInt = None
    classification_name: OptStr = None
    cover_url: OptStr = None
    source_video_url: OptStr = None
    storage_region: OptStr = None


class TranscodeItem(MetaDataV2):
    model_config = ConfigDict(extra="allow")

    url: OptStr = None
    definition: OptInt = None


class TranscodeInfo(V2Body):
    model_config = ConfigDict(extra="allow")

    transcode_list: Annotated[tuple[TranscodeItem, ...], BeforeValidator(_objects)] = ()


class ImageSpriteItem(V2Body):
    model_config = ConfigDict(extra="allow")

    definition: OptInt = None
    height: OptInt = None
    width: OptInt = None
    total_count: OptInt = None
    image_urls: Strings = ()
    web_vtt_url: OptStr = None


class ImageSpriteInfo(V2Body):
    model_config = ConfigDict(extra="allow")

    image_sprite_list: Annotated[tuple[ImageSpriteItem, ...], BeforeValidator(_objects)] = ()


class GetVideoInfoResponse(VodResponse):
    model_config = ConfigDict(extra="allow")
    ACTION: ClassVar[str] = "GetVideoInfo"

    basic_info: Annotated[BasicInfo | None, BeforeValidator(_object)] = None
    meta_data: Annotated[MetaDataV2 | None, BeforeValidator(_object)] = None
    transcode_info: Annotated[TranscodeInfo | None, BeforeValidator(_object)] = None
    image_sprite_info: Annotated[ImageSpriteInfo | None, BeforeValidator(_object)] = None


#: Every answer model by its Action.
RESPONSES: Mapping[str, type[VodResponse]] = {
    model.ACTION: model
    for model in (
        ProcessFileByProcedureResponse,
        GetTaskInfoResponse,
        GetVodTaskStatusResponse,
        GetTaskListResponse,
        GetProcedureInfoResponse,
        PullEventResponse,
        ConfirmEventResponse,
        GetVideoInfoResponse,
    )
}
