"""Request models: the seed's rules, the flat wire form, and agreement with the SDK's flattening."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from QcloudApi.modules.base import Base

from orchestrator.vod.errors import ErrorClass, InvalidRequestParams
from orchestrator.vod.params import (
    REQUESTS,
    Clip,
    ClipFile,
    Concat,
    ConfirmEventRequest,
    Gen,
    GetTaskInfoRequest,
    GetTaskListRequest,
    GetVideoInfoRequest,
    GetVodTaskStatusRequest,
    ProcessFileByProcedureRequest,
    PullEventRequest,
    StreamInfo,
    flatten,
    parse_flat,
    unflatten,
)

COMMON = {"Action": "ProcessFileByProcedure", "Region": "gz", "Nonce": "1", "Signature": "x"}


def _problem(params: dict[str, str]) -> InvalidRequestParams:
    with pytest.raises(InvalidRequestParams) as caught:
        parse_flat({**COMMON, **params})
    return caught.value


# --- the seed's three examples ---------------------------------------------------------------


def test_seed_example_by_file_id() -> None:
    request = parse_flat({**COMMON, "fileId": "12345", "procedure": "SomeProcedure"})
    assert request == ProcessFileByProcedureRequest(file_id="12345", procedure="SomeProcedure")
    assert request.to_params() == {"fileId": "12345", "procedure": "SomeProcedure"}


def test_seed_example_by_file_list_accepts_end_time_alias() -> None:
    request = parse_flat(
        {
            "gen.clip.fileList.0.fileId": "12345",
            "gen.clip.fileList.0.startTimeOffset": "30",
            "gen.clip.fileList.0.endTime": "100",
            "gen.clip.fileList.1.fileId": "67899",
            "gen.clip.fileList.1.startTimeOffset": "300",
            "gen.clip.fileList.1.endTime": "400",
            "gen.concat.dstType": "mp4",
            "procedure": "SomeProcedure",
        }
    )
    assert request.gen is not None
    assert request.gen.clip is not None
    assert request.gen.clip.file_list == (
        ClipFile(file_id="12345", start_time_offset=30, end_time_offset=100),
        ClipFile(file_id="67899", start_time_offset=300, end_time_offset=400),
    )
    wire = request.to_params()
    assert wire["gen.clip.fileList.1.endTimeOffset"] == "400"
    assert "gen.clip.fileList.1.endTime" not in wire


def test_seed_example_by_stream_info_is_refused_for_its_end_before_start() -> None:
    problem = _problem(
        {
            "gen.clip.streamInfo.streamId": "12345",
            "gen.clip.streamInfo.startTime": "15020876538",
            "gen.clip.streamInfo.endTime": "1502087638",
            "gen.concat.dstType": "mp4",
            "procedure": "SomeProcedure",
        }
    )
    assert problem.parameter == "gen.clip.streamInfo.endTime"
    assert "after startTime 15020876538" in str(problem)
    assert problem.error_class is ErrorClass.INVALID_PARAMS
    assert not problem.retryable


def test_stream_info_request_flattens_like_the_seed() -> None:
    request = ProcessFileByProcedureRequest(
        gen=Gen(
            clip=Clip(stream_info=StreamInfo(stream_id="直播_45", start_time=10, end_time=20)),
            concat=Concat(dst_type="mp4", file_id_list=("ignored",)),
        ),
        procedure="P",
    )
    assert request.to_params() == {
        "gen.clip.streamInfo.streamId": "直播_45",
        "gen.clip.streamInfo.startTime": "10",
        "gen.clip.streamInfo.endTime": "20",
        "gen.concat.dstType": "mp4",
        "procedure": "P",
    }


def test_file_id_wins_and_gen_is_not_sent() -> None:
    request = ProcessFileByProcedureRequest(
        file_id="1", gen=Gen(concat=Concat(dst_type="mp4")), procedure="P"
    )
    assert request.to_params() == {"fileId": "1", "procedure": "P"}


def test_concat_by_file_id_list() -> None:
    request = parse_flat(
        {
            "gen.concat.fileIdList.0": "a",
            "gen.concat.fileIdList.1": "b",
            "gen.concat.dstType": "mp4",
        }
    )
    assert request.to_params() == {
        "gen.concat.fileIdList.0": "a",
        "gen.concat.fileIdList.1": "b",
        "gen.concat.dstType": "mp4",
    }


# --- the seed's rules, each naming its parameter ----------------------------------------------


@pytest.mark.parametrize(
    ("params", "parameter", "words"),
    [
        ({"procedure": "P"}, "fileId", "required unless gen"),
        ({"gen.concat.fileIdList.0": "a"}, "gen.concat.dstType", "required"),
        ({"gen.concat.dstType": "mp4"}, "gen.concat.fileIdList", "at least one"),
        (
            {
                "gen.clip.fileList.0.fileId": "a",
                "gen.clip.streamInfo.streamId": "s",
                "gen.clip.streamInfo.startTime": "1",
                "gen.clip.streamInfo.endTime": "2",
            },
            "gen.clip",
            "got both",
        ),
        (
            {"gen.clip.streamInfo.streamId": "s", "gen.clip.streamInfo.endTime": "2"},
            "gen.clip.streamInfo.startTime",
            "required",
        ),
        (
            {
                "gen.clip.streamInfo.streamId": "s",
                "gen.clip.streamInfo.startTime": "5",
                "gen.clip.streamInfo.endTime": "5",
            },
            "gen.clip.streamInfo.endTime",
            "after startTime",
        ),
        (
            {
                "gen.clip.fileList.0.fileId": "a",
                "gen.clip.fileList.0.startTimeOffset": "30",
                "gen.clip.fileList.0.endTimeOffset": "10",
            },
            "gen.clip.fileList.0.endTimeOffset",
            "after",
        ),
        (
            {"gen.clip.fileList.0.fileId": "a", "gen.clip.fileList.0.startTimeOffset": "3.5"},
            "gen.clip.fileList.0.startTimeOffset",
            "integer",
        ),
        (
            {"gen.clip.fileList.0.fileId": "a", "gen.clip.fileList.0.startTimeOffset": " 3"},
            "gen.clip.fileList.0.startTimeOffset",
            "integer",
        ),
        (
            {
                "gen.clip.fileList.0.fileId": "a",
                "gen.clip.fileList.0.endTime": "9",
                "gen.clip.fileList.0.endTimeOffset": "9",
            },
            "gen.clip.fileList.0.endTime",
            "not both",
        ),
        (
            {"gen.clip.fileList.0.fileId": "a", "gen.clip.fileList.2.fileId": "b"},
            "gen.clip.fileList.1",
            "without gaps",
        ),
        ({"gen.clip.filelist.0.fileId": "a"}, "gen.clip.filelist.0.fileId", "not a parameter"),
        ({"fileId": "1", "fileId.x": "2"}, "fileId", "both as a value and as a structure"),
        ({"fileId": ""}, "fileId", "non-empty"),
        ({"fileId": "1", "file_Id": "2"}, "file.Id", "not a parameter"),
        ({"gen..clip": "1"}, "gen..clip", "empty parts"),
    ],
)
def test_rule_violations_name_the_parameter(
    params: dict[str, str], parameter: str, words: str
) -> None:
    problem = _problem(params)
    assert problem.parameter == parameter
    assert words in problem.expected
    assert parameter in str(problem)
    assert "ProcessFileByProcedure" in str(problem)


def test_negative_offsets_count_from_the_end_and_mixed_signs_are_not_compared() -> None:
    request = parse_flat(
        {
            "gen.clip.fileList.0.fileId": "a",
            "gen.clip.fileList.0.startTimeOffset": "-30",
            "gen.clip.fileList.0.endTimeOffset": "-10",
            "gen.clip.fileList.1.fileId": "b",
            "gen.clip.fileList.1.startTimeOffset": "30",
            "gen.clip.fileList.1.endTimeOffset": "-10",
        }
    )
    assert request.gen is not None
    assert request.gen.clip is not None
    assert request.gen.clip.file_list is not None
    assert len(request.gen.clip.file_list) == 2
    alone = ClipFile(file_id="a", start_time_offset=-10, end_time_offset=-30)  # fine alone
    with pytest.raises(InvalidRequestParams, match="endTimeOffset"):
        ProcessFileByProcedureRequest(gen=Gen(clip=Clip(file_list=(alone,))))


def test_underscored_names_reach_the_same_parameter() -> None:
    request = parse_flat({"gen_clip_fileList_0_fileId": "a", "gen_concat_dstType": "mp4"})
    assert request.to_params() == {"gen.clip.fileList.0.fileId": "a", "gen.concat.dstType": "mp4"}


def test_python_construction_applies_the_rules_too() -> None:
    with pytest.raises(InvalidRequestParams) as caught:
        ProcessFileByProcedureRequest(gen=Gen(clip=Clip()))
    assert caught.value.parameter == "gen.clip"
    assert "got neither" in caught.value.expected


# --- flatten / unflatten ----------------------------------------------------------------------

json_leaf = st.one_of(st.text(max_size=8), st.integers(-(10**9), 10**9), st.none())
keys = st.text("abcXYZ019", min_size=1, max_size=6)
trees = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=20,
)


_SDK = Base({"secretId": "i", "secretKey": "k", "endpoint": "h"})  # building one loads TLS certs


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, trees, max_size=5))
def test_flatten_matches_the_sdk_format_params(obj: dict[str, object]) -> None:
    sdk = _SDK._format_params(None, obj)
    assert flatten(obj) == {name: str(value) for name, value in sdk.items()}


def test_unflatten_builds_lists_from_zero_or_one() -> None:
    assert unflatten({"a.0.b": "1", "a.1.b": "2", "c": "3"}) == {
        "a": [{"b": "1"}, {"b": "2"}],
        "c": "3",
    }
    assert unflatten({"msgHandle.1": "x", "msgHandle.2": "y"}) == {"msgHandle": ["x", "y"]}
    with pytest.raises(InvalidRequestParams, match="mixes list indices and names"):
        unflatten({"a.0": "1", "a.b": "2"})
    with pytest.raises(InvalidRequestParams, match="a parameter name"):
        unflatten({"0": "x"})


def test_flatten_refuses_a_bare_value() -> None:
    with pytest.raises(TypeError):
        flatten("x")


# --- round trip -------------------------------------------------------------------------------

ids = st.text("0123456789", min_size=1, max_size=19)
names = st.text(min_size=1, max_size=12)
offsets = st.integers(-(10**6), 10**6)


@st.composite
def clip_files(draw: st.DrawFn) -> ClipFile:
    start = draw(st.none() | st.integers(0, 10**6))
    end = draw(st.none() | st.integers((start or 0) + 1, 10**6 + 10) | st.integers(-(10**6), -1))
    return ClipFile(file_id=draw(ids), start_time_offset=start, end_time_offset=end)


@st.composite
def valid_requests(draw: st.DrawFn) -> ProcessFileByProcedureRequest:
    procedure = draw(st.none() | names)
    shape = draw(st.sampled_from(["fileId", "fileList", "streamInfo", "concat"]))
    if shape == "fileId":
        return ProcessFileByProcedureRequest(file_id=draw(ids), procedure=procedure)
    concat = draw(st.none() | st.builds(Concat, dst_type=st.sampled_from(["mp4", "flv", "m3u8"])))
    if shape == "fileList":
        clip = Clip(file_list=tuple(draw(st.lists(clip_files(), min_size=1, max_size=12))))
    elif shape == "streamInfo":
        start = draw(st.integers(0, 2**40))
        clip = Clip(
            stream_info=StreamInfo(
                stream_id=draw(names),
                start_time=start,
                end_time=start + draw(st.integers(1, 10**6)),
            )
        )
    else:
        files = tuple(draw(st.lists(ids, min_size=1, max_size=12)))
        return ProcessFileByProcedureRequest(
            gen=Gen(concat=Concat(file_id_list=files, dst_type="mp4")), procedure=procedure
        )
    return ProcessFileByProcedureRequest(gen=Gen(clip=clip, concat=concat), procedure=procedure)


@settings(max_examples=200, deadline=None)
@given(valid_requests())
def test_flatten_then_parse_flat_is_identity(request: ProcessFileByProcedureRequest) -> None:
    wire = request.to_params()
    assert all(isinstance(value, str) for value in wire.values())
    assert parse_flat({**COMMON, **wire}) == request


# --- the other calls ----------------------------------------------------------------------------


def test_other_requests_flatten_and_parse() -> None:
    cases = [
        (GetTaskInfoRequest(vod_task_id="t-1"), {"vodTaskId": "t-1"}),
        (GetVodTaskStatusRequest(task_ids=("a", "b")), {"taskId.0": "a", "taskId.1": "b"}),
        (GetTaskListRequest(status="FINISHED"), {"status": "FINISHED", "maxCount": "100"}),
        (
            GetTaskListRequest(status="WAITING", file_id="9"),
            {"status": "WAITING", "fileId": "9", "maxCount": "100"},
        ),
        (PullEventRequest(), {}),
        (ConfirmEventRequest(msg_handles=("h1",)), {"msgHandle.0": "h1"}),
        (GetVideoInfoRequest(file_id="9"), {"fileId": "9"}),
        (
            GetVideoInfoRequest(file_id="9", info_filter=("basicInfo", "transcodeInfo")),
            {"fileId": "9", "infoFilter.0": "basicInfo", "infoFilter.1": "transcodeInfo"},
        ),
    ]
    for request, wire in cases:
        assert request.to_params() == wire
        assert type(request).from_params({**wire, "Action": request.ACTION}) == request
        assert REQUESTS[request.ACTION] is type(request)


def test_confirm_event_accepts_documented_one_based_handles() -> None:
    request = ConfirmEventRequest.from_params({"msgHandle.1": "a", "msgHandle.2": "b"})
    assert request.msg_handles == ("a", "b")


def test_other_requests_name_missing_parameters() -> None:
    with pytest.raises(InvalidRequestParams) as caught:
        GetTaskInfoRequest.from_params({"Action": "GetTaskInfo"})
    assert caught.value.parameter == "vodTaskId"
    assert "GetTaskInfo" in str(caught.value)
    with pytest.raises(InvalidRequestParams) as caught:
        GetTaskListRequest.from_params({"status": "DONE"})
    assert caught.value.parameter == "status"
    with pytest.raises(InvalidRequestParams) as caught:
        GetVodTaskStatusRequest.from_params({})
    assert caught.value.parameter == "taskId"
