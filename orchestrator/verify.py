"""A step is done when its outputs are usable, not only when VOD says so.

Checks, in order: every output URL answers (HEAD, or a one-byte GET where HEAD is not allowed);
each transcode lasts as long as its input, within a tolerance; each image sprite's WebVTT has cues
that cover the whole media without gaps and point inside the sprite images they name. The first
failed check is the reason the step's attempt fails.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
from pydantic import JsonValue

from orchestrator.engine.ffmpeg import FFmpeg, parse_probe

Probe = Callable[[str], Awaitable[float]]
"""The duration (seconds) of the media at a URL."""
SourceDuration = Callable[[str], Awaitable[float | None]]
"""The duration of a VOD file, by fileId."""

_CUE = re.compile(
    r"(\d+):(\d{2}):(\d{2})\.(\d{3})\s+-->\s+(\d+):(\d{2}):(\d{2})\.(\d{3})[^\n]*\n([^\n]+)"
)
_XYWH = re.compile(r"^(.*)#xywh=(\d+),(\d+),(\d+),(\d+)$")


async def url_duration(ffmpeg: FFmpeg, url: str) -> float:
    """The duration FFmpeg reads from the media at ``url`` (headers only; HLS from its playlist)."""
    result = await ffmpeg.run(["-i", url], loglevel="info", check=False)
    if "Input #0" not in result.stderr:
        raise ValueError(f"FFmpeg cannot read {url}: {result.stderr.strip()[-300:]}")
    return parse_probe(result.stderr, Path(url), 0).duration


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    image: str
    x: int
    y: int
    w: int
    h: int


def parse_vtt(text: str, base_url: str) -> list[Cue]:
    """Sprite cues of a WebVTT file; image names are resolved against the file's URL."""
    if not text.lstrip("\ufeff").startswith("WEBVTT"):
        raise ValueError("not a WebVTT file (it does not start with WEBVTT)")
    cues = []
    for match in _CUE.finditer(text.replace("\r\n", "\n")):
        h1, m1, s1, ms1, h2, m2, s2, ms2, target = match.groups()
        where = _XYWH.match(target.strip())
        if where is None:
            raise ValueError(f"cue target {target.strip()!r} is not IMAGE#xywh=x,y,w,h")
        image, x, y, w, h = where.groups()
        cues.append(
            Cue(
                start=int(h1) * 3600 + int(m1) * 60 + int(s1) + int(ms1) / 1000,
                end=int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000,
                image=urljoin(base_url, image),
                x=int(x),
                y=int(y),
                w=int(w),
                h=int(h),
            )
        )
    return cues


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG or PNG, from its header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG or PNG image")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    raise ValueError("no frame header in the JPEG")


def check_cues(cues: list[Cue], duration: float, sizes: dict[str, tuple[int, int]]) -> str | None:
    if not cues:
        return "the WebVTT has no cues"
    if cues[0].start > 0.001:
        return f"the first cue starts at {cues[0].start:g}s, not at 0"
    for before, after in itertools.pairwise(cues):
        if abs(after.start - before.end) > 0.001:
            return f"cues leave a gap or overlap at {before.end:g}s..{after.start:g}s"
    if cues[-1].end + 1.0 < duration:
        return f"the cues end at {cues[-1].end:g}s but the media lasts {duration:g}s"
    for cue in cues:
        width, height = sizes[cue.image]
        if cue.x + cue.w > width or cue.y + cue.h > height or min(cue.w, cue.h) <= 0:
            return (
                f"cue {cue.start:g}s points at xywh={cue.x},{cue.y},{cue.w},{cue.h}, "
                f"outside {cue.image} ({width}x{height})"
            )
    return None


class OutputChecker:
    def __init__(
        self,
        http: httpx.AsyncClient,
        probe: Probe,
        source_duration: SourceDuration,
        *,
        tolerance: float = 0.02,
        minimum_slack: float = 1.0,
    ) -> None:
        self.http = http
        self.probe = probe
        self.source_duration = source_duration
        self.tolerance = tolerance
        self.minimum_slack = minimum_slack

    async def check(self, outputs: dict[str, JsonValue]) -> str | None:
        """None when the outputs are usable; else the first reason they are not."""
        for url in _urls(outputs):
            problem = await self._reachable(url)
            if problem:
                return problem
        duration = await self._input_duration(outputs)
        for item in _items(outputs, "play"):
            play_url = item.get("url")
            if not isinstance(play_url, str) or duration is None:
                continue
            try:
                got = await self.probe(play_url)
            except Exception as exc:
                return f"cannot read transcode {play_url}: {exc}"
            slack = max(self.minimum_slack, duration * self.tolerance)
            if abs(got - duration) > slack:
                return f"transcode {play_url} lasts {got:.2f}s but its input lasts {duration:.2f}s"
        for sprite in _items(outputs, "sprites"):
            problem = await self._check_sprite(sprite, duration)
            if problem:
                return problem
        return None

    async def _reachable(self, url: str) -> str | None:
        try:
            answer = await self.http.head(url, follow_redirects=True)
            if answer.status_code in (405, 501):
                answer = await self.http.get(url, headers={"Range": "bytes=0-0"})
        except httpx.HTTPError as exc:
            return f"output {url} cannot be fetched: {exc!s}"
        if answer.status_code >= 400:
            return f"output {url} answered HTTP {answer.status_code}"
        return None

    async def _input_duration(self, outputs: dict[str, JsonValue]) -> float | None:
        known = outputs.get("duration")
        if isinstance(known, int | float) and known > 0:
            return float(known)
        file_id = outputs.get("fileId")
        if isinstance(file_id, str):
            return await self.source_duration(file_id)
        return None

    async def _check_sprite(
        self, sprite: dict[str, JsonValue], duration: float | None
    ) -> str | None:
        vtt_url = sprite.get("webVttUrl")
        if not isinstance(vtt_url, str):
            return "an image sprite has no WebVTT"
        try:
            text = (await self.http.get(vtt_url)).raise_for_status().text
            cues = parse_vtt(text, vtt_url)
        except (httpx.HTTPError, ValueError) as exc:
            return f"sprite WebVTT {vtt_url}: {exc}"
        sizes: dict[str, tuple[int, int]] = {}
        for image in {cue.image for cue in cues}:
            try:
                data = (await self.http.get(image)).raise_for_status().content
                sizes[image] = image_size(data)
            except (httpx.HTTPError, ValueError) as exc:
                return f"sprite image {image}: {exc}"
        media = duration if duration is not None else (cues[-1].end if cues else 0.0)
        problem = check_cues(cues, media, sizes)
        return f"sprite WebVTT {vtt_url}: {problem}" if problem else None


def _items(outputs: dict[str, JsonValue], key: str) -> list[dict[str, JsonValue]]:
    value = outputs.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _urls(outputs: dict[str, JsonValue]) -> list[str]:
    urls: list[str] = []
    for item in _items(outputs, "play") + _items(outputs, "snapshots"):
        if isinstance(item.get("url"), str):
            urls.append(str(item["url"]))
    for sprite in _items(outputs, "sprites"):
        images = sprite.get("imageUrls")
        if isinstance(images, list):
            urls.extend(str(u) for u in images if isinstance(u, str))
        if isinstance(sprite.get("webVttUrl"), str):
            urls.append(str(sprite["webVttUrl"]))
    return list(dict.fromkeys(urls))
