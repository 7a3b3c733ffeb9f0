"""Running FFmpeg from asyncio: locating the binary, a cancellation-safe subprocess wrapper, and
probing media with ffmpeg itself (the pip build ships no ffprobe).

Errors, from general to specific::

    MediaError            an FFmpeg run failed, or an operation was given something it cannot do;
    │                     carries the reason (FFmpeg's last meaningful stderr lines), the command
    │                     and the exit code
    ├── NotMediaError     the file is missing, or FFmpeg cannot read audio or video from it
    └── MediaTimeout      the run took longer than its timeout and was killed

A cancelled run is not an error: the FFmpeg process is killed and ``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

StrPath = str | os.PathLike[str]


def _prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _prctl()  # looked up before any fork: the child only calls it
_SET_DEATHSIG = 1  # PR_SET_DEATHSIG


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, what a child runs before it becomes FFmpeg: the kernel kills FFmpeg when the
    thread that started it (the event loop's) dies. Else a vodflow killed with -9 leaves its
    FFmpeg runs going, writing what the restarted engine writes again. A parent that died
    before the child asked is caught by the child itself."""
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, os.getpid()

    def setup() -> None:
        prctl(_SET_DEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return setup


# Options every run starts with: never read the terminal, keep stderr to what matters.
_COMMON = ("-nostdin", "-hide_banner")
# Stderr lines that carry no reason of their own.
_NOISE = re.compile(
    r"^(Conversion failed!|Exiting with exit code \d+|At least one output file must be specified"
    r"|Press \[q\] to stop.*|Error opening (input|output) files? .*\.)$"
)
_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")


class MediaError(Exception):
    """An FFmpeg run failed, or a media operation was asked for something it cannot do."""

    def __init__(
        self,
        reason: str,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
    ) -> None:
        self.reason = reason
        self.command = list(command)
        self.returncode = returncode
        super().__init__(str(self))

    def __str__(self) -> str:
        if not self.command:
            return self.reason
        cmd = shlex.join(self.command)
        if len(cmd) > 400:  # sprite and snapshot commands can run to many kilobytes
            cmd = cmd[:400] + " …"
        return f"{self.reason} (ffmpeg exit code {self.returncode}; command: {cmd})"


class NotMediaError(MediaError):
    """The file is missing, or FFmpeg finds no audio or video in it."""


class MediaTimeout(MediaError):
    """An FFmpeg run exceeded its timeout and was killed."""


def ffmpeg_reason(stderr: str, limit: int = 3) -> str:
    """The last ``limit`` meaningful lines of FFmpeg's stderr, joined with `` | ``."""
    lines: list[str] = []
    seen: set[str] = set()
    for raw in stderr.splitlines():
        line = _ADDRESS.sub("", raw.strip())
        # FFmpeg repeats one cause at several levels ("Error opening input: X", "Error opening
        # input files: X"): keep the first line for each cause.
        cause = line.rsplit(": ", 1)[-1]
        if line and not _NOISE.match(line) and cause not in seen:
            seen.add(cause)
            lines.append(line)
    return " | ".join(lines[-limit:]) or "no message from ffmpeg"


@dataclass(frozen=True)
class Completed:
    """A finished FFmpeg run."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class VideoStream:
    """The first video stream of a file. Bitrates are in bit/s; fps 0.0 when FFmpeg shows none.
    ``timescale`` is the stream's clock in ticks per second (FFmpeg's tbn), 0 when not shown."""

    codec: str
    width: int
    height: int
    fps: float
    bitrate: int | None = None
    profile: str | None = None
    pix_fmt: str | None = None
    rotation: int = 0
    timescale: int = 0


@dataclass(frozen=True)
class AudioStream:
    """The first audio stream of a file. Bitrate in bit/s."""

    codec: str
    sample_rate: int
    channels: int
    bitrate: int | None = None
    profile: str | None = None


@dataclass(frozen=True)
class MediaInfo:
    """What FFmpeg reports about a file: durations in seconds, sizes in bytes, bitrates in bit/s.

    ``container`` is the short name VOD reports (``mp4``, ``ts``, ``flv``, ``hls``, ...);
    ``format_name`` is FFmpeg's demuxer name (``mov,mp4,m4a,3gp,3g2,mj2``).
    """

    path: Path
    duration: float
    container: str
    format_name: str
    size: int
    bitrate: int | None
    start_time: float = 0.0
    video: VideoStream | None = None
    audio: AudioStream | None = None
    video_streams: int = 0
    audio_streams: int = 0
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def is_media(self) -> bool:
        """Whether FFmpeg found audio or video in the file."""
        return self.video is not None or self.audio is not None


class FFmpeg:
    """One FFmpeg binary and how to run it.

    ``exe`` is a configured path or command name (a system ffmpeg); by default the binary of the
    ``imageio-ffmpeg`` package. ``threads`` bounds the threads of each decoder, encoder and filter
    graph (``None`` lets FFmpeg decide, which is one per core for each of them). ``timeout`` is a
    safety net for every run: a process running longer is killed and :class:`MediaTimeout` raised.
    For a limit on one operation, wrap the call in ``asyncio.timeout()``: cancellation kills FFmpeg.
    """

    def __init__(
        self, exe: str | None = None, threads: int | None = None, timeout: float | None = None
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"FFmpeg threads: expected a positive count or None, got {threads}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"FFmpeg timeout: expected positive seconds or None, got {timeout}")
        self.exe = exe or _bundled_ffmpeg()
        self.threads = threads
        self.timeout = timeout
        self._version: tuple[int, int] | None = None
        self._version_known = False

    def __repr__(self) -> str:
        return f"FFmpeg(exe={self.exe!r}, threads={self.threads!r}, timeout={self.timeout!r})"

    @property
    def thread_args(self) -> list[str]:
        """``-threads N`` for a decoder (before ``-i``) or an encoder (before the output)."""
        return [] if self.threads is None else ["-threads", str(self.threads)]

    @property
    def filter_thread_args(self) -> list[str]:
        """Global options bounding filter graph threads."""
        if self.threads is None:
            return []
        n = str(self.threads)
        return ["-filter_threads", n, "-filter_complex_threads", n]

    def command(self, args: Sequence[str], *, loglevel: str = "error") -> list[str]:
        """The full command line for ``args``: the binary, the common options, then ``args``."""
        return [self.exe, *_COMMON, "-loglevel", loglevel, *args]

    async def run(
        self,
        args: Sequence[str],
        *,
        loglevel: str = "error",
        check: bool = True,
        capture_stdout: bool = False,
        cwd: StrPath | None = None,
    ) -> Completed:
        """Run FFmpeg with ``args`` (in the folder ``cwd``) and wait for it.

        The process is killed when the awaiting task is cancelled or the timeout passes; a non-zero
        exit raises :class:`MediaError` unless ``check`` is false.
        """
        cmd = self.command(args, loglevel=loglevel)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if capture_stdout else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            raise MediaError(f"cannot start ffmpeg {self.exe!r}: {exc}", command=cmd) from exc
        async with _killed_on_exit(proc, cmd, self.timeout):
            out, err = await proc.communicate()
        result = Completed(
            command=cmd,
            returncode=proc.returncode if proc.returncode is not None else -1,
            stdout=out.decode(errors="replace") if out else "",
            stderr=err.decode(errors="replace") if err else "",
        )
        if check and result.returncode != 0:
            raise MediaError(
                ffmpeg_reason(result.stderr), command=cmd, returncode=result.returncode
            )
        return result

    async def run_piped(
        self, first: Sequence[str], second: Sequence[str], *, cwd: StrPath | None = None
    ) -> None:
        """Run ``ffmpeg first | ffmpeg second`` (the first writes to ``pipe:1``, the second reads
        ``pipe:0``), both in the folder ``cwd``. Both are killed if either fails, the task is
        cancelled or the timeout passes.
        """
        cmd1, cmd2 = self.command(first), self.command(second)
        read_fd, write_fd = os.pipe()
        procs: list[asyncio.subprocess.Process] = []
        try:
            procs.append(
                await asyncio.create_subprocess_exec(
                    *cmd1,
                    cwd=cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=asyncio.subprocess.PIPE,
                    preexec_fn=die_with_parent(),
                )
            )
            procs.append(
                await asyncio.create_subprocess_exec(
                    *cmd2,
                    cwd=cwd,
                    stdin=read_fd,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    preexec_fn=die_with_parent(),
                )
            )
        except OSError as exc:
            for proc in procs:
                _kill(proc)
            raise MediaError(f"cannot start ffmpeg {self.exe!r}: {exc}", command=cmd1) from exc
        finally:
            # The children hold their own copies; ours must go so the reader sees end-of-file.
            os.close(read_fd)
            os.close(write_fd)
        p1, p2 = procs
        async with _killed_on_exit(p1, cmd1, self.timeout), _killed_on_exit(p2, cmd2, self.timeout):
            (_, err1), (_, err2) = await asyncio.gather(p1.communicate(), p2.communicate())
        reasons = [ffmpeg_reason(err.decode(errors="replace")) for err in (err1, err2)]
        failed = [
            MediaError(reason, command=cmd, returncode=proc.returncode)
            for proc, cmd, reason in zip((p1, p2), (cmd1, cmd2), reasons, strict=True)
            if proc.returncode != 0
        ]
        if failed:
            # When both fail, one failure caused the other: a writer that lost its reader
            # reports a broken pipe, a reader that lost its writer reports bad input.
            writer_lost_reader = "Broken pipe" in reasons[0] or p1.returncode == -signal.SIGPIPE
            raise failed[-1] if writer_lost_reader else failed[0]

    async def version(self) -> tuple[int, int] | None:
        """(major, minor) of the binary, or None for a development build without a version."""
        if not self._version_known:
            result = await self.run(["-version"], check=False, capture_stdout=True)
            self._version = parse_version(result.stdout)
            self._version_known = True
        return self._version

    async def probe(self, path: StrPath) -> MediaInfo:
        """Duration, container, size, bitrate and first audio/video streams of ``path``.

        Raises :class:`NotMediaError` when the file is missing or holds no audio or video.
        """
        p = Path(path)
        result = await self.run(["-i", str(p)], loglevel="info", check=False)
        if "Input #0" not in result.stderr:
            raise NotMediaError(
                f"not a media file: {p}: {ffmpeg_reason(result.stderr)}",
                command=result.command,
                returncode=result.returncode,
            )
        try:
            size = await asyncio.to_thread(os.path.getsize, p)
        except OSError as exc:  # removed between FFmpeg's read and ours
            raise NotMediaError(f"not a media file: {p}: {exc}") from exc
        info = parse_probe(result.stderr, p, size)
        if info.format_name == "hls":
            # A playlist's own size says nothing: count the segments it lists.
            segments = await asyncio.to_thread(_segment_sizes, p)
            size += segments
            bitrate = round(size * 8 / info.duration) if info.duration > 0 else None
            info = dataclasses.replace(info, size=size, bitrate=bitrate)
        if not info.is_media or info.format_name == "tty":  # tty: FFmpeg's ANSI-art reader
            raise NotMediaError(
                f"not a media file: {p}: ffmpeg reads it as {info.format_name!r} "
                "but finds no audio or video stream",
                command=result.command,
                returncode=result.returncode,
            )
        if info.duration <= 0.0:
            info = await self._measure_duration(info)
        return info

    async def _measure_duration(self, info: MediaInfo) -> MediaInfo:
        # Raw elementary streams and some live captures carry no duration in their headers; read
        # every packet (stream copy, no decoding) and take the last timestamp FFmpeg reached.
        copy = ["-i", str(info.path), "-map", "0:V?", "-map", "0:a?", "-c", "copy"]
        progress = ["-f", "null", "-progress", "pipe:1", "-nostats", "-"]
        result = await self.run([*copy, *progress], capture_stdout=True)
        times = re.findall(r"^out_time_us=(\d+)$", result.stdout, re.MULTILINE)
        duration = int(times[-1]) / 1e6 if times else 0.0
        bitrate = info.bitrate or (round(info.size * 8 / duration) if duration > 0 else None)
        return dataclasses.replace(info, duration=duration, bitrate=bitrate)


@contextlib.asynccontextmanager
async def _killed_on_exit(
    proc: asyncio.subprocess.Process, cmd: list[str], limit: float | None
) -> AsyncIterator[None]:
    """Kill ``proc`` unless the body finishes: on cancellation, timeout or any error."""
    try:
        async with asyncio.timeout(limit):
            yield
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        raise MediaTimeout(
            f"ffmpeg took longer than {limit:g} s and was killed",
            command=cmd,
            returncode=proc.returncode,
        ) from None
    except BaseException:
        _kill(proc)
        # Reap it so no zombie is left; shielded so a second cancellation cannot skip the wait.
        await asyncio.shield(proc.wait())
        raise


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _bundled_ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MediaError(
            "no FFmpeg: configure a path to an ffmpeg binary or install imageio-ffmpeg"
        ) from exc
    exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


# --- parsing `ffmpeg -i` -----------------------------------------------------------------------

_INPUT = re.compile(r"^Input #0, (?P<format>.+?), from '", re.MULTILINE)
_DURATION = re.compile(
    r"^\s*Duration: (?P<duration>N/A|\d+:\d\d:\d\d(?:\.\d+)?)"
    r"(?:, start: (?P<start>-?[\d.]+))?(?:, bitrate: (?P<bitrate>N/A|\d+) kb/s)?",
    re.MULTILINE,
)
_STREAM = re.compile(
    r"^\s*Stream #0:\d+\S*: (?P<kind>Video|Audio|Subtitle|Data|Attachment): (?P<rest>.*)$"
)
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")
_CHANNELS = {
    "mono": 1,
    "stereo": 2,
    "2.1": 3,
    "3.0": 3,
    "3.0(back)": 3,
    "4.0": 4,
    "quad": 4,
    "quad(side)": 4,
    "3.1": 4,
    "4.1": 5,
    "5.0": 5,
    "5.0(side)": 5,
    "5.1": 6,
    "5.1(side)": 6,
    "6.0": 6,
    "6.0(front)": 6,
    "hexagonal": 6,
    "6.1": 7,
    "6.1(back)": 7,
    "6.1(front)": 7,
    "7.0": 7,
    "7.0(front)": 7,
    "7.1": 8,
    "7.1(wide)": 8,
    "7.1(wide-side)": 8,
    "octagonal": 8,
    "downmix": 2,
}
# FFmpeg demuxer names -> the short container names VOD reports.
_CONTAINERS = {"mpegts": "ts", "matroska,webm": "mkv", "mpeg": "mpg"}
_MOV_EXTENSIONS = {"mp4", "mov", "m4a", "m4v", "3gp", "3g2"}


def read_playlist(path: StrPath) -> list[tuple[str, float]]:
    """The (URI, duration) of each segment of an HLS media playlist, in order."""
    segments: list[tuple[str, float]] = []
    duration: float | None = None
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line and not line.startswith("#") and duration is not None:
            segments.append((line, duration))
            duration = None
    return segments


def _segment_sizes(playlist: Path) -> int:
    total = 0
    for uri, _ in read_playlist(playlist):
        segment = playlist.parent / uri
        if "://" not in uri and segment.is_file():
            total += segment.stat().st_size
    return total


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from ``ffmpeg -version`` output: "ffmpeg version n9.0.2-17-g…" or
    "ffmpeg version 4.4.2-0ubuntu0.22.04.1"; None for git builds ("N-112345-g…")."""
    m = re.search(r"ffmpeg version n?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_probe(stderr: str, path: Path, size: int) -> MediaInfo:
    """Build a :class:`MediaInfo` from the stderr of ``ffmpeg -hide_banner -i path``.

    Only input #0's header and stream lines are read; FFmpeg prints durations to 10 ms.
    """
    m = _INPUT.search(stderr)
    format_name = m.group("format") if m else "unknown"
    header = stderr[m.end() :] if m else stderr
    # Stop at anything that is not part of the input description (output, mapping, errors).
    cut = re.search(r"^(?:Output #|Stream mapping:|At least one output)", header, re.MULTILINE)
    header = header[: cut.start()] if cut else header

    duration, start, bitrate = 0.0, 0.0, None
    d = _DURATION.search(header)
    if d:
        if d.group("duration") != "N/A":
            hours, minutes, seconds = d.group("duration").split(":")
            duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        if d.group("start"):
            start = float(d.group("start"))
        if d.group("bitrate") and d.group("bitrate") != "N/A":
            bitrate = int(d.group("bitrate")) * 1000 or None

    video: VideoStream | None = None
    audio: AudioStream | None = None
    n_video = n_audio = 0
    tags: dict[str, str] = {}
    lines = header.splitlines()
    in_format_metadata = True
    for i, line in enumerate(lines):
        s = _STREAM.match(line)
        if s is None:
            if in_format_metadata:
                t = re.match(r"^    (\w[\w.-]*)\s*: (.*)$", line)
                if t:
                    tags[t.group(1)] = t.group(2)
            continue
        in_format_metadata = False
        kind, rest = s.group("kind"), s.group("rest")
        if kind == "Video" and "(attached pic)" not in rest:
            n_video += 1
            if video is None:
                video = _parse_video(rest, lines[i + 1 :])
        elif kind == "Audio":
            n_audio += 1
            if audio is None:
                audio = _parse_audio(rest)
    if bitrate is None and duration > 0:
        bitrate = round(size * 8 / duration)
    return MediaInfo(
        path=path,
        duration=duration,
        container=_short_container(format_name, path),
        format_name=format_name,
        size=size,
        bitrate=bitrate,
        start_time=start,
        video=video,
        audio=audio,
        video_streams=n_video,
        audio_streams=n_audio,
        tags=tags,
    )


def _parse_video(rest: str, following: list[str]) -> VideoStream:
    parts = _split_top_level(rest)
    codec, profile = _codec_and_profile(parts[0])
    width = height = 0
    fps = tbr = 0.0
    timescale = 0
    bitrate: int | None = None
    pix_fmt: str | None = None
    for i, part in enumerate(parts[1:], start=1):
        if i == 1 and not re.match(r"^\d+x\d+", part):
            pix_fmt = part.split("(")[0].strip() or None
        if dims := re.match(r"^(\d+)x(\d+)", part):
            width, height = int(dims.group(1)), int(dims.group(2))
        elif rate := re.match(r"^([\d.]+)(k?) fps$", part):
            fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
        elif rate := re.match(r"^([\d.]+)(k?) tbr$", part):
            tbr = float(rate.group(1)) * (1000 if rate.group(2) else 1)
        elif clock := re.match(r"^([\d.]+)(k?) tbn\b", part):
            timescale = round(float(clock.group(1)) * (1000 if clock.group(2) else 1))
        elif (kbps := _kbps(part)) is not None:
            bitrate = kbps
    rotation = 0
    for line in following:  # side data of this stream, up to the next stream
        if _STREAM.match(line):
            break
        if r := _ROTATION.search(line):
            rotation = round(-float(r.group(1))) % 360  # FFmpeg prints the counter-clockwise angle
    return VideoStream(
        codec=codec,
        width=width,
        height=height,
        fps=fps or tbr,
        bitrate=bitrate,
        profile=profile,
        pix_fmt=pix_fmt,
        rotation=rotation,
        timescale=timescale,
    )


def _parse_audio(rest: str) -> AudioStream:
    parts = _split_top_level(rest)
    codec, profile = _codec_and_profile(parts[0])
    sample_rate = channels = 0
    bitrate: int | None = None
    for part in parts[1:]:
        if hz := re.match(r"^(\d+) Hz$", part):
            sample_rate = int(hz.group(1))
        elif part in _CHANNELS:
            channels = _CHANNELS[part]
        elif ch := re.match(r"^(\d+) channels", part):
            channels = int(ch.group(1))
        elif (kbps := _kbps(part)) is not None:
            bitrate = kbps
    return AudioStream(
        codec=codec, sample_rate=sample_rate, channels=channels, bitrate=bitrate, profile=profile
    )


def _kbps(part: str) -> int | None:
    m = re.match(r"^(\d+) kb/s", part)
    return int(m.group(1)) * 1000 if m and int(m.group(1)) > 0 else None


def _codec_and_profile(first: str) -> tuple[str, str | None]:
    # "h264 (High) (avc1 / 0x31637661)" -> ("h264", "High"); "aac (LC) (mp4a / …)" -> ("aac", "LC").
    # FFmpeg also puts a decoder name in parentheses when it differs from the codec's
    # ("mp2 (mp3float)"); decoder names are lower case, profile names are not.
    codec = first.split(" ", 1)[0]
    groups = re.findall(r"\(([^()]*)\)", first)
    profile = next((g for g in groups if "/" not in g and g[:1].isupper()), None)
    return codec, profile


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and brackets: "yuv420p(tv, bt709)" stays one part."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _short_container(format_name: str, path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    if format_name.startswith("mov,"):
        return ext if ext in _MOV_EXTENSIONS else "mp4"
    if format_name == "matroska,webm" and ext == "webm":
        return "webm"
    return _CONTAINERS.get(format_name, format_name.split(",", 1)[0])
