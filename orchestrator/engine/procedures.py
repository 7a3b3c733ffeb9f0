"""The engine's procedures: which transcode, image sprite and snapshot templates each procedure
name runs, read from ``procedures.yaml`` (built in) or the file ``VODFLOW_ENGINE_PROCEDURES``
names, and validated at start-up.

A bad file is refused as a whole with every problem as ``file:line:column: key: what was
expected``, like a workflow file. Keys mirror VOD's template parameters (camelCase); definitions
are positive integers (VOD keeps 0 for the source file). A procedure runs its transcodes first,
then its image sprites, then its snapshots, each in the order listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from orchestrator import yamldoc
from orchestrator.engine.media import SnapshotTemplate, SpriteTemplate, TranscodeTemplate

BUILT_IN = Path(__file__).with_name("procedures.yaml")

TaskKind = Literal["transcode", "image_sprite", "snapshot"]
Definition = Annotated[int, Field(gt=0)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel)


class TranscodeSpec(_Spec):
    container: Literal["mp4", "hls"] = "mp4"
    width: Annotated[int, Field(gt=0)] | None = None
    height: Annotated[int, Field(gt=0)] | None = None
    video_bitrate: Annotated[int, Field(gt=0)]
    audio_bitrate: Annotated[int, Field(gt=0)] = 128
    fps: Annotated[float, Field(gt=0)] | None = None
    gop: Annotated[float, Field(gt=0)] = 2.0
    preset: str = "veryfast"
    segment_seconds: Annotated[float, Field(gt=0)] = 10.0


class ImageSpriteSpec(_Spec):
    interval: Annotated[float, Field(gt=0)] = 10.0
    rows: Annotated[int, Field(gt=0, le=100)] = 10
    columns: Annotated[int, Field(gt=0, le=100)] = 10
    width: Annotated[int, Field(ge=0)] = 160
    height: Annotated[int, Field(ge=0)] = 90
    quality: Annotated[int, Field(ge=2, le=31)] = 3

    @model_validator(mode="after")
    def _a_side(self) -> Self:
        if self.width == 0 and self.height == 0:
            raise ValueError("expected width or height (0 follows the picture's aspect ratio)")
        return self


class SnapshotSpec(_Spec):
    width: Annotated[int, Field(ge=0)] = 0
    height: Annotated[int, Field(ge=0)] = 0
    format: Literal["jpg", "png"] = "jpg"


class SnapshotStep(_Spec):
    definition: Definition
    time_offset: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    """Milliseconds into the file."""


class ProcedureSpec(_Spec):
    transcode: list[Definition] = []
    image_sprite: list[Definition] = []
    snapshot_by_time_offset: list[SnapshotStep] = []

    @model_validator(mode="after")
    def _some_task(self) -> Self:
        if not (self.transcode or self.image_sprite or self.snapshot_by_time_offset):
            raise ValueError(
                "expected at least one of transcode, imageSprite, snapshotByTimeOffset"
            )
        return self


class ProceduresSpec(_Spec):
    transcode_templates: dict[Definition, TranscodeSpec] = {}
    image_sprite_templates: dict[Definition, ImageSpriteSpec] = {}
    snapshot_by_time_offset_templates: dict[Definition, SnapshotSpec] = {}
    procedures: Annotated[
        dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")], ProcedureSpec],
        Field(min_length=1),
    ]


@dataclass(frozen=True)
class PlannedTask:
    """One task a procedure runs: a template definition and, for snapshots, the offsets (ms)."""

    kind: TaskKind
    definition: int
    time_offsets: tuple[int, ...] = ()


@dataclass(frozen=True)
class Procedure:
    name: str
    tasks: tuple[PlannedTask, ...]


@dataclass(frozen=True)
class Procedures:
    """Every template and procedure of one procedures file."""

    source: str
    transcode: Mapping[int, TranscodeTemplate]
    image_sprite: Mapping[int, SpriteTemplate]
    snapshot: Mapping[int, SnapshotTemplate]
    procedures: Mapping[str, Procedure]

    def get(self, name: str) -> Procedure | None:
        return self.procedures.get(name)


class ProceduresError(Exception):
    """A procedures file is invalid; ``problems`` lists each as ``file:line:column: key: why``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid procedures file:\n  " + "\n  ".join(self.problems))


def load_procedures(path: Path | None = None) -> Procedures:
    """The procedures in ``path`` (default: the built-in file), or ``ProceduresError``."""
    path = path or BUILT_IN
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProceduresError([f"{path}: cannot read it: {exc.strerror or exc}"]) from None
    return parse_procedures(text, str(path))


def parse_procedures(text: str, file: str = "<procedures>") -> Procedures:
    try:
        doc = yamldoc.load(text)
    except yamldoc.YamlSyntaxError as exc:
        raise ProceduresError([f"{file}:{exc}"]) from None
    if not isinstance(doc, Mapping):
        raise ProceduresError(
            [f"{file}:1:1: expected a mapping with transcodeTemplates, ... and procedures"]
        )
    try:
        spec = ProceduresSpec.model_validate(yamldoc.plain(doc))
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = [str(part) for part in error["loc"]]
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            if loc[-1] == "[key]":  # a definition number or procedure name itself
                loc.pop()
                message = f"the key {loc[-1]!r}: {message}"
            line, col = yamldoc.Positions(doc).of(loc, key=True)
            problems.append(f"{file}:{line}:{col}: {'.'.join(loc)}: {message}")
        raise ProceduresError(problems) from None
    problems = [
        f"{file}:{line}:{col}: {'.'.join(loc)}: {message}"
        for loc, message in _missing_templates(spec)
        for line, col in [yamldoc.Positions(doc).of(loc, key=True)]
    ]
    if problems:
        raise ProceduresError(problems)
    return _build(spec, file)


def _missing_templates(spec: ProceduresSpec) -> list[tuple[list[str], str]]:
    found: list[tuple[list[str], str]] = []

    def check(
        name: str, key: str, index: int, definition: int, known: Mapping[int, object]
    ) -> None:
        if definition not in known:
            defined = ", ".join(str(d) for d in sorted(known)) or "none"
            loc = ["procedures", name, key, str(index)]
            if key == "snapshotByTimeOffset":
                loc.append("definition")
            found.append((loc, f"no such template {definition} (defined: {defined})"))

    for name, procedure in spec.procedures.items():
        for i, definition in enumerate(procedure.transcode):
            check(name, "transcode", i, definition, spec.transcode_templates)
        for i, definition in enumerate(procedure.image_sprite):
            check(name, "imageSprite", i, definition, spec.image_sprite_templates)
        for i, step in enumerate(procedure.snapshot_by_time_offset):
            check(
                name,
                "snapshotByTimeOffset",
                i,
                step.definition,
                spec.snapshot_by_time_offset_templates,
            )
    return found


def _build(spec: ProceduresSpec, source: str) -> Procedures:
    transcode = {
        d: TranscodeTemplate(definition=d, **t.model_dump())
        for d, t in spec.transcode_templates.items()
    }
    sprite = {
        d: SpriteTemplate(definition=d, **t.model_dump())
        for d, t in spec.image_sprite_templates.items()
    }
    snapshot = {
        d: SnapshotTemplate(definition=d, **t.model_dump())
        for d, t in spec.snapshot_by_time_offset_templates.items()
    }
    procedures = {
        name: Procedure(
            name=name,
            tasks=(
                *(PlannedTask("transcode", d) for d in p.transcode),
                *(PlannedTask("image_sprite", d) for d in p.image_sprite),
                *(
                    PlannedTask("snapshot", s.definition, tuple(s.time_offset))
                    for s in p.snapshot_by_time_offset
                ),
            ),
        )
        for name, p in spec.procedures.items()
    }
    return Procedures(source, transcode, sprite, snapshot, procedures)
