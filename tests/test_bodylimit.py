"""Request bodies beyond VODFLOW_MAX_BODY_BYTES are refused before any route reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.config import Settings
from orchestrator.engine import create_engine_app
from orchestrator.keys import load_keys
from orchestrator.store import migrate
from tests.conftest import free_port
from tests.engine_support import engine_client
from tests.harness import running_service
from tests.servers import serving

pytestmark = pytest.mark.usefixtures("clean_env")

LIMIT = 4096
WORKFLOW = """
name: transcode
triggers: [{type: manual, params: [fileId]}]
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
"""


async def _chunks(size: int) -> AsyncIterator[bytes]:
    """A body of ``size`` bytes sent chunked (no Content-Length)."""
    for _ in range(size // 1024):
        yield b"x" * 1024


async def test_bodies_beyond_the_limit_are_refused_on_every_route(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_service(
        tmp_path, sqlite_url, {"transcode": WORKFLOW}, max_body_bytes=LIMIT
    ) as service:
        big = b"{" + b" " * LIMIT + b"}"
        for path in ("/hooks/sink", "/api/runs"):
            for body in (big, _chunks(LIMIT + 1024)):
                answer = await service.http.post(f"{service.base}{path}", content=body)
                assert answer.status_code == 413, (path, answer.text)
                assert answer.json()["error"] == (
                    f"the body of POST {path} is larger than this server accepts "
                    f"(VODFLOW_MAX_BODY_BYTES: at most {LIMIT} bytes)"
                )
        # Within the limit the route gets the whole body, streamed or not.
        sink = await service.http.post(f"{service.base}/hooks/sink", content=_chunks(LIMIT))
        assert sink.status_code == 400
        assert sink.json()["error"].startswith("signature check failed")
        started = await service.http.post(
            f"{service.base}/api/runs", json={"workflow": "transcode", "params": {"fileId": "1"}}
        )
        assert started.status_code == 201
        # The callbacks keep their own limit, with their own answer.
        refused = await service.http.post(
            f"{service.base}/callbacks/vod?token=test-token", content=big
        )
        assert refused.status_code == 413
        assert refused.json()["error"] == f"the body is {len(big)} bytes; at most {LIMIT} accepted"


async def test_the_engine_alone_refuses_api_bodies_beyond_the_limit(
    sqlite_url: str, tmp_path: Path
) -> None:
    # The API's parameters (and signature) are in a form body, read before anything is known
    # about its sender.
    migrate.upgrade(sqlite_url)
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=sqlite_url,
        port=port,
        engine_callback_url="",
        max_body_bytes=LIMIT,
    )
    async with serving(create_engine_app(settings), port) as base:
        keys = load_keys(settings)
        async with engine_client(base, keys) as client:
            endpoint = f"{base}/v2/index.php"
            answer = await client.http.post(endpoint, data={"x": "y" * LIMIT})
            assert answer.status_code == 413
            assert "at most 4096 bytes" in answer.json()["error"]
            files = {"x": ("x.bin", b"y" * (LIMIT + 1))}
            assert (await client.http.post(endpoint, files=files)).status_code == 413
            # A signed request within the limit is served.
            assert (await client.get_task_list("FINISHED")).task_list == ()
