"""`vodflow demo` following its run through a vodflow that restarts under it.
(tests/test_e2e.py runs the whole demo against a real service.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orchestrator.demo import DemoError, _follow

STEP = {"name": "transcode", "kind": "process", "status": "awaiting_callback", "tasks": []}


def restarting(answers: list[str]) -> httpx.MockTransport:
    """A vodflow that refuses connections ("down") or answers the run with each status in turn."""

    def answer(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        if status == "down":
            raise httpx.ConnectError("All connection attempts failed", request=request)
        run: dict[str, Any] = {"id": "run_1", "status": status, "steps": [STEP]}
        return httpx.Response(200, json=run)

    return httpx.MockTransport(answer)


async def test_the_demo_waits_for_a_vodflow_that_restarts_while_it_follows_the_run() -> None:
    transport = restarting(["awaiting_callback", "down", "down", "succeeded"])
    async with httpx.AsyncClient(transport=transport, base_url="http://vodflow.test") as http:
        run = await _follow(http, "run_1", within=60)
    assert run["status"] == "succeeded"


async def test_the_demo_names_the_vodflow_that_stopped_answering() -> None:
    transport = restarting(["down"])
    async with httpx.AsyncClient(transport=transport, base_url="http://vodflow.test") as http:
        with pytest.raises(DemoError) as raised:
            await _follow(http, "run_1", within=0)
    assert str(raised.value) == (
        "vodflow at http://vodflow.test stopped answering (All connection attempts failed); "
        "once it is back, `vodflow runs --stream-id demo` shows how the run went"
    )
