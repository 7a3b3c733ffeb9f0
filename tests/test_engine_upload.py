"""Uploads into the engine: the signed PUT, what it refuses (non-media, a body other than the one
signed, bad parameters, too large), recordings' times, and the two CLI commands end to end."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media
from orchestrator.store import engine as store
from orchestrator.vod.signing import sign
from tests.conftest import free_port
from tests.engine_support import Vod, running_engine
from tests.servers import vodflow_process

pytestmark = [pytest.mark.ffmpeg, pytest.mark.usefixtures("clean_env")]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("uploads") / "lecture 42.mp4"
    asyncio.run(Media(FFmpeg(threads=2)).make_test_media(path, 2.5, width=160, height=90))
    return path


async def put(
    vod: Vod, body: bytes, *, signed_body: bytes | None = None, key: str | None = None, **own: Any
) -> httpx.Response:
    """PUT /vod/upload signed like the CLI signs it; ``signed_body`` is the content it claims."""
    params = {name: str(value) for name, value in own.items()}
    params.update(
        Action="UploadFile",
        contentSha256=hashlib.sha256(body if signed_body is None else signed_body).hexdigest(),
        Timestamp=str(int(time.time())),
        Nonce=str(secrets.randbelow(2**31 - 1) + 1),
        SecretId=vod.keys.vod_secret_id,
        SignatureMethod="HmacSHA256",
    )
    host = vod.base.removeprefix("http://")
    secret = key or vod.keys.vod_secret_key
    params["Signature"] = sign(params, "PUT", host, "/vod/upload", secret, "HmacSHA256")
    return await vod.http.put(f"{vod.base}/vod/upload", params=params, content=body)


async def test_uploads_refuse_what_they_cannot_take(
    sqlite_url: str, tmp_path: Path, recording: Path
) -> None:
    async with running_engine(sqlite_url, tmp_path) as vod:
        text = b"these are lecture notes, not a video\n" * 50
        answer = await put(vod, text, fileName="notes.mp4")
        assert answer.status_code == 400
        body = answer.json()
        assert body["code"] == 1000
        assert body["message"].startswith("body: not a media file (")
        assert str(tmp_path) not in body["message"]

        media = await asyncio.to_thread(recording.read_bytes)
        swapped = await put(vod, media, signed_body=media[:-1])
        assert swapped.status_code == 401
        assert swapped.json()["code"] == 4100
        assert "not the signed contentSha256" in swapped.json()["message"]

        forged = await put(vod, media, key="not-the-key")
        assert (forged.status_code, forged.json()["code"]) == (401, 4100)

        untimed = await put(vod, media, recordStartTime=1763632800)
        assert (untimed.status_code, untimed.json()["code"]) == (400, 1000)
        assert untimed.json()["message"].startswith("parameter 'streamId': required")

        vod.engine.uploads.max_bytes = 1024
        large = await put(vod, media)
        assert large.status_code == 413
        assert "larger than the engine accepts (1024 bytes)" in large.json()["message"]

        async with vod.db.read() as conn:
            assert await store.task_events(conn, "x") == []
        assert list((vod.engine.storage.root / ".uploads").iterdir()) == []
        assert [p.name for p in vod.engine.storage.root.iterdir()] == [".uploads"]


async def test_recording_times_are_completed_from_the_duration(
    sqlite_url: str, tmp_path: Path, recording: Path
) -> None:
    async with running_engine(sqlite_url, tmp_path) as vod:
        started = await vod.upload(recording, stream_id="lecture_1", record_start=1763632800)
        ended = await vod.upload(recording, stream_id="lecture_1", record_end=1763632900)
        now = int(time.time())
        just_now = await vod.upload(recording, stream_id="lecture_1")
        plain = await vod.upload(recording)
        async with vod.db.read() as conn:
            rows = [
                await store.get_file(conn, u.file_id) for u in (started, ended, just_now, plain)
            ]
        length = math.ceil(2.5)
        times = [(r.record_start, r.record_end) for r in rows if r is not None]
        assert times[:2] == [(1763632800, 1763632800 + length), (1763632900 - length, 1763632900)]
        start, end = times[2]
        assert end is not None
        assert now <= end <= now + 5
        assert start == end - length
        assert times[3] == (None, None)
        assert [r.source_type for r in rows if r is not None] == ["Record"] * 3 + ["ServerUpload"]
        assert rows[0] is not None
        assert rows[0].name == "lecture 42.mp4"
        served = await vod.http.get(started.file_url)
        assert served.content == await asyncio.to_thread(recording.read_bytes)
        assert served.headers["access-control-allow-origin"] == "*"
        assert (
            await vod.http.get(f"{vod.base}/vod/files/{started.file_id}/.f0.mp4.part")
        ).status_code == 404
        assert (
            await vod.http.get(f"{vod.base}/vod/files/{started.file_id}/%2e%2e/%2e%2e/secrets.json")
        ).status_code == 404


def _serving(
    command: list[str], tmp_path: Path, env: dict[str, str], ready: str
) -> subprocess.Popen[str]:
    return vodflow_process(command, {**os.environ, **env}, ready=ready, cwd=tmp_path)


def _upload(recording: Path, *options: str) -> Any:
    return CliRunner().invoke(app, ["vod", "upload", str(recording), *options])


def test_the_cli_uploads_to_vodflow_engine_serve(
    tmp_path: Path, recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    env = {
        "VODFLOW_DATA_DIR": str(tmp_path),
        "VODFLOW_PORT": str(port),
        "VODFLOW_ENGINE_WORKERS": "1",
        "VODFLOW_ENGINE_CALLBACK_URL": "",
    }
    server = _serving(["engine", "serve"], tmp_path, env, "/v2/index.php")
    try:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        recorded = ("--stream-id", "lecture_5", "--record-start", "2026-11-20T10:00:00+08:00")
        result = _upload(recording, *recorded, "--no-announce")
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].startswith("fileId=")
        file_id = lines[0].removeprefix("fileId=")
        assert len(file_id) == 19
        url = lines[1].removeprefix("fileUrl=")
        assert url == f"http://127.0.0.1:{port}/vod/files/{file_id}/f0.mp4"
        assert httpx.get(url).content == recording.read_bytes()
        assert len(lines) == 2

        # The engine alone has no receiver to announce the recording to: said, and not 0.
        unheard = _upload(recording, *recorded)
        assert unheard.exit_code == 1
        assert "but announcing it as a recording of lecture_5 failed" in unheard.output
        assert f"http://127.0.0.1:{port}/callbacks/lvb answered 404" in unheard.output

        bad = _upload(recording, "--record-start", "soon")
        assert bad.exit_code == 2
        said = " ".join(bad.output.replace("│", " ").split())  # typer draws a box around it
        assert "'soon': expected Unix seconds or an ISO 8601 time" in said
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_cli_announces_a_recording_with_its_times(
    tmp_path: Path, recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VOD's NewFileUpload carries no recording times, so `vod upload` of a recording also sends
    the live service's recording callback, with the times the engine registered."""
    port = free_port()
    (tmp_path / "workflows").mkdir()
    env = {
        "VODFLOW_DATA_DIR": str(tmp_path / "data"),
        "VODFLOW_WORKFLOWS": str(tmp_path / "workflows"),
        "VODFLOW_PORT": str(port),
        "VODFLOW_ENGINE_WORKERS": "1",
        "VODFLOW_LVB_CALLBACK_KEY": "live-key",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["db", "upgrade"]).exit_code == 0
    server = _serving(["serve"], tmp_path, env, "/healthz")
    try:
        result = _upload(recording, "--stream-id", "lecture_6", "--record-start", "1763632800")
        assert result.exit_code == 0, result.output
        file_id = result.output.splitlines()[0].removeprefix("fileId=")
        end = 1763632800 + math.ceil(2.5)
        assert f"recording of lecture_6 from 1763632800 to {end}" in result.output
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            events = httpx.get(f"{base}/api/inbox", params={"fileId": file_id}).json()["events"]
            if {e["source"] for e in events} == {"lvb", "vod"}:
                break
            assert time.monotonic() < deadline, events
            time.sleep(0.2)
        (live,) = [e for e in events if e["source"] == "lvb"]
        body = json.loads(live["body"])
        assert (body["stream_id"], body["start_time"], body["end_time"]) == (
            "lecture_6",
            1763632800,
            end,
        )
        assert live["status"] != "invalid"  # signed with the live key and accepted
    finally:
        server.terminate()
        server.wait(timeout=10)
