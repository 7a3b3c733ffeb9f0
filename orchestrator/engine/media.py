"""The embedded VOD engine's media operations: clip, concat, transcode, HLS packaging, image
sprites, snapshots, and test recordings, each one or a few FFmpeg runs.

Stream copy wherever the operation allows it (clips on keyframes, concat of like streams, HLS
packaging); encoding only where it must (transcode, the partial GOPs at the ends of a
frame-accurate clip); sprites decode only the keyframes they show. Every operation is a
coroutine; FFmpeg runs in subprocesses that are killed when the awaiting task is cancelled (see
:mod:`orchestrator.engine.ffmpeg`).

Single-file outputs are written under a temporary name beside the destination and renamed when
FFmpeg succeeds, so a file that exists is complete.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple

from orchestrator.engine.ffmpeg import (
    FFmpeg,
    MediaError,
    MediaInfo,
    StrPath,
    VideoStream,
    read_playlist,
)

__all__ = [
    "ClipResult",
    "ConcatResult",
    "Container",
    "HlsResult",
    "Media",
    "Snapshot",
    "SnapshotTemplate",
    "SpriteResult",
    "SpriteTemplate",
    "TranscodeTemplate",
]

logger = logging.getLogger(__name__)

Container = Literal["mp4", "flv", "ts"]
_MUXERS: dict[str, str] = {"mp4": "mp4", "flv": "flv", "ts": "mpegts"}
_PLAYLIST = "index.m3u8"
_SEGMENT_PATTERN = "segment_%05d.ts"


# --- templates and results ---------------------------------------------------------------------


@dataclass(frozen=True)
class TranscodeTemplate:
    """One output of a transcode (VOD's transcode template): H.264 video and AAC audio.

    ``width``/``height`` bound the output: the picture keeps its aspect ratio, fits inside the box,
    is never upscaled and has even dimensions; ``None`` leaves that side free. Bitrates in kbit/s.
    ``fps=None`` keeps the source rate (a higher template rate never raises it). ``gop`` is the
    keyframe interval in seconds, fixed so HLS segments of ``segment_seconds`` cut cleanly.
    """

    definition: int
    container: Literal["mp4", "hls"] = "mp4"
    width: int | None = None
    height: int | None = None
    video_bitrate: int = 1000
    audio_bitrate: int = 128
    fps: float | None = None
    gop: float = 2.0
    preset: str = "veryfast"
    segment_seconds: float = 10.0

    def __post_init__(self) -> None:
        _positive(
            f"transcode template {self.definition}",
            gop=self.gop,
            video_bitrate=self.video_bitrate,
            audio_bitrate=self.audio_bitrate,
            segment_seconds=self.segment_seconds,
        )
        for name, value in (("width", self.width), ("height", self.height), ("fps", self.fps)):
            if value is not None and value <= 0:
                raise ValueError(
                    f"transcode template {self.definition}: {name} must be positive or None, "
                    f"got {value}"
                )


@dataclass(frozen=True)
class SpriteTemplate:
    """VOD's image sprite template: one thumbnail every ``interval`` seconds, ``rows`` x
    ``columns`` per sheet. A thumbnail side of 0 follows the source's aspect ratio from the other
    side; with both set, the picture is fitted inside and padded with black."""

    definition: int
    interval: float = 10.0
    rows: int = 10
    columns: int = 10
    width: int = 160
    height: int = 0
    quality: int = 3  # JPEG quantiser scale: 2 (best) .. 31

    def __post_init__(self) -> None:
        _positive(
            f"sprite template {self.definition}",
            interval=self.interval,
            rows=self.rows,
            columns=self.columns,
        )
        if self.width < 0 or self.height < 0 or (self.width == 0 and self.height == 0):
            raise ValueError(
                f"sprite template {self.definition}: expected a thumbnail width or height "
                f"(0 = follow the aspect ratio), got {self.width}x{self.height}"
            )


@dataclass(frozen=True)
class SnapshotTemplate:
    """VOD's snapshot-by-time-offset template. A side of 0 follows the aspect ratio; both 0
    keep the source size."""

    definition: int
    width: int = 0
    height: int = 0
    format: Literal["jpg", "png"] = "jpg"


@dataclass(frozen=True)
class ClipResult:
    """A clip and how it was made: ``copy`` (stream copy, whole GOPs), ``smart`` (the partial
    GOPs at the ends re-encoded, the GOPs between copied) or ``encode`` (all re-encoded)."""

    path: Path
    method: Literal["copy", "smart", "encode"]

    @property
    def stream_copy(self) -> bool:
        return self.method == "copy"


@dataclass(frozen=True)
class ConcatResult:
    """A joined file: ``stream_copy`` when the inputs matched, else ``reason`` says which
    input differed and how."""

    path: Path
    stream_copy: bool
    reason: str = ""


@dataclass(frozen=True)
class HlsResult:
    """An HLS rendition: the playlist, its segments in order, and their total duration (s)."""

    playlist: Path
    segments: list[Path]
    duration: float


@dataclass(frozen=True)
class SpriteResult:
    """Image sprite sheets (each ``columns*width`` x ``rows*height`` pixels; the last may be
    partly black) and the WebVTT file mapping time ranges to cells."""

    sheets: list[Path]
    vtt: Path
    total_count: int
    rows: int
    columns: int
    width: int
    height: int
    interval: float


class Snapshot(NamedTuple):
    offset_ms: int
    path: Path


# --- the operations -----------------------------------------------------------------------------


class Media:
    """The media operations of the engine, on one :class:`FFmpeg`."""

    def __init__(self, ffmpeg: FFmpeg | None = None) -> None:
        self.ffmpeg = ffmpeg or FFmpeg()

    async def probe(self, path: StrPath) -> MediaInfo:
        """See :meth:`FFmpeg.probe`."""
        return await self.ffmpeg.probe(path)

    # clip ---------------------------------------------------------------------------------------

    async def clip(
        self,
        src: StrPath,
        dst: StrPath,
        start: float,
        end: float | None = None,
        *,
        accurate: bool = False,
        container: Container | None = None,
    ) -> ClipResult:
        """Cut ``[start, end)`` seconds of ``src`` into ``dst`` (``end=None``: to the end;
        negative values count from the end, as VOD's startTimeOffset/endTimeOffset do).

        By default a stream copy: the clip starts at the keyframe at or before ``start`` (up to
        one GOP early), ends a few frames after ``end`` (a copy stops in decoding order), and
        costs about as much as copying its bytes. ``accurate=True`` cuts on the exact frames:
        only the partial GOPs at both ends are re-encoded and the GOPs between are copied; when
        that splice is impossible or fails, the whole clip is re-encoded.
        """
        src_p, dst_p = Path(src), Path(dst)
        fmt = _container(dst_p, container)
        # An MP4's duration is in its header (no FFmpeg run); the index size helps writing.
        moov = await asyncio.to_thread(_read_moov, src_p)
        info = None if moov and not accurate else await self.probe(src_p)
        duration = info.duration if info is not None else moov[1] if moov else 0.0
        start, end = _resolve_range(src_p, duration, start, end)
        if info is not None and accurate:
            return await self._clip_accurate(info, dst_p, start, end, fmt, moov)
        await self._clip_copy(src_p, dst_p, start, end, fmt, moov, info)
        return ClipResult(dst_p, "copy")

    async def _clip_copy(
        self,
        src: Path,
        dst: Path,
        start: float,
        end: float | None,
        fmt: str,
        moov: tuple[int, float] | None,
        info: MediaInfo | None,
    ) -> None:
        # An MP4 (no `info`) seeks to the keyframe before `start` by its index.
        seek = await self._seek_point(info, start) if info else start if start > 0 else None
        args = [*self.ffmpeg.thread_args, *_seek_args(seek), "-i", str(src), *_copy_av(0)]
        if end is not None:
            args += ["-t", _ts(end - (seek or 0.0))]
        args += ["-avoid_negative_ts", "make_zero"]
        await self._write(args, dst, fmt, moov_reserve=_moov_reserve([(moov, start, end)]))

    async def _clip_accurate(
        self,
        info: MediaInfo,
        dst: Path,
        start: float,
        end: float | None,
        fmt: str,
        moov: tuple[int, float] | None,
    ) -> ClipResult:
        video = info.video
        if video is None:
            # Audio packets are ~20 ms long: a stream copy is already accurate to the frame.
            await self._clip_copy(info.path, dst, start, end, fmt, moov, info)
            return ClipResult(dst, "copy")
        half = 0.5 / (video.fps or 25.0)  # half a frame: the tolerance for "on a keyframe"
        if end is not None and end >= info.duration - half:
            end = None
        if (
            video.codec != "h264"
            or fmt == "flv"
            or video.rotation
            or not await self._packet_expressions()
        ):
            # The splice relies on H.264 carrying its parameter sets in-band (FLV cannot) and
            # on selecting packets by expression; its parts lose a rotation's display matrix,
            # and the encoded ones would be turned upright while the copied ones are not.
            await self._clip_encode(info, dst, start, end, fmt)
            return ClipResult(dst, "encode")
        first = next((k for k in await self._keyframes(info, start) if k >= start - half), None)
        last = None
        if end is not None:
            near_end = await self._keyframes(info, end)
            last = max((k for k in near_end if k <= end + half), default=None)
        stop = info.duration if end is None else end
        if first is None or first >= stop - half or (last is not None and last <= first + half):
            # At most one keyframe inside the clip: the encoded parts would be all of it.
            await self._clip_encode(info, dst, start, end, fmt)
            return ClipResult(dst, "encode")
        try:
            encoded = await self._clip_splice(info, video, dst, start, first, last, end, fmt, moov)
        except MediaError as exc:
            logger.warning("frame-accurate splice of %s failed, re-encoding: %s", info.path, exc)
            await self._clip_encode(info, dst, start, end, fmt)
            return ClipResult(dst, "encode")
        return ClipResult(dst, "smart" if encoded else "copy")

    async def _seek_point(self, info: MediaInfo, t: float) -> float | None:
        """Where to seek ``info``'s file (``-ss``) to read it from the video keyframe shown at
        or before ``t``; None to read it from the start.

        FFmpeg seeks most files to that keyframe itself: for them this is ``t``. An MPEG-TS
        has no index, and FFmpeg seeks it to a packet near ``t`` that is seldom a keyframe:
        decoding or copying from there starts at the next keyframe, up to a GOP late, or
        finds none after the last one. For it the keyframe is looked up among the packets
        before ``t`` (no decoding), and the file sought by that keyframe's decoding time, at
        which FFmpeg lands on it or on a packet just before it.
        """
        if t <= 0:
            return None
        if (
            info.video is None
            or info.format_name not in _UNINDEXED
            or not await self._packet_expressions()
        ):
            return t
        window = 10.0
        while True:
            since = max(0.0, t - window)
            result = await self.ffmpeg.run(
                [
                    *("-copyts", *_seek_args(since or None), "-t", _ts(t - since + 1.0)),
                    *("-i", str(info.path), "-map", "0:V:0", "-c", "copy"),
                    *("-bsf:v", "noise=drop=not(key)", "-f", "framecrc", "-"),
                ],
                capture_stdout=True,
            )
            shown = [
                (pts, dts)
                for dts, pts in _packet_times(result.stdout, info)
                if pts <= t + _SEEK_SLACK
            ]
            if shown:
                at = max(shown)[1] + _SEEK_SLACK
                return at if at > 0 else None
            if since == 0:
                return None  # no keyframe shown before t: it is read from the start
            window *= 4

    async def _decode_from(self, info: MediaInfo, t: float) -> tuple[list[str], list[str]]:
        """Input options (before ``-i``) and output options that decode ``info``'s file from
        its frame at ``t``: FFmpeg's input seeking, or for a file it cannot seek to the
        keyframe (MPEG-TS) a seek to that keyframe and the frames up to ``t`` skipped."""
        seek = await self._seek_point(info, t)
        skip = t - (seek or 0.0)
        if skip > 0:
            return _seek_args(seek), ["-ss", _ts(skip)]
        if seek is not None and seek > t:
            # `t` is the keyframe's own time, and the seek (its decoding time and a hair) is
            # past it when it has no B-frames: FFmpeg's accurate seeking would drop it.
            return ["-noaccurate_seek", *_seek_args(seek)], []
        return _seek_args(seek), []

    async def _keyframes(self, info: MediaInfo, t: float) -> list[float]:
        """Times (s from the file's start) of the video keyframe at or before ``t`` and of the
        two after it."""
        # Seeking lands on the keyframe at or before t; listing the next keyframe packets
        # (stream copy through a bitstream filter dropping the others) decodes nothing.
        seek = _seek_args(await self._seek_point(info, t))
        result = await self.ffmpeg.run(
            [
                *("-copyts", *seek, "-i", str(info.path), "-map", "0:V:0", "-c", "copy"),
                *("-bsf:v", "noise=drop=not(key)", "-frames:v", "3", "-f", "framecrc", "-"),
            ],
            capture_stdout=True,
        )
        return [pts for _, pts in _packet_times(result.stdout, info)]

    async def _clip_splice(
        self,
        info: MediaInfo,
        video: VideoStream,
        dst: Path,
        start: float,
        first: float,
        last: float | None,
        end: float | None,
        fmt: str,
        moov: tuple[int, float] | None,
    ) -> bool:
        """Cut ``[start, end)`` to the frame: encode ``[start, first)`` and ``[last, end)``, copy
        the GOPs ``[first, last)`` between those keyframes. Returns whether anything was encoded.

        Each video part is MPEG-TS, so it carries its own SPS/PPS in-band, and the concat
        demuxer is told each part's exact duration. A stream copy cannot end on an arbitrary
        frame (B-frames refer to later frames), so the copied part ends on a keyframe: a
        bitstream filter drops every packet shown from ``last`` on, which for closed GOPs is
        exactly the packets decoded from ``last`` on. Audio is copied from the source in the
        final mux; its ~20 ms packets cut exactly enough.
        """
        half = 0.5 / (video.fps or 25.0)
        encode = [
            *("-c:v", "libx264", "-preset", "veryfast", "-crf", "17"),
            *("-pix_fmt", video.pix_fmt or "yuv420p", *_x264_profile(video)),
            *self.ffmpeg.thread_args,
            *("-f", "mpegts", "-y"),
        ]

        async def cut(at: float, length: float) -> list[str]:
            # Frame-accurate seeking; -t stops before any frame at `at + length`.
            before, after = await self._decode_from(info, at)
            seek = (*before, "-i", str(info.path), *after, "-map", "0:V:0")
            return [*self.ffmpeg.thread_args, *seek, "-t", _ts(length)]

        # Absolute: the concat demuxer reads a relative name from its listing's folder.
        work = await _absolute(_work_dir(dst))
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        parts: list[tuple[Path, float]] = []  # (file, duration)
        try:
            if first - start >= half:
                # Up to the frame before the keyframe `first` (rounding may put it a hair early).
                head = await cut(start, first - start - half)
                await self.ffmpeg.run([*head, *encode, str(work / "head.ts")])
                parts.append((work / "head.ts", first - start))
            # Seek a hair past the keyframe so rounding cannot land on the keyframe before it.
            from_first = await self._seek_point(info, first + 0.001)
            copy = ["-copyts", *_seek_args(from_first), "-i", str(info.path)]
            copy += ["-map", "0:V:0", "-c", "copy"]
            if last is not None:
                until = last + info.start_time - half
                copy += ["-bsf:v", f"noise=drop=gte(pts*tb\\,{until!r})"]
            await self.ffmpeg.run([*copy, "-f", "mpegts", "-y", str(work / "middle.ts")])
            parts.append((work / "middle.ts", (info.duration if last is None else last) - first))
            if last is not None and end is not None and end - last >= half:
                # `end` is any time: the frame shown at it, up to a frame before it, belongs in.
                tail = await cut(last, end - last - _SEEK_SLACK)
                await self.ffmpeg.run([*tail, *encode, str(work / "tail.ts")])
                parts.append((work / "tail.ts", end - last))
            listing = work / "parts.txt"
            text = "".join(f"file {_quote(p)}\nduration {_ts(d)}\n" for p, d in parts)
            await asyncio.to_thread(listing.write_text, text, encoding="utf-8")
            args = [
                *("-f", "concat", "-safe", "0", "-i", str(listing)),
                *self.ffmpeg.thread_args,
                *("-ss", _ts(start), "-i", str(info.path)),
                *("-map", "0:v:0", "-map", "1:a?", "-c", "copy"),
                # Input seeking hands over audio from the keyframe before `start`, which lands
                # before 0: drop it.
                *("-bsf:a", "noise=drop=lt(pts\\,0)"),
            ]
            if end is not None:
                args += ["-t", _ts(end - start)]
            await self._write(args, dst, fmt, moov_reserve=_moov_reserve([(moov, start, end)]))
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        return len(parts) > 1

    async def _clip_encode(
        self, info: MediaInfo, dst: Path, start: float, end: float | None, fmt: str
    ) -> None:
        before, after = await self._decode_from(info, start)
        args = [*self.ffmpeg.thread_args, *before, "-i", str(info.path), *after]
        args += ["-map", "0:V:0?", "-map", "0:a?"]
        if end is not None:
            args += ["-t", _ts(end - start)]
        args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "17"]
        if info.video is not None:
            args += ["-pix_fmt", info.video.pix_fmt or "yuv420p", *_x264_profile(info.video)]
        copyable = info.audio is not None and info.audio.codec in {"aac", "mp3"}
        if copyable and await self._packet_expressions():
            # Cut without decoding, dropping what input seeking hands over from before `start`.
            args += ["-c:a", "copy", "-bsf:a", "noise=drop=lt(pts\\,0)"]
        else:
            args += ["-c:a", "aac", "-b:a", "128k"]
        await self._write([*args, *self.ffmpeg.thread_args], dst, fmt)

    async def _packet_expressions(self) -> bool:
        """Whether FFmpeg's ``noise`` bitstream filter takes a ``drop`` expression (5.0 on)."""
        version = await self.ffmpeg.version()
        return version is None or version >= (5, 0)

    # concat -------------------------------------------------------------------------------------

    async def concat(
        self, srcs: Sequence[StrPath], dst: StrPath, container: Container | None = None
    ) -> ConcatResult:
        """Join ``srcs`` in order into ``dst``.

        Inputs in the same container, with the same codecs, profiles, resolution, frame rate,
        pixel format, rotation, time base, sample rate and channels are stream-copied (concat
        demuxer); otherwise all are re-encoded (concat filter) to the first input's upright
        picture size, frame rate and sample rate, silence or black standing in for a missing
        track, and the result's ``reason`` says which input differed.
        """
        paths, dst_p = [Path(s) for s in srcs], Path(dst)
        if not paths:
            raise MediaError(f"concat into {dst_p}: no input files")
        fmt = _container(dst_p, container)
        infos = list(await asyncio.gather(*(self.probe(p) for p in paths)))
        reason = _incompatibility(infos)
        if reason is None:
            await self._concat_copy(infos, dst_p, fmt)
            return ConcatResult(dst_p, stream_copy=True)
        await self._concat_encode(infos, dst_p, fmt)
        return ConcatResult(dst_p, stream_copy=False, reason=reason)

    async def _concat_copy(self, infos: list[MediaInfo], dst: Path, fmt: str) -> None:
        moovs = await asyncio.gather(*(asyncio.to_thread(_read_moov, i.path) for i in infos))
        work = _work_dir(dst)
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        try:
            listing = work / "inputs.txt"
            text = "".join(f"file {_quote(i.path.resolve())}\n" for i in infos)
            await asyncio.to_thread(listing.write_text, text, encoding="utf-8")
            args = ["-f", "concat", "-safe", "0", "-i", str(listing), *_copy_av(0)]
            reserve = _moov_reserve([(m, 0.0, None) for m in moovs])
            await self._write(args, dst, fmt, moov_reserve=reserve)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _concat_encode(self, infos: list[MediaInfo], dst: Path, fmt: str) -> None:
        video = next((i.video for i in infos if i.video is not None), None)
        audio = next((i.audio for i in infos if i.audio is not None), None)
        # FFmpeg turns each input upright as it decodes it: the first one's upright size.
        width, height = _displayed_size(video) if video else (0, 0)
        width, height = _even(width), _even(height)
        fps = _rate(video.fps or 30.0) if video else "30"
        rate = audio.sample_rate if audio and audio.sample_rate else 48000
        inputs: list[str] = []
        graph: list[str] = []
        segments: list[str] = []

        n_inputs = 0

        def add_input(*args: str) -> int:
            nonlocal n_inputs
            inputs.extend([*self.ffmpeg.thread_args, *args])
            n_inputs += 1
            return n_inputs - 1

        for k, info in enumerate(infos):
            index = add_input("-i", str(info.path))
            lavfi = ("-f", "lavfi", "-t", _ts(info.duration), "-i")
            if video:
                if info.video:
                    fit = _fit_filter(width, height)
                    graph.append(f"[{index}:V:0]{fit},fps={fps},format=yuv420p[v{k}]")
                else:
                    black = add_input(*lavfi, f"color=c=black:s={width}x{height}:r={fps}")
                    graph.append(f"[{black}:v]format=yuv420p,setsar=1[v{k}]")
                segments.append(f"[v{k}]")
            if audio:
                source = f"{index}:a:0" if info.audio else f"{add_input(*lavfi, 'anullsrc')}:a"
                layout = "aformat=sample_fmts=fltp:channel_layouts=stereo"
                graph.append(f"[{source}]aresample={rate},{layout}[a{k}]")
                segments.append(f"[a{k}]")
        v, a = int(video is not None), int(audio is not None)
        outs = "[v]" * v + "[a]" * a
        graph.append(f"{''.join(segments)}concat=n={len(infos)}:v={v}:a={a}{outs}")
        args = [*inputs, *self.ffmpeg.filter_thread_args, "-filter_complex", ";".join(graph)]
        if video:
            gop = str(round(float(Fraction(fps)) * 2))
            args += ["-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20"]
            args += ["-g", gop, "-keyint_min", gop, "-sc_threshold", "0"]
        if audio:
            args += ["-map", "[a]", "-c:a", "aac", "-b:a", "128k"]
        await self._write([*args, *self.ffmpeg.thread_args], dst, fmt)

    # transcode and HLS --------------------------------------------------------------------------

    async def transcode(self, src: StrPath, dst: StrPath, template: TranscodeTemplate) -> MediaInfo:
        """Encode ``src`` to H.264/AAC per ``template`` and return what came out.

        For ``container="mp4"``, ``dst`` is the file; for ``"hls"`` it is a directory that
        receives ``index.m3u8`` and its ``segment_NNNNN.ts`` files.
        """
        src_p, dst_p = Path(src), Path(dst)
        info = await self.probe(src_p)
        # Absolute: HLS is written from inside its folder.
        src_arg = str(await _absolute(src_p))
        args = [*self.ffmpeg.thread_args, "-i", src_arg, *transcode_options(info, template)]
        args += self.ffmpeg.thread_args
        if template.container == "hls":
            await self._write_hls(args, dst_p, template.segment_seconds)
            return await self.probe(dst_p / _PLAYLIST)
        await self._write(args, dst_p, "mp4")
        return await self.probe(dst_p)

    async def package_hls(
        self, src: StrPath, dst_dir: StrPath, segment_seconds: float = 10.0
    ) -> HlsResult:
        """Package ``src`` as HLS in ``dst_dir`` by stream copy. Segments start on keyframes, so
        they last ``segment_seconds`` rounded up to the source's GOP."""
        _positive(f"HLS packaging of {src}", segment_seconds=segment_seconds)
        out = Path(dst_dir)
        args = [*self.ffmpeg.thread_args, "-i", str(await _absolute(src)), *_copy_av(0)]
        await self._write_hls(args, out, segment_seconds)
        segments = await asyncio.to_thread(read_playlist, out / _PLAYLIST)
        return HlsResult(
            playlist=out / _PLAYLIST,
            segments=[out / uri for uri, _ in segments],
            duration=sum(d for _, d in segments),
        )

    async def _write_hls(self, args: list[str], out: Path, segment_seconds: float) -> None:
        """Write HLS into ``out``; ``args`` name the input by an absolute path."""
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
        # Run inside the folder: FFmpeg reads a '%' anywhere in a segment path as a pattern.
        await self.ffmpeg.run(
            [
                *args,
                *("-f", "hls", "-hls_time", _ts(segment_seconds), "-hls_playlist_type", "vod"),
                *("-hls_list_size", "0", "-hls_flags", "independent_segments"),
                *("-hls_segment_filename", _SEGMENT_PATTERN, "-y", _PLAYLIST),
            ],
            cwd=out,
        )

    # sprites and snapshots ----------------------------------------------------------------------

    async def sprites(
        self,
        src: StrPath,
        out_dir: StrPath,
        template: SpriteTemplate,
        *,
        image_url_prefix: str = "",
    ) -> SpriteResult:
        """Image sprites of ``src``: ``ceil(duration/interval)`` thumbnails tiled into sheets
        ``1.jpg``, ``2.jpg``, ... in ``out_dir``, and ``sprite.vtt`` whose cues cover the whole
        duration, each pointing at ``<image_url_prefix><sheet>#xywh=x,y,w,h``.

        Thumbnail k shows the first keyframe in ``[k*interval, (k+1)*interval)``, or the one
        before when that interval holds none. Only those keyframes are decoded: one FFmpeg
        copies the video packets through a bitstream filter that keeps them, a second decodes,
        scales and tiles. (FFmpeg < 5.0 lacks the filter: it decodes every keyframe instead.)
        """
        src_p, out = Path(src), Path(out_dir)
        # Absolute: FFmpeg runs inside `out`, as it reads a '%' anywhere in an image path as
        # part of the image sequence's pattern.
        src_arg = str(await _absolute(src_p))
        info = await self.probe(src_p)
        if info.video is None:
            raise MediaError(f"image sprites of {src_p}: no video stream")
        width, height = _thumbnail_size(info.video, template.width, template.height)
        interval = template.interval
        count = max(1, math.ceil(info.duration / interval - 1e-6))
        per_sheet = template.rows * template.columns
        n_sheets = math.ceil(count / per_sheet)
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)

        origin, step = repr(info.start_time), repr(interval)
        # True for a keyframe that reaches the next interval, after which it waits for the
        # interval after that one: the first keyframe of each interval. FFmpeg expressions keep
        # st()/ld() variables from one packet or frame to the next, and if() evaluates only the
        # branch taken (a product would store on every packet). TIME is each filter's clock.
        first_of_interval = (
            f"if(key*gte(TIME-{origin}\\,ld(0))"
            f"\\,st(0\\,(floor((TIME-{origin})/{step})+1)*{step})\\,0)"
        )
        every = Fraction(interval).limit_denominator(1000)
        tiles = ",".join(
            [
                # One frame per interval (repeating the last over intervals without a keyframe),
                # exactly `count` of them, each fitted into its cell.
                f"fps=fps={every.denominator}/{every.numerator}:round=down"
                f":start_time={origin}:eof_action=pass",
                f"tpad=stop=-1:stop_mode=clone,trim=end_frame={count}",
                _fit_filter(width, height),
                f"tile={template.columns}x{template.rows}",
            ]
        )
        output = [
            *self.ffmpeg.filter_thread_args,
            *(
                "-fps_mode",
                "passthrough",
                "-frames:v",
                str(n_sheets),
                "-q:v",
                str(template.quality),
            ),
            *("-f", "image2", "-start_number", "1", "-y", "%d.jpg"),
        ]
        if await self._packet_expressions():
            keep = first_of_interval.replace("TIME", "pts*tb")
            # NUT carries no display matrix: the decoder of the piped packets is told how to
            # turn the picture upright, as FFmpeg does by itself when it reads the file.
            upright = _upright_filter(info.video.rotation)
            await self.ffmpeg.run_piped(
                [
                    *("-copyts", "-i", src_arg, "-map", "0:V:0", "-c", "copy"),
                    *("-bsf:v", f"noise=drop=not({keep})", "-f", "nut", "pipe:1"),
                ],
                [
                    *self.ffmpeg.thread_args,
                    *("-copyts", "-f", "nut", "-i", "pipe:0"),
                    *("-vf", ",".join([*upright, tiles]), *output),
                ],
                cwd=out,
            )
        else:
            select = first_of_interval.replace("TIME", "t").replace("key*", "")
            await self.ffmpeg.run(
                [
                    *self.ffmpeg.thread_args,
                    *("-copyts", "-skip_frame", "nokey", "-i", src_arg, "-map", "0:V:0"),
                    *("-vf", f"select={select},{tiles}", *output),
                ],
                cwd=out,
            )
        sheets = [out / f"{n}.jpg" for n in range(1, n_sheets + 1)]
        missing = [s.name for s in sheets if not await asyncio.to_thread(s.is_file)]
        if missing:
            raise MediaError(f"image sprites of {src_p}: FFmpeg wrote no {missing} in {out}")
        vtt = out / "sprite.vtt"
        urls = [f"{image_url_prefix}{s.name}" for s in sheets]
        text = sprite_webvtt(
            info.duration,
            interval,
            count,
            columns=template.columns,
            per_sheet=per_sheet,
            width=width,
            height=height,
            sheet_urls=urls,
        )
        await asyncio.to_thread(vtt.write_text, text, encoding="utf-8")
        return SpriteResult(
            sheets=sheets,
            vtt=vtt,
            total_count=count,
            rows=template.rows,
            columns=template.columns,
            width=width,
            height=height,
            interval=interval,
        )

    async def snapshots(
        self,
        src: StrPath,
        out_dir: StrPath,
        offsets_ms: Sequence[int],
        template: SnapshotTemplate,
    ) -> list[Snapshot]:
        """One image per time offset (ms), named ``<offset_ms>.<format>`` in ``out_dir``.

        Each is the exact frame at its offset (decoded from the keyframe before it); offsets past
        the end give the last frame. Up to 16 offsets share one FFmpeg run.
        """
        src_p, out = Path(src), Path(out_dir)
        info = await self.probe(src_p)
        if info.video is None:
            raise MediaError(f"snapshots of {src_p}: no video stream")
        if any(o < 0 for o in offsets_ms):
            raise MediaError(f"snapshots of {src_p}: time offsets must be >= 0, got {offsets_ms}")
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
        last = max(0.0, info.duration - 2.0 / (info.video.fps or 25.0))
        size = _thumbnail_size(info.video, template.width, template.height)
        scale = [] if template.width == template.height == 0 else ["-vf", _fit_filter(*size)]
        results = [Snapshot(offset, out / f"{offset}.{template.format}") for offset in offsets_ms]
        for batch_start in range(0, len(results), 16):
            inputs: list[str] = []
            outputs: list[str] = []
            for k, snap in enumerate(results[batch_start : batch_start + 16]):
                at = min(snap.offset_ms / 1000, last)
                # Decoded from the keyframe before `at`, its frames up to `at` skipped.
                before, after = await self._decode_from(info, at)
                inputs += [*self.ffmpeg.thread_args, *before, "-i", str(src_p)]
                outputs += ["-map", f"{k}:V:0", *after]
                outputs += ["-frames:v", "1", *scale]
                outputs += ["-update", "1", "-q:v", "2", "-y", str(snap.path)]
            await self.ffmpeg.run([*inputs, *outputs])
        return results

    # test recordings ----------------------------------------------------------------------------

    async def make_test_media(
        self,
        dst: StrPath,
        duration: float,
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 30,
        gop_seconds: float = 2.0,
        audio: bool = True,
        video_bitrate: int | None = None,
        tone: int = 440,
        preset: str = "veryfast",
        container: Container | None = None,
    ) -> MediaInfo:
        """Write an H.264/AAC recording like a live recorder's: FFmpeg's ``testsrc2`` picture
        (it shows its own timestamp), a sine tone, and a keyframe exactly every ``gop_seconds``.
        ``video_bitrate`` (kbit/s) gives a constant-bitrate stream like a recorder's; ``None``
        encodes at constant quality, which is much smaller for this picture."""
        dst_p = Path(dst)
        fmt = _container(dst_p, container)
        gop = str(max(1, round(fps * gop_seconds)))
        args = ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}"]
        if audio:
            args += ["-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=48000"]
        args += ["-t", _ts(duration), "-map", "0:v", *(("-map", "1:a") if audio else ())]
        args += ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p"]
        args += ["-g", gop, "-keyint_min", gop, "-sc_threshold", "0"]
        if video_bitrate is None:
            args += ["-crf", "23"]
        else:
            rate = f"{video_bitrate}k"
            args += ["-b:v", rate, "-maxrate", rate, "-bufsize", f"{2 * video_bitrate}k"]
        if audio:
            args += ["-c:a", "aac", "-b:a", "128k", "-ac", "2"]
        await self._write([*args, *self.ffmpeg.thread_args], dst_p, fmt)
        return await self.probe(dst_p)

    # writing ------------------------------------------------------------------------------------

    async def _write(
        self, args: list[str], dst: Path, fmt: str, *, moov_reserve: int | None = None
    ) -> None:
        """Run FFmpeg writing ``dst`` through a temporary name, renamed when FFmpeg succeeds.

        An MP4's index (moov) always goes before the media data, so players can start while
        downloading: into ``moov_reserve`` bytes kept free at the front when given (one pass;
        measured about 10% faster on stream copies) or by ``+faststart`` (a second pass over the
        file), which is also the fallback when the reservation turns out too small.
        """
        # Its own name: a run of the same task still going elsewhere (an engine that died
        # and was restarted) never writes into this one's file.
        part = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
        await asyncio.to_thread(dst.parent.mkdir, parents=True, exist_ok=True)
        write = ["-f", _MUXERS[fmt], "-y", str(part)]
        faststart = ["-movflags", "+faststart"] if fmt == "mp4" else []
        try:
            if faststart and moov_reserve is not None:
                try:
                    await self.ffmpeg.run([*args, "-moov_size", str(moov_reserve), *write])
                except MediaError as exc:
                    if "reserved_moov_size is too small" not in exc.reason:
                        raise
                    logger.info("moov reservation of %d B too small for %s", moov_reserve, dst)
                    await self.ffmpeg.run([*args, *faststart, *write])
            else:
                await self.ffmpeg.run([*args, *faststart, *write])
            await asyncio.to_thread(part.replace, dst)
        except BaseException:
            await asyncio.to_thread(part.unlink, True)
            raise


# --- helpers -----------------------------------------------------------------------------------


def transcode_options(info: MediaInfo, template: TranscodeTemplate) -> list[str]:
    """FFmpeg output options encoding ``info``'s first video and audio streams per ``template``."""
    args: list[str] = []
    if info.video is not None:
        width, height = output_size(info.video, template.width, template.height)
        src_fps = info.video.fps or 30.0
        fps = template.fps if template.fps and template.fps < src_fps else src_fps
        scale = f"scale={width}:{height}" + ("" if fps == src_fps else f",fps={_rate(fps)}")
        gop = str(max(1, round(fps * template.gop)))
        rate = template.video_bitrate
        args += ["-map", "0:V:0", "-vf", scale]
        args += ["-c:v", "libx264", "-preset", template.preset, "-pix_fmt", "yuv420p"]
        # Average bitrate, with peaks bounded so a player's buffer copes.
        args += ["-b:v", f"{rate}k", "-maxrate", f"{rate * 3 // 2}k", "-bufsize", f"{rate * 2}k"]
        # A keyframe exactly every `gop` seconds, so HLS segments all cut alike.
        args += ["-g", gop, "-keyint_min", gop, "-sc_threshold", "0"]
    if info.audio is not None:
        args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", f"{template.audio_bitrate}k"]
        if info.audio.channels > 2:
            args += ["-ac", "2"]
    return args


def output_size(
    video: VideoStream, max_width: int | None, max_height: int | None
) -> tuple[int, int]:
    """The picture size a transcode produces: ``video``'s displayed size fitted inside
    ``max_width`` x ``max_height`` (None = unbounded), never upscaled, even."""
    width, height = video.width, video.height
    if video.rotation in (90, 270):  # FFmpeg rotates the picture upright when encoding
        width, height = height, width
    scale = 1.0
    if max_width:
        scale = min(scale, max_width / width)
    if max_height:
        scale = min(scale, max_height / height)
    # Never above the source's own size either: 853x479 in an 854x480 box is 852x478.
    return (
        _even_near(width * scale, min(max_width or width, width)),
        _even_near(height * scale, min(max_height or height, height)),
    )


def sprite_webvtt(
    duration: float,
    interval: float,
    count: int,
    *,
    columns: int,
    per_sheet: int,
    width: int,
    height: int,
    sheet_urls: Sequence[str],
) -> str:
    """WebVTT for image sprites: cue k covers ``[k*interval, (k+1)*interval)`` (the last one
    ends at ``duration``) and points at cell k of its sheet, cells filling rows left to right."""
    lines = ["WEBVTT", ""]
    for k in range(count):
        begin = k * interval
        finish = duration if k == count - 1 else min((k + 1) * interval, duration)
        cell = k % per_sheet
        x, y = (cell % columns) * width, (cell // columns) * height
        lines += [
            f"{_vtt_time(begin)} --> {_vtt_time(finish)}",
            f"{sheet_urls[k // per_sheet]}#xywh={x},{y},{width},{height}",
            "",
        ]
    return "\n".join(lines)


def _incompatibility(infos: list[MediaInfo]) -> str | None:
    """Why ``infos`` cannot be joined by stream copy, or None when they can.

    FFmpeg's concat demuxer hands on each file's packets as they are: they must share the
    container (MPEG-TS carries H.264 and AAC framed otherwise than MP4 and FLV) and the
    clock their timestamps count in, or the join has wrong times, lost frames or fails.
    """
    fields: dict[str, tuple[str, ...]] = {
        "video": (
            "codec",
            "profile",
            "resolution",
            "fps",
            "pixel format",
            "rotation",
            "time base",
        ),
        "audio": ("codec", "profile", "sample rate", "channels"),
    }

    def key(info: MediaInfo, kind: str) -> tuple[object, ...] | None:
        if kind == "video" and (v := info.video) is not None:
            # A file's rotation is one display matrix for the whole stream: a copy would show
            # every input turned as the first one is.
            return (
                v.codec,
                v.profile,
                f"{v.width}x{v.height}",
                round(v.fps, 2),
                v.pix_fmt,
                v.rotation,
                f"1/{v.timescale}",
            )
        if kind == "audio" and (a := info.audio) is not None:
            return a.codec, a.profile, a.sample_rate, a.channels
        return None

    for n, info in enumerate(infos[1:], start=1):
        if info.format_name != infos[0].format_name:
            return (
                f"input {n} ({info.path.name}) container {info.container} differs from "
                f"{infos[0].container}"
            )
        for kind, labels in fields.items():
            ours, theirs = key(infos[0], kind), key(info, kind)
            if ours == theirs:
                continue
            if ours is None or theirs is None:
                has = "has no" if theirs is None else "has"
                return f"input {n} ({info.path.name}) {has} {kind}, unlike input 0"
            for label, x, y in zip(labels, ours, theirs, strict=True):
                if x != y:
                    return f"input {n} ({info.path.name}) {kind} {label} {y} differs from {x}"
    return None


def _resolve_range(
    src: Path, duration: float, start: float, end: float | None
) -> tuple[float, float | None]:
    """``start``/``end`` with negative values counted from the end, checked against the file."""
    if start < 0:
        start = max(0.0, duration + start)
    if end is not None and end < 0:
        end = duration + end
    if duration > 0 and start >= duration:
        raise MediaError(
            f"clip of {src}: start {start:g} s is not inside the file (duration {duration:g} s)"
        )
    if end is not None and end <= start:
        raise MediaError(f"clip of {src}: end {end:g} s must be after start {start:g} s")
    return start, end


# --- MP4 index ---------------------------------------------------------------------------------


def _moov_reserve(
    parts: Sequence[tuple[tuple[int, float] | None, float, float | None]],
) -> int | None:
    """Bytes to reserve for the index of an MP4 stream-copied from ``parts`` (each the source's
    (moov size, duration) and the range taken), or None when a source is not an MP4."""
    total = 0.0
    for moov, start, end in parts:
        if moov is None or moov[1] <= 0:
            return None
        size, duration = moov
        stop = duration if end is None else min(end, duration)
        total += size * max(0.0, stop - start) / duration
    # The index grows with the sample count; half again plus 64 KiB covers another muxer's
    # chunking. Too small is caught and redone with +faststart.
    return int(total * 1.5) + 65536


def _read_moov(path: Path) -> tuple[int, float] | None:
    """(moov box size, movie duration in s) of an MP4 file, from its box headers; None for
    anything else."""
    try:
        with path.open("rb") as f:
            file_size = f.seek(0, 2)
            offset = 0
            while offset + 8 <= file_size:
                f.seek(offset)
                size, kind = struct.unpack(">I4s", f.read(8))
                header = 8
                if size == 1:  # 64-bit size follows
                    size, header = struct.unpack(">Q", f.read(8))[0], 16
                elif size == 0:  # to the end of the file
                    size = file_size - offset
                if (offset == 0 and kind != b"ftyp") or size < header:
                    return None
                if kind == b"moov":
                    return size, _mvhd_duration(f.read(min(size - header, 4096)))
                offset += size
    except (OSError, struct.error):
        return None
    return None


def _mvhd_duration(moov: bytes) -> float:
    pos = 0
    while pos + 8 <= len(moov):
        size, kind = struct.unpack_from(">I4s", moov, pos)
        if kind == b"mvhd":
            version = moov[pos + 8]
            if version == 1:
                timescale, duration = struct.unpack_from(">IQ", moov, pos + 8 + 4 + 16)
            else:
                timescale, duration = struct.unpack_from(">II", moov, pos + 8 + 4 + 8)
            return float(duration / timescale) if timescale else 0.0
        if size < 8:
            break
        pos += size
    return 0.0


# --- small helpers -----------------------------------------------------------------------------

_UNINDEXED = {"mpegts"}
"""Demuxers (FFmpeg's names) whose seeking does not land on a keyframe."""
_SEEK_SLACK = 0.0005
"""Half a millisecond: less than any frame's duration, more than the rounding of times."""


async def _absolute(path: StrPath) -> Path:
    return await asyncio.to_thread(Path(path).absolute)


def _seek_args(seek: float | None) -> list[str]:
    return [] if seek is None else ["-ss", _ts(seek)]


def _packet_times(framecrc: str, info: MediaInfo) -> list[tuple[float, float]]:
    """(decoding, presentation) time of each packet of a ``-copyts`` framecrc listing of
    ``info``'s file's first stream, in seconds from the file's start."""
    lines = framecrc.splitlines()
    tb = next((line[6:].strip() for line in lines if line.startswith("#tb 0:")), None)
    if tb is None:
        raise MediaError(f"packets of {info.path}: FFmpeg listed no time base")
    unit = Fraction(tb)
    packets = (line.split(",") for line in lines if not line.startswith("#"))
    return [
        (float(int(p[1]) * unit) - info.start_time, float(int(p[2]) * unit) - info.start_time)
        for p in packets
        if len(p) > 2
    ]


def _copy_av(index: int) -> list[str]:
    # Video (not cover art) and audio only: data and subtitle tracks of recordings often cannot
    # go into the output container.
    return ["-map", f"{index}:V?", "-map", f"{index}:a?", "-c", "copy"]


def _x264_profile(video: VideoStream) -> list[str]:
    profile = (video.profile or "").lower().replace("constrained ", "")
    return ["-profile:v", profile] if profile in {"baseline", "main", "high"} else []


def _displayed_size(video: VideoStream) -> tuple[int, int]:
    """``video``'s picture size once turned upright."""
    if video.rotation in (90, 270):
        return video.height, video.width
    return video.width, video.height


def _thumbnail_size(video: VideoStream, width: int, height: int) -> tuple[int, int]:
    src_w, src_h = _displayed_size(video)
    if width and height:
        return width, height
    if width:
        return width, max(2, _even_near(width * src_h / src_w, 1 << 16))
    if height:
        return max(2, _even_near(height * src_w / src_h, 1 << 16)), height
    return _even(src_w), _even(src_h)


def _upright_filter(rotation: int) -> list[str]:
    """The filters FFmpeg's autorotation applies for a stream displayed ``rotation`` degrees
    clockwise from how it is coded (see :attr:`VideoStream.rotation`)."""
    return {90: ["transpose=clock"], 180: ["hflip", "vflip"], 270: ["transpose=cclock"]}.get(
        rotation, []
    )


def _fit_filter(width: int, height: int) -> str:
    # `pad` rounds its size down to whole chroma samples: a 4:2:0 picture cannot be padded to
    # an odd side, so a picture of odd size is made 4:4:4 first (JPEG takes either).
    full_chroma = "format=yuv444p," if width % 2 or height % 2 else ""
    return (
        f"{full_chroma}scale={width}:{height}:force_original_aspect_ratio=decrease,"
        f"pad={width}:{height}:-1:-1,setsar=1"
    )


def _container(dst: Path, container: str | None) -> str:
    fmt = container or dst.suffix.lower().lstrip(".")
    if fmt not in _MUXERS:
        raise MediaError(f"output {dst}: container {fmt!r} is not one of {', '.join(_MUXERS)}")
    return fmt


def _work_dir(dst: Path) -> Path:
    """Beside the output, on the same file system (intermediate parts can be as big as the
    result), and a name of its own: another run of the same task must not share or delete it."""
    return dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.work")


def _quote(path: Path) -> str:
    """A path quoted for an FFmpeg concat list."""
    return "'" + str(path).replace("'", "'\\''") + "'"


def _ts(seconds: float) -> str:
    return f"{seconds:.6f}"


def _vtt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _rate(fps: float) -> str:
    """A frame rate as FFmpeg reads it exactly: 29.97 -> 30000/1001."""
    # FFmpeg prints rates to 4 significant digits, so NTSC rates arrive as 29.97 or 59.94.
    if abs(fps - round(fps)) < 0.001:
        return str(round(fps))
    if abs(fps * 1001 - round(fps * 1001)) < 0.1:
        return f"{round(fps * 1001)}/1001"
    return f"{fps:.4f}"


def _even(n: int) -> int:
    return max(2, n - n % 2)


def _even_near(x: float, limit: int) -> int:
    """The even number nearest ``x`` that is not above ``limit`` (1280x720 to 480 lines: 854)."""
    n = max(2, int(x / 2 + 0.5) * 2)  # half up: round() would take 45 to 44
    return n - 2 if n > limit and n > 2 else n


def _positive(what: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{what}: {name} must be positive, got {value}")
