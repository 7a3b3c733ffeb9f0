"""`vodflow demo`: one recording through the whole pipeline, watched step by step.

It makes a short test recording with FFmpeg, uploads it to the VOD engine as a live recording of
stream ``demo`` (the engine announces it with NewFileUpload), sends the live service's
recording-finished callback for it, then follows the run it starts with a progress bar per step
until the outputs are ready, and prints their URLs and the dashboard page.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from orchestrator.config import Settings
from orchestrator.console import output_lines
from orchestrator.engine.media import Media
from orchestrator.engine.upload import Uploaded, upload_file
from orchestrator.keys import load_keys

console = Console(soft_wrap=True)  # a URL stays on one line, piped too
STREAM = "demo"


class DemoError(Exception):
    pass


async def run_demo(settings: Settings, seconds: float = 20.0, within: float = 300.0) -> str:
    """Returns the run's final status."""
    keys = load_keys(settings)
    base = settings.base_url
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=_auth(settings)) as http:
        try:
            (await http.get("/healthz")).raise_for_status()
        except httpx.HTTPError:
            raise DemoError(f"no vodflow at {base}: start it first (make run)") from None
        folder = Path(settings.data_dir) / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        recording = folder / f"demo-{int(time.time())}.mp4"
        with console.status("making a test recording with FFmpeg"):
            await Media().make_test_media(recording, seconds, width=1280, height=720, fps=30)
        end = int(time.time())
        start = end - int(seconds)
        with console.status("uploading it to VOD as a recording of stream 'demo'"):
            uploaded = await upload_file(
                recording,
                endpoint=settings.vod_url,
                secret_id=keys.vod_secret_id,
                secret_key=keys.vod_secret_key,
                stream_id=STREAM,
                record_start=start,
                record_end=end,
            )
        console.print(f"recording [bold]{uploaded.file_id}[/] stored: {uploaded.file_url}")
        try:
            await announce_recording(settings, uploaded, http)
        except AnnounceError as exc:
            raise DemoError(f"the recording-finished callback was refused: {exc}") from None
        run_id = await _find_run(http, uploaded.file_id, within)
        run = await _follow(http, run_id, within)
    _report(run, base)
    return str(run["status"])


def _auth(settings: Settings) -> dict[str, str]:
    token = settings.api_token or settings.api_read_token
    return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}


def _lvb_key(settings: Settings) -> str:
    return settings.lvb_callback_key.get_secret_value() if settings.lvb_callback_key else ""


class AnnounceError(Exception):
    pass


async def announce_recording(
    settings: Settings, uploaded: Uploaded, http: httpx.AsyncClient | None = None
) -> str:
    """Send this vodflow the live service's recording callback for a recording the engine
    stored, with the recording times the engine registered; returns the URL it went to.

    On Tencent Cloud the live service sends it when it records into VOD; VOD's own NewFileUpload
    carries no recording times, and a stream session's window needs them (see
    ``triggers.session_context``). Raises ``AnnounceError`` saying why it was not accepted.
    """
    start, end = uploaded.record_start, uploaded.record_end
    if uploaded.stream_id is None or start is None or end is None:
        raise AnnounceError(f"file {uploaded.file_id} is not a recording with recording times")
    keys = load_keys(settings)
    url = f"{settings.base_url}/callbacks/lvb"
    body = recording_finished(uploaded.stream_id, uploaded.file_id, start, end, _lvb_key(settings))
    client = http or httpx.AsyncClient(timeout=30)
    try:
        answer = await client.post(url, params={"token": keys.callback_token}, json=body)
    except httpx.HTTPError as exc:
        raise AnnounceError(f"cannot reach {url}: {exc}") from None
    finally:
        if http is None:
            await client.aclose()
    if answer.status_code != 200:
        raise AnnounceError(f"{url} answered {answer.status_code}: {answer.text[:200]}")
    return url


def recording_finished(
    stream_id: str, file_id: str, start: int, end: int, key: str
) -> dict[str, Any]:
    """The live service's recording callback (event_type 100), signed with ``key``."""
    t = int(time.time()) + 600
    return {
        "event_type": 100,
        "stream_id": stream_id,
        "channel_id": stream_id,
        "file_id": file_id,
        "start_time": start,
        "end_time": end,
        "duration": end - start,
        "file_format": "mp4",
        "t": t,
        # MD5 is the live service's documented scheme, not a choice of ours.
        "sign": hashlib.md5(f"{key}{t}".encode()).hexdigest(),  # noqa: S324
    }


async def _find_run(http: httpx.AsyncClient, file_id: str, within: float) -> str:
    deadline = time.monotonic() + within
    with console.status("waiting for a workflow to start a run for it"):
        while time.monotonic() < deadline:
            runs = (await _get(http, "/api/runs", deadline, {"fileId": file_id}))["runs"]
            if runs:
                return str(runs[0]["id"])
            await asyncio.sleep(0.3)
    raise DemoError(
        f"no run started for file {file_id} within {within:.0f}s: does a workflow in "
        "workflows/ have a recording.finished trigger matching stream 'demo'?"
    )


async def _follow(http: httpx.AsyncClient, run_id: str, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    bars: dict[str, TaskID] = {}
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.fields[status]:<18}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        while True:
            run: dict[str, Any] = await _get(http, f"/api/runs/{run_id}", deadline)
            for step in run["steps"]:
                total, done = _step_progress(step)
                if step["name"] not in bars:
                    bars[step["name"]] = progress.add_task(
                        f"{step['name']} ({step['kind']})", total=total, status=step["status"]
                    )
                progress.update(
                    bars[step["name"]], total=total, completed=done, status=step["status"]
                )
            if run["status"] in ("succeeded", "failed", "cancelled"):
                return run
            if time.monotonic() > deadline:
                raise DemoError(f"run {run_id} did not finish within {within:.0f}s")
            await asyncio.sleep(0.3)


async def _get(
    http: httpx.AsyncClient, path: str, deadline: float, params: dict[str, str] | None = None
) -> Any:
    """An API answer. A vodflow that stops answering (restarting, say: it picks its runs up
    again) is asked again until the deadline, then named with what to do."""
    while True:
        try:
            return (await http.get(path, params=params)).json()
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise DemoError(
                    f"vodflow at {http.base_url} stopped answering ({exc or type(exc).__name__}); "
                    "once it is back, `vodflow runs --stream-id demo` shows how the run went"
                ) from None
            await asyncio.sleep(1.0)


def _step_progress(step: dict[str, Any]) -> tuple[int, int]:
    """(total, done): submit, each task, the output check."""
    tasks = [t for t in step["tasks"] if t["awaited"]]
    total = 2 + len(tasks)
    done = 1 if step["status"] not in ("pending", "submitting") else 0
    done += sum(t["status"] == "succeeded" for t in tasks)
    if step["status"] == "succeeded":
        done = total
    return total, done


def _report(run: dict[str, Any], base: str) -> None:
    colour = "green" if run["status"] == "succeeded" else "red"
    console.print(f"run {run['id']}: [{colour}]{run['status']}[/]")
    if run["error"]:
        console.print(f"[red]{run['error']}[/]")
    for line in output_lines(run):
        console.print(f"  {line}", highlight=False)
    console.print(f"dashboard: {base}/runs/{run['id']}")
