"""The status dashboard's API (JSON under /api): workflows, runs, actions on runs."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, JsonValue, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator import machine as m
from orchestrator.registry import Registry
from orchestrator.runner import Runner, TriggerRefused
from orchestrator.store import views
from orchestrator.store.tasks import find_task


class JSON(JSONResponse):
    """JSON with ISO 8601 times."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=False, separators=(",", ":"), default=_default
        ).encode()


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def problem(status: int, detail: str) -> JSON:
    return JSON({"error": detail, "status": status}, status_code=status)


def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.services.runner
    return runner


class TriggerBody(BaseModel):
    workflow: str
    params: dict[str, JsonValue] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, alias="idempotencyKey", max_length=200)


class CancelBody(BaseModel):
    reason: str = ""


class RetryBody(BaseModel):
    step: str | None = None


async def _body(request: Request, model: type[BaseModel]) -> BaseModel | JSON:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return problem(422, f"{where}: {first['msg']}")


async def list_workflows(request: Request) -> JSON:
    registry: Registry = request.app.state.registry
    return JSON(
        {
            "workflows": [
                {
                    "name": item.spec.name,
                    "description": item.spec.description,
                    "version": item.version,
                    "path": str(item.path),
                    "triggers": [t.type for t in item.spec.triggers],
                    "steps": [{"name": s.name, "kind": s.kind} for s in item.spec.steps],
                }
                for item in registry.all()
            ]
        }
    )


async def trigger_run(request: Request) -> JSON:
    body = await _body(request, TriggerBody)
    if isinstance(body, JSON):
        return body
    assert isinstance(body, TriggerBody)
    try:
        run_id, created = await _runner(request).trigger_manual(
            body.workflow, body.params, idempotency_key=body.idempotency_key, actor="api"
        )
    except TriggerRefused as exc:
        return problem(exc.status, str(exc))
    return JSON({"runId": run_id, "created": created}, status_code=201 if created else 200)


def _cursor(value: str | None) -> tuple[datetime, str] | None:
    if not value:
        return None
    at, run_id = json.loads(base64.urlsafe_b64decode(value.encode()))
    return datetime.fromisoformat(at), run_id


def _next_cursor(rows: list[dict[str, Any]], limit: int) -> str | None:
    if len(rows) < limit:
        return None
    last = rows[-1]
    raw = json.dumps([last["created_at"].isoformat(), last["id"]])
    return base64.urlsafe_b64encode(raw.encode()).decode()


async def list_runs(request: Request) -> JSON:
    q = request.query_params
    try:
        limit = min(max(int(q.get("limit", "50")), 1), 500)
        cursor = _cursor(q.get("cursor"))
        since = datetime.fromisoformat(q["since"]) if "since" in q else None
        until = datetime.fromisoformat(q["until"]) if "until" in q else None
    except (ValueError, json.JSONDecodeError) as exc:
        return problem(422, f"bad query parameter: {exc}")
    statuses = [s for s in q.getlist("status") for s in s.split(",") if s]
    rows = await request.app.state.services.db.query(
        views.list_runs,
        workflow=q.get("workflow"),
        status=statuses or None,
        stream_id=q.get("streamId"),
        file_id=q.get("fileId"),
        since=since,
        until=until,
        before=cursor,
        limit=limit,
    )
    return JSON({"runs": rows, "nextCursor": _next_cursor(rows, limit)})


async def get_run(request: Request) -> JSON:
    run = await request.app.state.services.db.query(views.run_detail, request.path_params["run_id"])
    if run is None:
        return problem(404, f"no run {request.path_params['run_id']!r}")
    return JSON(run)


async def find_by_task(request: Request) -> JSON:
    owner = await request.app.state.services.db.query(find_task, request.path_params["task_id"])
    if owner is None:
        return problem(404, f"no run recorded task {request.path_params['task_id']!r}")
    return JSON({"runId": owner.run_id, "step": owner.step, "taskId": owner.task_id})


async def _act(request: Request, event: m.Input) -> JSON:
    decision = await _runner(request).apply(request.path_params["run_id"], event)
    if decision is None:
        return problem(404, f"no run {request.path_params['run_id']!r}")
    return JSON(
        {
            "runId": decision.state.run_id,
            "status": decision.state.status,
            "changed": decision.history.from_status != decision.history.to_status
            or bool(decision.commands),
            "reason": decision.history.reason,
        }
    )


async def cancel_run(request: Request) -> JSON:
    body = await _body(request, CancelBody)
    if isinstance(body, JSON):
        return body
    assert isinstance(body, CancelBody)
    return await _act(request, m.Cancel(actor="api", reason=body.reason))


async def retry_run(request: Request) -> JSON:
    body = await _body(request, RetryBody)
    if isinstance(body, JSON):
        return body
    assert isinstance(body, RetryBody)
    return await _act(request, m.ManualRetry(actor="api", step=body.step))


routes = [
    Route("/api/workflows", list_workflows, methods=["GET"]),
    Route("/api/runs", trigger_run, methods=["POST"]),
    Route("/api/runs", list_runs, methods=["GET"]),
    Route("/api/runs/{run_id}", get_run, methods=["GET"]),
    Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/api/runs/{run_id}/retry", retry_run, methods=["POST"]),
    Route("/api/tasks/{task_id:path}", find_by_task, methods=["GET"]),
]
