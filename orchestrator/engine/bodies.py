"""The bodies the engine sends: VOD 4.0 event ``data`` objects, a procedure's processTaskList
entries, and the ``metaData`` of a file, as Tencent documents them. Pure functions of what the
media layer reported; ``orchestrator.vod.events.parse_event`` reads every one back.

Choices where the documents are silent:

* A failed task's ``status`` (per-task events, ``fileInfo``) is its errCode, 30009 (the source
  media cannot be processed) or 30010 (system failure), so a reader can tell the two apart;
  ``message`` carries FFmpeg's reason. Success is ``status`` 0 and ``message`` "".
* Bitrates: ``playSet[].vbitrate`` in bit/s (as documented and observed); ``metaData`` and
  processTaskList outputs in kbit/s (as documented for v2). Durations are seconds, to the
  millisecond; ``fps`` a whole number.
* Each ``processTaskList`` entry names its sub-task's own ``vodTaskId`` (the ID of that task's
  own event and of its ``...TaskId`` in the ``tasks``-shaped answer). Tencent's table lists no
  such field; it lets a client that recorded only the tasks' IDs tie the procedure's
  ``ProcedureStateChanged`` to them instead of keeping it as an orphan.
* ``coverUrl`` is "" (the engine makes no covers); a transcode's ``playSet`` lists the
  definition the task made (one task per definition).
"""

from __future__ import annotations

from pydantic import JsonValue

from orchestrator.engine.ffmpeg import MediaInfo

Data = dict[str, JsonValue]

MEDIA_FAILURE = 30009
"""errCode: the source file is abnormal (FFmpeg cannot read or process it)."""
SYSTEM_FAILURE = 30010
"""errCode: system failure or unknown."""


def event(event_type: str, data: Data) -> Data:
    return {"version": "4.0", "eventType": event_type, "data": data}


def _kbps(bps: int | None) -> int:
    return round(bps / 1000) if bps else 0


def meta_data(info: MediaInfo, md5: str | None = None) -> Data:
    """VOD's ``metaData`` for a file (also a Transcode sub-task's ``output`` body)."""
    video, audio = info.video, info.audio
    return {
        "size": info.size,
        "container": info.container,
        "bitrate": _kbps(info.bitrate),
        "height": video.height if video else 0,
        "width": video.width if video else 0,
        "md5": md5 or "",
        "duration": round(info.duration, 3),
        "rotate": video.rotation if video else 0,
        "videoStreamList": (
            [
                {
                    "bitrate": _kbps(video.bitrate),
                    "height": video.height,
                    "width": video.width,
                    "codec": video.codec,
                    "fps": round(video.fps),
                }
            ]
            if video
            else []
        ),
        "audioStreamList": (
            [
                {
                    "codec": audio.codec,
                    "samplingRate": audio.sample_rate,
                    "bitrate": _kbps(audio.bitrate),
                }
            ]
            if audio
            else []
        ),
    }


def new_file_upload(
    *,
    file_id: str,
    name: str,
    url: str,
    source_type: str,
    stream_id: str | None,
    meta: Data | None = None,
) -> Data:
    """Tencent's v2 NewFileUpload, plus the file's ``metaData`` as its v3 FileUploadEvent
    carries it (``MetaData``): a receiver learns the duration without asking GetVideoInfo."""
    return {
        "fileId": file_id,
        "fileName": name,
        "fileUrl": url,
        "coverUrl": "",
        "sourceType": source_type,
        "sourceContext": "",
        "author": "",
        "streamId": stream_id or "",
        "procedureTaskId": "",
        "transcodeTaskId": "",
        **({"metaData": meta} if meta else {}),
    }


# --- per-task events ---------------------------------------------------------------------------


def transcode_complete(
    task_id: str, file_id: str, file_name: str, definition: int, info: MediaInfo, url: str
) -> Data:
    video = info.video
    vbitrate = (video.bitrate if video and video.bitrate else info.bitrate) or 0
    return {
        "status": 0,
        "message": "",
        "vodTaskId": task_id,
        "fileId": file_id,
        "fileName": file_name,
        "duration": round(info.duration, 3),
        "coverUrl": "",
        "playSet": [
            {
                "url": url,
                "definition": definition,
                "vbitrate": vbitrate,
                "vheight": video.height if video else 0,
                "vwidth": video.width if video else 0,
            }
        ],
    }


def image_sprite_complete(
    task_id: str, file_id: str, definition: int, total: int, sheets: list[str], vtt: str
) -> Data:
    return {
        "status": 0,
        "message": "",
        "vodTaskId": task_id,
        "fileId": file_id,
        "definition": definition,
        "totalCount": total,
        "imageSpriteUrl": list[JsonValue](sheets),
        "webVttUrl": vtt,
    }


def snapshot_complete(
    task_id: str, file_id: str, definition: int, pictures: list[tuple[int, str]]
) -> Data:
    return {
        "status": 0,
        "message": "",
        "vodTaskId": task_id,
        "fileId": file_id,
        "definition": definition,
        "picInfo": [{"timeOffset": ms, "url": url, "status": 0} for ms, url in pictures],
    }


def file_info(file_type: str, file_id: str, url: str) -> Data:
    return {"fileType": file_type, "status": 0, "message": "", "fileId": file_id, "fileUrl": url}


def clip_complete(task_id: str, src_file_id: str, info: Data) -> Data:
    return {"vodTaskId": task_id, "srcFileId": src_file_id, "fileInfo": info}


def concat_complete(task_id: str, info: Data) -> Data:
    return {"vodTaskId": task_id, "fileInfo": [info]}


def failed(
    kind: str,
    task_id: str,
    *,
    file_id: str | None,
    definition: int | None,
    file_type: str,
    code: int,
    message: str,
) -> Data:
    """The event data of a task of ``kind`` that failed with errCode ``code``."""
    if kind in ("clip", "concat"):
        info: Data = {
            "fileType": file_type,
            "status": code,
            "message": message,
            "fileId": "",
            "fileUrl": "",
        }
        if kind == "clip":
            return clip_complete(task_id, file_id or "", info)
        return concat_complete(task_id, info)
    data: Data = {"status": code, "message": message, "vodTaskId": task_id, "fileId": file_id or ""}
    if definition is not None:
        data["definition"] = definition
    if kind == "transcode":
        data.update(fileName="", duration=0, coverUrl="", playSet=[])
    elif kind == "image_sprite":
        data.update(totalCount=0, imageSpriteUrl=[], webVttUrl="")
    elif kind == "snapshot":
        data["picInfo"] = []
    return data


# --- procedures --------------------------------------------------------------------------------


def sub_task(
    task_type: str,
    task_id: str,
    task_input: Data,
    *,
    status: str = "SUCCESS",
    code: int = 0,
    message: str = "",
    output: Data | None = None,
) -> Data:
    """One ``processTaskList`` entry: SUCCESS with an output, FAIL, WAITING or PROCESSING."""
    entry: Data = {
        "taskType": task_type,
        "vodTaskId": task_id,
        "status": status,
        "errCode": code,
        "message": message,
        "input": task_input,
    }
    if output is not None:
        entry["output"] = output
    return entry


def sub_task_input(task_type: str, definition: int, time_offsets: list[int]) -> Data:
    if task_type == "Transcode":
        return {"definition": definition, "watermark": 0}
    if task_type == "SnapshotByTimeOffset":
        return {"definition": definition, "timeOffset": list[JsonValue](time_offsets)}
    return {"definition": definition}


def procedure_state(
    task_id: str,
    *,
    status: str,
    code: int,
    message: str,
    file_id: str,
    file_name: str,
    file_url: str,
    meta: Data | None,
    tasks: list[Data],
) -> Data:
    """``ProcedureStateChanged.data`` (status FINISH), or a running procedure's progress."""
    return {
        "vodTaskId": task_id,
        "status": status,
        "errCode": code,
        "message": message,
        "fileId": file_id,
        "fileName": file_name,
        "fileUrl": file_url,
        "metaData": meta or {},
        "processTaskList": list[JsonValue](tasks),
        "contentReviewList": [],
        "aIAnalysisList": [],
    }
