"""Typed requests of the VOD v2 API and their flat wire form (``gen.clip.fileList.0.fileId=...``).

The client builds a model and sends ``to_params()``; the embedded engine turns what it received
back into the same model with ``from_params()`` / ``parse_flat()``. Both directions apply the
seed's rules, so a request the client would refuse is one the engine refuses too, with an
``InvalidRequestParams`` naming the parameter and what was expected.

Choices where the seed is silent or inconsistent:

* ``fileId`` is optional (the seed's table says required, its examples omit it with ``gen``). When
  ``fileId`` is present ``gen`` is ignored, as the seed says: it is neither checked nor sent.
  Likewise ``gen.concat.fileIdList`` is not sent when ``gen.clip`` is given (the clips are joined).
* ``gen.clip.fileList.N.endTime`` (the seed's example) is accepted as an alias of
  ``endTimeOffset`` when parsing; giving both is an error. Only ``endTimeOffset`` is ever sent.
* ``gen.clip.streamInfo`` needs ``endTime > startTime`` (the seed's own example breaks this; it
  is refused). A clip's offsets are compared only when both have the same sign, since a negative
  offset counts from the end of a file whose length is not known here.
* List indices are sent from 0, as Tencent's SDK flattens lists. When parsing, lists may be
  numbered from 0 or from 1 (``ConfirmEvent``'s documentation numbers ``msgHandle`` from 1,
  Tencent's demo from 0) but must have no gaps.
* Parameter names are read with ``_`` taken as ``.``: the SDK signs names that way and Tencent's
  PHP server receives dots as underscores, so both spellings reach the same parameter.
* Unknown parameters are refused, naming them, so a typo like ``gen.clip.filelist`` is not a
  silently ignored clip.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal, Self, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .errors import InvalidRequestParams

#: Parameters every v2 request carries; they are the signer's business, not a request model's.
COMMON_PARAMS = frozenset(
    {
        "Action",
        "Region",
        "Timestamp",
        "Nonce",
        "SecretId",
        "SignatureMethod",
        "Signature",
        "RequestClient",
        "Version",
        "Token",
    }
)

_INT = re.compile(r"-?[0-9]+", re.ASCII)
_INDEX = re.compile(r"0|[1-9][0-9]*", re.ASCII)

#: A parameter tree as it is flattened or rebuilt: strings at the leaves.
ParamTree: TypeAlias = "str | list[ParamTree] | dict[str, ParamTree]"


def _wire_int(value: object) -> object:
    """Whole numbers only: ``30`` or ``"30"``, never ``"30.0"``, ``" 30"``, ``True``."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    raise ValueError(f"expected an integer such as 30 or -5, got {value!r}")


WireInt = Annotated[int, BeforeValidator(_wire_int)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        extra="forbid",
    )


# --- flattening ----------------------------------------------------------------------------


def flatten(obj: object, prefix: str | None = None) -> dict[str, str]:
    """Flatten like the SDK's ``_format_params``: dots between names, lists indexed from 0.

    ``None`` values are left out; every other leaf is ``str()``-ed. A pydantic model is dumped by
    its wire names first.
    """
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(by_alias=True, exclude_none=True)
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        out: dict[str, str] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(obj, list | tuple):
        out = {}
        for index, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}.{index}" if prefix else str(index)))
        return out
    if prefix is None:
        raise TypeError(f"cannot flatten a bare {type(obj).__name__}: expected a mapping")
    return {prefix: obj if isinstance(obj, str) else str(obj)}


def unflatten(params: Mapping[str, str], *, action: str | None = None) -> dict[str, ParamTree]:
    """Rebuild the tree of flat ``params``; numeric name parts become list indices.

    Raises ``InvalidRequestParams`` naming the parameter for empty name parts, a name used both
    as a value and as a structure, or list indices with gaps.
    """
    root: dict[str, ParamTree] = {}
    for name, value in params.items():
        parts = name.split(".")
        if "" in parts:
            raise InvalidRequestParams(
                name, "expected a dotted name without empty parts", action=action
            )
        node = root
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidRequestParams(
                    ".".join(parts[: depth + 1]),
                    "given both as a value and as a structure",
                    action=action,
                )
            node = child
        last = parts[-1]
        if last in node:
            problem = (
                "given twice"
                if isinstance(node[last], str)
                else "given both as a value and as a structure"
            )
            raise InvalidRequestParams(name, problem, action=action)
        node[last] = value
    tree = _listify(root, "", action)
    if not isinstance(tree, dict):
        raise InvalidRequestParams(
            next(iter(params)), "expected a parameter name, not a list index", action=action
        )
    return tree


def _listify(node: ParamTree, path: str, action: str | None) -> ParamTree:
    if not isinstance(node, dict):
        return node
    children = {
        key: _listify(child, f"{path}.{key}" if path else key, action)
        for key, child in node.items()
    }
    numeric = [key for key in children if _INDEX.fullmatch(key)]
    if not numeric:
        return children
    if len(numeric) != len(children):
        raise InvalidRequestParams(
            path or next(iter(children)), "mixes list indices and names", action=action
        )
    indices = sorted(int(key) for key in numeric)
    base = indices[0]
    if base not in (0, 1) or indices != list(range(base, base + len(indices))):
        missing = next(i for i in range(len(indices) + 1) if i not in indices)
        raise InvalidRequestParams(
            f"{path}.{missing}" if path else str(missing),
            "missing: list items are numbered 0, 1, 2, ... (or from 1) without gaps",
            action=action,
        )
    return [children[str(index)] for index in indices]


# --- request models ------------------------------------------------------------------------


class VodRequest(_Model):
    """A v2 API request: its ``ACTION`` and its parameters, to and from the flat wire form."""

    ACTION: ClassVar[str]

    def to_params(self) -> dict[str, str]:
        """The request's own parameters, flattened; common parameters are the signer's."""
        return flatten(self)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Self:
        """The request carried by received ``params`` (common parameters are skipped)."""
        own = _own_params(params, cls.ACTION)
        return cls._validate_tree(unflatten(own, action=cls.ACTION), own)

    @classmethod
    def _validate_tree(cls, tree: Mapping[str, ParamTree], own: Mapping[str, str]) -> Self:
        try:
            return cls.model_validate(tree)
        except ValidationError as exc:
            raise _first_problem(exc, cls.ACTION, own) from None


def _own_params(params: Mapping[str, str], action: str) -> dict[str, str]:
    own: dict[str, str] = {}
    for name, value in params.items():
        if name in COMMON_PARAMS:
            continue
        dotted = name.replace("_", ".")
        if dotted in own:
            raise InvalidRequestParams(dotted, "given twice", action=action)
        own[dotted] = value
    return own


def _first_problem(
    exc: ValidationError, action: str, received: Mapping[str, str]
) -> InvalidRequestParams:
    error = exc.errors(include_url=False)[0]
    parameter = ".".join(str(part) for part in error["loc"]) or "(request)"
    if parameter not in received:
        # A structure was refused as a whole: name the first received parameter inside it.
        parameter = next((name for name in received if name.startswith(parameter + ".")), parameter)
    kind = error["type"]
    if kind == "missing":
        expected = "required"
    elif kind == "extra_forbidden":
        expected = f"not a parameter of {action}"
    elif kind == "string_too_short":
        expected = "expected a non-empty string"
    else:
        expected = str(error["msg"]).removeprefix("Value error, ")
    return InvalidRequestParams(parameter, expected, action=action)


class ClipFile(_Model):
    """``gen.clip.fileList.N``: seconds into one file; negative counts from its end."""

    file_id: NonEmpty
    start_time_offset: WireInt | None = None
    end_time_offset: WireInt | None = None


class StreamInfo(_Model):
    """``gen.clip.streamInfo``: a live stream's recordings between two Unix times."""

    stream_id: NonEmpty
    start_time: WireInt
    end_time: WireInt


class Clip(_Model):
    """``gen.clip``: exactly one of ``file_list`` and ``stream_info``."""

    file_list: tuple[ClipFile, ...] | None = None
    stream_info: StreamInfo | None = None


class Concat(_Model):
    """``gen.concat``: join ``file_id_list`` (or the clips) into one ``dst_type`` file."""

    file_id_list: tuple[NonEmpty, ...] | None = None
    dst_type: NonEmpty | None = None


class Gen(_Model):
    """``gen``: how to make the file to process when no ``fileId`` is given."""

    clip: Clip | None = None
    concat: Concat | None = None


_END_TIME_ALIAS = re.compile(r"gen\.clip\.fileList\.([0-9]+)\.endTime")


class ProcessFileByProcedureRequest(VodRequest):
    """The seed: run ``procedure`` on ``file_id``, or on the file ``gen`` makes by clip/concat."""

    ACTION: ClassVar[str] = "ProcessFileByProcedure"

    file_id: NonEmpty | None = None
    gen: Gen | None = None
    procedure: NonEmpty | None = None

    @model_validator(mode="after")
    def _seed_rules(self) -> Self:
        action = self.ACTION
        if self.file_id is not None:
            return self  # gen is ignored when fileId is given
        if self.gen is None:
            raise InvalidRequestParams(
                "fileId",
                "required unless gen.clip or gen.concat says how to make the file",
                action=action,
            )
        clip, concat = self.gen.clip, self.gen.concat
        if clip is None and concat is None:
            raise InvalidRequestParams("gen", "expected gen.clip and/or gen.concat", action=action)
        if clip is not None:
            _check_clip(clip, action)
        if concat is not None:
            if concat.dst_type is None:
                raise InvalidRequestParams(
                    "gen.concat.dstType",
                    "required: the container of the joined file, e.g. mp4",
                    action=action,
                )
            if clip is None and not concat.file_id_list:
                raise InvalidRequestParams(
                    "gen.concat.fileIdList",
                    "expected at least one fileId to join (gen.concat.fileIdList.0, ...)",
                    action=action,
                )
        return self

    def to_params(self) -> dict[str, str]:
        dumped = self.model_dump(by_alias=True, exclude_none=True)
        if self.file_id is not None:
            dumped.pop("gen", None)
        elif self.gen is not None and self.gen.clip is not None and self.gen.concat is not None:
            dumped["gen"]["concat"].pop("fileIdList", None)
        return flatten(dumped)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Self:
        own = _own_params(params, cls.ACTION)
        for name in [name for name in own if _END_TIME_ALIAS.fullmatch(name)]:
            canonical = name + "Offset"
            if canonical in own:
                raise InvalidRequestParams(
                    name, f"give either {name} or {canonical}, not both", action=cls.ACTION
                )
            own[canonical] = own.pop(name)
        return cls._validate_tree(unflatten(own, action=cls.ACTION), own)


def _check_clip(clip: Clip, action: str) -> None:
    if (clip.file_list is None) == (clip.stream_info is None):
        got = "both" if clip.file_list is not None else "neither"
        raise InvalidRequestParams(
            "gen.clip",
            f"expected exactly one of gen.clip.fileList and gen.clip.streamInfo, got {got}",
            action=action,
        )
    if clip.stream_info is not None:
        info = clip.stream_info
        if info.end_time <= info.start_time:
            raise InvalidRequestParams(
                "gen.clip.streamInfo.endTime",
                f"expected a time after startTime {info.start_time}, got {info.end_time}",
                action=action,
            )
        return
    assert clip.file_list is not None
    if not clip.file_list:
        raise InvalidRequestParams("gen.clip.fileList", "expected at least one file", action=action)
    for index, item in enumerate(clip.file_list):
        start, end = item.start_time_offset, item.end_time_offset
        if start is None:
            start = 0
        if end is not None and (start >= 0) == (end >= 0) and end <= start:
            raise InvalidRequestParams(
                f"gen.clip.fileList.{index}.endTimeOffset",
                f"expected an offset after startTimeOffset {start}, got {end}",
                action=action,
            )


def parse_flat(params: Mapping[str, str]) -> ProcessFileByProcedureRequest:
    """The ProcessFileByProcedure request carried by received wire ``params`` (engine side)."""
    return ProcessFileByProcedureRequest.from_params(params)


class GetTaskInfoRequest(VodRequest):
    ACTION: ClassVar[str] = "GetTaskInfo"

    vod_task_id: NonEmpty


class GetVodTaskStatusRequest(VodRequest):
    ACTION: ClassVar[str] = "GetVodTaskStatus"

    task_ids: tuple[NonEmpty, ...] = Field(alias="taskId", min_length=1)


class GetTaskListRequest(VodRequest):
    ACTION: ClassVar[str] = "GetTaskList"

    status: Literal["WAITING", "PROCESSING", "FINISHED"]
    file_id: NonEmpty | None = None
    max_count: int = Field(100, ge=10, le=100)
    """Tasks per status (Tencent: 10 to 100, 10 when not given)."""


class GetProcedureInfoRequest(VodRequest):
    ACTION: ClassVar[str] = "GetProcedureInfo"

    vod_task_id: NonEmpty


class PullEventRequest(VodRequest):
    ACTION: ClassVar[str] = "PullEvent"


class ConfirmEventRequest(VodRequest):
    ACTION: ClassVar[str] = "ConfirmEvent"

    msg_handles: tuple[NonEmpty, ...] = Field(alias="msgHandle", min_length=1)


class GetVideoInfoRequest(VodRequest):
    ACTION: ClassVar[str] = "GetVideoInfo"

    file_id: NonEmpty
    info_filter: tuple[NonEmpty, ...] | None = None


#: Every request model by its Action, for the engine's dispatch.
REQUESTS: Mapping[str, type[VodRequest]] = {
    model.ACTION: model
    for model in (
        ProcessFileByProcedureRequest,
        GetTaskInfoRequest,
        GetVodTaskStatusRequest,
        GetTaskListRequest,
        GetProcedureInfoRequest,
        PullEventRequest,
        ConfirmEventRequest,
        GetVideoInfoRequest,
    )
}
