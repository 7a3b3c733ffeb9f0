"""The dashboard page: where operators watch runs (``/``) and look into one (``/runs/{id}``).

The server renders each page's structure with Jinja2: the layout, the filters as the URL gives
them, and regions sized in advance so nothing shifts when data arrives. Every run, stat and
output comes from the JSON API (``/api/...``), fetched by ``static/dashboard.js`` with the bearer
token the API asks for, and kept live with ``/api/events``. So the page routes need no access
rules of their own and never show what the API would refuse.

Static files are addressed with a hash of their content (``/static/dashboard.js?v=1a2b3c4d5e``):
browsers keep them for good and fetch again only when a release changes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Scope

from orchestrator import __version__
from orchestrator.machine import RunStatus

HERE = Path(__file__).parent
STATIC = HERE / "static"

#: The status filter's choices beyond the run statuses: health the API derives from a run's tasks
#: and steps, and groups. dashboard.js turns each into the API's ``status`` filter.
HEALTH_FILTERS = {
    "attention": "needs attention (overdue, failing, failed)",
    "active": "active (not finished)",
    "overdue": "overdue: a callback is late",
    "failing": "failing: an attempt failed, retrying",
}

#: The page runs no inline script or style, and media may come from a CDN (Tencent's outputs).
SECURITY_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: http: https:",
            "media-src 'self' blob: http: https:",
            "connect-src 'self' http: https:",
            "worker-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class HashedStatic(StaticFiles):
    """Static files; a request naming the content hash (``?v=``) may be cached for a year."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            versioned = "v" in parse_qs(scope.get("query_string", b"").decode("latin-1"))
            response.headers["Cache-Control"] = (
                "public, max-age=31536000, immutable" if versioned else "no-cache"
            )
        return response


def content_hashes(folder: Path) -> dict[str, str]:
    """Each file under ``folder`` (by its path relative to it) and a short hash of its bytes."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class Page:
    """The page's routes; ``auth`` says whether the API asks for a token."""

    def __init__(self, *, auth: bool) -> None:
        self.auth = auth
        self.hashes = content_hashes(STATIC)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals["static"] = self.static_url
        env.globals["version"] = __version__
        self.templates = Jinja2Templates(env=env)

    def static_url(self, name: str) -> str:
        digest = self.hashes.get(name)
        if digest is None:
            raise LookupError(f"no static file {name!r} under {STATIC}")
        return f"/static/{name}?v={digest}"

    def render(self, request: Request, template: str, context: Mapping[str, object]) -> Response:
        return self.templates.TemplateResponse(
            request, template, {"auth": self.auth, **context}, headers=SECURITY_HEADERS
        )

    async def runs(self, request: Request) -> Response:
        query = request.query_params
        status = query.get("status", "")
        statuses = [s.value for s in RunStatus]
        return self.render(
            request,
            "runs.html",
            {
                "filters": {
                    "workflow": query.get("workflow", ""),
                    "status": status if status in (*statuses, *HEALTH_FILTERS) else "",
                    "q": query.get("q", ""),
                },
                "statuses": statuses,
                "health_filters": HEALTH_FILTERS,
            },
        )

    async def run(self, request: Request) -> Response:
        return self.render(request, "run.html", {"run_id": request.path_params["run_id"]})

    @property
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.runs, methods=["GET"], name="runs"),
            Route("/runs/{run_id}", self.run, methods=["GET"], name="run"),
            Mount("/static", HashedStatic(directory=STATIC), name="static"),
        ]
