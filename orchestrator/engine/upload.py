"""Putting files into the engine: ``PUT /vod/upload`` and the client that signs such an upload.

The request (the engine's own; Tencent uploads differently)::

    PUT /vod/upload?Action=UploadFile&fileName=...&contentSha256=<hex>
                   [&streamId=S&recordStartTime=T&recordEndTime=T][&sourceType=...]
                   &Timestamp=...&Nonce=...&SecretId=...&SignatureMethod=...&Signature=...
    <the file's bytes>

The query is signed like any v2 request (signature method v1 with method ``PUT`` and path
``/vod/upload``) and ``contentSha256`` binds the body to the signature: a body whose SHA-256
differs is refused (4100). The file is stored, probed (refused with 1000 when FFmpeg finds no
audio or video in it), registered, and announced with a ``NewFileUpload`` event: sourceType
``Record`` with its ``streamId`` for a recording, else ``ServerUpload`` (or what ``sourceType``
says). A recording's ``recordStartTime``/``recordEndTime`` (Unix seconds) are what
``gen.clip.streamInfo`` selects by; when one is missing it is derived from the other and the
media's duration, and with neither the recording is taken to have just ended.

The answer is the API's envelope plus ``fileId`` and ``fileUrl`` (and, for a recording, its
``streamId``, ``recordStartTime`` and ``recordEndTime`` as registered), with an HTTP status that
says the same (200, 400, 401, 413, 429, 500), so plain HTTP tools see failures too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self
from urllib.parse import urlsplit

import httpx
from pydantic import JsonValue, StringConstraints, model_validator
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from orchestrator import __version__
from orchestrator.engine import bodies
from orchestrator.engine.answers import EngineError, failure, success
from orchestrator.engine.auth import Authenticator
from orchestrator.engine.ffmpeg import NotMediaError
from orchestrator.engine.kinds import new_file_id
from orchestrator.engine.media import Media
from orchestrator.engine.storage import Storage, file_digest
from orchestrator.engine.tasks import event_row
from orchestrator.engine.wakeup import Wakeup
from orchestrator.store import engine as store
from orchestrator.store.db import Database
from orchestrator.store.tables import EngineFile
from orchestrator.vod.errors import InvalidRequestParams, TransportError
from orchestrator.vod.params import NonEmpty, VodRequest, WireInt
from orchestrator.vod.responses import load_answer
from orchestrator.vod.signing import SignatureMethod, sign

log = logging.getLogger(__name__)

UPLOAD_PATH = "/vod/upload"
CHUNK = 1 << 20


class UploadFileRequest(VodRequest):
    """The upload's own parameters (the common ones are checked by the authenticator)."""

    ACTION: ClassVar[str] = "UploadFile"

    content_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    file_name: NonEmpty | None = None
    stream_id: NonEmpty | None = None
    record_start_time: WireInt | None = None
    record_end_time: WireInt | None = None
    source_type: Literal["Record", "ServerUpload", "ClientUpload"] | None = None

    @model_validator(mode="after")
    def _recording(self) -> Self:
        timed = self.record_start_time is not None or self.record_end_time is not None
        if self.stream_id is None and (timed or self.source_type == "Record"):
            raise InvalidRequestParams(
                "streamId", "required for a recording (recordStartTime, sourceType=Record)"
            )
        start, end = self.record_start_time, self.record_end_time
        if start is not None and end is not None and end <= start:
            raise InvalidRequestParams(
                "recordEndTime", f"expected a time after recordStartTime {start}, got {end}"
            )
        return self


class Uploads:
    """The ``PUT /vod/upload`` endpoint."""

    def __init__(
        self,
        *,
        db: Database,
        auth: Authenticator,
        media: Media,
        storage: Storage,
        max_bytes: int,
        push: bool,
        events_added: Wakeup,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.auth = auth
        self.media = media
        self.storage = storage
        self.max_bytes = max_bytes
        self.push = push
        self.events_added = events_added
        self.clock = clock

    async def endpoint(self, request: Request) -> JSONResponse:
        part: Path | None = None
        try:
            params = dict(request.query_params)
            await self.auth.check(params, "PUT", request.headers.get("host", ""), request.url.path)
            if params.get("Action") != UploadFileRequest.ACTION:
                raise EngineError(4000, "parameter 'Action': expected UploadFile")
            try:
                upload = UploadFileRequest.from_params(params)
            except InvalidRequestParams as exc:
                raise EngineError(1000, exc.message) from None
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large()
            part = self.storage.root / ".uploads" / f"{secrets.token_hex(8)}.part"
            sha256, md5 = await self._receive(request, part)
            if sha256 != upload.content_sha256:
                raise EngineError(
                    4100,
                    f"the body's SHA-256 is {sha256}, not the signed contentSha256 "
                    f"{upload.content_sha256}",
                )
            file = await self._register(upload, part, md5)
        except EngineError as exc:
            return failure(exc, http_status=exc.http_status)
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("engine upload failed (reference %s)", reference)
            error = EngineError(6000, f"internal error; the engine's log has it ({reference})")
            return failure(error, http_status=500)
        finally:
            if part is not None:
                await asyncio.to_thread(part.unlink, True)
        answer: dict[str, JsonValue] = {
            "fileId": file.file_id,
            "fileUrl": self.storage.url_for(file.path),
        }
        if file.stream_id is not None:
            answer.update(
                streamId=file.stream_id,
                recordStartTime=file.record_start,
                recordEndTime=file.record_end,
            )
        return success(answer)

    def _too_large(self) -> EngineError:
        message = f"the body is larger than the engine accepts ({self.max_bytes} bytes)"
        return EngineError(4000, message, http_status=413)

    async def _receive(self, request: Request, part: Path) -> tuple[str, str]:
        """Write the body to ``part``; its SHA-256 and MD5 (hex)."""
        await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
        digest, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        size = 0
        out = await asyncio.to_thread(part.open, "wb")
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_bytes:
                    raise self._too_large()
                digest.update(chunk)
                md5.update(chunk)
                buffer += chunk
                if len(buffer) >= CHUNK:
                    await asyncio.to_thread(out.write, bytes(buffer))
                    buffer.clear()
            await asyncio.to_thread(out.write, bytes(buffer))
        except ClientDisconnect:
            raise EngineError(4000, f"the upload was interrupted after {size} bytes") from None
        finally:
            await asyncio.to_thread(out.close)
        return digest.hexdigest(), md5.hexdigest()

    async def _register(self, upload: UploadFileRequest, part: Path, md5: str) -> EngineFile:
        try:
            info = await self.media.probe(part)
        except NotMediaError as exc:
            reason = exc.reason.replace(str(part), "the body")
            raise EngineError(1000, f"body: not a media file ({reason})") from None
        now = self.clock()
        start, end = upload.record_start_time, upload.record_end_time
        if upload.stream_id is not None:
            length = math.ceil(info.duration)
            if end is None:
                end = int(now) if start is None else start + length
            if start is None:
                start = end - length
        source_type = upload.source_type or ("Record" if upload.stream_id else "ServerUpload")
        extension = info.container if info.container.isalnum() else "bin"
        name = upload.file_name or f"upload.{extension}"
        while True:
            file_id = new_file_id()
            destination = self.storage.file_dir(file_id) / f"f0.{extension}"
            await asyncio.to_thread(_move, part, destination)
            file = EngineFile(
                file_id=file_id,
                name=name,
                path=self.storage.relative(destination),
                container=info.container,
                size=info.size,
                duration=info.duration,
                md5=md5,
                meta=bodies.meta_data(info, md5),
                source_type=source_type,
                stream_id=upload.stream_id,
                record_start=start,
                record_end=end,
                created_at=_utc(now),
            )
            data = bodies.new_file_upload(
                file_id=file_id,
                name=name,
                url=self.storage.url_for(file.path),
                source_type=source_type,
                stream_id=upload.stream_id,
                meta=file.meta,
            )
            async with self.db.transaction() as conn:
                if await store.insert_file(conn, file):
                    row = event_row(file_id, "NewFileUpload", data, _utc(now), self.push)
                    await store.insert_events(conn, [row])
                    break
            await asyncio.to_thread(_move, destination, part)  # the ID was taken: draw again
        self.events_added.ring()
        log.info(
            "engine: stored %s as file %s (%s, %.1fs)", name, file_id, source_type, info.duration
        )
        return file


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- the client side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Uploaded:
    file_id: str
    file_url: str
    stream_id: str | None = None
    """For a recording: its stream, and its recording times as the engine registered them."""
    record_start: int | None = None
    record_end: int | None = None


async def upload_file(
    path: Path,
    *,
    endpoint: str,
    secret_id: str,
    secret_key: str,
    algorithm: SignatureMethod = "HmacSHA256",
    file_name: str | None = None,
    stream_id: str | None = None,
    record_start: int | None = None,
    record_end: int | None = None,
    source_type: str | None = None,
    http_timeout: float = 600.0,
    clock: Callable[[], float] = time.time,
) -> Uploaded:
    """Upload ``path`` to the engine serving ``endpoint`` (its API URL or any URL on its host).

    Raises the ``VodError`` of a refusal, ``TransportError`` when the engine cannot be reached.
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"engine endpoint {endpoint!r}: expected an http(s) URL")
    host = parts.netloc.rsplit("@", 1)[-1]
    size = await asyncio.to_thread(os.path.getsize, path)
    digest = await asyncio.to_thread(file_digest, path, "sha256")
    own = {
        "fileName": file_name or path.name,
        "streamId": stream_id,
        "recordStartTime": record_start,
        "recordEndTime": record_end,
        "sourceType": source_type,
        "contentSha256": digest,
    }
    params = {name: str(value) for name, value in own.items() if value is not None}
    params.update(
        Action=UploadFileRequest.ACTION,
        Timestamp=str(int(clock())),
        Nonce=str(secrets.randbelow(2**31 - 1) + 1),
        SecretId=secret_id,
        SignatureMethod=algorithm,
        RequestClient=f"vodflow/{__version__}",
    )
    params["Signature"] = sign(params, "PUT", host, UPLOAD_PATH, secret_key, algorithm)
    url = f"{parts.scheme}://{parts.netloc}{UPLOAD_PATH}"

    async def body() -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            await asyncio.to_thread(f.close)

    async with httpx.AsyncClient(timeout=httpx.Timeout(http_timeout)) as http:
        try:
            answer = await http.put(
                url, params=params, content=body(), headers={"Content-Length": str(size)}
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"UploadFile: cannot reach {url}: {exc}") from exc
    fields = load_answer(answer.content, UploadFileRequest.ACTION)
    stream, start, end = (
        fields.get("streamId"),
        fields.get("recordStartTime"),
        fields.get("recordEndTime"),
    )
    return Uploaded(
        file_id=str(fields.get("fileId")),
        file_url=str(fields.get("fileUrl")),
        stream_id=stream if isinstance(stream, str) else None,
        record_start=start if isinstance(start, int) else None,
        record_end=end if isinstance(end, int) else None,
    )
