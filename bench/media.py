"""Benchmark of the engine's media operations against the plain FFmpeg commands they replace.

    .venv/bin/python bench/media.py [--repeat 3] [--data-dir data/bench]

Generates (once, cached in the data directory) a 10-minute 1280x720 30 fps H.264/AAC recording
with a 2 s GOP at 2 Mbit/s, then times, each as the median of ``--repeat`` runs measured in this
same process and alternated with its reference:

1. clip 8 minutes (stream copy) vs ``ffmpeg -ss … -i … -t … -c copy``;
2. concat 3 x 10 minutes (stream copy) vs the concat demuxer with ``-c copy``;
3. image sprites, one thumbnail every 10 s (60 in a 10x6 sheet), vs the full-decode
   ``-vf fps=1/10,scale=…,tile=…`` command;
4. transcode to 480p vs the plain ``ffmpeg`` command with identical settings, on the recording's
   first 60 s (a full 10-minute encode would take minutes per run on 2 cores).

Prints a table of times, the ratio to the reference, and the realtime factor
(media seconds per wall-clock second). No assertions: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media, SpriteTemplate, TranscodeTemplate

ROOT = Path(__file__).resolve().parent.parent
GOAL_COPY = "≥1000x, ≤1.10"


@dataclass
class Row:
    name: str
    media_seconds: float
    ours: float
    reference: float
    reference_name: str
    goal: str

    @property
    def ratio(self) -> float:
        return self.ours / self.reference

    @property
    def realtime(self) -> float:
        return self.media_seconds / self.ours


def q(path: Path) -> str:
    return shlex.quote(str(path))


def plain(exe: str, command: str) -> None:
    """Run ``ffmpeg <command>`` as a person would type it."""
    args = shlex.split(f"-nostdin -hide_banner -loglevel error -y {command}")
    subprocess.run([exe, *args], check=True)


def fresh(out: Path) -> Path:
    """An empty output directory: both sides write new files, as the engine does (replacing a
    big file costs the time to free its blocks, which would land on whoever writes second)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def measure(
    runner: asyncio.Runner,
    repeat: int,
    out: Path,
    ours: Callable[[], Coroutine[Any, Any, object]],
    reference: Callable[[], None],
) -> tuple[float, float]:
    """Median wall-clock seconds of ``ours`` and ``reference``, alternated, after one warm-up
    of each (so both read the source from the page cache)."""
    mine: list[float] = []
    theirs: list[float] = []
    for n in range(repeat + 1):
        fresh(out)
        start = time.perf_counter()
        runner.run(ours())
        if n:
            mine.append(time.perf_counter() - start)
        fresh(out)
        start = time.perf_counter()
        reference()
        if n:
            theirs.append(time.perf_counter() - start)
    return statistics.median(mine), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--ffmpeg", default=None, help="ffmpeg binary (default: imageio-ffmpeg)")
    opts = parser.parse_args()

    data: Path = opts.data_dir
    out = data / "out"
    media = Media(FFmpeg(opts.ffmpeg))
    exe = media.ffmpeg.exe
    src = data / "recording-600s-1280x720-30fps-gop2.mp4"
    segment = data / "recording-60s-1280x720-30fps-gop2.mp4"
    rows: list[Row] = []

    with asyncio.Runner() as runner:
        if not src.exists():
            print(f"generating {src} (10 minutes of 720p30; about 2 minutes on 2 cores) …")
            started = time.perf_counter()
            runner.run(
                media.make_test_media(
                    src, 600, width=1280, height=720, fps=30, gop_seconds=2, video_bitrate=2000
                )
            )
            print(f"  done in {time.perf_counter() - started:.0f} s")
        info = runner.run(media.probe(src))
        print(
            f"source: {src.name}: {info.duration:.0f} s, {info.size / 1e6:.0f} MB, "
            f"{(info.bitrate or 0) / 1000:.0f} kbit/s; FFmpeg {exe}"
        )

        # 1. clip 8 minutes
        ours, ref = measure(
            runner,
            opts.repeat,
            out,
            lambda: media.clip(src, out / "clip.mp4", 60, 540),
            lambda: plain(exe, f"-ss 60 -i {q(src)} -t 480 -c copy {q(out / 'clip-plain.mp4')}"),
        )
        rows.append(Row("clip 8 min (copy)", 480, ours, ref, "-ss -i -t -c copy", GOAL_COPY))

        # 2. concat 3 x 10 minutes
        listing = data / "concat.txt"
        listing.write_text(f"file {q(src)}\n" * 3, encoding="utf-8")
        concat_plain = f"-f concat -safe 0 -i {q(listing)} -c copy {q(out / 'concat-plain.mp4')}"
        ours, ref = measure(
            runner,
            opts.repeat,
            out,
            lambda: media.concat([src, src, src], out / "concat.mp4"),
            lambda: plain(exe, concat_plain),
        )
        rows.append(Row("concat 3 x 10 min (copy)", 1800, ours, ref, "concat -c copy", GOAL_COPY))

        # 3. sprites: 60 thumbnails
        template = SpriteTemplate(10, interval=10, rows=6, columns=10, width=160, height=90)
        naive = (
            f"-i {q(src)} -an -vf fps=1/10,scale=160:90,tile=10x6 -frames:v 1 {q(out / 'n.jpg')}"
        )
        ours, ref = measure(
            runner,
            opts.repeat,
            out,
            lambda: media.sprites(src, out / "sprites", template),
            lambda: plain(exe, naive),
        )
        rows.append(Row("sprites, 60 thumbs", 600, ours, ref, "fps,scale,tile", "≥500x, ≤0.20"))

        # 4. transcode 60 s to 480p
        if not segment.exists():
            runner.run(media.clip(src, segment, 0, 60))
        t480 = TranscodeTemplate(20, height=480, video_bitrate=800, audio_bitrate=64, gop=2)
        transcode_plain = (
            f"-i {q(segment)} -map 0:V:0 -vf scale=854:480 -c:v libx264 -preset veryfast "
            "-pix_fmt yuv420p -b:v 800k -maxrate 1200k -bufsize 1600k "
            "-g 60 -keyint_min 60 -sc_threshold 0 -map 0:a:0 -c:a aac -b:a 64k "
            f"-movflags +faststart {q(out / 't480-plain.mp4')}"
        )
        ours, ref = measure(
            runner,
            opts.repeat,
            out,
            lambda: media.transcode(segment, out / "t480.mp4", t480),
            lambda: plain(exe, transcode_plain),
        )
        rows.append(Row("transcode 60 s to 480p", 60, ours, ref, "same settings", "≤1.05"))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nmedian of {opts.repeat} runs after one warm-up each; load average now {load}\n")
    header = ("operation", "vodflow s", "reference s", "ratio", "realtime", "goal", "reference")
    table = [header] + [
        (r.name, f"{r.ours:.3f}", f"{r.reference:.3f}", f"{r.ratio:.2f}",
         f"{r.realtime:.0f}x", r.goal, r.reference_name)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
