"""The embedded VOD engine: Tencent VOD's v2 ``ProcessFileByProcedure`` and the calls around it,
implemented with FFmpeg on this machine, so vodflow runs end to end with no cloud account.

Its parts: ``api`` (``/v2/index.php``), ``auth`` (signatures, timestamps, nonces), ``planner``
(a request into queued tasks), ``tasks`` (the worker pool), ``callbacks`` (events pushed to the
callback URL), ``upload`` (``PUT /vod/upload``), ``storage`` (files at ``/vod/files/...``),
``procedures`` (the templates each procedure name runs), ``claim`` (one engine per database)
and the media layer (``media``, ``ffmpeg``). State lives in the ``engine_*`` tables.

Wiring: ``Engine(settings, db)`` gives ``routes`` to mount and ``start()``/``stop()`` for the
workers and the callback sender; ``create_engine_app(settings)`` is the engine alone
(``vodflow engine serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from orchestrator.bodylimit import BodyLimit
from orchestrator.config import Settings
from orchestrator.engine.api import EngineApi
from orchestrator.engine.auth import Authenticator
from orchestrator.engine.callbacks import CallbackSender
from orchestrator.engine.claim import EngineClaim
from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media
from orchestrator.engine.procedures import Procedures, load_procedures
from orchestrator.engine.storage import Storage
from orchestrator.engine.tasks import TaskRunner, owner_name
from orchestrator.engine.upload import UPLOAD_PATH, Uploads
from orchestrator.engine.wakeup import Wakeup
from orchestrator.keys import load_keys
from orchestrator.store.db import Database
from orchestrator.vod.limiter import Limiter, Quota

__all__ = ["Engine", "create_engine_app", "engine_callback_url"]

log = logging.getLogger(__name__)


def engine_callback_url(settings: Settings, callback_token: str, *, alone: bool = False) -> str:
    """Where events go: ``engine_callback_url`` when set (empty: nowhere, pull only); else this
    server's receiver, unless vodflow pulls its events (``reliable_callbacks``) or the engine
    serves ``alone`` (``vodflow engine serve``: nothing here receives callbacks, and pushing to
    its own ``/callbacks/vod`` would be answered 404 and retried forever)."""
    if settings.engine_callback_url is not None:
        return settings.engine_callback_url
    if settings.reliable_callbacks or alone:
        return ""
    return f"{settings.base_url}/callbacks/vod?token={quote(callback_token, safe='')}"


class Engine:
    """One process's share of the engine: its routes, workers and callback sender."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        media: Media | None = None,
        procedures: Procedures | None = None,
        alone: bool = False,
    ) -> None:
        keys = load_keys(settings)
        self.settings = settings
        self.alone = alone
        """Served without the orchestrator (``vodflow engine serve``)."""
        self.db = db
        self.clock = clock
        self.procedures = procedures or load_procedures(settings.engine_procedures)
        self.storage = Storage(
            settings.engine_media_dir or settings.data_dir / "vod", settings.base_url
        )
        self.media = media or Media(FFmpeg(str(settings.ffmpeg) if settings.ffmpeg else None))
        self.owner = owner_name()
        self.callback_url = engine_callback_url(settings, keys.callback_token, alone=alone)
        self.tasks_ready, self.events_added = Wakeup(), Wakeup()
        accepted = {
            keys.vod_secret_id: keys.vod_secret_key,
            **{sid: key.get_secret_value() for sid, key in settings.engine_extra_keys.items()},
        }
        auth = Authenticator(db, accepted, window=settings.engine_timestamp_window, clock=clock)
        rate = settings.engine_rate_per_minute
        # Its own bucket namespace: the orchestrator's client paces itself in the same table.
        limiter = Limiter(db, "engine", {}, Quota(rate=rate, burst=rate), clock=clock)
        push = bool(self.callback_url)
        self.api = EngineApi(
            db=db,
            auth=auth,
            limiter=limiter,
            procedures=self.procedures,
            storage=self.storage,
            app_id=settings.engine_app_id,
            shape=settings.engine_answer_shape,
            rate_per_minute=rate,
            pull_wait=settings.engine_pull_wait,
            visibility=settings.engine_event_visibility,
            tasks_ready=self.tasks_ready,
            events_added=self.events_added,
            clock=clock,
        )
        self.uploads = Uploads(
            db=db,
            auth=auth,
            media=self.media,
            storage=self.storage,
            max_bytes=settings.engine_upload_max_bytes,
            push=push,
            events_added=self.events_added,
            clock=clock,
        )
        self.runner = TaskRunner(
            db,
            self.media,
            self.storage,
            owner=self.owner,
            workers=settings.engine_workers,
            lease=settings.engine_task_lease,
            push=push,
            clock=clock,
            tasks_ready=self.tasks_ready,
            events_added=self.events_added,
        )
        self.sender = (
            CallbackSender(
                db,
                self.callback_url,
                owner=self.owner,
                base=settings.engine_callback_backoff,
                ceiling=settings.engine_callback_backoff_max,
                events_added=self.events_added,
                clock=clock,
            )
            if push
            else None
        )
        self.claim = (
            None
            if settings.engine_shared_media
            else EngineClaim(db, settings, owner=self.owner, clock=clock)
        )
        self._heartbeat: asyncio.Task[None] | None = None
        self.routes: list[BaseRoute] = [
            Route("/v2/index.php", self.api.endpoint, methods=["GET", "POST"]),
            Route(UPLOAD_PATH, self.uploads.endpoint, methods=["PUT"]),
            Route("/vod/files/{file_id}/{path:path}", self.storage.serve, methods=["GET", "HEAD"]),
        ]

    async def start(self) -> None:
        """Claim the database (``EngineTaken`` when another engine holds it), then start the
        workers (they resume what was queued or left running) and the sender."""
        if self.claim is not None:
            await self.claim.take()
            self._heartbeat = asyncio.create_task(
                self.claim.heartbeat(self.runner.stop), name="engine-claim"
            )
        await asyncio.to_thread(self.storage.root.mkdir, parents=True, exist_ok=True)
        if self.alone and self.settings.engine_callback_url is None:
            log.warning(
                "engine: VODFLOW_ENGINE_CALLBACK_URL is not set, so events are not pushed; they "
                "wait for PullEvent. To push them, set it to the orchestrator's callback URL "
                '(%s), or to "" to pull only without this notice',
                "https://ORCHESTRATOR/callbacks/vod?token=<VODFLOW_CALLBACK_TOKEN>",
            )
        await self.runner.start()
        if self.sender is not None:
            await self.sender.start()

    def quiesce(self) -> None:
        """Send no more events from now on (see ``CallbackSender.quiesce``); safe from a signal
        handler."""
        if self.sender is not None:
            self.sender.quiesce()

    async def stop(self) -> None:
        """Stop the workers, handing their running tasks back to the queue, and the sender;
        then give the claim up, so the next engine starts at once."""
        await self.runner.stop()
        if self.sender is not None:
            await self.sender.stop()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self.claim is not None:
            try:
                await self.claim.release()
            except Exception:
                log.exception("engine: giving its claim up failed; it lapses with its lease")


def create_engine_app(settings: Settings) -> Starlette:
    """The engine alone as an ASGI app on its own database connection (``vodflow engine
    serve``); the database must be migrated (``vodflow db upgrade``)."""
    db = Database(settings.sqlalchemy_url)
    engine = Engine(settings, db, alone=True)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()
            await db.close()

    app = Starlette(
        routes=engine.routes,
        lifespan=lifespan,
        middleware=[Middleware(BodyLimit, limit=settings.max_body_bytes, exempt=[UPLOAD_PATH])],
    )
    app.state.engine = engine
    return app
