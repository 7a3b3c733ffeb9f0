"""What the engine's tests share: recordings made with the media layer, a callback receiver, and
a running engine on loopback with a signed-request helper and vodflow's own VOD client."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.config import Settings
from orchestrator.engine import Engine
from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media
from orchestrator.engine.upload import Uploaded, upload_file
from orchestrator.keys import Keys, load_keys
from orchestrator.store import migrate
from orchestrator.store.db import Database
from orchestrator.vod.client import VodClient
from orchestrator.vod.params import ProcessFileByProcedureRequest
from orchestrator.vod.responses import ProcessFileByProcedureResponse
from orchestrator.vod.signing import signed_params
from tests.conftest import free_port
from tests.servers import serving

FPS = 30
GOP = 2.0


@dataclass(frozen=True)
class Recordings:
    six: Path  # 6 s, 320x180, 30 fps, a keyframe every 2 s, AAC audio
    segments: tuple[Path, Path, Path]  # 4 s each, like `six`: they join by stream copy
    long: Path  # 20 s, 640x360: a transcode that takes a while
    tiny: Path  # 2 s, 160x90: unlike the others
    text: Path  # not media


async def make_recordings(root: Path) -> Recordings:
    media = Media(FFmpeg(threads=2))
    small: dict[str, Any] = {"width": 320, "height": 180, "fps": FPS, "gop_seconds": GOP}
    rec = Recordings(
        six=root / "six.mp4",
        segments=(root / "seg1.mp4", root / "seg2.mp4", root / "seg3.mp4"),
        long=root / "long.mp4",
        tiny=root / "tiny.mp4",
        text=root / "notes.mp4",
    )
    rec.text.write_text("these are lecture notes, not a video\n" * 20)
    await asyncio.gather(
        media.make_test_media(rec.six, 6, **small),
        *(
            media.make_test_media(path, 4, tone=440 + 110 * n, **small)
            for n, path in enumerate(rec.segments)
        ),
        media.make_test_media(rec.long, 20, width=640, height=360, fps=FPS, preset="ultrafast"),
        media.make_test_media(rec.tiny, 2, width=160, height=90, fps=25),
    )
    return rec


@dataclass
class Receiver:
    """A callback URL: records every body; the first ``fail_first`` sends get HTTP 500."""

    fail_first: int = 0
    attempts: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def endpoint(self, request: Request) -> Response:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return JSONResponse({"error": "not now"}, status_code=500)
        self.bodies.append(await request.json())
        self.arrived.set()
        return JSONResponse({"code": 0})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/cb", self.endpoint, methods=["POST"])])

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["eventType"] == event_type]

    async def wait_for(self, found: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first body for which ``found`` is true, waiting (up to a minute) for it."""
        async with asyncio.timeout(60):
            while True:
                self.arrived.clear()
                match = next((b for b in self.bodies if found(b)), None)
                if match is not None:
                    return match
                await self.arrived.wait()

    async def procedure_done(self, procedure_id: str) -> dict[str, Any]:
        return await self.wait_for(
            lambda b: (
                b["eventType"] == "ProcedureStateChanged" and b["data"]["vodTaskId"] == procedure_id
            )
        )

    async def task_done(self, task_id: str) -> dict[str, Any]:
        return await self.wait_for(lambda b: b["data"].get("vodTaskId") == task_id)


@dataclass
class Vod:
    """An engine serving on loopback, and ways to talk to it."""

    settings: Settings
    keys: Keys
    db: Database
    engine: Engine
    base: str
    client: VodClient
    http: httpx.AsyncClient

    @property
    def endpoint(self) -> str:
        return f"{self.base}/v2/index.php"

    def stored(self, file_id: str) -> Path:
        """The file the engine keeps for ``file_id``."""
        folder = self.engine.storage.file_dir(file_id)
        return next(folder.glob("f0.*"))

    async def upload(self, path: Path, **options: Any) -> Uploaded:
        return await upload_file(
            path,
            endpoint=self.endpoint,
            secret_id=self.keys.vod_secret_id,
            secret_key=self.keys.vod_secret_key,
            **options,
        )

    async def process(self, request: dict[str, Any]) -> ProcessFileByProcedureResponse:
        return await self.client.process_file(ProcessFileByProcedureRequest.model_validate(request))

    def signed(
        self,
        action: str,
        params: dict[str, Any],
        *,
        method: str = "GET",
        secret_id: str | None = None,
        secret_key: str | None = None,
        timestamp: int | None = None,
        nonce: int | None = None,
    ) -> dict[str, str]:
        return signed_params(
            action,
            params,
            secret_id=secret_id or self.keys.vod_secret_id,
            secret_key=secret_key or self.keys.vod_secret_key,
            region="gz",
            timestamp=int(time.time()) if timestamp is None else timestamp,
            nonce=nonce or secrets.randbelow(2**31 - 1) + 1,
            method="POST" if method == "POST" else "GET",
            host=self.base.removeprefix("http://"),
        )

    async def send(self, params: dict[str, str], method: str = "GET") -> dict[str, Any]:
        """Send already signed parameters; the JSON answer (always HTTP 200)."""
        if method == "POST":
            answer = await self.http.post(self.endpoint, data=params)
        else:
            answer = await self.http.get(self.endpoint, params=params)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def call(self, action: str, params: dict[str, Any], **options: Any) -> dict[str, Any]:
        method = options.get("method", "GET")
        return await self.send(self.signed(action, params, **options), method)


def engine_client(base: str, keys: Keys, **options: Any) -> VodClient:
    """A VOD client for the engine serving at ``base``, signing with its keys, not retrying."""
    return VodClient(
        f"{base}/v2/index.php",
        secret_id=keys.vod_secret_id,
        secret_key=keys.vod_secret_key,
        region="gz",
        attempts=1,
        **options,
    )


@asynccontextmanager
async def running_engine(
    database_url: str,
    data_dir: Path,
    *,
    receiver: Receiver | None = None,
    media: Media | None = None,
    port: int | None = None,
    work: bool = True,
    **settings: Any,
) -> AsyncIterator[Vod]:
    """An engine on ``database_url`` serving at 127.0.0.1; events go to ``receiver`` (pull only
    without one). ``work=False`` serves the API without starting workers: tasks stay queued."""
    # In a thread: another engine of the test may be holding SQLite's write lock in this loop.
    await asyncio.to_thread(migrate.upgrade, database_url)
    async with AsyncExitStack() as stack:
        callback_url = ""
        if receiver is not None:
            callback_url = f"{await stack.enter_async_context(serving(receiver.app()))}/cb"
        port = port or free_port()
        options: dict[str, Any] = {
            "engine_callback_url": callback_url,
            "engine_workers": 2,
            "engine_callback_backoff": 0.2,
            "engine_pull_wait": 1.0,
            **settings,
        }
        config = Settings(data_dir=data_dir, database_url=database_url, port=port, **options)
        db = Database(database_url)
        stack.push_async_callback(db.close)
        engine = Engine(config, db, media=media or Media(FFmpeg(threads=2)))
        if work:
            await engine.start()
            stack.push_async_callback(engine.stop)
        base = await stack.enter_async_context(serving(Starlette(routes=engine.routes), port))
        keys = load_keys(config)
        client = engine_client(base, keys, timeout=15.0)
        stack.push_async_callback(client.aclose)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30.0))
        yield Vod(config, keys, db, engine, base, client, http)
