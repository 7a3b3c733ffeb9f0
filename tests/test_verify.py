"""Output checks on real media over real HTTP: a step is done when its outputs are usable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media, SpriteTemplate, TranscodeTemplate
from orchestrator.verify import Cue, OutputChecker, check_cues, image_size, parse_vtt, url_duration
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
