"""A vodflow service for tests: the real app over real HTTP on loopback, with a scriptable VOD."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator.app import create_app
from orchestrator.config import load_settings
from orchestrator.machine import TimerFired
from orchestrator.store import migrate
from tests.conftest import free_port
from tests.fakevod import FakeVod
from tests.servers import serving

TOKEN = "test-token"
SECRET_ID, SECRET_KEY = "AKIDflowtest", "flow-secret"


@dataclass
class Service:
    base: str
    vod: FakeVod
    http: httpx.AsyncClient
    app: Any = None
    """The served app (its ``state.services``), for tests that inject a fault."""

    async def callback(self, body: dict[str, Any], path: str = "/callbacks/vod") -> httpx.Response:
        return await self.http.post(f"{self.base}{path}?token={TOKEN}", json=body)

    async def run(self, run_id: str) -> dict[str, Any]:
        answer = await self.http.get(f"{self.base}/api/runs/{run_id}")
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    async def runs(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.http.get(f"{self.base}/api/runs")).json()["runs"]
        return result

    async def wait(self, check: Callable[[], Any], within: float = 15.0) -> Any:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            value = await check()
            if value:
                return value
            assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
            await asyncio.sleep(0.05)

    async def status_is(self, run_id: str, *statuses: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            run = await self.run(run_id)
            return run if run["status"] in statuses else None

        result: dict[str, Any] = await self.wait(check)
        return result

    async def one_run(self) -> str:
        async def check() -> str | None:
            runs = await self.runs()
            return runs[0]["id"] if runs else None

        run_id: str = await self.wait(check)
        return run_id

    async def submitted(self, count: int = 1) -> None:
        async def check() -> bool:
            return len(self.vod.submitted) >= count

        await self.wait(check)


@asynccontextmanager
async def running_service(
    tmp_path: Path, database_url: str, workflows: dict[str, str], **settings: Any
) -> AsyncIterator[Service]:
    """Serve vodflow with these workflow files (name -> YAML) against a FakeVod."""
    folder = tmp_path / "workflows"
    folder.mkdir(exist_ok=True)
    for name, text in workflows.items():
        (folder / f"{name}.yaml").write_text(text)
    migrate.upgrade(database_url)
    vod = FakeVod(SECRET_KEY)
    async with serving(vod.app()) as vod_base:
        port = free_port()
        options: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "workflows": folder,
            "port": port,
            "vod_endpoint": f"{vod_base}/v2/index.php",
            "vod_secret_id": SECRET_ID,
            "vod_secret_key": SECRET_KEY,
            "callback_token": TOKEN,
            "engine": False,
            "sweep_interval": 0.2,
            "task_poll_after": "1s",
            **settings,
        }
        app = create_app(load_settings(**options))
        async with serving(app, port) as base, httpx.AsyncClient(timeout=10) as http:
            yield Service(base, vod, http, app)


TIMES_OUT = """
name: times-out
triggers: [{type: manual, params: [fileId]}]
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    timeout: 1s
    retry: {max_attempts: 1}
    verify: false
"""
"""A workflow whose only step times out after a second, with no retry."""


async def run_with_a_failed_timer(service: Service) -> tuple[str, Callable[[], None]]:
    """A run of ``times-out`` whose step timeout could not be applied (the transition raised),
    and the fix that makes applying timers work again."""
    runner = service.app.state.services.runner
    transition = runner.transition

    def broken(conn: Any, run_id: str, event: Any, *args: Any) -> Any:
        if isinstance(event, TimerFired):
            raise RuntimeError("workflow store unreachable")
        return transition(conn, run_id, event, *args)

    def fix() -> None:
        runner.transition = transition

    runner.transition = broken
    created = await service.http.post(
        f"{service.base}/api/runs", json={"workflow": "times-out", "params": {"fileId": "t"}}
    )
    created.raise_for_status()

    async def failed() -> bool:
        stats = (await service.http.get(f"{service.base}/api/stats")).json()
        return bool(stats["failedTimers"])

    await service.wait(failed)
    return created.json()["runId"], fix


async def vodflow_cli(
    service: Service,
    tmp_path: Path,
    database_url: str,
    *args: str,
    returncode: int = 0,
    env: dict[str, str] | None = None,
) -> str:
    """What ``vodflow *args`` printed once it exited with ``returncode``: its standard output, and
    when it failed, its standard error after that."""
    port = service.base.rsplit(":", 1)[1]
    env = {
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "250",
        "VODFLOW_PORT": port,
        "VODFLOW_DATA_DIR": str(tmp_path / "data"),
        "VODFLOW_DATABASE_URL": database_url,
        "VODFLOW_WORKFLOWS": str(tmp_path / "workflows"),
        **(env or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, errors = await proc.communicate()
    assert proc.returncode == returncode, errors.decode()
    return out.decode() + (errors.decode() if returncode else "")
