"""Where the engine keeps media and the stable URLs it serves them at.

Layout under the media directory, one folder per file ID (the URL is the same path under
``{public base}/vod/files/``)::

    <fileId>/f0.<container>                       the file itself (upload, clip or concat)
    <fileId>/v.f<definition>.mp4                  an MP4 transcode
    <fileId>/v.f<definition>/index.m3u8, *.ts     an HLS transcode
    <fileId>/imageSprite/<definition>/<n>.jpg     image sprite sheets, and sprite.vtt
    <fileId>/snapshotByTimeOffset/<definition>/<ms>.jpg

Work in progress lives under names starting with ``.`` beside its destination and is renamed into
place when complete, so a re-run after a crash starts clean and a URL never shows half a file.
Names starting with ``.`` are never served. Every file is public, like a VOD play URL; answers
allow any origin (players fetch playlists, segments and WebVTT across origins).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import uuid
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

CONTENT_TYPES = {
    "mp4": "video/mp4",
    "m4a": "audio/mp4",
    "mov": "video/quicktime",
    "flv": "video/x-flv",
    "ts": "video/mp2t",
    "m3u8": "application/vnd.apple.mpegurl",
    "mkv": "video/x-matroska",
    "webm": "video/webm",
    "jpg": "image/jpeg",
    "png": "image/png",
    "vtt": "text/vtt; charset=utf-8",
}
_FILE_ID = re.compile(r"[0-9]{1,32}")


class Storage:
    """The media directory and the public URLs of what is in it."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root
        self.base_url = base_url.rstrip("/")

    def file_dir(self, file_id: str) -> Path:
        return self.root / file_id

    def path(self, relative: str) -> Path:
        return self.root / relative

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def url(self, file_id: str, *parts: str | int) -> str:
        """The public URL of ``<fileId>/<parts...>``; a trailing "" gives a folder URL."""
        tail = "/".join(quote(str(part)) for part in parts)
        return f"{self.base_url}/vod/files/{file_id}/{tail}"

    def url_of(self, path: Path) -> str:
        file_id, *parts = path.relative_to(self.root).parts
        return self.url(file_id, *parts)

    def url_for(self, relative: str) -> str:
        """The URL of a path relative to the media directory (a file row's ``path``)."""
        return self.url_of(self.path(relative))

    def work_dir(self, destination: Path, task_id: str) -> Path:
        """A hidden folder beside ``destination`` for one task's work in progress."""
        return destination.with_name(f".{destination.name}.work-{task_id}")

    async def fresh_dir(self, path: Path) -> Path:
        """``path`` as an empty folder (what an interrupted run left there is removed)."""

        def make() -> None:
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)

        await asyncio.to_thread(make)
        return path

    async def publish_dir(self, work: Path, destination: Path) -> None:
        """Move a finished ``work`` folder to ``destination``, replacing an earlier result."""

        def move() -> None:
            old = destination.with_name(f".{destination.name}.old-{uuid.uuid4().hex}")
            if destination.exists():
                destination.rename(old)
            work.rename(destination)
            shutil.rmtree(old, ignore_errors=True)

        await asyncio.to_thread(move)

    async def discard(self, path: Path) -> None:
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def serve(self, request: Request) -> Response:
        """``GET``/``HEAD /vod/files/{file_id}/{path}``: one stored file, with range requests."""
        file_id = request.path_params["file_id"]
        parts = [part for part in request.path_params["path"].split("/") if part]
        if (
            not _FILE_ID.fullmatch(file_id)
            or not parts
            or any(part.startswith(".") or "\\" in part for part in parts)
        ):
            return _not_found(request)
        path = self.file_dir(file_id).joinpath(*parts)
        if not await asyncio.to_thread(path.is_file):
            return _not_found(request)
        suffix = path.suffix.lower().lstrip(".")
        return FileResponse(
            path,
            media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
            headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=60"},
        )


def file_digest(path: Path, algorithm: Literal["md5", "sha256"]) -> str:
    """The hex digest of a file's content (blocking: run it in a thread)."""
    with path.open("rb") as f:
        return hashlib.file_digest(
            f, lambda: hashlib.new(algorithm, usedforsecurity=False)
        ).hexdigest()


def _not_found(request: Request) -> Response:
    return JSONResponse(
        {"error": f"no file at {request.url.path}"},
        status_code=404,
        headers={"Access-Control-Allow-Origin": "*"},
    )
