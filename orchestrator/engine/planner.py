"""ProcessFileByProcedure, from a parsed request to the procedure and tasks to queue.

The seed's rules, applied to what the engine holds: ``fileId`` runs the procedure on that file
(``gen`` ignored); otherwise ``gen.clip`` cuts each ``fileList`` entry (offsets in seconds,
negative from the end, no end: to the end) or every recording of ``streamInfo.streamId`` that
overlaps ``[startTime, endTime)``, each cut to the range, in recording order; ``gen.concat`` joins
the clips, or without ``gen.clip`` the files of ``gen.concat.fileIdList``, into one new file of
``dstType``; the procedure then runs on that new file.

Decisions where the seed is silent:

* ``gen.clip`` without ``gen.concat`` is accepted when it yields one clip (the procedure runs on
  it); several clips need ``gen.concat.dstType`` to become one file (1000 otherwise).
* ``gen`` without ``procedure`` only makes the file (clip/concat events, then a
  ProcedureStateChanged with an empty processTaskList); ``fileId`` without ``procedure`` has
  nothing to do and is refused (1000).
* Offsets past the end are refused (1000) rather than giving an empty clip; an end past the end
  means "to the end". A recording whose range starts after its media ends is skipped.
* Clips keep their source's container (MP4, FLV or TS; anything else becomes MP4); dstType is
  one of mp4, flv, ts.
* The duplicate check (50005) fingerprints the request as parsed (alias spellings, numbering
  and ignored parameters do not matter) together with the procedure name.
* Task IDs of one kind are answered as a string when there is one and as a list when a
  procedure makes several (e.g. one transcode per definition): ``transcodeTaskId: [...]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.engine.answers import EngineError
from orchestrator.engine.kinds import (
    KINDS,
    ClipParams,
    ConcatParams,
    Kind,
    MediaParams,
    ProcedureParams,
    kind_info,
    new_file_id,
    new_task_id,
)
from orchestrator.engine.media import SnapshotTemplate, SpriteTemplate, TranscodeTemplate
from orchestrator.engine.procedures import Procedure, Procedures
from orchestrator.store import engine as store
from orchestrator.store.tables import EngineFile, EngineTask
from orchestrator.vod.params import ProcessFileByProcedureRequest

Shape = Literal["tasks", "procedure", "both"]
Container = Literal["mp4", "flv", "ts"]
_Adder = Callable[[Kind, str | None, ClipParams | ConcatParams | MediaParams], None]
"""Queues one task of the plan: (kind, its input file, its parameters)."""
CONTAINERS: tuple[Container, ...] = ("mp4", "flv", "ts")


@dataclass(frozen=True)
class Plan:
    """A procedure row and its tasks, ready to insert in one transaction."""

    procedure: EngineTask
    members: list[EngineTask]

    def answer(self, shape: Shape) -> dict[str, JsonValue]:
        """ProcessFileByProcedure's task-ID fields in ``shape``."""
        fields: dict[str, JsonValue] = {}
        if shape in ("tasks", "both"):
            by_field: dict[str, list[JsonValue]] = {}
            for member in self.members:
                by_field.setdefault(kind_info(member.kind).answer_field, []).append(member.task_id)
            for name, ids in by_field.items():
                fields[name] = ids[0] if len(ids) == 1 else ids
        if shape in ("procedure", "both"):
            fields["vodTaskId"] = self.procedure.task_id
        return fields


@dataclass(frozen=True)
class _Cut:
    source: EngineFile
    start: float
    end: float | None


async def plan(
    conn: AsyncConnection,
    request: ProcessFileByProcedureRequest,
    received: dict[str, JsonValue],
    procedures: Procedures,
    *,
    app_id: int,
    now: datetime,
) -> Plan:
    """The procedure to queue for ``request``; ``EngineError`` (1000, 10008, 50007) when the
    request cannot be run. ``received`` is the request as it came (kept for GetTaskList)."""
    procedure = None
    if request.procedure is not None:
        procedure = procedures.get(request.procedure)
        if procedure is None:
            defined = ", ".join(sorted(procedures.procedures))
            raise EngineError(
                50007,
                f"procedure {request.procedure!r} is not defined by this engine "
                f"(defined: {defined})",
            )
    procedure_id = new_task_id("procedure", app_id)
    members: list[EngineTask] = []

    def add(
        kind: Kind, file_id: str | None, params: ClipParams | ConcatParams | MediaParams
    ) -> None:
        member = _row(new_task_id(kind, app_id), kind, procedure_id, file_id, params, now)
        member.position = sum(1 for m in members if m.stage == member.stage)
        members.append(member)

    if request.file_id is not None:
        if procedure is None:
            raise EngineError(
                1000,
                "parameter 'procedure': required with fileId (there is nothing else to do "
                "with an existing file)",
            )
        if await store.get_file(conn, request.file_id) is None:
            raise EngineError(10008, f"fileId {request.file_id!r}: no such file")
        target = request.file_id
        identity: dict[str, JsonValue] = {"fileId": target}
    else:
        target = await _plan_gen(conn, request, add)
        gen = request.gen
        assert gen is not None  # the request model requires fileId or gen
        if gen.clip is not None and gen.concat is not None:  # fileIdList is ignored then
            gen = gen.model_copy(
                update={"concat": gen.concat.model_copy(update={"file_id_list": None})}
            )
        identity = {"gen": gen.model_dump(mode="json", by_alias=True, exclude_none=True)}
    identity["procedure"] = request.procedure
    if procedure is not None:
        _plan_procedure(procedure, procedures, target, add)
    fingerprint = hashlib.sha256(
        json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    row = _row(
        procedure_id, "procedure", procedure_id, target, ProcedureParams(request=received), now
    )
    row.procedure = request.procedure
    row.dedup_key = f"pfbp:{fingerprint}"
    return Plan(row, members)


def _row(
    task_id: str,
    kind: Kind,
    procedure_id: str,
    file_id: str | None,
    params: ClipParams | ConcatParams | MediaParams | ProcedureParams,
    now: datetime,
) -> EngineTask:
    return EngineTask(
        task_id=task_id,
        kind=kind,
        procedure_id=procedure_id,
        stage=KINDS[kind].stage,
        position=0,
        status=store.WAITING,
        file_id=file_id,
        params=params.stored(),
        attempts=0,
        created_at=now,
    )


def _plan_procedure(
    procedure: Procedure,
    procedures: Procedures,
    target: str,
    add: _Adder,
) -> None:
    for planned in procedure.tasks:
        template: TranscodeTemplate | SpriteTemplate | SnapshotTemplate
        if planned.kind == "transcode":
            template = procedures.transcode[planned.definition]
        elif planned.kind == "image_sprite":
            template = procedures.image_sprite[planned.definition]
        else:
            template = procedures.snapshot[planned.definition]
        params = MediaParams(
            definition=planned.definition,
            template=dataclasses.asdict(template),
            time_offset=list(planned.time_offsets),
        )
        add(planned.kind, target, params)


async def _plan_gen(
    conn: AsyncConnection, request: ProcessFileByProcedureRequest, add: _Adder
) -> str:
    """Queue the gen tasks; the ID of the file they make (the procedure's input)."""
    gen = request.gen
    assert gen is not None  # the request model requires fileId or gen
    clip, concat = gen.clip, gen.concat
    dst_type: Container | None = None
    if concat is not None and concat.dst_type is not None:
        dst_type = _container(concat.dst_type)
        if dst_type != concat.dst_type:
            raise EngineError(
                1000,
                f"parameter 'gen.concat.dstType': expected one of {', '.join(CONTAINERS)}, "
                f"got {concat.dst_type!r}",
            )
    if clip is None:
        assert concat is not None
        assert concat.file_id_list
        assert dst_type is not None
        sources = []
        for index, file_id in enumerate(concat.file_id_list):
            if await store.get_file(conn, file_id) is None:
                raise EngineError(
                    10008, f"parameter 'gen.concat.fileIdList.{index}': no such file {file_id!r}"
                )
            sources.append(file_id)
        return _add_concat(add, sources, dst_type, "concat of " + ", ".join(sources))

    cuts = await _cuts(conn, request)
    if len(cuts) > 1 and dst_type is None:
        raise EngineError(
            1000,
            f"parameter 'gen.concat.dstType': required: gen.clip yields {len(cuts)} clips, "
            "which must be joined into one file (e.g. gen.concat.dstType=mp4)",
        )
    made = []
    for cut in cuts:
        new_id = new_file_id()
        container = _container(cut.source.container)
        until = "end" if cut.end is None else f"{cut.end:g}s"
        params = ClipParams(
            src_file_id=cut.source.file_id,
            start=cut.start,
            end=cut.end,
            new_file_id=new_id,
            container=container,
            name=f"{cut.source.name} [{cut.start:g}s-{until}]",
        )
        add("clip", cut.source.file_id, params)
        made.append(new_id)
    if dst_type is None:
        return made[0]
    name = cuts[0].source.name if len(cuts) == 1 else f"{len(cuts)} clips joined"
    return _add_concat(add, made, dst_type, name)


def _add_concat(add: _Adder, inputs: Sequence[str], dst_type: Container, name: str) -> str:
    new_id = new_file_id()
    params = ConcatParams(inputs=list(inputs), dst_type=dst_type, new_file_id=new_id, name=name)
    add("concat", None, params)
    return new_id


def _container(name: str) -> Container:
    for known in CONTAINERS:
        if name == known:
            return known
    return "mp4"


async def _cuts(conn: AsyncConnection, request: ProcessFileByProcedureRequest) -> list[_Cut]:
    assert request.gen is not None
    assert request.gen.clip is not None
    clip = request.gen.clip
    if clip.file_list is not None:
        cuts = []
        for index, item in enumerate(clip.file_list):
            where = f"gen.clip.fileList.{index}"
            source = await store.get_file(conn, item.file_id)
            if source is None:
                raise EngineError(
                    10008, f"parameter '{where}.fileId': no such file {item.file_id!r}"
                )
            start, end = _resolve(source, item.start_time_offset, item.end_time_offset, where)
            cuts.append(_Cut(source, start, end))
        return cuts
    info = clip.stream_info
    assert info is not None
    recordings = await store.stream_recordings(conn, info.stream_id, info.start_time, info.end_time)
    cuts = []
    for recording in recordings:
        record_start = recording.record_start or 0
        offset = float(max(0, info.start_time - record_start))
        until: float | None = float(info.end_time - record_start)
        if recording.record_end is not None and info.end_time >= recording.record_end:
            until = None
        if until is not None and until >= recording.duration:
            until = None
        if offset < recording.duration - 0.05:
            cuts.append(_Cut(recording, offset, until))
    if not cuts:
        raise EngineError(
            1000,
            f"parameter 'gen.clip.streamInfo': stream {info.stream_id!r} has no recording "
            f"between {info.start_time} and {info.end_time}",
        )
    return cuts


def _resolve(
    source: EngineFile, start: int | None, end: int | None, where: str
) -> tuple[float, float | None]:
    """Offsets into ``source`` as seconds from its start (None: to the end)."""
    duration = source.duration
    at = float(start or 0)
    if at < 0:
        at = max(0.0, duration + at)
    if at >= duration:
        raise EngineError(
            1000,
            f"parameter '{where}.startTimeOffset': {start} s is not inside file "
            f"{source.file_id} (duration {duration:g} s)",
        )
    until: float | None = None
    if end is not None:
        until = duration + end if end < 0 else float(end)
        if until <= at:
            raise EngineError(
                1000,
                f"parameter '{where}.endTimeOffset': {end} s ends before the clip starts "
                f"({at:g} s into file {source.file_id}, duration {duration:g} s)",
            )
        if until >= duration:
            until = None
    return at, until
