"""The whole product end to end: vodflow and its embedded engine over real HTTP on loopback, real
FFmpeg, real outputs. A lecture stream's recordings become one replay; callbacks come early, twice,
out of order or not at all; the engine throttles; the orchestrator is killed (-9) between
VOD's answer and recording it, and recovers without a second job."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.app import create_app
from orchestrator.config import load_settings
from orchestrator.demo import recording_finished
from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.upload import Uploaded, upload_file
from orchestrator.keys import load_keys
from orchestrator.store import migrate
from tests.conftest import ROOT, free_port
from tests.engine_support import Recordings, make_recordings
from tests.servers import serving

pytestmark = [pytest.mark.usefixtures("clean_env"), pytest.mark.ffmpeg, pytest.mark.slow]
TOKEN = "e2e-token"
LVB_KEY = "e2e-live-key"

TRANSCODE = """
name: transcode
triggers: [{type: recording.finished}, {type: manual, params: [fileId]}]
retry: {max_attempts: 2, backoff: {initial: 500ms, jitter: 0}}
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    expected: 1s
"""


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Recordings:
    return asyncio.run(make_recordings(tmp_path_factory.mktemp("recordings")))


@dataclass
class Vodflow:
    base: str
    http: httpx.AsyncClient
    secret_id: str
    secret_key: str

    async def upload(self, path: Path, **options: Any) -> Uploaded:
        return await upload_file(
            path,
            endpoint=f"{self.base}/v2/index.php",
            secret_id=self.secret_id,
            secret_key=self.secret_key,
            **options,
        )

    async def callback(self, body: dict[str, Any], path: str = "/callbacks/vod") -> httpx.Response:
        return await self.http.post(f"{self.base}{path}?token={TOKEN}", json=body)

    async def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = (await self.http.get(f"{self.base}/api/runs/{run_id}")).json()
        return result

    async def trigger(self, workflow: str, **params: Any) -> str:
        answer = await self.http.post(
            f"{self.base}/api/runs", json={"workflow": workflow, "params": params}
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["runId"])

    async def until(self, check: Callable[[], Any], within: float = 60.0) -> Any:
        deadline = time.monotonic() + within
        while True:
            value = await check()
            if value:
                return value
            assert time.monotonic() < deadline, "timed out waiting"
            await asyncio.sleep(0.1)

    async def finished(self, run_id: str, within: float = 60.0) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            run = await self.run(run_id)
            return run if run["status"] in ("succeeded", "failed", "cancelled") else None

        result: dict[str, Any] = await self.until(done, within)
        return result


def settings_for(tmp: Path, url: str, port: int, workflows: Path, **extra: Any) -> dict[str, Any]:
    return {
        "data_dir": tmp / "data",
        "database_url": url,
        "workflows": workflows,
        "port": port,
        "callback_token": TOKEN,
        "lvb_callback_key": LVB_KEY,
        "sweep_interval": 0.3,
        "task_poll_after": "2s",
        "engine_workers": 2,
        **extra,
    }


@asynccontextmanager
async def vodflow(
    tmp: Path, url: str, workflows: dict[str, str], port: int | None = None, **extra: Any
) -> AsyncIterator[Vodflow]:
    """vodflow with its embedded engine, in this process, on a free port."""
    folder = tmp / "workflows"
    folder.mkdir(exist_ok=True)
    for name, text in workflows.items():
        (folder / f"{name}.yaml").write_text(text)
    migrate.upgrade(url)
    port = port or free_port()
    settings = load_settings(**settings_for(tmp, url, port, folder, **extra))
    keys = load_keys(settings)
    async with (
        serving(create_app(settings), port) as base,
        httpx.AsyncClient(timeout=30) as http,
    ):
        yield Vodflow(base, http, keys.vod_secret_id, keys.vod_secret_key)


def lvb_recording(file_id: str, stream_id: str, start: int, end: int) -> dict[str, Any]:
    return recording_finished(stream_id, file_id, start, end, LVB_KEY)


async def test_a_lecture_session_becomes_one_replay_with_real_outputs(
    tmp_path: Path, sqlite_url: str, recordings: Recordings
) -> None:
    source = (ROOT / "workflows" / "lecture-replay.yaml").read_text()
    assert "quiet: 5m" in source
    port = free_port()
    sink = f"http://127.0.0.1:{port}/hooks/sink"
    # The shipped workflow, with the quiet period shortened for a test; its webhook goes to the
    # built-in sink of whatever vodflow runs it (a path on its own URL).
    assert 'url: "/hooks/sink"' in source
    replay = source.replace("quiet: 5m", "quiet: 2s")
    async with vodflow(tmp_path, sqlite_url, {"lecture-replay": replay}, port=port) as app:
        start = int(time.time()) - 60
        ids = []
        for n, path in enumerate(recordings.segments):
            begin, end = start + 4 * n, start + 4 * n + 4
            up = await app.upload(path, stream_id="lecture_7", record_start=begin, record_end=end)
            ids.append(up.file_id)
            # The live service announces the same recording, with its recording times.
            answer = await app.callback(
                lvb_recording(up.file_id, "lecture_7", begin, end), "/callbacks/lvb"
            )
            assert answer.status_code == 200, answer.text

        async def one_run() -> str | None:
            runs = (await app.http.get(f"{app.base}/api/runs")).json()["runs"]
            return runs[0]["id"] if runs else None

        run_id = await app.until(one_run, 30)
        run = await app.finished(run_id, 120)
        assert run["status"] == "succeeded", run["error"]
        assert run["context"]["fileIds"] == ids
        assert (run["context"]["startTime"], run["context"]["endTime"]) == (start, start + 12)
        replay_step, publish = run["steps"]
        outputs = replay_step["outputs"]
        assert outputs["fileId"] not in ids  # the new file the clips were joined into
        assert {t["kind"] for t in replay_step["tasks"]} >= {"clip", "concat", "transcode"}
        mp4 = outputs["play"][0]["url"]
        duration = (await _probe(mp4)).duration
        assert duration == pytest.approx(12, abs=0.6)
        vtt = (await app.http.get(outputs["sprites"][0]["webVttUrl"])).text
        assert vtt.startswith("WEBVTT")
        assert publish["outputs"]["status"] == 200
        deliveries = (await app.http.get(sink)).json()["deliveries"]
        assert deliveries[0]["payload"]["data"]["runId"] == run_id
        assert deliveries[0]["payload"]["data"]["replayFileId"] == outputs["fileId"]
        assert deliveries[0]["payload"]["type"] == "lecture.replay.ready"


async def _probe(url: str) -> Any:
    from orchestrator.engine.ffmpeg import parse_probe

    result = await FFmpeg().run(["-i", url], loglevel="info", check=False)
    return parse_probe(result.stderr, Path(url), 0)


class Proxy:
    """Stands between vodflow and the engine: can hold VOD's answers back, or kill vodflow at
    the moment VOD has accepted a request and before vodflow hears of it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.delay = 0.0
        self.kill: subprocess.Popen[bytes] | None = None
        self.accepted: list[dict[str, Any]] = []
        self.http = httpx.AsyncClient(timeout=60)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("host", "content-type")
        }
        answer = await self.http.request(
            request.method,
            f"{self.target}{request.url.path}",
            params=request.query_params,
            content=body,
            headers=headers,
        )
        if b"ProcessFileByProcedure" in body + str(request.query_params).encode():
            self.accepted.append(answer.json())
            if self.kill is not None and self.kill.poll() is None:
                self.kill.send_signal(signal.SIGKILL)  # VOD accepted it; vodflow never hears
                self.kill.wait()
                self.kill = None
                return Response(status_code=502)
            await asyncio.sleep(self.delay)
        return Response(answer.content, answer.status_code, media_type="application/json")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v2/index.php", self.endpoint, methods=["GET", "POST"])])


async def test_callbacks_before_the_answer_and_resent_out_of_order(
    tmp_path: Path, sqlite_url: str, recordings: Recordings
) -> None:
    port = free_port()
    proxy = Proxy(f"http://127.0.0.1:{port}")
    async with serving(proxy.app()) as proxy_base:
        extra = {"port": port, "vod_endpoint": f"{proxy_base}/v2/index.php"}
        async with vodflow(tmp_path, sqlite_url, {"transcode": TRANSCODE}, **extra) as app:
            up = await app.upload(recordings.six)
            proxy.delay = 4.0  # VOD's answer arrives after the tasks' callbacks
            run_id = await app.trigger("transcode", fileId=up.file_id)
            run = await app.finished(run_id, 60)
            assert run["status"] == "succeeded", run["error"]
            notes = {e["eventType"]: e["note"] for e in run["events"]}
            early = (await app.http.get(f"{app.base}/api/inbox")).json()["events"]
            task_events = [e for e in early if e["taskId"] and e["runId"] == run_id]
            assert task_events
            # The procedure's event (its ID was never answered) joins the run its tasks belong
            # to, as a no-op: the tasks' own events applied their results.
            procedure = [e for e in task_events if e["eventType"] == "ProcedureStateChanged"]
            assert [e["status"] for e in procedure] == ["ignored"], notes
            assert "recorded, not applied" in procedure[0]["note"]
            assert all(e["status"] == "applied" for e in task_events if e not in procedure), notes
            assert not [e for e in early if e["status"] == "orphan"]
            assert any(e["receivedAt"] < run["steps"][0]["submittedAt"] for e in task_events), (
                "the callbacks should have come before the answer was recorded"
            )
            # Every callback sent again, in reverse order: nothing changes.
            before = len(run["history"])
            for event in reversed(task_events):
                again = await app.callback(json.loads(event["body"]))
                assert again.json()["message"].startswith("duplicate")
            await asyncio.sleep(0.5)
            assert len((await app.run(run_id))["history"]) == before
            assert len(proxy.accepted) == 1


@pytest.mark.parametrize("mode", ["task query", "PullEvent"])
async def test_lost_callbacks_are_recovered(
    tmp_path: Path, sqlite_url: str, recordings: Recordings, mode: str
) -> None:
    # The engine sends no callbacks: vodflow must find out by asking (GetTaskInfo) or by
    # pulling events (reliable-callback mode).
    extra: dict[str, Any] = {"engine_callback_url": ""}
    workflow = TRANSCODE
    if mode == "PullEvent":
        extra["reliable_callbacks"] = True
        workflow = TRANSCODE.replace("expected: 1s", "expected: 10m")  # only pulling finds them
    async with vodflow(tmp_path, sqlite_url, {"transcode": workflow}, **extra) as app:
        up = await app.upload(recordings.six)
        run_id = await app.trigger("transcode", fileId=up.file_id)
        run = await app.finished(run_id, 60)
        assert run["status"] == "succeeded", run["error"]
        sources = {e["source"] for e in run["events"] if e["source"] != "manual"}
        assert sources == ({"query"} if mode == "task query" else {"pull"})
        stats = (await app.http.get(f"{app.base}/api/stats")).json()
        assert "orphan" not in stats["inbox"], stats["inbox"]


async def test_the_engines_frequency_limit_backs_the_step_off(
    tmp_path: Path, sqlite_url: str, recordings: Recordings
) -> None:
    extra = {"engine_rate_per_minute": 1}
    async with vodflow(tmp_path, sqlite_url, {"transcode": TRANSCODE}, **extra) as app:
        up = await app.upload(recordings.six)
        first = await app.trigger("transcode", fileId=up.file_id)
        second = await app.trigger("transcode", fileId=up.file_id)

        async def throttled() -> dict[str, Any] | None:
            runs = [await app.run(first), await app.run(second)]
            return next((r for r in runs if r["status"] == "retrying"), None)

        run = await app.until(throttled, 30)
        reasons = [h["reason"] for h in run["history"]]
        assert any("frequency_limit (code 4400)" in r for r in reasons), reasons
        assert run["steps"][0]["attempt"] == 1  # backing off spends no attempt
        assert run["health"] == "retrying"


async def test_a_crash_between_vods_answer_and_its_record_makes_no_second_job(
    tmp_path: Path, sqlite_url: str, recordings: Recordings
) -> None:
    """vodflow is killed (-9) right after the engine accepted ProcessFileByProcedure; restarted,
    it finds the job VOD already runs instead of starting another."""
    engine_port, orch_port = free_port(), free_port()
    engine_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate.upgrade(engine_url)
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "transcode.yaml").write_text(TRANSCODE)
    engine_settings = load_settings(
        **settings_for(
            tmp_path,
            engine_url,
            engine_port,
            tmp_path / "workflows",
            engine_callback_url=f"http://127.0.0.1:{orch_port}/callbacks/vod?token={TOKEN}",
            engine_callback_backoff=0.5,
        )
    )
    keys = load_keys(engine_settings)
    proxy = Proxy(f"http://127.0.0.1:{engine_port}")
    orch_url = f"sqlite:///{tmp_path / 'vodflow.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VODFLOW_")},
        "VODFLOW_DATA_DIR": str(tmp_path / "data"),
        "VODFLOW_DATABASE_URL": orch_url,
        "VODFLOW_WORKFLOWS": str(tmp_path / "workflows"),
        "VODFLOW_PORT": str(orch_port),
        "VODFLOW_ENGINE": "false",
        "VODFLOW_CALLBACK_TOKEN": TOKEN,
        "VODFLOW_OUTBOX_LEASE": "2",
        "VODFLOW_SWEEP_INTERVAL": "0.3",
        "VODFLOW_TASK_POLL_AFTER": "2s",
        # The engine serves outputs on its own port, which vodflow calls only through the
        # proxy: allowed as an operator would allow a self-hosted engine on the local network.
        "VODFLOW_VERIFY_ALLOW_HOSTS": f"127.0.0.1:{engine_port}",
    }
    migrate.upgrade(orch_url)

    def start_vodflow() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async with (
        serving(
            create_app(engine_settings.model_copy(update={"workflows": tmp_path})), engine_port
        ),
        serving(proxy.app()) as proxy_base,
        httpx.AsyncClient(timeout=30) as http,
    ):
        env["VODFLOW_VOD_ENDPOINT"] = f"{proxy_base}/v2/index.php"
        env["VODFLOW_VOD_SECRET_ID"] = keys.vod_secret_id
        env["VODFLOW_VOD_SECRET_KEY"] = keys.vod_secret_key
        app = Vodflow(
            f"http://127.0.0.1:{orch_port}", http, keys.vod_secret_id, keys.vod_secret_key
        )
        up = await upload_file(
            recordings.long,
            endpoint=f"http://127.0.0.1:{engine_port}/v2/index.php",
            secret_id=keys.vod_secret_id,
            secret_key=keys.vod_secret_key,
        )
        process = start_vodflow()
        try:
            await app.until(_healthy(http, app.base), 30)
            proxy.kill = process
            run_id = await app.trigger("transcode", fileId=up.file_id)
            await app.until(_dead(process), 30)
            assert len(proxy.accepted) == 1  # VOD took the job; vodflow died before hearing
            process = start_vodflow()
            await app.until(_healthy(http, app.base), 30)
            run = await app.finished(run_id, 90)
        finally:
            process.kill()
            process.wait()
    assert run["status"] == "succeeded", run["error"]
    assert len(proxy.accepted) == 1, "a second ProcessFileByProcedure reached VOD"
    reasons = " | ".join(h["reason"] for h in run["history"])
    assert "recovered tasks" in reasons


def _healthy(http: httpx.AsyncClient, base: str) -> Callable[[], Any]:
    async def check() -> bool:
        try:
            return (await http.get(f"{base}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    return check


def _dead(process: subprocess.Popen[bytes]) -> Callable[[], Any]:
    async def check() -> bool:
        return process.poll() is not None

    return check


async def test_demo_sends_a_recording_through_and_prints_its_outputs(
    tmp_path: Path, sqlite_url: str
) -> None:
    workflow = (ROOT / "workflows" / "recording-transcode.yaml").read_text()
    port = free_port()
    async with vodflow(tmp_path, sqlite_url, {"recording-transcode": workflow}, port=port):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VODFLOW_")},
            "VODFLOW_DATA_DIR": str(tmp_path / "data"),
            "VODFLOW_PORT": str(port),
            # the server's own, not those of the data directory (this server was given them)
            "VODFLOW_CALLBACK_TOKEN": TOKEN,
            "VODFLOW_LVB_CALLBACK_KEY": LVB_KEY,
            "COLUMNS": "200",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.cli", "demo", "--seconds", "6",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode()
    assert proc.returncode == 0, text
    assert ": succeeded" in text
    assert "transcode: video 854x480 http://127.0.0.1:" in text
    assert "sprite index" in text
    assert f"dashboard: http://127.0.0.1:{port}/runs/run_" in text
