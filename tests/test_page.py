"""The dashboard page. Over plain HTTP: what its routes answer (markup, hashed static files, the
URL echoed safely). In a real headless Chromium (Debian's, driven by Playwright): runs appear and
progress live, failed and stalled runs say why and can be retried, the API token is asked for
once, and runs of the real engine play their MP4 and HLS outputs, with a sprite scrubber driven
by the sprite's WebVTT.

Chromium missing: the browser tests skip, except with CI=true, where they fail (like PostgreSQL's).
Screenshots of both pages go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn, TypeVar

import httpx
import pytest
from playwright.async_api import (
    Browser,
    Locator,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from orchestrator.app import create_app
from orchestrator.config import Settings, load_settings
from orchestrator.demo import recording_finished
from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media
from orchestrator.engine.upload import upload_file
from orchestrator.keys import load_keys
from orchestrator.store import migrate
from orchestrator.verify import parse_vtt
from tests.conftest import IN_CI, ROOT, free_port
from tests.fakevod import new_file_upload, sprite_complete, transcode_complete
from tests.harness import TIMES_OUT, Service, run_with_a_failed_timer, running_service
from tests.servers import serving

T = TypeVar("T")
pytestmark = pytest.mark.usefixtures("clean_env")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
ARTIFACTS = ROOT / "test-artifacts"
CLIP_SECONDS = 12.0  # two sprite cues at the built-in 10 s interval

WORKFLOW = """
name: transcode
triggers: [{type: recording.finished}, {type: manual, params: [fileId]}]
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    expected: 1h
    verify: false
"""
STALLS = """
name: stalls
triggers: [{type: manual, params: [fileId]}]
steps:
  - name: transcode
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeAndSprite}
    expected: 1s
    verify: false
"""

HLS_WORKFLOW = """
name: recording-hls
triggers: [{type: recording.finished}]
steps:
  - name: package
    process: {fileId: "{{ trigger.fileId }}", procedure: TranscodeHLS}
"""

expect.set_options(timeout=15_000)


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"no Chromium at {CHROMIUM} (Debian package chromium; make test installs it)"
    if IN_CI:
        pytest.fail(f"{message}: with CI=true browser tests must run, not skip")
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def service(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Service]:
    workflows = {"transcode": WORKFLOW, "stalls": STALLS}
    async with running_service(tmp_path, sqlite_url, workflows) as service:
        yield service


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A page at ``url`` and the script errors it raises. FakeVod's output URLs point at
    files.example: those requests are refused here, never sent."""
    page = await browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.route("http://files.example/**", lambda route: route.abort())
    await page.goto(url)
    return page, errors


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name))


async def fits_the_viewport(page: Page) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT["width"], f"the page scrolls sideways at 1280 px ({width} px wide)"


async def test_pages_are_markup_and_static_files_only(service: Service) -> None:
    """No browser needed: what the page routes answer, and that they echo the URL safely."""
    runs = await service.http.get(f"{service.base}/", params={"q": "<b>x</b>", "status": "nope"})
    assert runs.status_code == 200
    assert "&lt;b&gt;x&lt;/b&gt;" in runs.text
    assert "<b>x</b>" not in runs.text
    assert 'value="nope"' not in runs.text  # an unknown status is not reflected
    assert "script-src 'self'" in runs.headers["content-security-policy"]
    script = re.search(r'src="(/static/dashboard\.js\?v=[0-9a-f]{10})"', runs.text)
    assert script is not None
    versioned = await service.http.get(service.base + script[1])
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert versioned.headers["content-type"].startswith("text/javascript")
    plain = await service.http.get(f"{service.base}/static/dashboard.js")
    assert plain.headers["cache-control"] == "no-cache"
    assert (await service.http.get(f"{service.base}/static/nope.js")).status_code == 404
    run = await service.http.get(f"{service.base}/runs/run_x")
    assert 'data-run-id="run_x"' in run.text
    # The page says nothing the API keeps behind its token; here the API is open.
    assert 'data-auth="open"' in run.text


def test_every_page_file_ships_in_the_package() -> None:
    """A template or static file missing from the wheel would break the installed page."""
    package = ROOT / "orchestrator"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["orchestrator"]
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    needed = {
        path
        for folder in ("templates", "static")
        for path in (package / folder).rglob("*")
        if path.is_file()
    }
    assert needed - shipped == set()


@pytest.mark.browser
async def test_a_new_run_appears_and_progresses_live(service: Service, browser: Browser) -> None:
    page, errors = await open_page(browser, f"{service.base}/")
    await expect(page.locator("#live")).to_have_text("live")
    await expect(page.locator("#empty")).to_be_visible()
    await page.evaluate("window.stillTheSamePage = true")

    await service.callback(new_file_upload("f1", stream_id="lecture_9"))
    await service.submitted(1)
    sent = service.vod.submitted[-1]
    row = page.locator("tr.run", has_text="lecture_9")
    await expect(row.locator('[data-f="status"]')).to_have_text("◔ awaiting callback")
    await expect(row.locator('[data-f="file"]')).to_have_text("f1")
    run_id = await row.get_attribute("data-run-id")
    assert run_id is not None
    before = await row.bounding_box()

    run_page, run_errors = await open_page(browser, f"{service.base}/runs/{run_id}")
    await expect(run_page.locator("#run-status")).to_contain_text("awaiting callback")
    await expect(run_page.locator("#steps .tasks tbody tr")).to_have_count(2)
    await expect(run_page.locator("#live")).to_have_text("live")

    await service.callback(transcode_complete(sent.tasks["transcode"], "f1"))
    await expect(run_page.locator("#history li")).to_have_count(3)
    await service.callback(sprite_complete(sent.tasks["imageSprite"], "f1"))

    await expect(row.locator('[data-f="status"]')).to_have_text("✓ succeeded")
    await expect(page.locator('#stat-runs [data-status="succeeded"] .n')).to_have_text("1")
    assert await row.bounding_box() == before, "the row moved when it updated"
    assert await page.evaluate("window.stillTheSamePage") is True, "the page reloaded"
    await expect(run_page.locator("#run-status")).to_contain_text("succeeded")
    await expect(run_page.locator("#history li").last).to_contain_text("run succeeded")
    await expect(run_page.locator("#events tr")).to_have_count(3)  # NewFileUpload and two tasks
    await expect(run_page.locator("#cancel")).to_be_disabled()

    await fits_the_viewport(page)
    await screenshot(page, "runs.png")
    assert errors == run_errors == []

    missing, _ = await open_page(browser, f"{service.base}/runs/run_nosuch")
    await expect(missing.locator("#run-workflow")).to_have_text("No such run")
    await expect(missing.locator("#run-status")).to_be_hidden()
    await expect(missing.locator("#steps")).to_have_text("Nothing to show.")


@pytest.mark.browser
async def test_failed_and_stalled_runs_say_why_and_retry(
    service: Service, browser: Browser
) -> None:
    service.vod.script.append(lambda _: {"code": 10008, "message": "no such file f2"})
    await service.callback(new_file_upload("f2"))
    failed = await service.status_is(await service.one_run(), "failed")
    created = await service.http.post(
        f"{service.base}/api/runs", json={"workflow": "stalls", "params": {"fileId": "s3"}}
    )
    stalled_id = created.json()["runId"]

    async def overdue() -> bool:
        return bool((await service.run(stalled_id))["health"] == "overdue")

    await service.wait(overdue)
    page, errors = await open_page(browser, f"{service.base}/?status=attention")
    await expect(page.locator("#filter-status")).to_have_value("attention")

    stalled = page.locator(f'tr[data-run-id="{stalled_id}"]')
    await expect(stalled.locator('[data-f="status"]')).to_have_text("⚠ overdue")
    stalled_reason = stalled.locator('[data-f="reason"]')
    await expect(stalled_reason).to_contain_text("no callback for the transcode task")
    await expect(stalled).to_have_class("run attention")

    row = page.locator(f'tr[data-run-id="{failed["id"]}"]')
    await expect(row.locator('[data-f="status"]')).to_have_text("✕ failed")
    await expect(row.locator('[data-f="reason"]')).to_contain_text("10008")
    await screenshot(page, "runs-attention.png")
    retry = row.get_by_role("button", name=f"Retry run {failed['id']}")
    await expect(retry).to_be_visible()
    await retry.click()
    await expect(page.locator("#message")).to_contain_text("retried by api:dashboard")
    await expect(row.locator('[data-f="status"]')).to_have_text("◔ awaiting callback")
    run = await service.run(failed["id"])
    retries = [h for h in run["history"] if h["input"] == "manual_retry"]
    assert len(retries) == 1
    assert "api:dashboard" in retries[0]["reason"]
    assert len(service.vod.submitted) == 2  # the stalled run's, then the retry's

    await page.select_option("#filter-status", "failed")
    assert page.url.endswith("/?status=failed")
    await expect(page.locator("tr.run")).to_have_count(0)
    assert errors == []


@pytest.mark.browser
async def test_the_page_asks_for_the_api_token_once(
    tmp_path: Path, sqlite_url: str, browser: Browser
) -> None:
    tokens = {"api_token": "admin-secret", "api_read_token": "read-secret"}
    async with running_service(tmp_path, sqlite_url, {"transcode": WORKFLOW}, **tokens) as service:
        service.http.headers["Authorization"] = "Bearer admin-secret"
        await service.http.post(
            f"{service.base}/api/runs", json={"workflow": "transcode", "params": {"fileId": "t1"}}
        )
        page, errors = await open_page(browser, f"{service.base}/")
        dialog = page.locator("#token-dialog")
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("Token").fill("wrong")
        await dialog.get_by_role("button", name="Save").click()
        await expect(page.locator("#token-error")).to_have_text("unknown API token")
        await dialog.get_by_label("Token").fill("admin-secret")
        await dialog.get_by_role("button", name="Save").click()
        await expect(page.locator("tr.run", has_text="t1")).to_be_visible()
        await expect(page.locator("#live")).to_have_text("live")  # EventSource: ?access_token=

        await page.reload()
        await expect(page.locator("tr.run", has_text="t1")).to_be_visible()
        await expect(dialog).to_be_hidden()
        await page.close()  # its event stream would hold the server's shutdown
        assert errors == []


@pytest.mark.browser
async def test_stream_sessions_collecting_recordings_are_shown_before_their_run(
    tmp_path: Path, sqlite_url: str, browser: Browser
) -> None:
    session = """
name: session
triggers: [{type: stream.session, quiet: 10m}]
steps:
  - name: join
    process:
      gen: {concat: {fileIdList: "{{ trigger.fileIds }}", dstType: mp4}}
      procedure: TranscodeAndSprite
    verify: false
"""
    async with running_service(tmp_path, sqlite_url, {"session": session}) as service:
        for n in range(2):
            body = recording_finished("talk_4", f"seg{n}", 1000 + 60 * n, 1060 + 60 * n, "")
            assert (await service.callback(body, "/callbacks/lvb")).status_code == 200
        page, errors = await open_page(browser, f"{service.base}/")
        await expect(page.locator("#stat-sessions")).to_have_text("1")
        sub = page.locator("#stat-sessions-sub")
        await expect(sub).to_contain_text(
            re.compile(r"talk_4 \(session\): 2 recordings, run in (9|10) min")
        )
        await expect(page.locator("#empty")).to_be_visible()  # no run yet
        assert errors == []


@pytest.mark.browser
async def test_a_timer_that_could_not_be_applied_is_shown_and_replayed_from_the_run_page(
    tmp_path: Path, sqlite_url: str, browser: Browser
) -> None:
    async with running_service(tmp_path, sqlite_url, {"times-out": TIMES_OUT}) as service:
        run_id, fix = await run_with_a_failed_timer(service)
        # and a callback that cannot be applied either (its workflow cannot be read)
        registry = service.app.state.services.runner.registry
        spec_for = registry.spec_for

        def unreadable(*_: object) -> NoReturn:
            raise LookupError("workflow unreadable")

        registry.spec_for = unreadable
        task_id = service.vod.submitted[-1].tasks["transcode"]
        assert (await service.callback(transcode_complete(task_id, "t"))).status_code == 200
        registry.spec_for = spec_for

        runs, errors = await open_page(browser, f"{service.base}/")
        await expect(runs.locator("#stat-stalled-box")).to_have_class(re.compile(r"\balert\b"))
        stuck = runs.locator("#stat-stalled-sub")
        await expect(stuck).to_contain_text("1 timer could not be applied (GET /api/timers")
        await expect(stuck).to_contain_text("1 callback could not be applied (GET /api/inbox")
        await runs.close()

        page, run_errors = await open_page(browser, f"{service.base}/runs/{run_id}")
        row = page.locator("#timers tr.attention")
        await expect(row).to_contain_text("step timeout: transcode")
        await expect(row).to_contain_text("RuntimeError: workflow store unreachable")
        await screenshot(page, "run-failed-timer.png")

        fix()  # the cause
        await row.get_by_role("button", name="Replay timer").click()
        await expect(page.locator("#message")).to_contain_text("fired")
        await expect(page.locator("#run-status")).to_contain_text("failed")  # timed out, no retry
        await expect(page.locator("#timers-section")).to_be_hidden()
        await page.close()
        assert errors == run_errors == []


# --- with the real engine --------------------------------------------------------------------


@asynccontextmanager
async def vodflow_with_engine(tmp_path: Path) -> AsyncIterator[tuple[str, Settings]]:
    """``vodflow serve`` as shipped: the embedded engine, the example recording workflow (MP4 and
    sprite), and one that packages each recording as HLS."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(ROOT / "workflows" / "recording-transcode.yaml", folder)
    (folder / "recording-hls.yaml").write_text(HLS_WORKFLOW)
    database_url = f"sqlite:///{tmp_path / 'vodflow.db'}"
    await asyncio.to_thread(migrate.upgrade, database_url)
    port = free_port()
    settings = load_settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        workflows=folder,
        port=port,
        engine=True,
        engine_workers=2,
        sweep_interval=0.5,
    )
    async with serving(create_app(settings), port) as base:
        yield base, settings


@pytest.mark.browser
@pytest.mark.ffmpeg
async def test_run_pages_play_mp4_and_hls_and_scrub_with_the_sprite(
    tmp_path: Path, browser: Browser
) -> None:
    clip = tmp_path / "lecture.mp4"
    await Media(FFmpeg(threads=2)).make_test_media(clip, CLIP_SECONDS, width=320, height=180)
    async with vodflow_with_engine(tmp_path) as (base, settings), httpx.AsyncClient() as http:
        keys = load_keys(settings)
        await upload_file(
            clip,
            endpoint=settings.vod_url,
            secret_id=keys.vod_secret_id,
            secret_key=keys.vod_secret_key,
            stream_id="lecture_1",
        )

        async def started() -> dict[str, str] | None:
            runs = (await http.get(f"{base}/api/runs")).json()["runs"]
            return {r["workflow"]: r["id"] for r in runs} if len(runs) == 2 else None

        run_ids = await wait_for(started)
        run_id = run_ids["recording-transcode"]
        page, errors = await open_page(browser, f"{base}/runs/{run_id}")
        await expect(page.locator("#run-status")).to_contain_text("succeeded", timeout=60_000)

        video = page.locator("#video")
        # Polled from here: wait_for_function would evaluate a string, which the page's CSP forbids.
        await wait_for(lambda: video.evaluate("v => v.readyState >= 1 || null"))
        await has_duration(video, CLIP_SECONDS, 0.2)
        assert (await video.evaluate("v => v.currentSrc")).endswith(".mp4")

        run = (await http.get(f"{base}/api/runs/{run_id}")).json()
        (sprite,) = run["steps"][0]["outputs"]["sprites"]
        vtt = (await http.get(sprite["webVttUrl"])).text
        cues = parse_vtt(vtt, sprite["webVttUrl"])
        assert len(cues) == 2
        bar = page.locator("#scrub-bar")
        await expect(bar).to_be_visible()
        box = await bar.bounding_box()
        assert box is not None
        thumb = page.locator("#thumb")
        for cue in cues:
            at = (cue.start + cue.end) / 2
            x = box["x"] + box["width"] * at / CLIP_SECONDS
            await page.mouse.move(x, box["y"] + box["height"] / 2)
            await expect(thumb).to_be_visible()
            position = f"{-cue.x}px {-cue.y}px".replace("-0px", "0px")
            await expect(thumb).to_have_css("background-position", position)
            await expect(thumb).to_have_css("width", f"{cue.w}px")
            assert cue.image in await thumb.evaluate("t => getComputedStyle(t).backgroundImage")
        await page.mouse.click(x, box["y"] + box["height"] / 2)
        assert await video.evaluate("v => v.currentTime") == pytest.approx(at, abs=0.5)

        await fits_the_viewport(page)
        await screenshot(page, "run.png")

        await page.goto(f"{base}/runs/{run_ids['recording-hls']}")
        await expect(page.locator("#run-status")).to_contain_text("succeeded", timeout=60_000)
        await wait_for(lambda: video.evaluate("v => v.readyState >= 1 || null"))
        assert (await video.evaluate("v => v.currentSrc")).startswith("blob:")  # hls.js, via MSE
        await has_duration(video, CLIP_SECONDS, 0.3)
        renditions = page.locator("#output-select option")  # definitions 210, 220 and 230
        await expect(renditions).to_have_count(3)
        await page.close()
        assert errors == []


async def has_duration(video: Locator, seconds: float, within: float) -> None:
    """The video's duration settles at ``seconds`` (± ``within``). hls.js sets the duration from
    the playlist, which may land just after the first segment made the video ready: polled."""

    async def close() -> bool:
        duration = await video.evaluate("v => v.duration")
        return isinstance(duration, int | float) and abs(duration - seconds) <= within

    try:
        await wait_for(close, within=10.0)
    except AssertionError:
        duration = await video.evaluate("v => v.duration")
        raise AssertionError(f"video duration {duration}, expected {seconds} ± {within}") from None


async def wait_for(check: Callable[[], Awaitable[T | None]], within: float = 30.0) -> T:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)
