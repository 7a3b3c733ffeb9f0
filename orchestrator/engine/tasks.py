"""The engine's workers: claim a queued task, run it with FFmpeg (through ``Media``), record its
outcome and its VOD 4.0 event, and finish its procedure when it was the last task.

A bounded pool of ``engine_workers`` asyncio workers; FFmpeg runs in subprocesses, never on the
event loop. Tasks are claimed with a lease that a heartbeat renews: a graceful ``stop()`` kills
FFmpeg and hands its tasks back at once; a process that died leaves its tasks ``processing``
until its lease runs out (``engine_task_lease``), then any worker on the same database re-runs
them, or at once when an engine starts on the same machine and sees that the process is gone.
A task's outputs are written under a temporary name and renamed into place, so a re-run starts
clean. A task's outcome, its event and (for the last one) its procedure's ProcedureStateChanged
are committed in one transaction.

A failed gen task (clip, concat) fails the tasks after it without running them: their events
report the same errCode, with "not run: ..." and the cause. A procedure's errCode and message are
those of its first failed task (in execution order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.engine import bodies
from orchestrator.engine.bodies import MEDIA_FAILURE, SYSTEM_FAILURE, Data
from orchestrator.engine.ffmpeg import MediaError, MediaTimeout
from orchestrator.engine.kinds import (
    ClipParams,
    ConcatParams,
    MediaParams,
    kind_info,
    new_msg_handle,
)
from orchestrator.engine.media import Media, SnapshotTemplate, SpriteTemplate, TranscodeTemplate
from orchestrator.engine.storage import Storage, file_digest
from orchestrator.engine.wakeup import Wakeup
from orchestrator.store import engine as store
from orchestrator.store.db import Database, log_failure
from orchestrator.store.tables import EngineEvent, EngineFile, EngineTask

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often an idle worker looks for tasks queued by another process."""


@dataclass
class Outcome:
    """What running a task gave: errCode 0 with its event data, or a failure and why."""

    code: int
    message: str = ""
    result: Data | None = None
    output: Data | None = None
    detail: Data | None = None
    new_file: EngineFile | None = None


class _LostLease(Exception):
    """Another worker took the task over (our lease ran out): its outcome is theirs to record."""


def event_row(task_id: str, event_type: str, data: Data, now: datetime, push: bool) -> EngineEvent:
    return EngineEvent(
        msg_handle=new_msg_handle(),
        task_id=task_id,
        event_type=event_type,
        body=bodies.event(event_type, data),
        created_at=now,
        push_status="pending" if push else "off",
        push_attempts=0,
        next_push_at=now if push else None,
        pull_status="pending",
        visible_at=now,
    )


def sub_task_entry(member: EngineTask) -> Data:
    """A procedure task's processTaskList entry: its recorded outcome, or its progress."""
    if member.output is not None:
        entry: Data = member.output
        return entry
    status = "PROCESSING" if member.status == store.PROCESSING else "WAITING"
    return bodies.sub_task(_task_type(member), member.task_id, _input(member), status=status)


def _first_failure(members: list[EngineTask]) -> EngineTask | None:
    """The procedure's first failed task, in execution order: its errCode is the procedure's."""
    return next((m for m in members if m.status == store.FINISHED and m.err_code), None)


def _task_type(member: EngineTask) -> str:
    return kind_info(member.kind).task_type or member.kind


def _input(member: EngineTask) -> Data:
    params = MediaParams.model_validate(member.params)
    return bodies.sub_task_input(_task_type(member), params.definition, params.time_offset)


async def procedure_data(
    conn: AsyncConnection,
    procedure: EngineTask,
    members: list[EngineTask],
    storage: Storage,
    status: str,
) -> Data:
    """The procedure's ProcedureStateChanged data (``status`` FINISH) or progress (PROCESSING,
    WAITING), as GetTaskInfo and GetProcedureInfo show it."""
    file = await store.get_file(conn, procedure.file_id) if procedure.file_id else None
    failed = _first_failure(members)
    return bodies.procedure_state(
        procedure.task_id,
        status=status,
        code=failed.err_code or 0 if failed else 0,
        message=failed.message or "" if failed else "",
        file_id=procedure.file_id or "",
        file_name=file.name if file else "",
        file_url=storage.url_for(file.path) if file else "",
        meta=file.meta if file else None,
        tasks=[sub_task_entry(m) for m in members if m.stage == 2],
    )


class TaskRunner:
    """A pool of workers running the queued tasks of every procedure on one database."""

    def __init__(
        self,
        db: Database,
        media: Media,
        storage: Storage,
        *,
        owner: str,
        workers: int,
        lease: float,
        push: bool,
        clock: Callable[[], float] = time.time,
        tasks_ready: Wakeup,
        events_added: Wakeup,
    ) -> None:
        self.db = db
        self.media = media
        self.storage = storage
        self.owner = owner
        self.workers = workers
        self.lease = lease
        self.push = push
        self.clock = clock
        self.tasks_ready = tasks_ready
        self.events_added = events_added
        self._loops: list[asyncio.Task[None]] = []
        self._sweep: asyncio.Task[int] | None = None
        self._running: set[str] = set()
        """The tasks this runner's workers are running (the heartbeat keeps their leases)."""

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def start(self) -> None:
        await self._release_the_dead()
        self._sweep = asyncio.create_task(
            asyncio.to_thread(forget_parts, self.storage.root), name="engine-parts"
        )
        self._loops = [
            asyncio.create_task(self._worker(), name=f"engine-worker-{n}")
            for n in range(self.workers)
        ]
        self._loops.append(asyncio.create_task(self._heartbeat(), name="engine-heartbeat"))

    async def stop(self) -> None:
        """Stop every worker (killing its FFmpeg) and hand its tasks back to the queue."""
        running = list(self._running)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        if running:
            async with self.db.transaction() as conn:
                released = await store.release_tasks(conn, self.owner, running)
            log.info("engine stopped: %d running task(s) handed back to the queue", released)

    async def _release_the_dead(self) -> None:
        """Re-queue at once what a process on this machine left running when it died (tasks,
        and events it was sending to the callback URL), rather than wait for its leases to run
        out (other machines' are left to their leases)."""
        host = self.owner.split(":", 1)[0]
        async with self.db.transaction() as conn:
            for owner in await store.lease_owners(conn):
                name, _, rest = owner.partition(":")
                pid = rest.partition(":")[0]
                if name == host and pid.isdigit() and not _alive(int(pid)):
                    released = await store.release_tasks(conn, owner)
                    pushes = await store.release_pushes(conn, owner)
                    log.info(
                        "engine: re-queued %d task(s) and %d event(s) to send of dead process %s",
                        released,
                        pushes,
                        owner,
                    )

    # --- the loops ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            ticket = self.tasks_ready.ticket()
            try:
                now = self._now()
                async with self.db.transaction() as conn:
                    task = await store.claim_task(
                        conn, self.owner, now, now + timedelta(seconds=self.lease)
                    )
            except Exception:
                log_failure(log, "engine worker: claiming a task")
                await asyncio.sleep(POLL_SECONDS)
                continue
            if task is None:
                await self.tasks_ready.wait(POLL_SECONDS, ticket)
                continue
            self._running.add(task.task_id)
            try:
                await self._run_and_record(task)
            except _LostLease:
                log.warning("engine task %s was taken over by another worker", task.task_id)
            except Exception:
                # The outcome could not be recorded (database down): the lease runs out and
                # the task is run again.
                log.exception("engine task %s: recording its outcome failed", task.task_id)
                await asyncio.sleep(POLL_SECONDS)
            finally:
                self._running.discard(task.task_id)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if not self._running:
                continue
            try:
                async with self.db.transaction() as conn:
                    await store.renew_leases(
                        conn,
                        self.owner,
                        list(self._running),
                        self._now() + timedelta(seconds=self.lease),
                    )
            except Exception:
                log.exception("engine heartbeat: renewing task leases failed")

    # --- one task --------------------------------------------------------------------------------

    async def _run_and_record(self, task: EngineTask) -> None:
        started = time.monotonic()
        log.info("engine task %s (%s) started, attempt %d", task.task_id, task.kind, task.attempts)
        outcome = await self._run(task)
        await self._record(task, outcome)
        log.info(
            "engine task %s (%s) finished in %.1fs: %s",
            task.task_id,
            task.kind,
            time.monotonic() - started,
            "ok" if outcome.code == 0 else f"errCode {outcome.code}: {outcome.message}",
        )
        self.tasks_ready.ring()
        self.events_added.ring()

    async def _run(self, task: EngineTask) -> Outcome:
        """Run ``task``; every failure becomes an errCode (cancellation propagates)."""
        try:
            if task.kind == "clip":
                return await self._clip(task)
            if task.kind == "concat":
                return await self._concat(task)
            source = await self._file(task.file_id)
            if task.kind == "transcode":
                return await self._transcode(task, source)
            if task.kind == "image_sprite":
                return await self._sprites(task, source)
            if task.kind == "snapshot":
                return await self._snapshots(task, source)
            return Outcome(SYSTEM_FAILURE, f"unknown task kind {task.kind!r}")
        except MediaTimeout as exc:
            return Outcome(SYSTEM_FAILURE, self._public(exc.reason))
        except MediaError as exc:
            return Outcome(MEDIA_FAILURE, self._public(exc.reason))
        except Exception as exc:
            log.exception("engine task %s failed", task.task_id)
            return Outcome(SYSTEM_FAILURE, f"{type(exc).__name__}: {exc}")

    def _public(self, reason: str) -> str:
        """FFmpeg's reason without the media directory (events leave the machine)."""
        return reason.replace(f"{self.storage.root}{os.sep}", "")

    async def _file(self, file_id: str | None) -> EngineFile:
        file = None
        if file_id is not None:
            async with self.db.read() as conn:
                file = await store.get_file(conn, file_id)
        if file is None:
            raise MediaError(f"file {file_id} does not exist")
        return file

    async def _new_file(self, params: ClipParams | ConcatParams, path: Path) -> EngineFile:
        info = await self.media.probe(path)
        md5 = await asyncio.to_thread(file_digest, path, "md5")
        return EngineFile(
            file_id=params.new_file_id,
            name=params.name,
            path=self.storage.relative(path),
            container=info.container,
            size=info.size,
            duration=info.duration,
            md5=md5,
            meta=bodies.meta_data(info, md5),
            source_type="Clip" if isinstance(params, ClipParams) else "Concat",
            created_at=self._now(),
        )

    async def _clip(self, task: EngineTask) -> Outcome:
        params = ClipParams.model_validate(task.params)
        source = await self._file(params.src_file_id)
        dst = self.storage.file_dir(params.new_file_id) / f"f0.{params.container}"
        clip = await self.media.clip(
            self.storage.path(source.path),
            dst,
            params.start,
            params.end,
            container=params.container,
        )
        new = await self._new_file(params, dst)
        info = bodies.file_info(params.container, new.file_id, self.storage.url_of(dst))
        return Outcome(
            0,
            result=bodies.clip_complete(task.task_id, source.file_id, info),
            detail={"method": clip.method, "streamCopy": clip.stream_copy},
            new_file=new,
        )

    async def _concat(self, task: EngineTask) -> Outcome:
        params = ConcatParams.model_validate(task.params)
        inputs = [await self._file(file_id) for file_id in params.inputs]
        dst = self.storage.file_dir(params.new_file_id) / f"f0.{params.dst_type}"
        joined = await self.media.concat(
            [self.storage.path(f.path) for f in inputs], dst, container=params.dst_type
        )
        new = await self._new_file(params, dst)
        info = bodies.file_info(params.dst_type, new.file_id, self.storage.url_of(dst))
        return Outcome(
            0,
            result=bodies.concat_complete(task.task_id, info),
            detail={"streamCopy": joined.stream_copy, "reason": joined.reason},
            new_file=new,
        )

    async def _transcode(self, task: EngineTask, source: EngineFile) -> Outcome:
        params = MediaParams.model_validate(task.params)
        definition, template = params.definition, TranscodeTemplate(**params.template)
        src = self.storage.path(source.path)
        folder = self.storage.file_dir(source.file_id)
        md5: str | None = None
        if template.container == "hls":
            final = folder / f"v.f{definition}"
            work = await self.storage.fresh_dir(self.storage.work_dir(final, task.task_id))
            try:
                info = await self.media.transcode(src, work, template)
            except BaseException:
                await self.storage.discard(work)
                raise
            await self.storage.publish_dir(work, final)
            url = self.storage.url_of(final / "index.m3u8")
        else:
            final = folder / f"v.f{definition}.mp4"
            # Named for the task: another procedure may be making the same definition now.
            work = folder / f".v.f{definition}.{task.task_id}.mp4"
            try:
                info = await self.media.transcode(src, work, template)
                md5 = await asyncio.to_thread(file_digest, work, "md5")
                await asyncio.to_thread(os.replace, work, final)
            except BaseException:
                await asyncio.to_thread(work.unlink, True)
                raise
            url = self.storage.url_of(final)
        output: Data = {"url": url, **bodies.meta_data(info, md5)}
        output["container"] = template.container
        return Outcome(
            0,
            result=bodies.transcode_complete(
                task.task_id, source.file_id, source.name, definition, info, url
            ),
            output=output,
            detail={"encoded": True, "container": template.container},
        )

    async def _sprites(self, task: EngineTask, source: EngineFile) -> Outcome:
        params = MediaParams.model_validate(task.params)
        definition, template = params.definition, SpriteTemplate(**params.template)
        final = self.storage.file_dir(source.file_id) / "imageSprite" / str(definition)
        work = await self.storage.fresh_dir(self.storage.work_dir(final, task.task_id))
        prefix = self.storage.url(source.file_id, "imageSprite", definition, "")
        try:
            sprites = await self.media.sprites(
                self.storage.path(source.path), work, template, image_url_prefix=prefix
            )
        except BaseException:
            await self.storage.discard(work)
            raise
        await self.storage.publish_dir(work, final)
        sheets = [self.storage.url_of(final / sheet.name) for sheet in sprites.sheets]
        vtt = self.storage.url_of(final / sprites.vtt.name)
        return Outcome(
            0,
            result=bodies.image_sprite_complete(
                task.task_id, source.file_id, definition, sprites.total_count, sheets, vtt
            ),
            output={
                "totalCount": sprites.total_count,
                "urlList": list[JsonValue](sheets),
                "webVttUrl": vtt,
            },
            detail={
                "width": sprites.width,
                "height": sprites.height,
                "rows": sprites.rows,
                "columns": sprites.columns,
                "interval": sprites.interval,
            },
        )

    async def _snapshots(self, task: EngineTask, source: EngineFile) -> Outcome:
        params = MediaParams.model_validate(task.params)
        definition, template = params.definition, SnapshotTemplate(**params.template)
        final = self.storage.file_dir(source.file_id) / "snapshotByTimeOffset" / str(definition)
        work = await self.storage.fresh_dir(self.storage.work_dir(final, task.task_id))
        try:
            shots = await self.media.snapshots(
                self.storage.path(source.path), work, params.time_offset, template
            )
        except BaseException:
            await self.storage.discard(work)
            raise
        await self.storage.publish_dir(work, final)
        pictures = [(shot.offset_ms, self.storage.url_of(final / shot.path.name)) for shot in shots]
        return Outcome(
            0,
            result=bodies.snapshot_complete(task.task_id, source.file_id, definition, pictures),
            output={"imgInfo": [{"timeOffset": ms, "url": url} for ms, url in pictures]},
        )

    # --- recording the outcome -------------------------------------------------------------------

    async def _record(self, task: EngineTask, outcome: Outcome) -> None:
        now = self._now()
        async with self.db.transaction() as conn:
            procedure = await store.lock_procedure(conn, task.procedure_id)
            if procedure is None:
                raise RuntimeError(f"engine task {task.task_id}: its procedure is gone")
            if outcome.new_file is not None and not await store.insert_file(conn, outcome.new_file):
                outcome = Outcome(
                    SYSTEM_FAILURE, f"file ID {outcome.new_file.file_id} is already taken"
                )
            _apply(task, outcome)
            if not await store.finish_task(conn, task, self.owner, now):
                raise _LostLease(task.task_id)
            rows = [self._event(task, now)]
            if outcome.code and task.stage < 2:
                cause = f"not run: {task.kind} task {task.task_id} failed: {outcome.message}"
                for later in await store.procedure_members(conn, procedure.task_id):
                    if later.stage > task.stage and later.status != store.FINISHED:
                        _apply(later, Outcome(outcome.code, cause))
                        await store.finish_task(conn, later, None, now)
                        rows.append(self._event(later, now))
            members = await store.procedure_members(conn, procedure.task_id)
            if all(m.status == store.FINISHED for m in members):
                data = await procedure_data(conn, procedure, members, self.storage, "FINISH")
                failed = _first_failure(members)
                procedure.err_code = failed.err_code if failed else 0
                procedure.message = failed.message if failed else ""
                procedure.result = data
                await store.finish_task(conn, procedure, None, now)
                rows.append(
                    event_row(procedure.task_id, "ProcedureStateChanged", data, now, self.push)
                )
            await store.insert_events(conn, rows)

    def _event(self, task: EngineTask, now: datetime) -> EngineEvent:
        data: Data = task.result
        return event_row(task.task_id, kind_info(task.kind).event_type, data, now, self.push)


def owner_name() -> str:
    """A lease holder's name: ``host:pid:random`` (this process may run several engines)."""
    host = socket.gethostname().replace(":", "-")[:40] or "localhost"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _apply(task: EngineTask, outcome: Outcome) -> None:
    """Set ``task``'s outcome fields: its event data and processTaskList entry included."""
    info = kind_info(task.kind)
    task.err_code, task.message, task.detail = outcome.code, outcome.message, outcome.detail
    definition = task.params.get("definition")
    if outcome.code == 0 and outcome.result is not None:
        task.result = outcome.result
        if info.task_type is not None:
            task.output = bodies.sub_task(
                info.task_type, task.task_id, _input(task), output=outcome.output
            )
        return
    file_type = str(task.params.get("container") or task.params.get("dstType") or "")
    task.result = bodies.failed(
        task.kind,
        task.task_id,
        file_id=task.file_id,
        definition=None if definition is None else int(definition),
        file_type=file_type,
        code=outcome.code,
        message=outcome.message,
    )
    if info.task_type is not None:
        task.output = bodies.sub_task(
            info.task_type,
            task.task_id,
            _input(task),
            status="FAIL",
            code=outcome.code,
            message=outcome.message,
        )


PART_AGE = timedelta(days=1)
"""A temporary file or folder (``*.part``: an output being written, an upload being received;
``.*.work``: a clip's or join's pieces) untouched this long was left by a process that died:
no FFmpeg run or upload takes that long."""


def forget_parts(root: Path, now: float | None = None) -> int:
    """Delete what dead processes left half written under the media ``root``: each FFmpeg run
    and upload writes under a temporary name of its own, renamed or removed when it ends, and
    a crash leaves it behind. Returns how many were deleted."""
    cutoff = (time.time() if now is None else now) - PART_AGE.total_seconds()
    deleted = 0
    for left in [*root.rglob("*.part"), *root.rglob(".*.work")]:
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
            if left.stat().st_mtime >= cutoff:
                continue
            if left.is_dir():
                shutil.rmtree(left)
            else:
                left.unlink()
            deleted += 1
    if deleted:
        log.info("engine: deleted %d temporary file(s) left by processes that died", deleted)
    return deleted
