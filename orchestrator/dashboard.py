"""The status dashboard's API (JSON under /api)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.registry import Registry


async def list_workflows(request: Request) -> JSONResponse:
    registry: Registry = request.app.state.registry
    return JSONResponse(
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


routes = [Route("/api/workflows", list_workflows, methods=["GET"])]
