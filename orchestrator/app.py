"""Wiring: the Starlette application that one `vodflow serve` process runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator import __version__, dashboard
from orchestrator.config import Settings
from orchestrator.registry import Registry
from orchestrator.store.db import Database


async def healthz(request: Request) -> JSONResponse:
    db: Database = request.app.state.db
    try:
        async with db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok", "version": __version__})


def create_app(settings: Settings, registry: Registry | None = None) -> Starlette:
    """The whole service as an ASGI app; start-up opens the database and records workflows."""
    registry = registry or Registry.from_paths([settings.workflows])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(settings.sqlalchemy_url)
        app.state.db = db
        app.state.settings = settings
        app.state.registry = registry
        async with db.transaction() as conn:
            await registry.record_versions(conn, datetime.now(UTC))
        try:
            yield
        finally:
            await db.close()

    routes = [Route("/healthz", healthz, methods=["GET"]), *dashboard.routes]
    return Starlette(routes=routes, lifespan=lifespan)
