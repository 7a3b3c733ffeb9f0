"""A step is done when its outputs are usable, not only when VOD says so.

Checks, in order: every output URL answers (HEAD, or a one-byte GET where HEAD is not allowed);
each transcode lasts as long as its input, within a tolerance; each image sprite's WebVTT has cues
that cover the whole media without gaps and no further than its last interval, and point inside
the sprite images they name. The first failed check is the reason the step's attempt fails.

The URLs come from VOD's events, so from whoever can send one: with a ``policy`` (as ``vodflow
serve`` builds it) the checker fetches only http(s) URLs whose hosts are public or allowed (see
``orchestrator.netguard``; its ``http`` client must be a ``guarded_client`` of the same policy),
follows redirects itself, each hop checked, and hands FFmpeg only the URL a check ended at. A
refused URL raises ``OutputRefused``: no other attempt would fetch it.

An HLS transcode (``.m3u8``) is not handed to FFmpeg, which would fetch the variant playlists,
segments and keys the playlist names, unchecked. The checker fetches the playlists itself
(guarded, at most ``MAX_PLAYLIST_BYTES`` each), checks the host of every URI they name (variant
and rendition playlists, segments, ``URI="..."`` of any tag: keys, maps, ...) before it sends
any request to one, and takes each media playlist's duration as the sum of its ``#EXTINF``
durations (what players use), for a finished playlist (``#EXT-X-ENDLIST``) only. It HEADs every
key and map, and the segments, or a sample of ``SEGMENT_SAMPLE`` of them (first, last and evenly
spaced between) when there are more.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import JsonValue

from orchestrator.engine.ffmpeg import FFmpeg, parse_probe
from orchestrator.netguard import AddressPolicy, Refused
from orchestrator.spec import DURATION_SLACK, DURATION_TOLERANCE

Probe = Callable[[str], Awaitable[float]]
"""The duration (seconds) of the media at a URL."""
SourceDuration = Callable[[str], Awaitable[float | None]]
"""The duration of a VOD file, by fileId."""

_CUE = re.compile(
    r"(\d+):(\d{2}):(\d{2})\.(\d{3})\s+-->\s+(\d+):(\d{2}):(\d{2})\.(\d{3})[^\n]*\n([^\n]+)"
)
_XYWH = re.compile(r"^(.*)#xywh=(\d+),(\d+),(\d+),(\d+)$")
_URI_ATTRIBUTE = re.compile(r'(?:^|,)URI="([^"]*)"')


MAX_REDIRECTS = 5
MAX_PLAYLIST_BYTES = 2 * 1024 * 1024
"""A playlist (or a sprite's WebVTT) larger than this is refused (2 MiB holds some 20,000
segments, or cues)."""
MAX_IMAGE_BYTES = 32 * 1024 * 1024
"""A sprite image larger than this is refused (a sheet of 10x10 1080p thumbnails is ~5 MiB)."""
MAX_VARIANTS = 32
"""A master playlist naming more playlists than this is refused."""
SEGMENT_SAMPLE = 30
"""Segments HEAD-checked per media playlist, at most (every segment's host is checked)."""


class OutputRefused(Exception):
    """An output URL the checker will not fetch: not http(s), or on the local network."""


def _unavailable(status: int) -> bool:
    """A server that cannot serve now: a 5xx (a CDN's 520 – 524 for an origin that is down
    too), but 501, Not Implemented, which is an answer (a HEAD it does not take is asked again
    as a GET)."""
    return status >= 500 and status != 501


class OutputsUnreachable(Exception):
    """The server of an output did not answer, or answered 5xx: the outputs could not be
    checked, which says nothing of whether they are usable (the output server may be
    restarting), so the check is to be tried again rather than failed."""


_HTTP_OPTIONS: dict[str, list[str]] = {}
_FETCHING_DEMUXERS = {"hls", "applehttp", "dash", "concat", "imf", "webm_dash_manifest"}


async def _http_options(ffmpeg: FFmpeg) -> list[str]:
    """Input options that keep FFmpeg on http(s) and off redirects (it would follow them
    itself, unchecked): ``-max_redirects 0`` where this FFmpeg has the option (older
    releases lack it and follow redirects on their own)."""
    if ffmpeg.exe not in _HTTP_OPTIONS:
        options = ["-protocol_whitelist", "http,https,tcp,tls,crypto"]
        result = await ffmpeg.run(
            ["-h", "protocol=http"], loglevel="error", check=False, capture_stdout=True
        )
        if "max_redirects" in result.stdout + result.stderr:
            options += ["-max_redirects", "0"]
        # Every demuxer but those that open URLs their input names (HLS, DASH, ...): FFmpeg
        # picks HLS for any URL served with an HLS Content-Type, whatever its name.
        result = await ffmpeg.run(["-demuxers"], loglevel="error", check=False, capture_stdout=True)
        names = {
            name
            for line in result.stdout.splitlines()
            if re.match(r"^ [D ][E ]?d?\s", line) and line.split()[0].startswith("D")
            for name in line.split()[1].split(",")
        } - _FETCHING_DEMUXERS
        if names:
            options += ["-format_whitelist", ",".join(sorted(names))]
        _HTTP_OPTIONS[ffmpeg.exe] = options
    return _HTTP_OPTIONS[ffmpeg.exe]


async def url_duration(ffmpeg: FFmpeg, url: str) -> float:
    """The duration FFmpeg reads from the media at ``url`` (headers only; HLS from its playlist).
    FFmpeg reads only http(s), and follows no redirect where it can be told not to."""
    options = await _http_options(ffmpeg)
    result = await ffmpeg.run([*options, "-i", url], loglevel="info", check=False)
    if "Input #0" not in result.stderr:
        raise ValueError(f"FFmpeg cannot read {url}: {result.stderr.strip()[-300:]}")
    return parse_probe(result.stderr, Path(url), 0).duration


@dataclass(frozen=True)
class Playlist:
    """An HLS playlist's URIs, resolved against its URL."""

    playlists: list[str]
    """A master playlist's variant, rendition and I-frame playlists (empty for a media one)."""
    segments: list[tuple[str, float]]
    """A media playlist's segments and their ``#EXTINF`` durations."""
    resources: list[str]
    """Other ``URI="..."`` attributes: keys, initialization sections (``#EXT-X-MAP``), ..."""
    ended: bool
    """``#EXT-X-ENDLIST``: no segment will be added (a finished VOD)."""


_PLAYLIST_TAGS = ("#EXT-X-MEDIA:", "#EXT-X-I-FRAME-STREAM-INF:")


def is_hls(url: str) -> bool:
    return urlsplit(url).path.lower().endswith((".m3u8", ".m3u"))


def parse_playlist(text: str, base_url: str) -> Playlist:
    """An HLS playlist's URIs. Every line that is not a tag or a comment, and every ``URI``
    attribute of any tag (known or not), counts: a URI is never skipped for a tag not known."""
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("not an HLS playlist (it does not start with #EXTM3U)")
    found = Playlist([], [], [], ended=False)
    pending: str | float | None = (
        None  # "variant" after #EXT-X-STREAM-INF, a duration after #EXTINF
    )
    for number, line in enumerate(lines[1:], start=2):
        if line.startswith("#EXT"):
            for uri in _URI_ATTRIBUTE.findall(line.split(":", 1)[-1]):
                where = found.playlists if line.startswith(_PLAYLIST_TAGS) else found.resources
                where.append(urljoin(base_url, uri))
            if line.startswith("#EXT-X-STREAM-INF:"):
                pending = "variant"
            elif line.startswith("#EXTINF:"):
                try:
                    pending = float(line[len("#EXTINF:") :].split(",", 1)[0])
                except ValueError:
                    raise ValueError(f"line {number}: {line!r} has no duration") from None
            elif line == "#EXT-X-ENDLIST":
                found = Playlist(found.playlists, found.segments, found.resources, ended=True)
        elif line and not line.startswith("#"):
            if pending == "variant":
                found.playlists.append(urljoin(base_url, line))
            elif isinstance(pending, float):
                found.segments.append((urljoin(base_url, line), pending))
            else:
                raise ValueError(
                    f"line {number}: URI {line!r} follows no #EXTINF or #EXT-X-STREAM-INF"
                )
            pending = None
    if found.playlists and found.segments:
        raise ValueError("it lists both playlists and segments")
    return found


def sample(items: list[str], size: int) -> list[str]:
    """``items`` when there are at most ``size``; else the first, the last and evenly spaced."""
    if len(items) <= size:
        return items
    step = (len(items) - 1) / (size - 1)
    return [items[round(i * step)] for i in range(size)]


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
    for cue in cues:
        if cue.end <= cue.start:
            return f"the cue at {cue.start:g}s ends at {cue.end:g}s, not after it starts"
    for before, after in itertools.pairwise(cues):
        if abs(after.start - before.end) > 0.001:
            return f"cues leave a gap or overlap at {before.end:g}s..{after.start:g}s"
    if cues[-1].end + 1.0 < duration:
        return f"the cues end at {cues[-1].end:g}s but the media lasts {duration:g}s"
    # The last cue may end at its interval's end rather than the media's; it may not start
    # after the media ends (thumbnails of another, longer file).
    if cues[-1].start > duration + 1.0:
        return f"a cue starts at {cues[-1].start:g}s but the media lasts {duration:g}s"
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
        policy: AddressPolicy | None = None,
    ) -> None:
        self.http = http
        self.policy = policy
        self.probe = probe
        self.source_duration = source_duration

    async def check(
        self,
        outputs: dict[str, JsonValue],
        *,
        tolerance: float = DURATION_TOLERANCE,
        slack: float = DURATION_SLACK.total_seconds(),
    ) -> str | None:
        """None when the outputs are usable; else the first reason they are not. Raises
        OutputRefused for a URL that is not to be fetched at all, OutputsUnreachable when an
        output's server does not answer (or answers 5xx). A transcode's duration may be
        ``max(slack, tolerance × the input's)`` seconds from its input's (the step's ``verify``
        options)."""
        reached: dict[str, str] = {}
        for url in _urls(outputs):
            problem, reached[url] = await self._reachable(url)
            if problem:
                return problem
        duration = await self._input_duration(outputs)
        for item in _items(outputs, "play"):
            play_url = item.get("url")
            if not isinstance(play_url, str) or duration is None:
                continue
            # FFmpeg reads the URL the check ended at (after redirects), checked again now.
            target = reached.get(play_url, play_url)
            await self._vet(target)
            try:
                durations: Sequence[tuple[str, float]]
                if is_hls(target) or is_hls(play_url):
                    # FFmpeg would fetch what the playlist names, unchecked: read it here.
                    durations = await self._hls_durations(target)
                else:
                    durations = [(target, await self.probe(target))]
            except (OutputRefused, OutputsUnreachable):
                raise
            except Exception as exc:
                # FFmpeg says only that it could not read it: if the server went away
                # meanwhile, that is no verdict (this raises OutputsUnreachable).
                await self._reachable(target)
                return f"cannot read transcode {play_url}: {exc}"
            allowed = max(slack, duration * tolerance)
            for playlist, got in durations:
                if abs(got - duration) > allowed:
                    which = play_url if playlist == target else f"{play_url} (playlist {playlist})"
                    return f"transcode {which} lasts {got:.2f}s but its input lasts {duration:.2f}s"
        for sprite in _items(outputs, "sprites"):
            problem = await self._check_sprite(sprite, duration)
            if problem:
                return problem
        return None

    async def _vet(self, url: str) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise OutputRefused(f"output {url} is not an http(s) URL")
        if self.policy is not None:
            try:
                await self.policy.vet_url(url)
            except Refused as exc:
                raise OutputRefused(f"output {url} refused: {exc}") from None

    async def _fetch(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """``method`` on ``url``, following up to MAX_REDIRECTS redirects, each hop checked.
        With ``stream``, the body is left unread (the caller closes the response)."""
        await self._vet(url)
        request = self.http.build_request(method, url, headers=headers)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                answer = await self.http.send(request, follow_redirects=False, stream=stream)
            except Refused as exc:
                raise OutputRefused(f"output {request.url} refused: {exc}") from None
            except httpx.TransportError as exc:
                raise OutputsUnreachable(f"output {request.url} cannot be fetched: {exc}") from None
            if _unavailable(answer.status_code):
                await answer.aclose()
                raise OutputsUnreachable(f"output {request.url} answered HTTP {answer.status_code}")
            if answer.next_request is None:
                return answer
            await answer.aclose()
            request = answer.next_request
            await self._vet(str(request.url))
        raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects", request=request)

    async def _reachable(self, url: str) -> tuple[str | None, str]:
        """The problem with ``url`` (or None), and the URL it ended at after redirects."""
        try:
            answer = await self._fetch("HEAD", url)
            if answer.status_code in (405, 501):
                answer = await self._fetch("GET", url, headers={"Range": "bytes=0-0"})
        except httpx.HTTPError as exc:
            return f"output {url} cannot be fetched: {exc!s}", url
        if answer.status_code >= 400:
            return f"output {url} answered HTTP {answer.status_code}", url
        return None, str(answer.url)

    async def _read(self, url: str, limit: int, what: str) -> tuple[bytes, str]:
        """The body at ``url`` and the URL it was found at, refused (ValueError) beyond
        ``limit`` bytes: output checks hold what they fetch in memory, and the URLs come from
        events."""
        answer = await self._fetch("GET", url, stream=True)
        try:
            answer.raise_for_status()
            body = b""
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise ValueError(f"{what} {url} is larger than {limit} bytes")
        finally:
            await answer.aclose()
        return body, str(answer.url)

    async def _playlist(self, url: str) -> Playlist:
        """The HLS playlist at ``url`` (relative URIs resolved against where it was found)."""
        body, found_at = await self._read(url, MAX_PLAYLIST_BYTES, "playlist")
        try:
            return parse_playlist(body.decode("utf-8"), found_at)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"playlist {url}: {exc}") from None

    async def _vet_all(self, urls: list[str]) -> None:
        """Refuse the lot if one of ``urls`` is refused: before any request is sent to one.
        A host is vetted once for all its URLs (its addresses are what count)."""
        origins: set[tuple[str, str]] = set()
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or (parts.scheme, parts.netloc) not in origins:
                await self._vet(url)
                origins.add((parts.scheme, parts.netloc))

    async def _hls_durations(self, url: str) -> list[tuple[str, float]]:
        """Each media playlist's duration for the HLS playlist at ``url`` (itself, or each
        playlist a master names); every URI is vetted, nothing is fetched by FFmpeg."""
        playlist = await self._playlist(url)
        if not playlist.playlists:
            return [(url, await self._media_duration(url, playlist))]
        if len(playlist.playlists) > MAX_VARIANTS:
            raise ValueError(f"playlist {url} names over {MAX_VARIANTS} playlists")
        named = list(dict.fromkeys(playlist.playlists))
        await self._vet_all(named + playlist.resources)
        durations = []
        for variant in named:
            media = await self._playlist(variant)
            if media.playlists:
                raise ValueError(f"playlist {variant}, named by {url}, is a master playlist")
            durations.append((variant, await self._media_duration(variant, media)))
        return durations

    async def _media_duration(self, url: str, playlist: Playlist) -> float:
        """The sum of a finished media playlist's ``#EXTINF``; its keys, maps and (a sample of)
        its segments must answer."""
        if not playlist.ended:
            raise ValueError(f"playlist {url} has no #EXT-X-ENDLIST (not a finished VOD)")
        if not playlist.segments:
            raise ValueError(f"playlist {url} lists no segments")
        segments = [uri for uri, _ in playlist.segments]
        resources = list(dict.fromkeys(playlist.resources))
        await self._vet_all(resources + segments)
        for uri in resources + sample(list(dict.fromkeys(segments)), SEGMENT_SAMPLE):
            problem, _ = await self._reachable(uri)
            if problem:
                raise ValueError(problem)
        return sum(seconds for _, seconds in playlist.segments)

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
            body, _ = await self._read(vtt_url, MAX_PLAYLIST_BYTES, "WebVTT")
            cues = parse_vtt(body.decode("utf-8", errors="replace"), vtt_url)
        except (httpx.HTTPError, ValueError) as exc:
            return f"sprite WebVTT {vtt_url}: {exc}"
        sizes: dict[str, tuple[int, int]] = {}
        for image in {cue.image for cue in cues}:
            try:
                data, _ = await self._read(image, MAX_IMAGE_BYTES, "image")
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
