"""The VOD error hierarchy: every documented code has a class and a retry decision."""

from __future__ import annotations

import pytest

from orchestrator.vod.errors import (
    CODE_MEANINGS,
    TASK_ERROR_CLASSES,
    AccountError,
    AuthError,
    DuplicateTask,
    ErrorClass,
    FileNotFound,
    FrequencyLimit,
    InternalError,
    InvalidParameter,
    InvalidRequestParams,
    MalformedEvent,
    MalformedResponse,
    MediaError,
    ProcedureInvalid,
    TemplateError,
    TransportError,
    VerificationError,
    VodError,
    VodTimeout,
    WebhookRejected,
    error_for_code,
    task_error_class,
)


def test_error_class_members_are_exactly_the_state_machines() -> None:
    assert [member.value for member in ErrorClass] == [
        "invalid_params",
        "file_not_found",
        "duplicate_task",
        "procedure_invalid",
        "frequency_limit",
        "internal",
        "transport",
        "auth",
        "rejected",
        "media",
        "template",
        "verification",
        "timeout",
    ]


EXPECTED: dict[int, tuple[type[VodError], ErrorClass, bool]] = {
    1: (InternalError, ErrorClass.INTERNAL, True),
    1000: (InvalidParameter, ErrorClass.INVALID_PARAMS, False),
    1001: (InternalError, ErrorClass.INTERNAL, True),
    1003: (InternalError, ErrorClass.INTERNAL, True),
    2000: (InternalError, ErrorClass.INTERNAL, True),
    4000: (InvalidParameter, ErrorClass.INVALID_PARAMS, False),
    4100: (AuthError, ErrorClass.AUTH, False),
    4104: (AuthError, ErrorClass.AUTH, False),
    4110: (AuthError, ErrorClass.AUTH, False),
    4200: (AuthError, ErrorClass.AUTH, False),
    4300: (AuthError, ErrorClass.AUTH, False),
    4400: (FrequencyLimit, ErrorClass.FREQUENCY_LIMIT, True),
    4500: (AuthError, ErrorClass.AUTH, False),
    4600: (AuthError, ErrorClass.AUTH, False),
    5000: (FileNotFound, ErrorClass.FILE_NOT_FOUND, False),
    5100: (InternalError, ErrorClass.INTERNAL, True),
    5200: (AccountError, ErrorClass.AUTH, False),
    5300: (AccountError, ErrorClass.AUTH, False),
    5400: (VodError, ErrorClass.INTERNAL, False),
    6000: (InternalError, ErrorClass.INTERNAL, True),
    6100: (InvalidParameter, ErrorClass.INVALID_PARAMS, False),
    6200: (InternalError, ErrorClass.INTERNAL, True),
    10008: (FileNotFound, ErrorClass.FILE_NOT_FOUND, False),
    10022: (InternalError, ErrorClass.INTERNAL, True),
    10027: (InternalError, ErrorClass.INTERNAL, True),
    10702: (InternalError, ErrorClass.INTERNAL, True),
    70014: (FileNotFound, ErrorClass.FILE_NOT_FOUND, False),
    50005: (DuplicateTask, ErrorClass.DUPLICATE_TASK, False),
    50006: (InternalError, ErrorClass.INTERNAL, True),
    50007: (ProcedureInvalid, ErrorClass.PROCEDURE_INVALID, False),
}


@pytest.mark.parametrize("code", sorted(CODE_MEANINGS))
def test_every_documented_code_maps_to_a_class(code: int) -> None:
    error = error_for_code(code, "server words", "codeDesc", "ProcessFileByProcedure")
    assert error.code == code
    assert error.code_desc == "codeDesc"
    assert error.action == "ProcessFileByProcedure"
    if code in EXPECTED:
        kind, error_class, retryable = EXPECTED[code]
        assert type(error) is kind
        assert error.error_class is error_class
        assert error.retryable is retryable
    message = str(error)
    assert "ProcessFileByProcedure" in message
    assert str(code) in message
    assert CODE_MEANINGS[code] in message
    assert "server words" in message


def test_all_4101_to_4110_are_auth_failures() -> None:
    for code in range(4101, 4111):
        assert isinstance(error_for_code(code), AuthError)


@pytest.mark.parametrize(
    ("code", "retryable"), [(6999, True), (6001, True), (5999, False), (4999, False), (77, False)]
)
def test_unknown_codes_retry_only_in_the_server_range(code: int, retryable: bool) -> None:
    error = error_for_code(code, "", None, "GetTaskInfo")
    assert type(error) is VodError
    assert error.error_class is ErrorClass.INTERNAL
    assert error.retryable is retryable
    assert "unknown code" in str(error)


def test_message_falls_back_to_code_desc() -> None:
    assert str(error_for_code(4400, "", "QuotaExceeded", "PullEvent")) == (
        "PullEvent answered code 4400 (quota exceeded (frequency limit)): QuotaExceeded"
    )


@pytest.mark.parametrize(
    ("error", "error_class", "retryable"),
    [
        (TransportError("connection refused"), ErrorClass.TRANSPORT, True),
        (MalformedResponse("not JSON"), ErrorClass.TRANSPORT, True),
        (VodTimeout("no answer in 10 s"), ErrorClass.TIMEOUT, True),
        (MediaError("errCode 30009"), ErrorClass.MEDIA, False),
        (TemplateError("{{ steps.x }} is undefined"), ErrorClass.TEMPLATE, False),
        (VerificationError("no video stream"), ErrorClass.VERIFICATION, False),
        (WebhookRejected("receiver said 422"), ErrorClass.REJECTED, False),
        (InvalidRequestParams("fileId", "required"), ErrorClass.INVALID_PARAMS, False),
    ],
)
def test_local_errors_carry_their_class(
    error: VodError, error_class: ErrorClass, retryable: bool
) -> None:
    assert error.error_class is error_class
    assert error.retryable is retryable
    assert error.code is None


def test_retryable_can_be_overridden_per_instance() -> None:
    assert not InternalError("gave up", retryable=False).retryable


def test_invalid_request_params_names_parameter_and_action() -> None:
    error = InvalidRequestParams("gen.concat.dstType", "required", action="ProcessFileByProcedure")
    assert str(error) == "ProcessFileByProcedure: parameter 'gen.concat.dstType': required"
    assert isinstance(error, InvalidParameter)


def test_task_error_classes() -> None:
    assert TASK_ERROR_CLASSES[30009] is ErrorClass.MEDIA
    assert TASK_ERROR_CLASSES[30010] is ErrorClass.INTERNAL
    assert task_error_class(30009) is ErrorClass.MEDIA
    assert task_error_class(12345) is ErrorClass.INTERNAL
    assert task_error_class(-1) is ErrorClass.INTERNAL  # ConcatComplete's bare "failure"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # v2: Tencent's table of video processing error codes (decode failed, metadata missing,
        # source not meeting requirements); the first and last of each block.
        (-43001, ErrorClass.MEDIA),
        (-44199, ErrorClass.MEDIA),
        (-45001, ErrorClass.MEDIA),
        (-47100, ErrorClass.MEDIA),
        (-47403, ErrorClass.MEDIA),
        (-49199, ErrorClass.MEDIA),
        # just outside the documented range: not known to be the source's fault
        (-43000, ErrorClass.INTERNAL),
        (-49200, ErrorClass.INTERNAL),
        # v3 (MediaProcessTaskTranscodeResult.ErrCode in Tencent's SDKs).
        (40000, ErrorClass.INVALID_PARAMS),
        (60000, ErrorClass.MEDIA),
        (70000, ErrorClass.INTERNAL),
    ],
)
def test_documented_task_error_codes(code: int, expected: ErrorClass) -> None:
    assert task_error_class(code) is expected


def test_malformed_event_is_a_value_error_with_field_and_reason() -> None:
    problem = MalformedEvent("expected a string", field="data.vodTaskId")
    assert isinstance(problem, ValueError)
    assert not isinstance(problem, VodError)
    assert str(problem) == "data.vodTaskId: expected a string"
