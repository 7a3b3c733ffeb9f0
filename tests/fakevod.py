"""A scriptable stand-in for VOD's API, for tests of the orchestrator's own logic.

It checks every request's signature like Tencent does, records the calls, and answers
ProcessFileByProcedure with fresh task IDs unless a test scripted another answer (an error code,
a delay). GetTaskInfo/GetTaskList answer from what the test says each task has done. The
end-to-end tests use the real embedded engine instead.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.vod.signing import verify


@dataclass
class Submitted:
    params: dict[str, str]
    tasks: dict[str, str]  # kind -> task ID
    procedure_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    """VOD's createTime (Unix seconds), as GetTaskList lists it."""


@dataclass
class FakeVod:
    secret_key: str
    submitted: list[Submitted] = field(default_factory=list)
    calls: list[dict[str, str]] = field(default_factory=list)
    script: list[Callable[[dict[str, str]], dict[str, Any] | None]] = field(default_factory=list)
    """Answers for the next ProcessFileByProcedure calls (None: the normal answer)."""
    delay: float = 0.0
    gate: asyncio.Event | None = None
    """When given, ProcessFileByProcedure's answers wait for it once the job was accepted (VOD
    runs the job, and sends its events, before vodflow stores the answer)."""
    task_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    """GetTaskInfo answers by task ID (the default: still processing)."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v2/index.php", self.endpoint, methods=["GET", "POST"])])

    def calls_of(self, action: str) -> list[dict[str, str]]:
        return [c for c in self.calls if c["Action"] == action]

    async def endpoint(self, request: Request) -> Response:
        form = await request.form() if request.method == "POST" else request.query_params
        params = {k: str(v) for k, v in form.items()}
        if not verify(
            params, request.method, request.headers["host"], "/v2/index.php", self.secret_key
        ):
            return JSONResponse({"code": 4100, "message": "signature mismatch"})
        self.calls.append(params)
        action = params["Action"]
        if action == "ProcessFileByProcedure":
            if self.delay:
                await asyncio.sleep(self.delay)
            scripted = self.script.pop(0)(params) if self.script else None
            if scripted is not None:
                return JSONResponse(scripted)
            answer = self.accept(params)
            if self.gate is not None:
                await self.gate.wait()
            return JSONResponse(answer)
        if action == "GetTaskInfo":
            answer = self.task_info.get(params["vodTaskId"])
            if answer is None:
                return JSONResponse(
                    {"code": 0, "message": "", "type": "transcode", "status": "PROCESSING"}
                )
            return JSONResponse({"code": 0, "message": "", **answer})
        if action == "GetTaskList":
            # Tencent's documented shape: grouped by status, entries without fileId or procedure,
            # a procedure's own tasks listed too (each of its kind), here ahead of it.
            entries = [
                {"vodTaskId": task_id, "type": kind, "createTime": s.created}
                for s in self.submitted
                if params.get("fileId") in (None, s.params.get("fileId"))
                for kind, task_id in [*s.tasks.items(), ("procedure", s.procedure_id)]
            ]
            group = {"status": params.get("status"), "next": "", "taskList": entries}
            return JSONResponse({"code": 0, "message": "", "data": [group]})
        if action == "GetVideoInfo":
            return JSONResponse({"code": 0, "message": "", "basicInfo": {"duration": 10}})
        return JSONResponse({"code": 4000, "message": f"FakeVod does not do {action}"})

    def accept(self, params: dict[str, str]) -> dict[str, Any]:
        n = next(self._ids)
        tasks = {"transcode": f"transcode-{n:032x}", "imageSprite": f"CreateImageSprite-{n:032x}"}
        procedure_id = f"1250000001-procedurev2-{n:032x}"
        self.submitted.append(Submitted(params, tasks, procedure_id))
        return {
            "code": 0,
            "message": "",
            "codeDesc": "Success",
            **{f"{k}TaskId": v for k, v in tasks.items()},
        }


def transcode_complete(task_id: str, file_id: str, *, ok: bool = True) -> dict[str, Any]:
    return {
        "version": "4.0",
        "eventType": "TranscodeComplete",
        "data": {
            "status": 0 if ok else -1,
            "message": "" if ok else "system failure",
            "vodTaskId": task_id,
            "fileId": file_id,
            "duration": 10,
            "playSet": [
                {
                    "url": f"http://files.example/{file_id}/f20.mp4",
                    "definition": 20,
                    "vbitrate": 300000,
                    "vheight": 480,
                    "vwidth": 854,
                }
            ]
            if ok
            else [],
        },
    }


def sprite_complete(task_id: str, file_id: str) -> dict[str, Any]:
    return {
        "version": "4.0",
        "eventType": "CreateImageSpriteComplete",
        "data": {
            "status": 0,
            "message": "",
            "vodTaskId": task_id,
            "fileId": file_id,
            "definition": 10,
            "totalCount": 1,
            "imageSpriteUrl": [f"http://files.example/{file_id}/sprite.jpg"],
            "webVttUrl": f"http://files.example/{file_id}/sprite.vtt",
        },
    }


def new_file_upload(file_id: str, stream_id: str = "lecture_1") -> dict[str, Any]:
    return {
        "version": "4.0",
        "eventType": "NewFileUpload",
        "data": {
            "fileId": file_id,
            "fileName": f"{stream_id} recording",
            "fileUrl": f"http://files.example/{file_id}/f0.mp4",
            "sourceType": "Record",
            "streamId": stream_id,
            "procedureTaskId": "",
            "transcodeTaskId": "",
        },
    }


def procedure_state_changed(
    procedure_id: str, file_id: str, sub_task_ids: dict[str, str], *, named: bool = True
) -> dict[str, Any]:
    """A finished procedure whose processTaskList names its sub-tasks' IDs (as the embedded
    engine's does); ``sub_task_ids`` maps taskType (Transcode, ImageSprites) to task ID. With
    ``named=False`` the entries carry no ID, as in Tencent's documented bodies."""
    entries = [
        {"taskType": kind, "vodTaskId": task_id, "status": "SUCCESS", "errCode": 0}
        for kind, task_id in sub_task_ids.items()
    ]
    if not named:
        for entry in entries:
            del entry["vodTaskId"]
    return {
        "version": "4.0",
        "eventType": "ProcedureStateChanged",
        "data": {
            "vodTaskId": procedure_id,
            "status": "FINISH",
            "errCode": 0,
            "message": "",
            "fileId": file_id,
            "processTaskList": entries,
        },
    }
