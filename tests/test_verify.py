"""Output checks on real media over real HTTP: a step is done when its outputs are usable."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media, SpriteTemplate, TranscodeTemplate
from orchestrator.netguard import AddressPolicy, blocked_kind, guarded_client
from orchestrator.verify import (
    Cue,
    OutputChecker,
    OutputRefused,
    check_cues,
    image_size,
    parse_vtt,
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


async def test_sprite_cues_must_cover_the_media(files: str) -> None:
    problem = await (await checker(duration=30.0)).check({**outputs(files), "play": []})
    assert problem is not None
    assert "the cues end at 12s but the media lasts 30s" in problem


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
