"""Wiring: the one process `vodflow serve` runs.

It serves the callback receiver, the dashboard API and page, metrics, and (by default) the
embedded VOD engine's API at /v2/index.php, and runs the inbox writer, the runner's loops and the
sweeper. With the defaults the client calls the engine in this same process over HTTP, and the
engine's callbacks come back to this process's receiver: the same path Tencent Cloud would take.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator import __version__, dashboard
from orchestrator.actions import Actions
from orchestrator.bodylimit import BodyLimit
from orchestrator.config import DEFAULT_TENCENT_ENDPOINT, Settings
from orchestrator.dashboard import ApiAuth, LiveHub
from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.upload import UPLOAD_PATH
from orchestrator.hooks import WebhookSink
from orchestrator.keys import Keys, load_keys
from orchestrator.metrics import Metrics
from orchestrator.netguard import guarded_client
from orchestrator.page import Page
from orchestrator.receiver import InboxWriter, Receiver
from orchestrator.registry import Registry
from orchestrator.runner import Runner
from orchestrator.spec import WorkflowError
from orchestrator.store import views
from orchestrator.store.db import UNREACHABLE, Database, log_failure, redact
from orchestrator.sweeper import Sweeper
from orchestrator.verify import OutputChecker, url_duration
from orchestrator.vod.client import VodClient
from orchestrator.vod.errors import VodError
from orchestrator.vod.limiter import Limiter, Quota

log = logging.getLogger("vodflow")


@dataclass
class Services:
    """Everything one process runs, built once from the settings."""

    settings: Settings
    keys: Keys
    db: Database
    registry: Registry
    http: httpx.AsyncClient
    limiter: Limiter
    client: VodClient
    runner: Runner
    writer: InboxWriter
    receiver: Receiver
    sweeper: Sweeper
    sink: WebhookSink
    metrics: Metrics
    live: LiveHub
    verify_http: httpx.AsyncClient | None = None
    engine: Any = None
    database_health: DatabaseHealth = field(default_factory=lambda: DatabaseHealth())
    background: list[asyncio.Task[None]] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def build_services(settings: Settings, registry: Registry) -> Services:
    keys = load_keys(settings)
    db = Database(settings.sqlalchemy_url)
    http = httpx.AsyncClient(timeout=httpx.Timeout(30.0), follow_redirects=False)
    limiter = Limiter(
        db,
        keys.vod_secret_id,
        {
            "ProcessFileByProcedure": Quota(settings.vod_rate_per_minute, settings.vod_burst),
            "PullEvent": Quota(1000, 50),
            "ConfirmEvent": Quota(1000, 50),
        },
        Quota(100, 10),
    )
    metrics = Metrics()

    def observe(action: str, code: int, waited: float) -> None:
        metrics.vod_calls.labels(action, str(code)).inc()
        metrics.limiter_wait.labels(action).observe(waited)

    client = VodClient(
        settings.vod_url,
        observe=observe,
        secret_id=keys.vod_secret_id,
        secret_key=keys.vod_secret_key,
        region=settings.vod_region,
        signature_method=settings.vod_signature_method,
        limiter=limiter,
        timeout=settings.vod_timeout,
    )
    ffmpeg = FFmpeg(str(settings.ffmpeg) if settings.ffmpeg else None)

    async def source_duration(file_id: str) -> float | None:
        try:
            info = await client.get_video_info(file_id)
        except VodError:
            return None
        return info.basic_info.duration if info.basic_info else None

    policy = settings.verify_policy
    verify_http = guarded_client(policy)
    checker = OutputChecker(
        verify_http, lambda url: url_duration(ffmpeg, url), source_duration, policy=policy
    )
    actions = Actions(
        client,
        http,
        webhook_secret=keys.webhook_secret,
        checker=checker,
        base_url=settings.base_url,
    )
    runner = Runner(
        db,
        registry,
        actions,
        default_expected=timedelta(seconds=settings.task_poll_after_seconds),
        lease=timedelta(seconds=settings.outbox_lease),
    )
    live = LiveHub(db, max_streams=settings.events_max_streams)
    runner.listeners += [live.notify, metrics.transition, _step_metrics(metrics)]
    writer = InboxWriter(db, apply=runner.apply_received)
    receiver = Receiver(
        writer,
        callback_token=keys.callback_token,
        lvb_key=settings.lvb_callback_key.get_secret_value() if settings.lvb_callback_key else None,
        max_body=settings.max_body_bytes,
        count=metrics.callback,
    )
    sweeper = Sweeper(
        db,
        runner,
        client,
        interval=settings.sweep_interval,
        reliable=settings.reliable_callbacks,
        poll_gap=timedelta(seconds=settings.task_poll_after_seconds),
        retention=timedelta(seconds=settings.retention_seconds),
        run_retention=None
        if settings.run_retention_seconds is None
        else timedelta(seconds=settings.run_retention_seconds),
        on_findings=metrics.sweep,
        replica=f"{socket.gethostname()}:{settings.port}",
    )

    async def refresh_gauges() -> dict[str, int]:
        counts = await db.query(views.run_counts)
        # Only the depths: the dashboard's stats also read a day of step durations, which
        # would hold the GIL for tens of milliseconds every few seconds on a busy service.
        raw = await db.query(views.queue_depths)
        jobs = await sweeper.all_health()
        metrics.runs.clear()
        for workflow, by_status in counts.items():
            for status, count in by_status.items():
                metrics.runs.labels(workflow, status).set(count)
        for status in ("pending", "orphan", "failed", "invalid"):
            metrics.inbox_depth.labels(status).set(raw["inbox"].get(status, 0))
        metrics.outbox_depth.set(raw["outbox_pending"])
        metrics.failed_timers.set(raw["failed_timers"])
        metrics.sweeper_stalled.clear()
        for job in jobs:  # every replica's, so any one alerts on all
            metrics.sweeper_stalled.labels(job.name, job.replica).set(int(job.stalled))
        return {}

    sweeper.jobs["metrics"] = (max(settings.sweep_interval, 5.0), refresh_gauges)
    engine = None
    if settings.engine:
        from orchestrator.engine import Engine

        engine = Engine(settings, db)
    return Services(
        settings=settings,
        keys=keys,
        db=db,
        registry=registry,
        http=http,
        limiter=limiter,
        client=client,
        runner=runner,
        writer=writer,
        receiver=receiver,
        sweeper=sweeper,
        sink=WebhookSink(keys.webhook_secret),
        metrics=metrics,
        live=live,
        verify_http=verify_http,
        engine=engine,
    )


def _step_metrics(metrics: Metrics) -> Any:
    def observe(transition: Any) -> None:
        for step in transition.state.steps:
            if step.finished_at == transition.entry.at and step.status.terminal:
                metrics.step_finished(transition.workflow, step)

    return observe


LOOPBACK = ("127.0.0.1", "::1", "localhost")


class UnsafeBinding(Exception):
    """The dashboard API would be open to the network."""


@dataclass
class DatabaseHealth:
    """Whether /healthz last reached the database. The driver's reason (host, port, user, ...)
    goes to the log, once when the database stops answering and once when it answers again, not
    to whoever asks /healthz, and not once per probe."""

    down: bool = False

    def failed(self, url: str, exc: Exception) -> None:
        if not self.down:
            log.error("/healthz: the database %s does not answer: %s", redact(url), exc)
        self.down = True

    def answered(self, url: str) -> None:
        if self.down:
            log.warning("/healthz: the database %s answers again", redact(url))
        self.down = False


async def database_unreachable(request: Request, exc: Exception) -> JSONResponse:
    """A request the database did not answer for (down, its disk full, locked too long): 503 in
    the API's error shape, so a client, VOD's callback retries included, tries again later; one
    log line a minute, not a traceback per request."""
    log_failure(log, "answering requests", "they are answered 503")
    # The driver's words (host, port, user) go to the log only, as /healthz's do.
    reason = "the database does not answer (the server's log says why); nothing was done"
    return JSONResponse(
        {"error": reason, "status": 503}, status_code=503, headers={"Retry-After": "5"}
    )


async def database_answers(services: Services) -> bool:
    """Ask the database ``SELECT 1``: what /healthz and /metrics (``vodflow_database_up``) say
    of it, the reason logged when that changes."""
    url = services.settings.sqlalchemy_url
    try:
        await services.db.query(lambda conn: conn.execute(sa.text("SELECT 1")))
    except Exception as exc:
        services.database_health.failed(url, exc)
        services.metrics.database_up.set(0)
        return False
    services.database_health.answered(url)
    services.metrics.database_up.set(1)
    return True


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus's scrape; ``vodflow_database_up`` is asked now, as the gauges read from the
    database keep their last values while it does not answer."""
    services: Services = request.app.state.services
    await database_answers(services)
    return await services.metrics.endpoint(request)


async def healthz(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    if not await database_answers(services):
        reason = "not answering (the log has the reason)"
        return JSONResponse({"status": "unavailable", "database": reason}, status_code=503)
    sweeps = await services.sweeper.health()
    stalled = [job.name for job in sweeps if job.stalled]
    body: dict[str, object] = {"status": "degraded" if stalled else "ok", "version": __version__}
    if stalled:
        body["stalledJobs"] = stalled
    return JSONResponse(body)


YOUNG_COLLECTIONS_EVERY = 20_000
"""Allocations between the collector's young passes (CPython's default: 700). A callback builds
a few hundred short-lived objects, so at the default a group of them paid for dozens of passes,
each walking what the group still held; at this setting a callback in a group of 64 costs 3 %
fewer instructions (``bench/instructions.py``), and cyclic garbage waits a little longer."""


def settle_collector() -> None:
    """Set the garbage collector up for serving. Everything built so far (workflows, tables,
    routes, pydantic and SQLAlchemy machinery) lives as long as the process: it is kept out of
    the collector's full passes, which otherwise walk all of it every few thousand callbacks;
    and young passes run less often (``YOUNG_COLLECTIONS_EVERY``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTIONS_EVERY, *gc.get_threshold()[1:])


def reload_on_hangup(registry: Registry, db: Database) -> Callable[[], None]:
    """SIGHUP reloads the workflow files, as ``vodflow reload`` does (a problem is logged and
    nothing changes). Returns what removes the handler; where signals cannot be handled here
    (a thread other than the main one, or no SIGHUP), nothing is installed."""
    loop = asyncio.get_running_loop()
    hangup = getattr(signal, "SIGHUP", None)
    running: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await registry.reload(db)
        except WorkflowError as exc:
            log.error("SIGHUP: the workflows were not reloaded (nothing changed):\n%s", exc)
        except Exception as exc:
            log.error("SIGHUP: the workflows were not reloaded: %s: %s", type(exc).__name__, exc)

    def reload_soon() -> None:
        task = loop.create_task(reload(), name="reload-workflows")
        running.add(task)
        task.add_done_callback(running.discard)

    if hangup is None:
        return lambda: None
    try:
        loop.add_signal_handler(hangup, reload_soon)
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None

    def forget() -> None:
        loop.remove_signal_handler(hangup)

    return forget


async def start(services: Services) -> None:
    settle_collector()
    await services.db.write(services.registry.record_versions, datetime.now(UTC))
    if services.engine is not None:
        await services.engine.start()
    services.background = [
        asyncio.create_task(services.writer.serve(), name="inbox-writer"),
        asyncio.create_task(services.runner.serve(), name="runner"),
    ]
    services.sweeper.start()


async def stop(services: Services) -> None:
    await services.live.close()
    await services.sweeper.stop()
    with contextlib.suppress(Exception):  # the database may be what is failing
        await services.sweeper.forget()
    for task in services.background:
        task.cancel()
    for task in services.background:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    services.runner.actions.stop()
    await services.runner.idle()
    if services.engine is not None:
        await services.engine.stop()
    await services.client.aclose()
    await services.http.aclose()
    if services.verify_http is not None:
        await services.verify_http.aclose()
    await services.db.close()


def create_app(
    settings: Settings, registry: Registry | None = None, *, listening: bool = True
) -> Starlette:
    """The whole service as an ASGI app. ``listening=False`` is for an app only called in this
    process (the commands' direct-database path), which VODFLOW_HOST does not expose."""
    admin = settings.api_token.get_secret_value() if settings.api_token else None
    read = settings.api_read_token.get_secret_value() if settings.api_read_token else None
    if listening and admin is None and read is None and settings.host not in LOOPBACK:
        raise UnsafeBinding(
            f"VODFLOW_HOST={settings.host} exposes the dashboard API beyond this machine: "
            "set VODFLOW_API_TOKEN (and optionally VODFLOW_API_READ_TOKEN) first"
        )
    own_url = settings.vod_endpoint is None and settings.public_url is None
    if listening and not settings.engine and own_url:
        log.warning(
            "VODFLOW_ENGINE=false and VODFLOW_VOD_ENDPOINT is not set: VOD calls go to %s, "
            "where this server serves no engine; set VODFLOW_VOD_ENDPOINT to Tencent's (%s) "
            "or to your engine's",
            settings.vod_url,
            DEFAULT_TENCENT_ENDPOINT,
        )
    registry = registry or Registry.for_settings(settings)
    services = build_services(settings, registry)
    if not listening:  # a command's own sweeper is not the server's on this host and port
        services.sweeper.replica = services.runner.owner

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await start(services)
        forget_hangup = reload_on_hangup(services.registry, services.db) if listening else None
        try:
            yield
        finally:
            if forget_hangup is not None:
                forget_hangup()
            await stop(services)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *services.receiver.routes,
        *services.sink.routes,
        *dashboard.routes,
        *Page(auth=admin is not None or read is not None).routes,
    ]
    if services.engine is not None:
        routes.extend(services.engine.routes)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: dashboard.http_error,
            **dict.fromkeys(UNREACHABLE, database_unreachable),
        },
        middleware=[
            Middleware(ApiAuth, admin=admin, read=read),
            Middleware(
                BodyLimit,
                limit=settings.max_body_bytes,
                exempt=(*(route.path for route in services.receiver.routes), UPLOAD_PATH),
            ),
        ],
    )
    app.state.services = services
    app.state.settings = settings
    app.state.registry = registry
    return app
