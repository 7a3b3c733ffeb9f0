"""A built-in webhook receiver (``POST /hooks/sink``) for notify steps, handy before a real one.

It verifies each delivery's Standard Webhooks signature with the configured secret, the way a
user's receiver would with the ``standardwebhooks`` library, and keeps the latest deliveries for
the dashboard (``GET /hooks/sink``). Point notify steps at your own endpoint in production.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class WebhookSink:
    def __init__(self, secret: str, keep: int = 100) -> None:
        self.webhook = Webhook(secret)
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=keep)
        self.routes = [
            Route("/hooks/sink", self.receive, methods=["POST"]),
            Route("/hooks/sink", self.list, methods=["GET"]),
        ]

    async def receive(self, request: Request) -> JSONResponse:
        body = await request.body()
        try:
            payload = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            return JSONResponse({"error": f"signature check failed: {exc}"}, status_code=400)
        self.deliveries.appendleft(
            {
                "webhookId": request.headers.get("webhook-id"),
                "receivedAt": datetime.now(UTC).isoformat(),
                "payload": payload,
            }
        )
        return JSONResponse({"received": True})

    async def list(self, request: Request) -> JSONResponse:
        return JSONResponse({"deliveries": list(self.deliveries)})
