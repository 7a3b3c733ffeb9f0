"""Pydantic models of the JSON bodies VOD and the live service send, as documented; shared by
``events`` (callbacks, PullEvent) and ``responses`` (task queries).

Only the fields vodflow needs are modelled. Identifiers that decide correlation are required;
every other field is lenient: a value of the wrong type reads as absent rather than rejecting a
whole event over, say, a bitrate sent as text. The original body is always kept as ``raw``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, JsonValue
from pydantic.alias_generators import to_camel, to_pascal

_INT_TEXT = re.compile(r"-?[0-9]+", re.ASCII)
_NUM_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?", re.ASCII)


def _opt_str(value: object) -> str | None:
    """Text, or a number written as text (IDs are sometimes sent as JSON numbers); "" is absent."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _opt_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return round(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _opt_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str) and _NUM_TEXT.fullmatch(value.strip()):
        return float(value.strip())
    return None


CODE_RANGE = range(-(2**31), 2**31)
"""Error codes vodflow stores (a 32-bit integer column); Tencent's all fit."""


def _code(value: int) -> int:
    if value not in CODE_RANGE:
        raise ValueError(f"expected an error code of at most 32 bits, got {str(value)[:30]}")
    return value


def _opt_code(value: object) -> int | None:
    number = _opt_int(value)
    return None if number is None else _code(number)


def _status(value: object) -> int | str | None:
    """Per-task events send an int, ProcedureStateChanged a word; keep either, normalised."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _code(value)
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            return _code(int(text))
        return text.upper() or None
    return None


def _objects(value: object) -> list[object]:
    """A list of objects; a lone object counts as a list of one, anything else as empty."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str) and item]
    return []


def _ints(value: object) -> list[int]:
    if isinstance(value, list):
        return [number for item in value if (number := _opt_int(item)) is not None]
    return []


def _object(value: object) -> object:
    return value if isinstance(value, dict) else None


def _required_status(value: object) -> object:
    status = _status(value)
    if status is None:
        raise ValueError("expected a status: an integer (0 = success) or a word such as FINISH")
    return status


def _required_id(value: object) -> object:
    """A required identifier: non-empty text, or an integer written as a JSON number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise ValueError("expected a non-empty ID string")


OptStr = Annotated[str | None, BeforeValidator(_opt_str)]
OptInt = Annotated[int | None, BeforeValidator(_opt_int)]
OptCode = Annotated[int | None, BeforeValidator(_opt_code)]
OptFloat = Annotated[float | None, BeforeValidator(_opt_float)]
Status = Annotated[int | str | None, BeforeValidator(_status)]
RequiredStatus = Annotated[int | str, BeforeValidator(_required_status)]
Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]
Ints = Annotated[tuple[int, ...], BeforeValidator(_ints)]
RequiredId = Annotated[str, BeforeValidator(_required_id)]


class V2Body(BaseModel):
    """A camelCase object of the v2 ("4.0") format."""

    model_config = ConfigDict(
        frozen=True, populate_by_name=True, alias_generator=to_camel, extra="ignore"
    )


class V3Body(BaseModel):
    """A PascalCase object of the v3 format."""

    model_config = ConfigDict(
        frozen=True, populate_by_name=True, alias_generator=to_pascal, extra="ignore"
    )


# --- v2 ("4.0") data objects ---------------------------------------------------------------


class StreamInfoV2(V2Body):
    bitrate: OptInt = None
    height: OptInt = None
    width: OptInt = None
    codec: OptStr = None
    fps: OptFloat = None
    sampling_rate: OptInt = None


class MetaDataV2(V2Body):
    """``metaData`` and a Transcode sub-task's ``output``: bitrates documented in kbps."""

    size: OptInt = None
    container: OptStr = None
    bitrate: OptInt = None
    height: OptInt = None
    width: OptInt = None
    md5: OptStr = None
    duration: OptFloat = None
    rotate: OptInt = None
    video_stream_list: Annotated[tuple[StreamInfoV2, ...], BeforeValidator(_objects)] = ()
    audio_stream_list: Annotated[tuple[StreamInfoV2, ...], BeforeValidator(_objects)] = ()


class ImgInfoV2(V2Body):
    time_offset: OptInt = None
    url: OptStr = None
    status: Status = None


class SubTaskInputV2(V2Body):
    definition: OptInt = None
    time_offset: Ints = ()
    url: OptStr = None


class SubTaskOutputV2(MetaDataV2):
    """Every documented sub-task output in one lenient shape (taskType says which apply)."""

    url: OptStr = None
    total_count: OptInt = None
    url_list: Strings = ()
    image_urls: Strings = ()
    web_vtt_url: OptStr = None
    img_info: Annotated[tuple[ImgInfoV2, ...], BeforeValidator(_objects)] = ()
    image_url: Strings = ()  # CoverBySnapshot: documented as an array, sent as a string
    file_id: OptStr = None
    file_size: OptInt = None


class SubTaskV2(V2Body):
    """One entry of ``processTaskList``."""

    task_type: OptStr = None
    vod_task_id: OptStr = None
    """Not in Tencent's table; the embedded engine sends each sub-task's own task ID."""
    status: Status = None
    err_code: OptCode = None
    message: OptStr = None
    input: Annotated[SubTaskInputV2 | None, BeforeValidator(_object)] = None
    output: Annotated[SubTaskOutputV2 | None, BeforeValidator(_object)] = None


class ProcedureDataV2(V2Body):
    """``ProcedureStateChanged.data``, GetTaskInfo's data for type procedure."""

    vod_task_id: RequiredId
    status: RequiredStatus
    err_code: OptCode = None
    message: OptStr = None
    file_id: OptStr = None
    file_name: OptStr = None
    file_url: OptStr = None
    meta_data: Annotated[MetaDataV2 | None, BeforeValidator(_object)] = None
    process_task_list: Annotated[tuple[SubTaskV2, ...], BeforeValidator(_objects)] = ()


class NewFileUploadDataV2(V2Body):
    file_id: RequiredId
    file_name: OptStr = None
    file_url: OptStr = None
    cover_url: OptStr = None
    source_type: OptStr = None
    source_context: OptStr = None
    stream_id: OptStr = None
    procedure_task_id: OptStr = None
    transcode_task_id: OptStr = None
    meta_data: Annotated[MetaDataV2 | None, BeforeValidator(_object)] = None
    """Not in Tencent's v2 table (its v3 FileUploadEvent has it); read when present."""


class PlayItemV2(V2Body):
    url: OptStr = None
    definition: OptInt = None
    vbitrate: OptInt = None  # bps
    vheight: OptInt = None
    vwidth: OptInt = None


class TranscodeDataV2(V2Body):
    vod_task_id: RequiredId
    status: RequiredStatus
    message: OptStr = None
    file_id: OptStr = None
    file_name: OptStr = None
    duration: OptFloat = None
    cover_url: OptStr = None
    play_set: Annotated[tuple[PlayItemV2, ...], BeforeValidator(_objects)] = ()


class ImageSpriteDataV2(V2Body):
    vod_task_id: RequiredId
    status: RequiredStatus
    message: OptStr = None
    file_id: OptStr = None
    definition: OptInt = None
    total_count: OptInt = None
    image_sprite_url: Strings = ()
    web_vtt_url: OptStr = None


class SnapshotDataV2(V2Body):
    vod_task_id: RequiredId
    status: Status = None
    message: OptStr = None
    file_id: OptStr = None
    definition: OptInt = None
    pic_info: Annotated[tuple[ImgInfoV2, ...], BeforeValidator(_objects)] = ()


class FileInfoV2(V2Body):
    file_type: OptStr = None
    status: Status = None
    message: OptStr = None
    file_id: OptStr = None
    file_url: OptStr = None


def _lone_object(value: object) -> object:
    """An object, or a list holding one: ClipComplete's field table types ``fileInfo`` Array,
    its examples send an object."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


class ClipDataV2(V2Body):
    vod_task_id: RequiredId
    src_file_id: OptStr = None
    file_info: Annotated[FileInfoV2, BeforeValidator(_lone_object)]


class ConcatDataV2(V2Body):
    vod_task_id: RequiredId
    file_info: Annotated[tuple[FileInfoV2, ...], BeforeValidator(_objects)]


class GenericDataV2(V2Body):
    """Any other event type: only what correlation can use."""

    vod_task_id: OptStr = None
    file_id: OptStr = None
    stream_id: OptStr = None
    status: Status = None
    err_code: OptCode = None
    message: OptStr = None


# --- v3 objects ------------------------------------------------------------------------------


class MetaDataV3(V3Body):
    """``MetaData`` and a v3 task ``Output``: bitrates in bps."""

    size: OptInt = None
    container: OptStr = None
    bitrate: OptInt = None
    height: OptInt = None
    width: OptInt = None
    duration: OptFloat = None
    md5: OptStr = None
    definition: OptInt = None


class PicInfoV3(V3Body):
    time_offset: OptInt = None
    url: OptStr = None
    err_code: OptCode = None


class TaskOutputV3(MetaDataV3):
    url: OptStr = None
    total_count: OptInt = None
    image_url_set: Strings = ()
    web_vtt_url: OptStr = None
    pic_info_set: Annotated[tuple[PicInfoV3, ...], BeforeValidator(_objects)] = ()
    cover_url: OptStr = None


class TaskInputV3(V3Body):
    definition: OptInt = None


class MediaTaskV3(V3Body):
    """``<Type>Task`` inside ``MediaProcessResultSet``."""

    task_id: OptStr = None
    status: Status = None
    err_code: OptCode = None
    message: OptStr = None
    input: Annotated[TaskInputV3 | None, BeforeValidator(_object)] = None
    output: Annotated[TaskOutputV3 | None, BeforeValidator(_object)] = None


class ProcedureEventV3(V3Body):
    task_id: RequiredId
    status: RequiredStatus
    err_code: OptCode = None
    message: OptStr = None
    file_id: OptStr = None
    file_name: OptStr = None
    file_url: OptStr = None
    meta_data: Annotated[MetaDataV3 | None, BeforeValidator(_object)] = None
    media_process_result_set: Annotated[
        tuple[dict[str, JsonValue], ...], BeforeValidator(_objects)
    ] = ()


def _iso_seconds(value: object) -> int | None:
    """Unix seconds of an ISO 8601 time ("2019-01-09T16:36:22Z", v3's format); else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # Tencent writes UTC with a Z; a bare time is taken as UTC too
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


IsoSeconds = Annotated[int | None, BeforeValidator(_iso_seconds)]


class LiveRecordInfoV3(V3Body):
    """``SourceInfo.LiveRecordInfo`` of a live recording (SourceType ``Record``)."""

    stream_id: OptStr = None
    record_start_time: IsoSeconds = None
    record_end_time: IsoSeconds = None


class SourceInfoV3(V3Body):
    source_type: OptStr = None
    source_context: OptStr = None
    live_record_info: Annotated[LiveRecordInfoV3 | None, BeforeValidator(_object)] = None


class MediaBasicInfoV3(V3Body):
    name: OptStr = None
    cover_url: OptStr = None
    media_url: OptStr = None
    type: OptStr = None  # the container, e.g. mp4
    source_info: Annotated[SourceInfoV3 | None, BeforeValidator(_object)] = None


class FileUploadEventV3(V3Body):
    file_id: RequiredId
    media_basic_info: Annotated[MediaBasicInfoV3 | None, BeforeValidator(_object)] = None
    procedure_task_id: OptStr = None
    meta_data: Annotated[MetaDataV3 | None, BeforeValidator(_object)] = None


class PlayInfoV3(V3Body):
    url: OptStr = None
    definition: OptInt = None
    bitrate: OptInt = None
    height: OptInt = None
    width: OptInt = None


class TranscodeEventV3(V3Body):
    task_id: RequiredId
    err_code: OptCode = None
    message: OptStr = None
    file_id: OptStr = None
    file_name: OptStr = None
    duration: OptFloat = None
    cover_url: OptStr = None
    play_info_set: Annotated[tuple[PlayInfoV3, ...], BeforeValidator(_objects)] = ()


class FileInfoV3(V3Body):
    err_code: OptCode = None
    message: OptStr = None
    file_id: OptStr = None
    file_url: OptStr = None
    file_type: OptStr = None


class ClipEventV3(V3Body):
    task_id: RequiredId
    src_file_id: OptStr = None
    err_code: OptCode = None
    message: OptStr = None
    file_info: Annotated[FileInfoV3 | None, BeforeValidator(_object)] = None


class ConcatEventV3(V3Body):
    task_id: RequiredId
    err_code: OptCode = None
    message: OptStr = None
    file_info_set: Annotated[tuple[FileInfoV3, ...], BeforeValidator(_objects)] = ()


class ImageSpriteEventV3(V3Body):
    task_id: RequiredId
    err_code: OptCode = None
    message: OptStr = None
    file_id: OptStr = None
    definition: OptInt = None
    total_count: OptInt = None
    image_sprite_url_set: Strings = ()
    web_vtt_url: OptStr = None


class SnapshotEventV3(V3Body):
    task_id: RequiredId
    err_code: OptCode = None
    message: OptStr = None
    file_id: OptStr = None
    definition: OptInt = None
    snapshot_info_set: Annotated[tuple[PicInfoV3, ...], BeforeValidator(_objects)] = ()


class GenericEventV3(V3Body):
    task_id: OptStr = None
    file_id: OptStr = None
    status: Status = None
    err_code: OptCode = None
    message: OptStr = None


# --- live service (LVB) ---------------------------------------------------------------------


class LvbBody(BaseModel):
    """A live-service callback; snake_case as sent."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    stream_id: OptStr = None
    channel_id: OptStr = None
    app: OptStr = None
    appname: OptStr = None
    appid: OptStr = None
    file_id: OptStr = None
    file_format: OptStr = None
    start_time: OptInt = None
    end_time: OptInt = None
    duration: OptFloat = None
    file_size: OptInt = None
    video_url: OptStr = None
    callback_ext: OptStr = None
    event_time: OptInt = None
    create_time: OptInt = None
    pic_url: OptStr = None
    pic_full_url: OptStr = None
    errcode: OptCode = None
    errmsg: OptStr = None
