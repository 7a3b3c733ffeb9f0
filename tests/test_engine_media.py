"""The engine's media layer against real FFmpeg, on short low-resolution recordings the tests make.

Durations are checked to FFmpeg's 10 ms precision plus a frame, or a GOP where a stream copy
starts on the keyframe before the requested time. Nothing here is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine import ffmpeg as ffmpeg_module
from orchestrator.engine import media as media_module
from orchestrator.engine.ffmpeg import (
    FFmpeg,
    MediaError,
    MediaTimeout,
    NotMediaError,
    ffmpeg_reason,
    parse_probe,
    parse_version,
    read_playlist,
)
from orchestrator.engine.media import (
    Media,
    SnapshotTemplate,
    SpriteTemplate,
    TranscodeTemplate,
    output_size,
    sprite_webvtt,
)

pytestmark = pytest.mark.ffmpeg

FPS = 30
FRAME = 1 / FPS
GOP = 2.0
TOLERANCE = 0.011  # FFmpeg prints durations to 10 ms


@dataclass(frozen=True)
class Recordings:
    long: Path  # 12 s, 320x180, audio
    short: Path  # 6 s, same parameters: joins with `long` by stream copy
    large: Path  # 6 s, 640x360: does not
    silent: Path  # 4 s, 320x180, no audio
    marked: Path  # 8 s, 160x90: a white frame and a 30 ms beep at every whole second
    ts: Path  # `long` as MPEG-TS, its clock starting at 10 s as a live recorder's does


@pytest.fixture(scope="session")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Recordings:
    root = tmp_path_factory.mktemp("recordings")
    media = Media(FFmpeg(threads=2))
    rec = Recordings(
        *(root / f"{name}.mp4" for name in ("long", "short", "large", "silent", "marked")),
        ts=root / "long.ts",
    )
    small: dict[str, Any] = {"width": 320, "height": 180, "fps": FPS, "gop_seconds": GOP}

    async def make() -> None:
        await asyncio.gather(
            media.make_test_media(rec.long, 12, **small),
            media.make_test_media(rec.short, 6, tone=660, **small),
            media.make_test_media(rec.large, 6, width=640, height=360, gop_seconds=GOP),
            media.make_test_media(rec.silent, 4, audio=False, **small),
            make_marked(rec.marked, 8),
        )
        await ffmpeg_out("-i", str(rec.long), "-c", "copy", "-output_ts_offset", "10", str(rec.ts))

    asyncio.run(make())
    return rec


async def make_marked(dst: Path, duration: int) -> None:
    """A recording whose picture flashes white and whose sound beeps at every whole second."""
    every_second = "lt(mod(t\\,1)\\,0.03)"
    flash = f"color=c=black:s=160x90:r=30,drawbox=c=white:t=fill:enable='{every_second}'"
    beep = f"aevalsrc='if({every_second}\\,0.8*sin(2*PI*1000*t)\\,0)':s=48000"
    await ffmpeg_out(
        *("-f", "lavfi", "-i", flash, "-f", "lavfi", "-i", beep, "-t", str(duration)),
        *("-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-sc_threshold", "0"),
        *("-pix_fmt", "yuv420p", "-c:a", "aac", str(dst)),
    )


@pytest.fixture
def media() -> Media:
    return Media(FFmpeg(threads=2))


# --- helpers -----------------------------------------------------------------------------------


async def ffmpeg_out(*args: str) -> bytes:
    """Stdout of an FFmpeg run, as bytes."""
    proc = await asyncio.create_subprocess_exec(
        FFmpeg().exe, "-nostdin", "-loglevel", "error", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out


async def packets(path: Path, stream: str = "v") -> list[tuple[int, str]]:
    """(pts, crc) of each packet of the first ``stream`` of ``path``, without decoding."""
    text = await ffmpeg_out(
        "-i", str(path), "-map", f"0:{stream}:0", "-c", "copy", "-f", "framecrc", "-"
    )
    rows = [line.split(",") for line in text.decode().splitlines() if not line.startswith("#")]
    return [(int(r[2]), r[5].strip()) for r in rows]


async def frame_hashes(path: Path) -> list[str]:
    """MD5 of each decoded video frame."""
    text = await ffmpeg_out("-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-")
    return [line.split(",")[-1].strip() for line in text.decode().splitlines() if line[:1] != "#"]


async def keyframe_times(path: Path) -> list[float]:
    text = await ffmpeg_out(
        "-i", str(path), "-map", "0:v:0", "-c", "copy", "-bsf:v", "noise=drop=not(key)",
        "-f", "framecrc", "-",
    )  # fmt: skip
    lines = text.decode().splitlines()
    tb = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("#tb 0"))
    num, den = (int(x) for x in tb.split("/"))
    return [int(line.split(",")[2]) * num / den for line in lines if not line.startswith("#")]


async def key_crcs(path: Path) -> list[str]:
    """The CRC of each video keyframe packet of ``path``, in order."""
    text = await ffmpeg_out(
        "-i", str(path), "-map", "0:v:0", "-c", "copy", "-bsf:v", "noise=drop=not(key)",
        "-f", "framecrc", "-",
    )  # fmt: skip
    return [line.split(",")[5].strip() for line in text.decode().splitlines() if line[0] != "#"]


async def gray(*args: str) -> bytes:
    """One picture as 8-bit grey pixels."""
    return await ffmpeg_out(*args, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-")


def mean_difference(a: bytes, b: bytes) -> float:
    assert len(a) == len(b)
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def crop(picture: bytes, picture_width: int, x: int, y: int, w: int, h: int) -> bytes:
    rows = (
        picture[(y + r) * picture_width + x : (y + r) * picture_width + x + w] for r in range(h)
    )
    return b"".join(rows)


def top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4's top-level boxes, in file order."""
    kinds = []
    with path.open("rb") as f:
        while header := f.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0] - 8
            kinds.append(kind.decode())
            f.seek(size - 8, 1)
    return kinds


async def markers(path: Path) -> tuple[list[float], list[float]]:
    """Times of the white frames and of the beeps of a `marked` recording, on its timeline."""
    # showinfo logs each frame's presentation time and mean brightness.
    proc = await asyncio.create_subprocess_exec(
        FFmpeg().exe, "-nostdin", "-i", str(path), "-map", "0:v:0",
        "-vf", "scale=8:8,format=gray,showinfo", "-f", "null", "-",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    flashes = [
        float(m.group(1))
        for m in re.finditer(r"pts_time:([\d.]+).*? mean:\[(\d+)", err.decode())
        if int(m.group(2)) > 128
    ]
    pcm = await ffmpeg_out(
        "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", "48000", "-f", "s16le", "-"
    )
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    beeps: list[float] = []
    for i, value in enumerate(samples):
        if abs(value) > 8000 and (not beeps or i / 48000 - beeps[-1] > 0.5):
            beeps.append(i / 48000)
    return flashes, beeps


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    lines = text.splitlines()
    assert lines[0] == "WEBVTT"
    cues = []
    for i, line in enumerate(lines):
        if " --> " in line:
            begin, end = line.split(" --> ")
            cues.append((seconds(begin), seconds(end), lines[i + 1]))
    return cues


def pids_alive(*pids: int) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


class Spawned:
    """The processes the FFmpeg wrapper starts during a test."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.started = asyncio.Event()

    async def wait_for(self, count: int) -> list[asyncio.subprocess.Process]:
        while len(self.procs) < count:
            await self.started.wait()
            self.started.clear()
        return self.procs


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spawned]:
    """Records every process the FFmpeg wrapper starts; kills any left alive afterwards."""
    spawned = Spawned()
    real = asyncio.create_subprocess_exec

    async def recording(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await real(*args, **kwargs)
        spawned.procs.append(proc)
        spawned.started.set()
        return proc

    monkeypatch.setattr(ffmpeg_module.asyncio, "create_subprocess_exec", recording)
    yield spawned
    for proc in spawned.procs:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)


ENDLESS = ["-f", "lavfi", "-i", "testsrc2=size=64x36:rate=30", "-f", "null", "-"]


# --- probe -------------------------------------------------------------------------------------


async def test_probe_reports_container_and_streams(media: Media, recordings: Recordings) -> None:
    info = await media.probe(recordings.long)
    assert abs(info.duration - 12) < TOLERANCE
    assert info.container == "mp4"
    assert info.format_name.startswith("mov,mp4")
    assert info.size == recordings.long.stat().st_size
    assert info.bitrate is not None
    assert info.bitrate > 0
    assert info.is_media
    assert info.video_streams == 1
    assert info.audio_streams == 1
    v, a = info.video, info.audio
    assert v is not None
    assert a is not None
    assert (v.codec, v.width, v.height, v.fps, v.pix_fmt, v.profile) == (
        "h264",
        320,
        180,
        30.0,
        "yuv420p",
        "High",
    )
    assert v.bitrate is not None
    assert v.bitrate > 0
    assert (a.codec, a.sample_rate, a.channels, a.profile) == ("aac", 48000, 2, "LC")
    assert a.bitrate is not None
    assert 100_000 < a.bitrate < 160_000
    silent = await media.probe(recordings.silent)
    assert silent.audio is None
    assert silent.audio_streams == 0


async def test_probe_rejects_a_text_file_with_ffmpegs_reason(media: Media, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(NotMediaError) as caught:
        await media.probe(text)
    assert caught.value.reason.startswith(f"not a media file: {text}: ")
    assert "Invalid data found when processing input" in caught.value.reason
    assert caught.value.returncode not in (0, None)
    assert caught.value.command[-1] == str(text)


async def test_probe_rejects_a_missing_file(media: Media, tmp_path: Path) -> None:
    with pytest.raises(NotMediaError, match="No such file or directory"):
        await media.probe(tmp_path / "absent.mp4")


def test_parse_probe_reads_rotation_ntsc_rates_and_surround_audio() -> None:
    stderr = """Input #0, mpegts, from 'cam.ts':
  Duration: 01:02:03.45, start: 1.400000, bitrate: N/A
  Program 1
  Stream #0:0[0x100]: Video: h264 (Main) ([27][0][0][0] / 0x001B), yuv420p(tv, bt709, progressive), 1920x1080 [SAR 1:1 DAR 16:9], 29.97 fps, 29.97 tbr, 90k tbn
      Side data:
        displaymatrix: rotation of -90.00 degrees
  Stream #0:1[0x101](eng): Audio: ac3 ([129][0][0][0] / 0x0081), 48000 Hz, 5.1(side), fltp, 384 kb/s
"""  # noqa: E501
    info = parse_probe(stderr, Path("cam.ts"), size=1000)
    assert info.container == "ts"
    assert info.start_time == 1.4
    assert info.duration == pytest.approx(3723.45)
    assert info.video is not None
    assert info.audio is not None
    assert (info.video.width, info.video.height, info.video.fps) == (1920, 1080, 29.97)
    assert (info.video.profile, info.video.rotation, info.video.bitrate) == ("Main", 90, None)
    assert info.video.timescale == 90_000
    assert (info.audio.codec, info.audio.channels, info.audio.bitrate) == ("ac3", 6, 384_000)


def test_version_and_reason_parsing() -> None:
    assert parse_version("ffmpeg version n9.0.2-17-g2a571b6068-20260930 Copyright") == (9, 0)
    assert parse_version("ffmpeg version 4.4.2-0ubuntu0.22.04.1 Copyright") == (4, 4)
    assert parse_version("ffmpeg version N-112345-gdeadbeef Copyright") is None
    stderr = (
        "[in#0 @ 0x5640ae1fccc0] Error opening input: No such file or directory\n"
        "Error opening input file x.mp4.\n"
        "Error opening input files: No such file or directory\n"
    )
    assert ffmpeg_reason(stderr) == "[in#0] Error opening input: No such file or directory"


async def test_a_failed_run_carries_reason_command_and_exit_code(tmp_path: Path) -> None:
    ff = FFmpeg()
    with pytest.raises(MediaError) as caught:
        await ff.run(["-i", str(tmp_path / "absent.mp4"), str(tmp_path / "out.mp4")])
    error = caught.value
    assert "No such file or directory" in error.reason
    assert error.returncode not in (0, None)
    assert error.command[0] == ff.exe
    assert "-nostdin" in error.command
    assert "absent.mp4" in str(error)
    assert "exit code" in str(error)


async def test_a_missing_ffmpeg_binary_is_a_media_error(tmp_path: Path) -> None:
    ff = FFmpeg(str(tmp_path / "ffmpeg"), threads=1)
    with pytest.raises(MediaError, match=r"cannot start ffmpeg '.*/ffmpeg'"):
        await ff.run(["-version"])


async def test_a_failed_pipeline_reports_the_cause(tmp_path: Path) -> None:
    ff = FFmpeg()
    reader = ["-f", "nut", "-i", "pipe:0", "-f", "null", "-"]
    with pytest.raises(MediaError, match="No such file or directory"):  # the writer's input
        await ff.run_piped(["-i", str(tmp_path / "absent.mp4"), "-f", "nut", "pipe:1"], reader)
    writer = ["-f", "lavfi", "-i", "testsrc2=size=64x36:rate=30", "-f", "nut", "pipe:1"]
    with pytest.raises(MediaError, match="No such filter: 'nosuchfilter'") as caught:
        await ff.run_piped(
            writer, ["-f", "nut", "-i", "pipe:0", "-vf", "nosuchfilter", "-f", "null", "-"]
        )
    assert "pipe:0" in caught.value.command


_RUNS_FFMPEG_FOR_EVER = """
import asyncio, sys, uvloop
from orchestrator.engine.ffmpeg import FFmpeg

async def main():
    endless = ["-re", "-f", "lavfi", "-i", "testsrc2=size=64x36:rate=5", "-f", "null", "-"]
    await FFmpeg(threads=1).run(endless)

uvloop.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_ffmpeg_dies_with_the_process_that_started_it() -> None:
    """An engine killed with -9 must not leave its FFmpeg runs going: restarted, it runs the
    same tasks again, and two FFmpegs writing one output made a corrupt file."""
    engine = subprocess.Popen([sys.executable, "-c", _RUNS_FFMPEG_FOR_EVER])
    children = Path(f"/proc/{engine.pid}/task/{engine.pid}/children")
    try:
        started = _until(lambda: children.read_text().split(), 30)
        (ffmpeg,) = started
        assert "ffmpeg" in Path(f"/proc/{ffmpeg}/cmdline").read_bytes().decode(errors="replace")
    finally:
        engine.kill()
        engine.wait()
    try:
        assert _until(lambda: _state(ffmpeg) == "Z", 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(ffmpeg), signal.SIGKILL)  # an orphan left by a failure


def test_what_dead_processes_left_half_written_is_deleted_at_start(tmp_path: Path) -> None:
    """Every FFmpeg run and upload writes under a temporary name of its own; a crash leaves it
    behind, and the engine deletes such leftovers a day old when it starts."""
    from orchestrator.engine.tasks import forget_parts

    old, young = time.time() - 2 * 86400, time.time() - 60
    files = tmp_path / "5285890780000000001"
    work = files / ".v.mp4.1a2b3c4d.work"
    work.mkdir(parents=True)
    (work / "head.ts").write_bytes(b"x")
    left = {
        "stale part": files / ".v.f20.mp4.0f0f0f0f.part",
        "stale upload": tmp_path / ".uploads" / "9a9a9a9a9a9a9a9a.part",
        "running part": files / ".v.f30.mp4.1b1b1b1b.part",
        "output": files / "v.f20.mp4",
    }
    for path in left.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    for path in (left["stale part"], left["stale upload"], left["output"], work):
        os.utime(path, (old, old))
    os.utime(left["running part"], (young, young))
    assert forget_parts(tmp_path) == 3
    assert sorted(name for name, path in left.items() if path.exists()) == [
        "output",
        "running part",
    ]
    assert not work.exists()


def _until(check: Callable[[], Any], seconds: float) -> Any:
    """``check()``'s first true answer, asked every 0.1 s; its last answer after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (answer := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return answer


def _state(pid: str) -> str:
    """The process's state letter (Z: a zombie, dead and waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


# --- test recordings ---------------------------------------------------------------------------


async def test_test_recordings_have_a_fixed_gop(recordings: Recordings) -> None:
    assert await keyframe_times(recordings.long) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]


# --- clip --------------------------------------------------------------------------------------


async def test_clip_copies_from_the_keyframe_before_start(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.clip(recordings.long, tmp_path / "clip.mp4", 3, 9)
    assert result.stream_copy
    assert result.method == "copy"
    info = await media.probe(result.path)
    # Starts on the keyframe at 2 s (audio a few packets earlier), ends a few frames after 9 s.
    assert 7.0 - TOLERANCE <= info.duration <= 7.0 + 0.2
    source = (await media.probe(recordings.long)).video
    assert info.video is not None
    assert source is not None
    assert info.video.codec == source.codec
    assert info.video.profile == source.profile
    assert (info.video.width, info.video.height) == (source.width, source.height)
    # A stream copy: every video packet is a byte-identical packet of the source.
    source_crcs = {crc for _, crc in await packets(recordings.long)}
    clip_crcs = [crc for _, crc in await packets(result.path)]
    assert len(clip_crcs) >= 7 * FPS
    assert set(clip_crcs) <= source_crcs
    # The index sits before the media (written into reserved space, no second pass).
    assert top_level_boxes(result.path)[:3] == ["ftyp", "moov", "free"]


async def test_a_too_small_moov_reservation_falls_back_to_faststart(
    media: Media, recordings: Recordings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_module, "_moov_reserve", lambda parts: 1024)
    result = await media.clip(recordings.long, tmp_path / "clip.mp4", 2, 10)
    boxes = top_level_boxes(result.path)
    assert boxes.index("moov") < boxes.index("mdat")
    assert abs((await media.probe(result.path)).duration - 8.0) <= 0.2


async def test_clip_counts_negative_offsets_from_the_end(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.clip(recordings.long, tmp_path / "tail.mp4", -4, None)
    assert len(await frame_hashes(result.path)) == 4 * FPS  # 8 s is a keyframe


@pytest.mark.parametrize("container", ["ts", "flv"])
async def test_clip_writes_other_containers(
    media: Media, recordings: Recordings, tmp_path: Path, container: str
) -> None:
    result = await media.clip(recordings.long, tmp_path / f"clip.{container}", 2, 6)
    info = await media.probe(result.path)
    assert info.container == container
    # From the keyframe at 2 s; a stream copy stops by decoding order, a few frames late.
    assert 4 * FPS <= len(await frame_hashes(result.path)) <= 4 * FPS + 3


async def test_clip_of_an_mpeg_ts_copies_from_the_keyframe_before_start(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    """FFmpeg seeks an MPEG-TS (no index) to a packet near the time, seldom a keyframe."""
    times, crcs = await keyframe_times(recordings.long), await key_crcs(recordings.ts)
    keyframes = dict(zip(times, crcs, strict=True))
    for start, end, keyframe in [(3, 9, 2.0), (0.5, 4, 0.0), (11, None, 10.0), (-1.5, None, 10.0)]:
        result = await media.clip(recordings.ts, tmp_path / f"{start}.ts", start, end)
        assert result.stream_copy
        first = await key_crcs(result.path)
        assert first[:1] == [keyframes[keyframe]], (start, end)
        stop = 12.0 if end is None else end
        frames = len(await frame_hashes(result.path))
        assert (stop - keyframe) * FPS <= frames <= (stop - keyframe) * FPS + 3, (start, end)


async def test_clip_from_the_start_does_not_seek(media: Media, tmp_path: Path) -> None:
    """A recorder that dropped frames (here 2 s to 3.5 s) with B-frames on leaves a keyframe
    decoded long before it is shown; an FLV seeks by decoding time, so seeking to 0 landed
    on that keyframe and the clip lost the first GOP."""
    source = tmp_path / "dropped.flv"
    await ffmpeg_out(
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=30", "-t", "8",
        "-vf", "select='not(between(t,2,3.5))'", "-fps_mode", "vfr",
        "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p", str(source),
    )  # fmt: skip
    result = await media.clip(source, tmp_path / "clip.flv", 0, None)
    assert await frame_hashes(result.path) == await frame_hashes(source)


async def test_clip_rejects_ranges_outside_the_file(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    with pytest.raises(MediaError, match="end 2 s must be after start 5 s"):
        await media.clip(recordings.long, tmp_path / "x.mp4", 5, 2)
    with pytest.raises(MediaError, match="start 20 s is not inside the file"):
        await media.clip(recordings.long, tmp_path / "x.mp4", 20, None, accurate=True)
    with pytest.raises(MediaError, match="container 'avi' is not one of"):
        await media.clip(recordings.long, tmp_path / "x.avi", 1, 2)
    assert await asyncio.to_thread(os.listdir, tmp_path) == []  # nothing half-written left


async def test_accurate_clip_is_frame_exact_and_copies_whole_gops(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.clip(recordings.long, tmp_path / "exact.mp4", 3.1, 8.9, accurate=True)
    assert result.method == "smart"
    info = await media.probe(result.path)
    assert abs(info.duration - 5.8) <= FRAME
    clip_frames = await frame_hashes(result.path)
    source_frames = await frame_hashes(recordings.long)
    assert len(clip_frames) == round(5.8 * FPS)
    # Output frame n shows source frame 93 + n; the GOPs from 4 s to 8 s were copied, so they
    # decode to exactly the source's pictures (head and tail were re-encoded).
    first = round(3.1 * FPS)
    same = [n for n, h in enumerate(clip_frames) if h == source_frames[first + n]]
    assert same == list(range(round(0.9 * FPS), round(4.9 * FPS)))
    audio = await packets(result.path, "a")
    assert audio
    assert audio[0][0] >= 0


async def test_accurate_clip_keeps_sound_and_picture_in_sync(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.clip(recordings.marked, tmp_path / "sync.mp4", 2.5, 7.5, accurate=True)
    assert result.method == "smart"
    flashes, beeps = await markers(result.path)
    # Whole seconds of the source fall at 0.5, 1.5, ... of the clip, in picture and in sound.
    assert [round(t, 2) for t in flashes] == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert len(beeps) == 5
    assert all(abs(b - f) <= 0.025 for b, f in zip(beeps, flashes, strict=True))


async def test_accurate_clip_ending_between_frames_keeps_the_last_frame_before_the_end(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    # Frame 266 is at 8.8667 s, within half a frame of 8.88.
    result = await media.clip(recordings.long, tmp_path / "exact.mp4", 3.1, 8.88, accurate=True)
    assert result.method == "smart"
    frames = await frame_hashes(result.path)
    assert len(frames) == 174  # frames 93 to 266
    last = await gray("-ss", str(173 * FRAME), "-i", str(result.path))
    expected = await gray("-ss", str(266 * FRAME), "-i", str(recordings.long))
    assert mean_difference(last, expected) < 2


async def test_accurate_clip_of_an_mpeg_ts_is_frame_exact(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    """FFmpeg seeks an MPEG-TS to a packet near the time, seldom the keyframe before it."""
    result = await media.clip(recordings.ts, tmp_path / "exact.mp4", 3.1, 8.5, accurate=True)
    assert result.method == "smart"
    # The TS's clock starts with its audio, 21 ms before the first frame: 3.1 s to 8.5 s
    # holds the source's frames 93 to 254.
    assert len(await frame_hashes(result.path)) == 162
    for k, n in [(0, 93), (60, 153), (161, 254)]:  # the clip's frame k is the source's n
        picture = await gray("-ss", str(k * FRAME), "-i", str(result.path))
        expected = await gray("-ss", str(n * FRAME), "-i", str(recordings.long))
        assert mean_difference(picture, expected) < 2, n


async def test_accurate_clip_to_a_relative_path_is_spliced(
    media: Media, recordings: Recordings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = await media.clip(recordings.long, Path("exact.mp4"), 3.1, 8.9, accurate=True)
    assert result.method == "smart"  # not the whole clip re-encoded after a failed splice
    assert len(await frame_hashes(tmp_path / "exact.mp4")) == 174  # 5.8 s


async def test_accurate_clip_of_a_rotated_recording_is_upright_throughout(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    portrait = await rotated(recordings.long, tmp_path / "portrait.mp4", 90)
    result = await media.clip(portrait, tmp_path / "exact.mp4", 3.1, 8.9, accurate=True)
    assert result.method == "encode"
    info = await media.probe(result.path)
    assert info.video is not None
    assert (info.video.width, info.video.height, info.video.rotation) == (180, 320, 0)
    # Every frame the same size: no copied GOP left lying on its side.
    text = await ffmpeg_out("-i", str(result.path), "-map", "0:v:0", "-f", "framemd5", "-")
    assert "#dimensions 0: 180x320" in text.decode()
    shown = await gray("-ss", "3", "-i", str(result.path))
    expected = await gray("-ss", "6.1", "-i", str(portrait))
    assert mean_difference(shown, expected) < 4


async def test_accurate_clip_inside_one_gop_is_re_encoded(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.clip(recordings.long, tmp_path / "short.mp4", 5.5, 6.5, accurate=True)
    assert result.method == "encode"
    info = await media.probe(result.path)
    assert abs(info.duration - 1.0) <= FRAME
    assert len(await frame_hashes(result.path)) == FPS


async def test_accurate_clip_with_an_old_ffmpeg_re_encodes(
    media: Media, recordings: Recordings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def old_version() -> tuple[int, int]:
        return (4, 4)  # no packet expressions: no splice, and no audio copy with a filter

    monkeypatch.setattr(media.ffmpeg, "version", old_version)
    result = await media.clip(recordings.long, tmp_path / "old.mp4", 3.1, 8.9, accurate=True)
    assert result.method == "encode"
    assert len(await frame_hashes(result.path)) == round(5.8 * FPS)
    assert abs((await media.probe(result.path)).duration - 5.8) <= FRAME


async def test_accurate_clip_on_keyframes_is_a_stream_copy(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.clip(recordings.long, tmp_path / "gops.mp4", 4, 8, accurate=True)
    assert result.method == "copy"
    info = await media.probe(result.path)
    assert abs(info.duration - 4.0) <= TOLERANCE
    assert len(await frame_hashes(result.path)) == 4 * FPS


# --- concat ------------------------------------------------------------------------------------


async def test_concat_of_like_recordings_is_a_stream_copy(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.concat([recordings.long, recordings.short], tmp_path / "joined.mp4")
    assert result.stream_copy
    assert result.reason == ""
    info = await media.probe(result.path)
    assert abs(info.duration - 18.0) <= 2 * FRAME
    # Copied, not re-encoded: every frame decodes to exactly the source's picture.
    expected = await frame_hashes(recordings.long) + await frame_hashes(recordings.short)
    assert await frame_hashes(result.path) == expected


async def test_concat_of_unlike_recordings_re_encodes(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.concat([recordings.short, recordings.large], tmp_path / "mixed.mp4")
    assert not result.stream_copy
    assert result.reason == "input 1 (large.mp4) video resolution 640x360 differs from 320x180"
    info = await media.probe(result.path)
    assert info.video is not None
    assert (info.video.width, info.video.height) == (320, 180)
    assert abs(info.duration - 12.0) <= 2 * FRAME


async def test_concat_of_other_containers_or_clocks_re_encodes(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    """FFmpeg's concat demuxer copies packets as they are: an MPEG-TS's H.264 and AAC are
    framed otherwise than an MP4's, and timestamps count in each file's own clock."""
    result = await media.concat([recordings.ts, recordings.short], tmp_path / "mixed.mp4")
    assert result.reason == "input 1 (short.mp4) container mp4 differs from ts"
    assert abs((await media.probe(result.path)).duration - 18.0) <= 2 * FRAME
    assert len(await frame_hashes(result.path)) == 18 * FPS
    other_clock = tmp_path / "short90k.mp4"
    await ffmpeg_out(
        "-i", str(recordings.short), "-c", "copy", "-video_track_timescale", "90000",
        str(other_clock),
    )  # fmt: skip
    result = await media.concat([recordings.short, other_clock], tmp_path / "clocks.mp4")
    assert result.reason == "input 1 (short90k.mp4) video time base 1/90000 differs from 1/15360"
    assert abs((await media.probe(result.path)).duration - 12.0) <= 2 * FRAME
    assert len(await frame_hashes(result.path)) == 12 * FPS


async def test_concat_of_a_rotated_and_an_upright_recording_re_encodes_both_upright(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    portrait = await rotated(recordings.silent, tmp_path / "portrait.mp4", 90)
    result = await media.concat([portrait, recordings.silent], tmp_path / "joined.mp4")
    assert not result.stream_copy
    assert result.reason == "input 1 (silent.mp4) video rotation 0 differs from 270"
    info = await media.probe(result.path)
    assert info.video is not None
    # The first input's upright size; the landscape one is fitted inside it.
    assert (info.video.width, info.video.height, info.video.rotation) == (180, 320, 0)
    assert abs(info.duration - 8.0) <= 2 * FRAME
    letterboxed = "scale=180:320:force_original_aspect_ratio=decrease,pad=180:320:-1:-1"
    for at, source, fit in [(1, portrait, "null"), (5, recordings.silent, letterboxed)]:
        expected = await gray("-ss", str(at % 4), "-i", str(source), "-vf", fit)
        picture = await gray("-ss", str(at), "-i", str(result.path))
        assert mean_difference(picture, expected) < 6


async def test_concat_fills_a_missing_audio_track_with_silence(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.concat([recordings.silent, recordings.short], tmp_path / "x.ts", "ts")
    assert not result.stream_copy
    assert result.reason == "input 1 (short.mp4) has audio, unlike input 0"
    info = await media.probe(result.path)
    assert info.container == "ts"
    assert info.audio is not None
    assert abs(info.duration - 10.0) <= 3 * FRAME


# --- transcode and HLS -------------------------------------------------------------------------


async def test_transcode_to_mp4_fits_the_box_and_bitrate(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    template = TranscodeTemplate(10, height=120, video_bitrate=150, audio_bitrate=48, fps=15)
    info = await media.transcode(recordings.long, tmp_path / "f10.mp4", template)
    assert info.video is not None
    assert info.audio is not None
    assert (info.video.width, info.video.height, info.video.fps) == (214, 120, 15.0)
    assert abs(info.duration - 12.0) <= 2 * FRAME
    assert info.video.bitrate is not None
    assert 100_000 <= info.video.bitrate <= 200_000
    assert info.audio.codec == "aac"
    assert await keyframe_times(info.path) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]


async def test_transcode_never_upscales(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    template = TranscodeTemplate(30, width=1920, height=1080, video_bitrate=300)
    info = await media.transcode(recordings.long, tmp_path / "f30.mp4", template)
    assert info.video is not None
    assert (info.video.width, info.video.height) == (320, 180)


async def test_transcode_to_hls_writes_playlist_and_segments(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    template = TranscodeTemplate(20, container="hls", height=120, segment_seconds=4)
    info = await media.transcode(recordings.long, tmp_path / "f20", template)
    playlist = tmp_path / "f20" / "index.m3u8"
    assert info.path == playlist
    assert info.container == "hls"
    segments = read_playlist(playlist)
    assert [round(d, 3) for _, d in segments] == [4.0, 4.0, 4.0]
    assert all((tmp_path / "f20" / uri).stat().st_size > 0 for uri, _ in segments)
    assert abs(info.duration - 12.0) <= 2 * FRAME
    assert info.size > sum((tmp_path / "f20" / uri).stat().st_size for uri, _ in segments) - 1


async def test_package_hls_copies_the_streams(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    result = await media.package_hls(recordings.long, tmp_path / "hls", segment_seconds=4)
    assert len(result.segments) == 3
    assert all(s.exists() for s in result.segments)
    assert abs(result.duration - 12.0) <= 2 * FRAME
    # The second segment holds the GOPs from 4 s to 8 s, decoding to exactly the source's frames.
    source = await frame_hashes(recordings.long)
    assert await frame_hashes(result.segments[1]) == source[4 * FPS : 8 * FPS]


def test_output_size_keeps_aspect_even_and_rotation() -> None:
    from orchestrator.engine.ffmpeg import VideoStream

    hd = VideoStream("h264", 1280, 720, 30.0)
    assert output_size(hd, None, 480) == (854, 480)
    assert output_size(hd, 640, None) == (640, 360)
    assert output_size(hd, 640, 640) == (640, 360)
    assert output_size(hd, 4000, 4000) == (1280, 720)
    portrait = VideoStream("h264", 1280, 720, 30.0, rotation=90)
    assert output_size(portrait, None, 640) == (360, 640)
    odd = VideoStream("mpeg4", 853, 479, 25.0)  # rounding to even sides never goes up
    assert output_size(odd, 854, 480) == (852, 478)
    assert output_size(odd, None, None) == (852, 478)


# --- sprites and snapshots ---------------------------------------------------------------------


async def test_sprites_tile_one_keyframe_per_interval(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    template = SpriteTemplate(10, interval=2, rows=2, columns=3, width=64, height=36)
    result = await media.sprites(recordings.long, tmp_path / "sprite", template)
    assert result.total_count == 6
    assert len(result.sheets) == 1
    assert (result.width, result.height, result.rows, result.columns) == (64, 36, 2, 3)
    sheet = await media.probe(result.sheets[0])
    assert sheet.video is not None
    assert (sheet.video.width, sheet.video.height) == (192, 72)
    # Each cell is the source picture at its interval's start (a keyframe here), scaled.
    picture = await gray("-i", str(result.sheets[0]))
    for k in range(6):
        cell = crop(picture, 192, (k % 3) * 64, (k // 3) * 36, 64, 36)
        expected = await gray("-ss", str(2 * k), "-i", str(recordings.long), "-vf", "scale=64:36")
        other = await gray("-ss", str(2 * k + 1), "-i", str(recordings.long), "-vf", "scale=64:36")
        assert mean_difference(cell, expected) < 4 < mean_difference(cell, other)


async def test_sprites_span_sheets_and_the_vtt_covers_the_whole_file(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    template = SpriteTemplate(20, interval=1.5, rows=2, columns=3, width=80, height=0)
    prefix = "http://vod.example/sprite/"
    result = await media.sprites(recordings.long, tmp_path / "s", template, image_url_prefix=prefix)
    assert result.total_count == math.ceil(12 / 1.5) == 8
    assert [p.name for p in result.sheets] == ["1.jpg", "2.jpg"]
    assert (result.width, result.height) == (80, 46)  # 80 wide, 16:9, even
    for sheet in result.sheets:  # the second sheet is two-thirds black, but full size
        info = await media.probe(sheet)
        assert info.video is not None
        assert (info.video.width, info.video.height) == (240, 92)
    cues = parse_vtt(result.vtt.read_text())
    assert len(cues) == 8
    assert cues[0][0] == 0.0
    assert cues[-1][1] == 12.0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cues))
    for k, (_, _, target) in enumerate(cues):
        url, xywh = target.split("#xywh=")
        assert url == f"{prefix}{k // 6 + 1}.jpg"
        x, y, w, h = (int(n) for n in xywh.split(","))
        assert (w, h) == (80, 46)
        assert 0 <= x <= 240 - w
        assert 0 <= y <= 92 - h


async def test_sprites_without_the_packet_filter_pick_the_same_frames(
    media: Media, recordings: Recordings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = SpriteTemplate(10, interval=2.5, rows=2, columns=3, width=64, height=36)
    piped = await media.sprites(recordings.long, tmp_path / "piped", template)

    async def old_version() -> tuple[int, int]:
        return (4, 4)

    monkeypatch.setattr(media.ffmpeg, "version", old_version)
    decoded = await media.sprites(recordings.long, tmp_path / "decoded", template)
    assert piped.total_count == decoded.total_count == 5
    a = await gray("-i", str(piped.sheets[0]))
    b = await gray("-i", str(decoded.sheets[0]))
    assert mean_difference(a, b) < 1
    # Intervals start at 0, 2.5, 5, 7.5, 10; their first keyframes are 0, 4, 6, 8, 10.
    for k, keyframe in enumerate([0, 4, 6, 8, 10]):
        expected = await gray(
            "-ss", str(keyframe), "-i", str(recordings.long), "-vf", "scale=64:36"
        )
        assert mean_difference(crop(a, 192, (k % 3) * 64, (k // 3) * 36, 64, 36), expected) < 4


async def rotated(src: Path, dst: Path, degrees: int) -> Path:
    """``src`` with a display matrix turning it ``degrees`` counter-clockwise (as phones
    record portrait: the picture is coded landscape)."""
    await ffmpeg_out("-display_rotation", str(degrees), "-i", str(src), "-c", "copy", str(dst))
    return dst


@pytest.mark.parametrize("degrees", [90, 180, 270])
async def test_sprites_of_a_rotated_recording_are_upright(
    media: Media, recordings: Recordings, tmp_path: Path, degrees: int
) -> None:
    source = await rotated(recordings.silent, tmp_path / "rotated.mp4", degrees)
    width, height = (64, 36) if degrees == 180 else (36, 64)
    template = SpriteTemplate(10, interval=2, rows=1, columns=2, width=width, height=height)
    result = await media.sprites(source, tmp_path / "sprite", template)
    assert (result.width, result.height) == (width, height)
    picture = await gray("-i", str(result.sheets[0]))
    for k in range(2):
        cell = crop(picture, 2 * width, k * width, 0, width, height)
        # FFmpeg turns the picture upright itself when it decodes the file.
        upright = await gray("-ss", str(2 * k), "-i", str(source), "-vf", f"scale={width}:{height}")
        assert mean_difference(cell, upright) < 4


async def test_thumbnails_may_have_sides_of_odd_length(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    """VOD's templates take any width and height; 4:2:0 pictures have even sides."""
    template = SpriteTemplate(10, interval=4, rows=1, columns=1, width=81, height=45)
    result = await media.sprites(recordings.silent, tmp_path / "sprite", template)
    sheet = await media.probe(result.sheets[0])
    assert sheet.video is not None
    assert (sheet.video.width, sheet.video.height) == (81, 45)
    picture = await gray("-i", str(result.sheets[0]))
    expected = await gray("-i", str(recordings.silent), "-vf", "scale=80:45,pad=81:45:-1:-1")
    assert mean_difference(picture, expected) < 4
    snaps = await media.snapshots(
        recordings.silent, tmp_path / "snap", [1000], SnapshotTemplate(10, width=81, height=45)
    )
    snap = await media.probe(snaps[0].path)
    assert snap.video is not None
    assert (snap.video.width, snap.video.height) == (81, 45)


async def test_sprites_need_video(
    media: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    audio = Path("tone.m4a")  # the path as given is the one named (events show it)
    await ffmpeg_out("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio))
    with pytest.raises(MediaError) as failed:
        await media.sprites(audio, tmp_path / "s", SpriteTemplate(10))
    assert failed.value.reason == "image sprites of tone.m4a: no video stream"


def test_webvtt_last_cue_ends_at_the_duration() -> None:
    text = sprite_webvtt(
        5.5, 2, 3, columns=3, per_sheet=3, width=10, height=6, sheet_urls=["a.jpg"]
    )
    assert parse_vtt(text) == [
        (0.0, 2.0, "a.jpg#xywh=0,0,10,6"),
        (2.0, 4.0, "a.jpg#xywh=10,0,10,6"),
        (4.0, 5.5, "a.jpg#xywh=20,0,10,6"),
    ]


async def test_snapshots_show_the_exact_frame_at_each_offset(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    offsets = [0, 5100, 11900, 60000]
    snaps = await media.snapshots(recordings.long, tmp_path / "snap", offsets, SnapshotTemplate(10))
    assert [s.offset_ms for s in snaps] == offsets
    assert [s.path.name for s in snaps] == ["0.jpg", "5100.jpg", "11900.jpg", "60000.jpg"]
    for snap in snaps:
        info = await media.probe(snap.path)
        assert info.video is not None
        assert (info.video.width, info.video.height) == (320, 180)
    at_5100 = await gray("-i", str(snaps[1].path))
    exact = await gray("-ss", "5.1", "-i", str(recordings.long))
    neighbour = await gray("-ss", "5.0", "-i", str(recordings.long))
    assert mean_difference(at_5100, exact) < mean_difference(at_5100, neighbour)
    small = await media.snapshots(
        recordings.long, tmp_path / "small", [1000], SnapshotTemplate(20, width=100, format="png")
    )
    info = await media.probe(small[0].path)
    assert info.video is not None
    assert (info.video.width, info.video.height) == (100, 56)


async def test_snapshots_of_an_mpeg_ts_show_the_exact_frame_at_each_offset(
    media: Media, recordings: Recordings, tmp_path: Path
) -> None:
    """At any offset, however far from the keyframe before it, and after the last one."""
    offsets = [1000, 5100, 10500, 11900]
    snaps = await media.snapshots(recordings.ts, tmp_path / "snap", offsets, SnapshotTemplate(10))
    for offset, snap in zip(offsets, snaps, strict=True):
        picture = await gray("-i", str(snap.path))
        exact = await gray("-ss", str(offset / 1000), "-i", str(recordings.long))
        earlier = await gray("-ss", str(offset / 1000 - 0.1), "-i", str(recordings.long))
        difference = mean_difference(picture, exact)
        assert difference < 2 < mean_difference(picture, earlier), (offset, difference)


async def test_snapshot_of_an_mpeg_ts_on_a_keyframe_without_b_frames_shows_that_keyframe(
    media: Media, tmp_path: Path
) -> None:
    """Without B-frames a keyframe is decoded when it is shown: the seek past its decoding
    time is past its time too, and FFmpeg's accurate seeking dropped it (the next frame)."""
    source = tmp_path / "baseline.ts"
    await ffmpeg_out(
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=30", "-t", "6",
        "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", "60",
        "-pix_fmt", "yuv420p", str(source),
    )  # fmt: skip
    snaps = await media.snapshots(source, tmp_path / "snap", [2000, 4000], SnapshotTemplate(10))
    for snap, n in zip(snaps, [60, 120], strict=True):
        picture = await gray("-i", str(snap.path))
        # Decoded from the start, frame by frame: no seeking to trust.
        exact = await gray("-i", str(source), "-vf", f"select=eq(n\\,{n})")
        after = await gray("-i", str(source), "-vf", f"select=eq(n\\,{n + 1})")
        assert mean_difference(picture, exact) < 2 < mean_difference(picture, after), n


async def test_outputs_in_a_folder_named_with_spaces_quotes_percent_and_non_ascii(
    media: Media, recordings: Recordings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FFmpeg reads a '%' anywhere in an image sequence's or HLS segment's path as part of
    its pattern ('%d' as a number)."""
    monkeypatch.chdir(tmp_path)
    folder = Path("媒体 it's 100%done")  # relative, as a media directory of ./data/vod is
    source = folder / "in put.mp4"
    await asyncio.to_thread(folder.mkdir)
    await asyncio.to_thread(shutil.copy, recordings.silent, source)
    template = SpriteTemplate(10, interval=2, rows=1, columns=2, width=64, height=36)
    sprites = await media.sprites(source, folder / "sprite", template)
    assert sorted(os.listdir(folder / "sprite")) == ["1.jpg", "sprite.vtt"]
    assert sprites.sheets == [folder / "sprite" / "1.jpg"]
    hls = TranscodeTemplate(210, container="hls", height=90, video_bitrate=100, segment_seconds=2)
    info = await media.transcode(source, folder / "hls", hls)
    assert abs(info.duration - 4.0) <= 2 * FRAME
    packaged = await media.package_hls(source, folder / "packaged", 2)
    for name in ("hls", "packaged"):
        names = sorted(os.listdir(folder / name))
        assert names == ["index.m3u8", "segment_00000.ts", "segment_00001.ts"], name
    assert packaged.segments == [folder / "packaged" / n for n in names[1:]]


# --- cancellation and timeouts -----------------------------------------------------------------


async def test_cancelling_a_run_kills_ffmpeg(spawned: Spawned) -> None:
    task = asyncio.create_task(FFmpeg().run(ENDLESS))
    (proc,) = await spawned.wait_for(1)
    await asyncio.sleep(0.2)
    assert proc.returncode is None  # running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proc.returncode == -signal.SIGKILL
    assert pids_alive(proc.pid) == []


async def test_cancelling_a_pipeline_kills_both_ends(spawned: Spawned) -> None:
    writer = ["-re", "-f", "lavfi", "-i", "testsrc2=size=64x36:rate=30", "-f", "nut", "pipe:1"]
    reader = ["-f", "nut", "-i", "pipe:0", "-f", "null", "-"]
    task = asyncio.create_task(FFmpeg().run_piped(writer, reader))
    procs = await spawned.wait_for(2)
    await asyncio.sleep(0.2)
    assert [p.returncode for p in procs] == [None, None]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [p.returncode for p in procs] == [-signal.SIGKILL, -signal.SIGKILL]


async def test_timeout_kills_ffmpeg(spawned: Spawned) -> None:
    with pytest.raises(MediaTimeout, match=r"longer than 0.3 s"):
        await FFmpeg(timeout=0.3).run(ENDLESS)
    assert spawned.procs[0].returncode == -signal.SIGKILL
