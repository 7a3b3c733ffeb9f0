"""A size limit on request bodies, for every route that does not limit its own.

Starlette reads a body whole (``request.body()``, ``request.form()``) however long it is, and
the routes that take one before knowing who sent it (the engine's API, whose signature is in the
body; the webhook sink, which verifies after reading) would otherwise hold whatever a client
sends in memory or in temporary files. :class:`BodyLimit` reads the body first, up to the limit,
and answers 413 beyond it, before the route runs; the route then gets the body in one piece.

Routes that stream their bodies against a limit of their own are left alone: the callbacks
(``VODFLOW_MAX_BODY_BYTES`` too, without the copy) and the engine's uploads
(``VODFLOW_ENGINE_UPLOAD_MAX_BYTES``). ``GET`` and ``HEAD`` requests pass as they are: no route
reads their bodies, and the event stream must see its client go away.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: bodies larger than ``limit`` bytes are refused with 413, except on the
    ``exempt`` paths."""

    def __init__(self, app: ASGIApp, *, limit: int, exempt: Collection[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD")
            or scope["path"] in self.exempt
        ):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending the whole body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks)}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()  # after the body: the disconnect

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = (
            f"the body of {scope['method']} {scope['path']} is larger than this server accepts "
            f"(VODFLOW_MAX_BODY_BYTES: at most {self.limit} bytes)"
        )
        response = JSONResponse({"error": reason, "status": 413}, status_code=413)
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
