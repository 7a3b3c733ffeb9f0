"""Output checks on real media over real HTTP: a step is done when its outputs are usable."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator import machine as m
from orchestrator.actions import Actions, Interrupted
from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media, SpriteTemplate, TranscodeTemplate
from orchestrator.machine import ErrorClass
from orchestrator.netguard import AddressPolicy, blocked_kind, guarded_client
from orchestrator.verify import (
    Cue,
    OutputChecker,
    OutputRefused,
    OutputsUnreachable,
    check_cues,
    image_size,
    parse_playlist,
    parse_vtt,
    sample,
    url_duration,
)
from tests.servers import serving

pytestmark = pytest.mark.ffmpeg


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    root = tmp_path_factory.mktemp("outputs")

    async def make() -> None:
        media = Media()
        await media.make_test_media(root / "src.mp4", 12, width=320, height=180, fps=15)
        await media.transcode(
            root / "src.mp4",
            root / "f20.mp4",
            TranscodeTemplate(definition=20, height=120, video_bitrate=200),
        )
        await media.clip(root / "src.mp4", root / "short.mp4", 0, 6)
        await media.package_hls(root / "src.mp4", root / "hls", 4)
        await media.sprites(
            root / "src.mp4",
            root / "sprite",
            SpriteTemplate(definition=10, interval=2, rows=2, columns=2, width=64, height=36),
        )

    asyncio.run(make())
    return root


@pytest.fixture
async def files(media_dir: Path) -> AsyncIterator[str]:
    app = Starlette(routes=[Mount("/files", StaticFiles(directory=media_dir))])
    async with serving(app) as base:
        yield f"{base}/files"


def outputs(base: str, play: str = "f20.mp4") -> dict:  # type: ignore[type-arg]
    return {
        "fileId": "f1",
        "play": [{"url": f"{base}/{play}", "definition": 20}],
        "sprites": [
            {
                "imageUrls": [f"{base}/sprite/1.jpg", f"{base}/sprite/2.jpg"],
                "webVttUrl": f"{base}/sprite/sprite.vtt",
            }
        ],
    }


async def checker(duration: float | None = 12.0) -> OutputChecker:
    ffmpeg = FFmpeg()

    async def source(_: str) -> float | None:
        return duration

    return OutputChecker(httpx.AsyncClient(), lambda url: url_duration(ffmpeg, url), source)


async def test_usable_outputs_pass(files: str) -> None:
    assert await (await checker()).check(outputs(files)) is None


async def test_a_missing_output_fails_naming_it(files: str) -> None:
    problem = await (await checker()).check(outputs(files, play="gone.mp4"))
    assert problem == f"output {files}/gone.mp4 answered HTTP 404"


async def test_a_transcode_shorter_than_its_input_fails(files: str) -> None:
    problem = await (await checker()).check(outputs(files, play="short.mp4"))
    assert problem is not None
    assert "lasts 6." in problem
    assert "its input lasts 12.00s" in problem


async def test_the_duration_tolerance_is_the_steps(files: str) -> None:
    """A 6 s transcode of a 12 s input passes within 55 % or 6.5 s, not within 40 %."""
    short = outputs(files, play="short.mp4")
    assert await (await checker()).check(short, tolerance=0.55) is None
    assert await (await checker()).check(short, slack=6.5) is None
    problem = await (await checker()).check(short, tolerance=0.4)
    assert problem is not None
    assert "its input lasts 12.00s" in problem


def verify(base: str, play: str = "f20.mp4", **options: float) -> m.Verify:
    """The command that checks ``outputs(base, play)`` for step transcode's first attempt."""
    return m.Verify(
        run_id="run_1",
        step="transcode",
        attempt=1,
        idempotency_key="run_1/transcode/1/verify",
        outputs=outputs(base, play=play),
        **options,
    )


async def test_a_verify_command_is_checked_with_its_steps_tolerance(files: str) -> None:
    actions = Actions(
        cast(Any, None), cast(Any, None), webhook_secret=None, checker=await checker()
    )
    assert isinstance(await actions.perform(verify(files, "short.mp4"), tries=1), m.VerifyFailed)
    loose = await actions.perform(verify(files, "short.mp4", duration_tolerance=0.55), tries=1)
    assert isinstance(loose, m.VerifySucceeded)


async def test_an_output_server_that_does_not_answer_is_waited_for_not_failed(
    media_dir: Path,
) -> None:
    """An output server restarting (a 503, a refused connection) says nothing of the outputs:
    the check is tried again, and the step's attempt goes on once the server answers, instead
    of failing and starting a second VOD job."""
    answered: list[int] = []
    files = StaticFiles(directory=media_dir)

    async def restarting(scope: Any, receive: Any, send: Any) -> None:
        if len(answered) < 2:
            status = (503, 522)[len(answered)]  # the origin, then a CDN's "origin timed out"
            answered.append(status)
            await PlainTextResponse("restarting", status_code=status)(scope, receive, send)
            return
        answered.append(200)
        await files(scope, receive, send)

    actions = Actions(
        cast(Any, None), cast(Any, None), webhook_secret=None, checker=await checker()
    )
    async with serving(Starlette(routes=[Mount("/files", restarting)])) as base:
        outcome = await actions.perform(verify(f"{base}/files"), tries=1)
    assert isinstance(outcome, m.VerifySucceeded)
    assert answered[:3] == [503, 522, 200]
    # Never answering: the attempt fails once the patience is spent, as a transport failure
    # (retried by the default policy), saying what could not be reached.
    actions.check_patience = 0
    gone = await actions.perform(verify(f"{base}/files"), tries=1)
    assert isinstance(gone, m.VerifyFailed)
    assert gone.error_class is ErrorClass.TRANSPORT
    assert gone.reason.startswith(f"could not be checked for 0 s: output {base}/files/f20.mp4 ")


async def test_a_server_refusing_head_is_asked_with_get(media_dir: Path) -> None:
    """501 (Not Implemented) to a HEAD is an answer, not an outage: the check asks again with
    a GET, as before."""
    files = StaticFiles(directory=media_dir)

    async def no_head(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "HEAD":
            await PlainTextResponse("", status_code=501)(scope, receive, send)
            return
        await files(scope, receive, send)

    async with serving(Starlette(routes=[Mount("/files", no_head)])) as base:
        assert await (await checker()).check(outputs(f"{base}/files")) is None


async def test_a_server_gone_while_ffmpeg_reads_is_no_verdict(media_dir: Path) -> None:
    """FFmpeg only says it could not read the transcode: if its server stopped answering
    meanwhile, the outputs are not judged (the check is tried again)."""
    files = StaticFiles(directory=media_dir)
    transcode_asks = 0

    async def going_away(scope: Any, receive: Any, send: Any) -> None:
        nonlocal transcode_asks
        if scope["path"].endswith("f20.mp4"):
            transcode_asks += 1
            if transcode_asks > 1:  # its first HEAD answered; then its server is gone
                await PlainTextResponse("down", status_code=503)(scope, receive, send)
                return
        await files(scope, receive, send)

    async with serving(Starlette(routes=[Mount("/files", going_away)])) as base:
        with pytest.raises(OutputsUnreachable, match=r"f20\.mp4 answered HTTP 503"):
            await (await checker()).check(outputs(f"{base}/files"))


async def test_stopping_hands_a_waiting_check_back(files: str) -> None:
    """A check waiting for an output server when the service stops gives up its turn: the
    stop does not wait out the patience, and the command goes back to the outbox."""
    actions = Actions(
        cast(Any, None), cast(Any, None), webhook_secret=None, checker=await checker()
    )
    down = verify("http://127.0.0.1:9/files")
    waiting = asyncio.create_task(actions.perform(down, tries=1))
    await asyncio.sleep(0.2)
    actions.stop()
    with pytest.raises(Interrupted, match="the service stopped while output "):
        await asyncio.wait_for(waiting, 5)


async def test_sprite_cues_must_cover_the_media(files: str) -> None:
    problem = await (await checker(duration=30.0)).check({**outputs(files), "play": []})
    assert problem is not None
    assert "the cues end at 12s but the media lasts 30s" in problem


async def test_sprite_cues_must_not_run_past_the_media(files: str) -> None:
    """A WebVTT made for a longer file (the sprites here are of 12 s)."""
    problem = await (await checker(duration=6.0)).check({**outputs(files), "play": []})
    assert problem == (
        f"sprite WebVTT {files}/sprite/sprite.vtt: a cue starts at 10s but the media lasts 6s"
    )
    # Within one interval of the end is how a sheet's last cue may end.
    assert await (await checker(duration=10.5)).check({**outputs(files), "play": []}) is None


async def test_a_webvtt_or_sprite_image_beyond_its_size_limit_is_refused(
    files: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checker holds what it fetches in memory, from URLs an event names: bounded."""
    from orchestrator import verify

    monkeypatch.setattr(verify, "MAX_PLAYLIST_BYTES", 16)
    problem = await (await checker()).check({**outputs(files), "play": []})
    assert problem == (
        f"sprite WebVTT {files}/sprite/sprite.vtt: "
        f"WebVTT {files}/sprite/sprite.vtt is larger than 16 bytes"
    )
    monkeypatch.setattr(verify, "MAX_PLAYLIST_BYTES", 2 * 1024 * 1024)
    monkeypatch.setattr(verify, "MAX_IMAGE_BYTES", 16)
    problem = await (await checker()).check({**outputs(files), "play": []})
    assert problem is not None
    assert problem.startswith(f"sprite image {files}/sprite/")
    assert problem.endswith("is larger than 16 bytes")


async def test_url_duration_reads_http(files: str) -> None:
    assert await url_duration(FFmpeg(), f"{files}/src.mp4") == pytest.approx(12, abs=0.1)


def test_vtt_parsing_and_cue_checks(media_dir: Path) -> None:
    text = (media_dir / "sprite" / "sprite.vtt").read_text()
    cues = parse_vtt(text, "http://x/sprite/sprite.vtt")
    assert len(cues) == 6
    assert cues[0].image == "http://x/sprite/1.jpg"
    sizes = {
        "http://x/sprite/1.jpg": image_size((media_dir / "sprite" / "1.jpg").read_bytes()),
        "http://x/sprite/2.jpg": image_size((media_dir / "sprite" / "2.jpg").read_bytes()),
    }
    assert sizes["http://x/sprite/1.jpg"] == (128, 72)
    assert check_cues(cues, 12.0, sizes) is None
    outside = [*cues[:-1], Cue(cues[-1].start, cues[-1].end, cues[-1].image, 100, 0, 64, 36)]
    assert "outside" in (check_cues(outside, 12.0, sizes) or "")
    backwards = [cues[0], Cue(cues[1].start, cues[1].start, cues[1].image, 0, 0, 64, 36)]
    assert check_cues(backwards, 4.0, sizes) == "the cue at 2s ends at 2s, not after it starts"
    gap = [cues[0], Cue(cues[1].start + 1, cues[1].end, cues[1].image, 0, 0, 64, 36)]
    assert "gap" in (check_cues(gap, 4.0, sizes) or "")
    with pytest.raises(ValueError, match="not a WebVTT"):
        parse_vtt("hello", "http://x/")


def test_image_size_of_png_and_junk() -> None:
    png = (
        b"\x89PNG\r\n\x1a\n"
        + b"\x00\x00\x00\rIHDR"
        + (300).to_bytes(4, "big")
        + (200).to_bytes(4, "big")
    )
    assert image_size(png) == (300, 200)
    with pytest.raises(ValueError, match="not a JPEG or PNG"):
        image_size(b"GIF89a")


# --- outputs on the local network (SSRF) ----------------------------------------------------


@dataclass
class Internal:
    """A service on the local network that output checks must not reach: it records every
    request, and redirects ``/hop`` to ``/secret``."""

    base: str
    hits: list[str]


@pytest.fixture
async def internal() -> AsyncIterator[Internal]:
    hits: list[str] = []

    async def anything(request: Request) -> Response:
        hits.append(f"{request.method} {request.url.path}")
        return PlainTextResponse("secret")

    app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "HEAD"])])
    async with serving(app) as base:
        yield Internal(base, hits)


@pytest.fixture
async def redirects(media_dir: Path, internal: Internal) -> AsyncIterator[str]:
    """The outputs' server (vodflow's own origin) with redirects: ``/to/internal/...`` to the
    internal service, ``/to/here/...`` to ``/files/...`` on itself."""

    async def to_internal(request: Request) -> Response:
        return RedirectResponse(f"{internal.base}/{request.path_params['path']}", 302)

    async def to_here(request: Request) -> Response:
        return RedirectResponse(f"/files/{request.path_params['path']}", 302)

    app = Starlette(
        routes=[
            Route("/to/internal/{path:path}", to_internal, methods=["GET", "HEAD"]),
            Route("/to/here/{path:path}", to_here, methods=["GET", "HEAD"]),
            Mount("/files", StaticFiles(directory=media_dir)),
        ]
    )
    async with serving(app) as base:
        yield base


def guarded(own: str, allow: tuple[str, ...] = (), duration: float = 12.0) -> OutputChecker:
    """A checker as ``vodflow serve`` builds it, for a vodflow whose own URL is ``own``."""
    ffmpeg = FFmpeg()
    probed: list[str] = []

    async def probe(url: str) -> float:
        probed.append(url)
        return await url_duration(ffmpeg, url)

    async def source(_: str) -> float | None:
        return duration

    policy = AddressPolicy.build([own], allow)
    checker = OutputChecker(guarded_client(policy), probe, source, policy=policy)
    checker.probed = probed  # type: ignore[attr-defined]
    return checker


async def test_outputs_on_vodflows_own_origin_pass_the_guard(redirects: str) -> None:
    checker = guarded(redirects)
    assert await checker.check(outputs(f"{redirects}/files")) is None
    # a redirect on the same origin is followed, and FFmpeg reads the URL it ended at
    assert await checker.check(outputs(f"{redirects}/files", play="../to/here/f20.mp4")) is None
    assert checker.probed[-1] == f"{redirects}/files/f20.mp4"  # type: ignore[attr-defined]


async def test_an_output_on_the_local_network_is_refused_naming_the_address_and_setting(
    files: str, internal: Internal
) -> None:
    own = files.removesuffix("/files")
    with pytest.raises(OutputRefused) as refused:
        await guarded(own).check(outputs(internal.base, play="secret"))
    assert str(refused.value) == (
        f"output {internal.base}/secret refused: 127.0.0.1 is a loopback address, and output "
        "checks do not fetch from the local network (allow it with VODFLOW_VERIFY_ALLOW_HOSTS)"
    )
    # a name is resolved, and what it resolves to is what counts
    port = internal.base.rsplit(":", 1)[1]
    with pytest.raises(
        OutputRefused, match=re.escape("localhost resolves to 127.0.0.1, a loopback")
    ):
        await guarded(own).check(outputs(f"http://localhost:{port}"))
    for metadata in ("http://169.254.169.254/latest/meta-data/", "http://[::ffff:10.1.2.3]/"):
        with pytest.raises(OutputRefused, match=r"(link-local|private) address"):
            await guarded(own).check({"play": [{"url": metadata}]})
    assert internal.hits == []


async def test_an_allowed_host_is_fetched(files: str, internal: Internal) -> None:
    own = files.removesuffix("/files")
    authority = internal.base.removeprefix("http://")
    for allow in (authority, "127.0.0.0/8"):
        problem = await guarded(own, (allow,)).check({"snapshots": [{"url": internal.base}]})
        assert problem is None
    assert internal.hits == ["HEAD /", "HEAD /"]


async def test_every_redirect_hop_is_checked(redirects: str, internal: Internal) -> None:
    checker = guarded(redirects)
    with pytest.raises(OutputRefused) as refused:
        await checker.check(outputs(f"{redirects}/files", play="../to/internal/x.mp4"))
    assert str(refused.value).startswith(
        f"output {internal.base}/x.mp4 refused: 127.0.0.1 is a loopback address"
    )
    assert internal.hits == []
    assert checker.probed == []  # type: ignore[attr-defined]


async def test_a_webvtt_naming_an_image_on_the_local_network_is_refused(
    redirects: str, internal: Internal, tmp_path: Path
) -> None:
    vtt = f"WEBVTT\n\n00:00:00.000 --> 00:00:12.000\n{internal.base}/admin.jpg#xywh=0,0,64,36\n"
    app = Starlette(routes=[Route("/s.vtt", lambda _: PlainTextResponse(vtt))])
    async with serving(app) as elsewhere:
        checker = guarded(elsewhere)
        sprite = {"imageUrls": [], "webVttUrl": f"{elsewhere}/s.vtt"}
        with pytest.raises(
            OutputRefused, match=re.escape(f"output {internal.base}/admin.jpg refused")
        ):
            await checker.check({"sprites": [sprite]})
    assert internal.hits == []


async def test_only_http_urls_are_fetched(files: str) -> None:
    for url in ("file:///etc/passwd", "ftp://files.example/f20.mp4", "gopher://x/"):
        with pytest.raises(OutputRefused, match=re.escape(f"output {url} is not an http")):
            await guarded(files).check({"play": [{"url": url}]})


async def test_ffmpeg_follows_no_redirect(redirects: str) -> None:
    with pytest.raises(ValueError, match="FFmpeg cannot read"):
        await url_duration(FFmpeg(), f"{redirects}/to/here/src.mp4")
    assert await url_duration(FFmpeg(), f"{redirects}/files/src.mp4") == pytest.approx(12, abs=0.1)


# --- HLS outputs: every URI a playlist names is checked, FFmpeg fetches none -----------------


@dataclass
class HlsOrigin:
    """vodflow's own origin serving the HLS output in ``/files/hls/`` and, at ``/p/NAME``, the
    playlists a test writes into ``playlists``."""

    base: str
    playlists: dict[str, str]


@pytest.fixture
async def hls(media_dir: Path) -> AsyncIterator[HlsOrigin]:
    playlists: dict[str, str] = {}

    async def playlist(request: Request) -> Response:
        text = playlists.get(request.path_params["name"])
        if text is None:
            return PlainTextResponse("no such playlist", 404)
        return Response(text, media_type="application/vnd.apple.mpegurl")

    app = Starlette(
        routes=[
            Route("/p/{name}", playlist, methods=["GET", "HEAD"]),
            Mount("/files", StaticFiles(directory=media_dir)),
        ]
    )
    async with serving(app) as base:
        yield HlsOrigin(base, playlists)


def media_playlist(media_dir: Path, base: str, *, header: str = "", last: str = "") -> str:
    """The packaged HLS output's playlist with absolute segment URIs on ``base``, extra tags
    after its header, and its last segment's URI replaced by ``last`` when given."""
    text = (media_dir / "hls" / "index.m3u8").read_text()
    text = re.sub(r"^(segment_\d+\.ts)$", rf"{base}/files/hls/\1", text, flags=re.M)
    if last:
        lines = text.splitlines()
        uris = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
        lines[uris[-1]] = last
        text = "\n".join(lines) + "\n"
    return text.replace("#EXTM3U\n", f"#EXTM3U\n{header}", 1)


async def test_an_hls_output_verifies_from_its_playlists_without_ffmpeg_fetching(
    hls: HlsOrigin, media_dir: Path
) -> None:
    checker = guarded(hls.base)
    play = {"fileId": "f1", "play": [{"url": f"{hls.base}/files/hls/index.m3u8"}]}
    # relative segment URIs, resolved against the playlist's URL
    assert "\nsegment_00000.ts\n" in (media_dir / "hls" / "index.m3u8").read_text()
    assert await checker.check(play) is None
    # a master playlist naming a media playlist with absolute URIs, both on an allowed host
    hls.playlists["v.m3u8"] = media_playlist(media_dir, hls.base)
    hls.playlists["master.m3u8"] = (
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=300000,RESOLUTION=320x180\nv.m3u8\n"
    )
    master = {"play": [{"url": f"{hls.base}/p/master.m3u8"}], "duration": 12}
    assert await checker.check(master) is None
    assert checker.probed == []  # type: ignore[attr-defined]
    # the duration is the playlist's: a 30 s input is not matched by a 12 s playlist
    problem = await guarded(hls.base, duration=30.0).check(play)
    assert problem == (
        f"transcode {hls.base}/files/hls/index.m3u8 lasts 12.00s but its input lasts 30.00s"
    )
    # a missing segment, an unfinished playlist
    hls.playlists["gone.m3u8"] = media_playlist(media_dir, hls.base, last="nope.ts")
    problem = await checker.check({"play": [{"url": f"{hls.base}/p/gone.m3u8"}], "duration": 12})
    assert problem == (
        f"cannot read transcode {hls.base}/p/gone.m3u8: output {hls.base}/p/nope.ts answered "
        "HTTP 404"
    )
    hls.playlists["live.m3u8"] = hls.playlists["v.m3u8"].replace("#EXT-X-ENDLIST", "")
    problem = await checker.check({"play": [{"url": f"{hls.base}/p/live.m3u8"}], "duration": 12})
    assert problem is not None
    assert "has no #EXT-X-ENDLIST" in problem


@pytest.mark.parametrize("where", ["segment", "variant", "key", "map"])
async def test_an_hls_playlist_naming_a_uri_on_the_local_network_is_refused(
    hls: HlsOrigin, media_dir: Path, internal: Internal, where: str
) -> None:
    target = {
        "segment": f"{internal.base}/segment.ts",
        "variant": f"{internal.base}/variant.m3u8",
        "key": f"{internal.base}/key.bin",
        "map": f"{internal.base}/init.mp4",
    }[where]
    if where == "segment":
        hls.playlists["out.m3u8"] = media_playlist(media_dir, hls.base, last=target)
    elif where == "variant":
        hls.playlists["v.m3u8"] = media_playlist(media_dir, hls.base)
        hls.playlists["out.m3u8"] = (
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=300000\nv.m3u8\n"
            f"#EXT-X-STREAM-INF:BANDWIDTH=900000\n{target}\n"
        )
    else:
        tag = (
            f'#EXT-X-KEY:METHOD=AES-128,URI="{target}",IV=0x1\n'
            if where == "key"
            else f'#EXT-X-MAP:URI="{target}"\n'
        )
        hls.playlists["out.m3u8"] = media_playlist(media_dir, hls.base, header=tag)
    checker = guarded(hls.base)
    outputs = {"fileId": "f1", "play": [{"url": f"{hls.base}/p/out.m3u8"}]}
    with pytest.raises(OutputRefused) as refused:
        await checker.check(outputs)
    assert str(refused.value) == (
        f"output {target} refused: 127.0.0.1 is a loopback address, and output checks do not "
        "fetch from the local network (allow it with VODFLOW_VERIFY_ALLOW_HOSTS)"
    )
    assert internal.hits == []
    assert checker.probed == []  # type: ignore[attr-defined]

    # the step fails at once: rejected, not retried
    actions = Actions(cast(Any, None), checker.http, webhook_secret=None, checker=checker)
    verify = m.Verify(
        run_id="run_1", step="transcode", attempt=1, idempotency_key="k", outputs=outputs
    )
    failed = await actions.perform(verify, tries=1)
    assert isinstance(failed, m.VerifyFailed)
    assert failed.error_class is ErrorClass.REJECTED
    assert failed.reason == str(refused.value)
    assert internal.hits == []


async def test_an_allowed_host_in_a_playlist_is_fetched(
    hls: HlsOrigin, media_dir: Path, internal: Internal
) -> None:
    hls.playlists["out.m3u8"] = media_playlist(
        media_dir, hls.base, last=f"{internal.base}/segment.ts"
    )
    checker = guarded(hls.base, (internal.base.removeprefix("http://"),))
    assert (
        await checker.check({"play": [{"url": f"{hls.base}/p/out.m3u8"}], "duration": 12}) is None
    )
    assert internal.hits == ["HEAD /segment.ts"]


def test_playlist_parsing() -> None:
    text = (
        "#EXTM3U\n#EXT-X-VERSION:7\n# a comment\n"
        '#EXT-X-MAP:URI="init.mp4",BYTERANGE="720@0"\n'
        '#EXT-X-KEY:METHOD=SAMPLE-AES,KEYFORMAT="x",URI="/keys/1"\n'
        '#EXT-X-FUTURE-TAG:NAME="x",URI="https://other.example/y"\n'
        "#EXTINF:4.5,\n#EXT-X-BYTERANGE:100@720\na/1.m4s\n#EXTINF:2,title\n../2.m4s\n"
        "#EXT-X-ENDLIST\n"
    )
    got = parse_playlist(text, "http://h/v/index.m3u8")
    assert got.segments == [("http://h/v/a/1.m4s", 4.5), ("http://h/2.m4s", 2.0)]
    assert got.resources == ["http://h/v/init.mp4", "http://h/keys/1", "https://other.example/y"]
    assert got.ended
    assert got.playlists == []
    master = parse_playlist(
        '#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="a.m3u8"\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO="a"\nv.m3u8\n'
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI="i.m3u8"\n',
        "http://h/m.m3u8",
    )
    assert master.playlists == ["http://h/a.m3u8", "http://h/v.m3u8", "http://h/i.m3u8"]
    with pytest.raises(ValueError, match="does not start with #EXTM3U"):
        parse_playlist("<html>", "http://h/")
    with pytest.raises(ValueError, match="follows no #EXTINF"):
        parse_playlist("#EXTM3U\nx.ts\n", "http://h/")
    items = [str(i) for i in range(100)]
    assert sample(items[:5], 30) == items[:5]
    picked = sample(items, 30)
    assert len(picked) == 30
    assert picked[0] == "0"
    assert picked[-1] == "99"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "non-global"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
        ("::ffff:93.184.216.34", None),
    ],
)
def test_blocked_addresses(address: str, kind: str | None) -> None:
    assert blocked_kind(ipaddress.ip_address(address)) == kind


async def test_ffmpeg_reads_no_playlist_served_under_another_name(internal: Internal) -> None:
    """A URL not ending in .m3u8 goes to FFmpeg; served as HLS, FFmpeg's HLS reader would
    fetch the segments it names, unchecked: that reader is not allowed."""
    playlist = (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\n{internal.base}/secret.ts\n#EXT-X-ENDLIST\n"
    )
    app = Starlette(
        routes=[
            Route(
                "/x.mp4",
                lambda _: Response(
                    playlist.encode(), headers={"content-type": "application/vnd.apple.mpegurl"}
                ),
            )
        ]
    )
    async with serving(app) as base:
        with pytest.raises(ValueError, match="FFmpeg cannot read"):
            await url_duration(FFmpeg(), f"{base}/x.mp4")
    assert internal.hits == []
