"""The engine's VOD v2 API at ``/v2/index.php`` (GET or form POST, Tencent's path, so a client
only changes the host): ProcessFileByProcedure and the calls a client needs around it.

Every answer is HTTP 200 with the envelope ``{"code", "message", "codeDesc"}``. After
authentication (see ``auth``): a missing or unknown ``Action`` is 4000 ("unknown Action X"); the
parameters of ProcessFileByProcedure are checked by ``parse_flat`` (1000 naming the parameter),
those of the other calls by their request models (4000); any other exception is logged and
answered 6000 with a reference to the log line, never a traceback.

Calls and the decisions where Tencent's documents are silent:

* ``ProcessFileByProcedure``: at most ``engine_rate_per_minute`` calls per minute per SecretId
  (4400), counted in the shared limiter's buckets under ``engine/`` so every process on the
  database counts together; see ``planner`` for the request rules and the answer shapes.
* ``GetTaskInfo``: ``type`` (procedure, transcode, clip, concat, CreateImageSprite,
  CreateSnapshotByTimeOffset), ``status`` WAITING / PROCESSING / FINISH, the three times (Unix
  seconds, 0 when not yet), ``errCode``, and ``data``: once finished, exactly the ``data`` of the
  task's event; before, a procedure's progress or the task's IDs. Engine extension: ``detail``
  (how the media layer did it: stream copy or encode). An unknown task ID is 5000.
* ``GetVodTaskStatus``: Queuing / Processing / Finished, NotFound for unknown IDs.
* ``GetTaskList``: in Tencent's documented shape, ``data: [{status, next, taskList}]`` with one
  group, the status asked for; procedure tasks only (each stands for its tasks), newest first, at
  most ``maxCount`` (10 – 100, default 100; ``next`` is always empty, ``totalCount`` counts
  all), each ``{vodTaskId, type, fileId, createTime, beginProcessTime, finishTime}`` plus two
  engine extensions the orchestrator recovers with: ``procedure`` (its name) and ``request``
  (the request as received: nested wire names, text values, e.g.
  ``{"gen": {...}, "procedure": "..."}``).
* ``GetProcedureInfo``: the procedure's data (status, errCode, fileId, metaData,
  processTaskList) and its times.
* ``GetVideoInfo``: basicInfo, metaData, transcodeInfo (definition 0 is the file itself; bitrates
  in bit/s), imageSpriteInfo and snapshotByTimeOffsetInfo; ``infoFilter.N`` picks sections.
* ``PullEvent`` (also ``PullVodEvent``): up to 16 events, oldest first, at once when some wait,
  else held up to ``engine_pull_wait`` seconds; none: code 4000, as Tencent's demo server
  expects. A pulled event is pulled again after ``engine_event_visibility`` seconds unless
  confirmed. ``ConfirmEvent`` (also ``ConfirmVodEvent``) takes ``msgHandle.N`` numbered from 0
  or 1; unknown or already confirmed handles are ignored.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import JsonValue, TypeAdapter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from orchestrator.engine import planner
from orchestrator.engine.answers import EngineError, failure, success
from orchestrator.engine.auth import Authenticator
from orchestrator.engine.kinds import MediaParams, kind_info
from orchestrator.engine.procedures import Procedures
from orchestrator.engine.storage import Storage
from orchestrator.engine.tasks import procedure_data
from orchestrator.engine.wakeup import Wakeup
from orchestrator.store import engine as store
from orchestrator.store.db import Database
from orchestrator.store.tables import EngineTask
from orchestrator.vod.errors import InvalidRequestParams
from orchestrator.vod.limiter import Limiter
from orchestrator.vod.params import (
    COMMON_PARAMS,
    ConfirmEventRequest,
    GetProcedureInfoRequest,
    GetTaskInfoRequest,
    GetTaskListRequest,
    GetVideoInfoRequest,
    GetVodTaskStatusRequest,
    PullEventRequest,
    VodRequest,
    parse_flat,
    unflatten,
)

log = logging.getLogger(__name__)

Answer = dict[str, JsonValue]
Handler = Callable[[dict[str, str], str], Awaitable[Answer]]

PULL_BATCH = 16
PULL_RECHECK = 0.5
"""While a PullEvent waits, how often it looks for events another process added."""
_LIST_STATUS = {
    "WAITING": store.WAITING,
    "PROCESSING": store.PROCESSING,
    "FINISHED": store.FINISHED,
}
_TASK_STATUS = {store.WAITING: "WAITING", store.PROCESSING: "PROCESSING", store.FINISHED: "FINISH"}
_QUERY_STATUS = {
    store.WAITING: "Queuing",
    store.PROCESSING: "Processing",
    store.FINISHED: "Finished",
}


_TREE = TypeAdapter(dict[str, JsonValue])


def _number(value: JsonValue) -> int:
    return round(value) if isinstance(value, int | float) else 0


def _unix(moment: datetime | None) -> int:
    return int(moment.timestamp()) if moment is not None else 0


def _parsed(model: type[VodRequest], params: Mapping[str, str]) -> Any:
    try:
        return model.from_params(params)
    except InvalidRequestParams as exc:
        raise EngineError(4000, exc.message) from None


class EngineApi:
    """The ``/v2/index.php`` endpoint and one handler per Action."""

    def __init__(
        self,
        *,
        db: Database,
        auth: Authenticator,
        limiter: Limiter,
        procedures: Procedures,
        storage: Storage,
        app_id: int,
        shape: planner.Shape,
        rate_per_minute: int,
        pull_wait: float,
        visibility: float,
        tasks_ready: Wakeup,
        events_added: Wakeup,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.auth = auth
        self.limiter = limiter
        self.procedures = procedures
        self.storage = storage
        self.app_id = app_id
        self.shape = shape
        self.rate_per_minute = rate_per_minute
        self.pull_wait = pull_wait
        self.visibility = visibility
        self.tasks_ready = tasks_ready
        self.events_added = events_added
        self.clock = clock
        self.handlers: dict[str, Handler] = {
            "ProcessFileByProcedure": self.process_file,
            "GetTaskInfo": self.get_task_info,
            "GetVodTaskStatus": self.get_task_status,
            "GetTaskList": self.get_task_list,
            "GetProcedureInfo": self.get_procedure_info,
            "GetVideoInfo": self.get_video_info,
            "PullEvent": self.pull_event,
            "PullVodEvent": self.pull_event,
            "ConfirmEvent": self.confirm_event,
            "ConfirmVodEvent": self.confirm_event,
        }

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def endpoint(self, request: Request) -> JSONResponse:
        action = "?"
        try:
            params = await _request_params(request)
            secret_id = await self.auth.check(
                params, request.method, request.headers.get("host", ""), request.url.path
            )
            action = params.get("Action", "")
            handler = self.handlers.get(action)
            if handler is None:
                if not action:
                    raise EngineError(4000, "missing parameter Action")
                raise EngineError(
                    4000,
                    f"unknown Action {action!r}; this engine serves: "
                    + ", ".join(sorted(self.handlers)),
                )
            return success(await handler(params, secret_id))
        except EngineError as exc:
            return failure(exc)
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("engine API %s failed (reference %s)", action, reference)
            return failure(
                EngineError(
                    6000,
                    f"internal error while handling {action}; the engine's log has the "
                    f"details (reference {reference})",
                )
            )

    # --- ProcessFileByProcedure --------------------------------------------------------------

    async def process_file(self, params: dict[str, str], secret_id: str) -> Answer:
        grant = await self.limiter.try_acquire(f"ProcessFileByProcedure/{secret_id}")
        if grant.at is None:
            raise EngineError(
                4400,
                f"frequency limit: at most {self.rate_per_minute} ProcessFileByProcedure calls "
                f"per minute with this SecretId; the next is allowed in {grant.wait:.1f}s",
            )
        try:
            request = parse_flat(params)
        except InvalidRequestParams as exc:
            raise EngineError(1000, exc.message) from None
        own = {
            name.replace("_", "."): value
            for name, value in params.items()
            if name not in COMMON_PARAMS
        }
        received = _TREE.validate_python(unflatten(own, action="ProcessFileByProcedure"))
        now = self._now()
        async with self.db.read() as conn:
            plan = await planner.plan(
                conn, request, received, self.procedures, app_id=self.app_id, now=now
            )
        try:
            async with self.db.transaction() as conn:
                existing = await store.insert_procedure(conn, plan.procedure, plan.members)
        except Exception as exc:
            log.exception("engine: queuing procedure %s failed", plan.procedure.task_id)
            raise EngineError(
                50006, f"procedure task creation failed: {type(exc).__name__}: {exc}"[:300]
            ) from None
        if existing is not None:
            raise EngineError(
                50005,
                f"the same procedure is already queued or running for this request: "
                f"procedure task {existing}",
            )
        self.tasks_ready.ring()
        log.info(
            "engine: procedure %s queued (%s) with %d task(s)",
            plan.procedure.task_id,
            request.procedure or "gen only",
            len(plan.members),
        )
        return plan.answer(self.shape)

    # --- task queries ------------------------------------------------------------------------

    async def get_task_info(self, params: dict[str, str], secret_id: str) -> Answer:
        request: GetTaskInfoRequest = _parsed(GetTaskInfoRequest, params)
        async with self.db.read() as conn:
            task = await store.get_task(conn, request.vod_task_id)
            if task is None:
                raise EngineError(5000, f"vodTaskId {request.vod_task_id!r}: no such task")
            data = await self._task_data(conn, task)
        answer: Answer = {
            "type": kind_info(task.kind).type,
            "status": _TASK_STATUS[task.status],
            "errCode": task.err_code or 0,
            "createTime": _unix(task.created_at),
            "beginProcessTime": _unix(task.begun_at),
            "finishTime": _unix(task.finished_at),
            "data": data,
        }
        if task.detail is not None:
            answer["detail"] = task.detail
        return answer

    async def _task_data(self, conn: Any, task: EngineTask) -> Answer:
        if task.status == store.FINISHED:
            data: Answer = task.result
            return data
        if task.kind == "procedure":
            members = await store.procedure_members(conn, task.task_id)
            return await procedure_data(
                conn, task, members, self.storage, _TASK_STATUS[task.status]
            )
        return {"vodTaskId": task.task_id, "fileId": task.file_id or ""}

    async def get_task_status(self, params: dict[str, str], secret_id: str) -> Answer:
        request: GetVodTaskStatusRequest = _parsed(GetVodTaskStatusRequest, params)
        async with self.db.read() as conn:
            found = await store.get_tasks(conn, request.task_ids)
        return {
            "taskList": [
                {
                    "taskId": task_id,
                    "status": _QUERY_STATUS[found[task_id].status]
                    if task_id in found
                    else "NotFound",
                }
                for task_id in request.task_ids
            ]
        }

    async def get_task_list(self, params: dict[str, str], secret_id: str) -> Answer:
        request: GetTaskListRequest = _parsed(GetTaskListRequest, params)
        async with self.db.read() as conn:
            total, procedures = await store.list_procedures(
                conn, _LIST_STATUS[request.status], request.file_id, request.max_count
            )
        listed: list[JsonValue] = [
            {
                "vodTaskId": p.task_id,
                "type": "procedure",
                "fileId": p.file_id or "",
                "createTime": _unix(p.created_at),
                "beginProcessTime": _unix(p.begun_at),
                "finishTime": _unix(p.finished_at),
                "procedure": p.procedure,
                "request": p.params.get("request"),
            }
            for p in procedures
        ]
        group: Answer = {"status": request.status, "next": "", "taskList": listed}
        # The flat list too: what vodflow read before it read Tencent's grouped shape (an
        # orchestrator not yet upgraded, calling an engine that is).
        return {"data": [group], "taskList": listed, "totalCount": total}

    async def get_procedure_info(self, params: dict[str, str], secret_id: str) -> Answer:
        request: GetProcedureInfoRequest = _parsed(GetProcedureInfoRequest, params)
        async with self.db.read() as conn:
            task = await store.get_task(conn, request.vod_task_id)
            if task is None:
                raise EngineError(5000, f"vodTaskId {request.vod_task_id!r}: no such task")
            if task.kind != "procedure":
                raise EngineError(
                    4000,
                    f"vodTaskId {request.vod_task_id!r} is a {kind_info(task.kind).type} task, "
                    "not a procedure (ask GetTaskInfo)",
                )
            data = await self._task_data(conn, task)
        return {
            **data,
            "createTime": _unix(task.created_at),
            "beginProcessTime": _unix(task.begun_at),
            "finishTime": _unix(task.finished_at),
        }

    # --- files -------------------------------------------------------------------------------

    async def get_video_info(self, params: dict[str, str], secret_id: str) -> Answer:
        request: GetVideoInfoRequest = _parsed(GetVideoInfoRequest, params)
        async with self.db.read() as conn:
            file = await store.get_file(conn, request.file_id)
            if file is None:
                raise EngineError(10008, f"fileId {request.file_id!r}: no such file")
            results = await store.file_results(conn, file.file_id)
        meta: Answer = file.meta
        source_url = self.storage.url_for(file.path)
        transcodes: dict[int, Answer] = {
            0: {
                "url": source_url,
                "definition": 0,
                "duration": round(file.duration, 3),
                "size": file.size,
                "bitrate": _number(meta.get("bitrate")) * 1000,
                "height": meta.get("height"),
                "width": meta.get("width"),
                "container": file.container,
                "md5": file.md5 or "",
            }
        }
        sprites: dict[int, Answer] = {}
        snapshots: dict[int, Answer] = {}
        for task in results:  # oldest first: a newer result of a definition replaced its files
            definition = MediaParams.model_validate(task.params).definition
            out = (task.output or {}).get("output") or {}
            if task.kind == "transcode":
                transcodes[definition] = {
                    "url": out.get("url"),
                    "definition": definition,
                    "duration": out.get("duration"),
                    "size": out.get("size"),
                    "bitrate": _number(out.get("bitrate")) * 1000,
                    "height": out.get("height"),
                    "width": out.get("width"),
                    "container": out.get("container"),
                    "md5": out.get("md5") or "",
                }
            elif task.kind == "image_sprite":
                detail = task.detail or {}
                sprites[definition] = {
                    "definition": definition,
                    "height": detail.get("height"),
                    "width": detail.get("width"),
                    "totalCount": out.get("totalCount"),
                    "imageUrls": out.get("urlList"),
                    "webVttUrl": out.get("webVttUrl"),
                }
            elif task.kind == "snapshot":
                snapshots[definition] = {
                    "definition": definition,
                    "picInfoList": out.get("imgInfo"),
                }
        sections: Answer = {
            "basicInfo": {
                "name": file.name,
                "size": file.size,
                "duration": round(file.duration),
                "description": "",
                "status": "normal",
                "type": file.container,
                "createTime": _unix(file.created_at),
                "updateTime": _unix(file.created_at),
                "coverUrl": "",
                "sourceType": file.source_type,
                "sourceVideoUrl": source_url,
                "streamId": file.stream_id or "",
            },
            "metaData": meta,
            "transcodeInfo": {"transcodeList": [transcodes[d] for d in sorted(transcodes)]},
            "imageSpriteInfo": {"imageSpriteList": [sprites[d] for d in sorted(sprites)]},
            "snapshotByTimeOffsetInfo": {
                "snapshotByTimeOffsetList": [snapshots[d] for d in sorted(snapshots)]
            },
        }
        if request.info_filter:
            sections = {
                name: value for name, value in sections.items() if name in request.info_filter
            }
        return sections

    # --- events --------------------------------------------------------------------------------

    async def pull_event(self, params: dict[str, str], secret_id: str) -> Answer:
        _parsed(PullEventRequest, params)
        deadline = time.monotonic() + self.pull_wait
        while True:
            ticket = self.events_added.ticket()
            now = self._now()
            async with self.db.transaction() as conn:
                pulled = await store.pull_events(
                    conn, now, now + timedelta(seconds=self.visibility), PULL_BATCH
                )
            if pulled:
                return {
                    "eventList": [
                        {"msgHandle": event.msg_handle, "eventContent": event.body}
                        for event in pulled
                    ]
                }
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError(4000, f"no event to pull (waited {self.pull_wait:g}s)")
            await self.events_added.wait(min(remaining, PULL_RECHECK), ticket)

    async def confirm_event(self, params: dict[str, str], secret_id: str) -> Answer:
        request: ConfirmEventRequest = _parsed(ConfirmEventRequest, params)
        async with self.db.transaction() as conn:
            await store.confirm_events(conn, request.msg_handles, self._now())
        return {}


async def _request_params(request: Request) -> dict[str, str]:
    """The request's parameters: the query string of a GET, the form body of a POST."""
    if request.method != "POST":
        return dict(request.query_params)
    try:
        form = await request.form()
    except HTTPException as exc:  # Starlette's refusal of the form (too many fields, ...)
        raise EngineError(4000, f"the form body: {exc.detail}") from None
    params: dict[str, str] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str):
            raise EngineError(4000, f"parameter {name!r}: expected text, got a file")
        params[name] = value
    return params
