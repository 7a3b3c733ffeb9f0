"""Which runs an inbound event starts: events become trigger contexts, matched against workflows.

A context is the set of fields a workflow's templates see as ``trigger.*``. The same recording can
be announced twice (VOD's NewFileUpload and the live service's event_type 100); both give a
``recording.finished`` context with the same fileId, and the run's dedup key (workflow + fileId)
makes sure only one run starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import JsonValue

from orchestrator.spec import LoadedWorkflow, StreamSession
from orchestrator.vod.events import VodEvent


@dataclass(frozen=True)
class TriggerContext:
    type: str
    """The trigger type this context can start: recording.finished, file.uploaded, ..."""
    fields: dict[str, JsonValue]
    identity: str
    """What makes two announcements the same (the fileId): part of the run's dedup key."""


@dataclass(frozen=True)
class Match:
    workflow: LoadedWorkflow
    trigger_index: int
    context: TriggerContext

    @property
    def is_session(self) -> bool:
        return isinstance(self.workflow.spec.triggers[self.trigger_index], StreamSession)

    @property
    def dedup_key(self) -> str:
        return f"{self.workflow.spec.name}/{self.context.type}/{self.context.identity}"


def _clean(fields: dict[str, JsonValue]) -> dict[str, JsonValue]:
    return {k: v for k, v in fields.items() if v is not None and v != ""}


def contexts_for(event: VodEvent) -> list[TriggerContext]:
    """The trigger contexts an event provides (none for task events)."""
    if event.kind == "lvb.recording" and event.file_id:
        rec = event.recording
        fields = _clean(
            {
                "source": "lvb",
                "fileId": event.file_id,
                "streamId": event.stream_id,
                "fileUrl": rec.file_url if rec else None,
                "fileFormat": rec.file_format if rec else None,
                "fileSize": rec.file_size if rec else None,
                "startTime": rec.start_time if rec else None,
                "endTime": rec.end_time if rec else None,
                "duration": rec.duration if rec else None,
                "app": rec.app if rec else None,
                "appname": rec.appname if rec else None,
                "sessionId": rec.session_id if rec else None,
                "sourceType": "Record",
            }
        )
        return [TriggerContext("recording.finished", fields, event.file_id)]
    if event.kind in ("NewFileUpload", "FileUpload") and event.file_id:
        url = event.outputs.files[0].url if event.outputs.files else None
        meta = event.outputs.meta
        fields = _clean(
            {
                "source": "vod",
                "fileId": event.file_id,
                "fileName": event.file_name,
                "fileUrl": url,
                "sourceType": event.source_type,
                "streamId": event.stream_id,
            }
        )
        contexts = [TriggerContext("file.uploaded", fields, event.file_id)]
        if (event.source_type or "").lower() == "record":
            recording = dict(fields)
            if meta is not None and meta.duration is not None:
                recording["duration"] = meta.duration
            rec = event.recording  # v3's NewFileUpload says when it was recorded; v2's does not
            if rec is not None and rec.start_time is not None and rec.end_time is not None:
                recording |= {"startTime": rec.start_time, "endTime": rec.end_time}
            contexts.insert(0, TriggerContext("recording.finished", recording, event.file_id))
        return contexts
    return []


def match(event: VodEvent, workflows: list[LoadedWorkflow]) -> list[Match]:
    """Every (workflow, trigger) the event's contexts start; one match per workflow at most.

    ``stream.session`` triggers match recording contexts: the recording joins the stream's open
    session instead of starting a run of its own.
    """
    found: list[Match] = []
    contexts = contexts_for(event)
    for workflow in workflows:
        chosen = _first_match(workflow, contexts)
        if chosen is not None:
            found.append(chosen)
    return found


def _first_match(workflow: LoadedWorkflow, contexts: list[TriggerContext]) -> Match | None:
    for index, trigger in enumerate(workflow.spec.triggers):
        wanted = "recording.finished" if trigger.type == "stream.session" else trigger.type
        for context in contexts:
            if context.type != wanted:
                continue
            if trigger.type == "stream.session" and not context.fields.get("streamId"):
                continue
            if trigger.matches(context.fields):
                return Match(workflow, index, context)
    return None


def session_context(segments: list[dict[str, JsonValue]]) -> dict[str, JsonValue]:
    """A stream.session run's trigger fields from its recordings, in the order they arrived.

    The session spans from the earliest recording start to the latest end, when every recording
    came with its recording times (the live service's recording callback, event 100, carries
    them). VOD's NewFileUpload carries none, and its arrival time is not a recording time: a file
    reaches VOD some time after its recording ended, so a window guessed from arrivals would clip
    the wrong range and silently drop what was recorded before it. A session with recordings of
    unknown times therefore has no ``startTime``/``endTime``/``duration``, and names those
    recordings in ``untimedFileIds``: a step clipping by ``streamInfo`` then fails saying the
    field is missing, rather than succeeding with part of the lecture (join ``fileIds`` with
    ``gen.concat.fileIdList`` where only VOD's events are configured).
    """
    starts: list[int] = []
    ends: list[int] = []
    untimed: list[JsonValue] = []
    for seg in segments:
        start, end = seg.get("startTime"), seg.get("endTime")
        if isinstance(start, int | float) and isinstance(end, int | float):
            starts.append(int(start))
            ends.append(int(end + 0.999))
        else:
            untimed.append(seg.get("fileId"))
    first = segments[0] if segments else {}
    fields: dict[str, JsonValue] = {
        "streamId": first.get("streamId"),
        "fileIds": [s["fileId"] for s in segments if isinstance(s.get("fileId"), str)],
        "segmentCount": len(segments),
        "app": first.get("app"),
        "appname": first.get("appname"),
    }
    if untimed:
        fields["untimedFileIds"] = [f for f in untimed if isinstance(f, str)]
    elif starts:
        fields.update(startTime=min(starts), endTime=max(ends), duration=max(ends) - min(starts))
    return _clean(fields)
