"""Errors of the VOD v2 protocol: what a VOD answer or task can fail with, and whether to retry.

Every failure that crosses the VOD boundary is a ``VodError`` carrying an ``ErrorClass``; the state
machine decides retries and run outcomes from the class alone, never from codes. The tree::

    VodError                       base: code, message, code_desc, action, error_class, retryable
    ├── InvalidParameter           invalid_params     1000, 4000; 6100 (wrong endpoint)    no retry
    │   └── InvalidRequestParams   invalid_params     found locally before sending, or by
    │                                                 the engine parsing a request          no retry
    ├── FileNotFound               file_not_found     10008, 5000; 70014 (task)             no retry
    ├── DuplicateTask              duplicate_task     50005: already submitted, recover     no retry
    ├── ProcedureInvalid           procedure_invalid  50007                                 no retry
    ├── FrequencyLimit             frequency_limit    4400: quota, back off                 retry
    ├── AuthError                  auth               4100-4110, 4200, 4300, 4500, 4600     no retry
    │   └── AccountError           auth               5200, 5300: purchase / balance        no retry
    ├── InternalError              internal           1, 1001, 1003, 2000, 10022, 10027,
    │                                                 10702, 50006, 5100, 6000, 6200;
    │                                                 unknown 6000-6999                     retry
    ├── TransportError             transport          connection failed, no answer          retry
    │   ├── MalformedResponse      transport          an answer that is not a VOD envelope  retry
    │   └── VodTimeout             timeout            no answer in time                     retry
    ├── MediaError                 media              bad source media (task errCode 30009,
    │                                                 60000, -43001 ... -49199)            no retry
    ├── TemplateError              template           a workflow template did not resolve   no retry
    ├── VerificationError          verification       outputs failed a usability check      no retry
    └── WebhookRejected            rejected           a webhook receiver answered 4xx       no retry

    MalformedEvent (ValueError)    an inbound callback body vodflow cannot read (answer 4xx);
                                   not a VodError: nothing was asked of VOD.

Decisions where the reference is silent:

* Unknown codes become a plain ``VodError`` of class ``internal``, retryable only in 6000-6999
  (Tencent's "server side" range). Anything else unknown is not retried: a run step fails with the
  code in its message rather than spending the 100/minute quota on a request VOD does not accept.
* ``5400`` (partial success) is not retried: a retry could repeat the part that succeeded; the
  sweeper's task queries find out what exists.
* ``70014`` "the task does not exist" is listed on Tencent's RedoTask page (the task service's
  English v2 documents); GetTaskInfo's own pages list only the common codes, and its Chinese page
  says a task older than 72 hours answers "NotFound". A task query is read as "VOD no longer
  knows this task" on any of 70014, 10008 and 5000 (resource does not exist). ``10027`` (RedoTask)
  and ``10702`` (GetTaskList) are documented as internal errors.
* ``6100`` (version not supported) means the request went to the wrong domain: a configuration
  fault, so ``invalid_params`` and not retried.
* ``4200``/``4500`` (expired / replayed request) are auth failures and not retried, as the seed's
  clients do; a clock that is hours off will not heal by retrying.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar


class ErrorClass(StrEnum):
    """Why something failed, in the words the state machine decides with."""

    INVALID_PARAMS = "invalid_params"
    FILE_NOT_FOUND = "file_not_found"
    DUPLICATE_TASK = "duplicate_task"
    PROCEDURE_INVALID = "procedure_invalid"
    FREQUENCY_LIMIT = "frequency_limit"
    INTERNAL = "internal"
    TRANSPORT = "transport"
    AUTH = "auth"
    REJECTED = "rejected"
    MEDIA = "media"
    TEMPLATE = "template"
    VERIFICATION = "verification"
    TIMEOUT = "timeout"


#: What each documented code means, in a few words (Tencent's seed table and common v2 codes).
CODE_MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        1: "internal error",
        1000: "invalid parameter",
        1001: "internal error",
        1003: "internal error",
        2000: "internal error",
        4000: "invalid request parameters",
        4100: "authentication failed",
        4101: "sub-account not authorized",
        4102: "sub-account not authorized for this resource",
        4103: "sub-account not authorized for this API",
        4104: "secret key does not exist",
        4105: "token invalid",
        4106: "MFA check failed",
        4107: "sub-account authorization failed",
        4108: "sub-account authorization failed",
        4109: "sub-account authorization failed",
        4110: "sub-account authorization failed",
        4200: "request expired",
        4300: "access denied",
        4400: "quota exceeded (frequency limit)",
        4500: "replay attack (Nonce reused or Timestamp out of range)",
        4600: "protocol not supported",
        5000: "resource does not exist",
        5100: "resource operation failed",
        5200: "purchase failed",
        5300: "insufficient balance",
        5400: "partial success",
        6000: "internal server error",
        6100: "version not supported (wrong domain?)",
        6200: "API temporarily unavailable",
        10008: "file does not exist",
        10022: "internal error",
        10027: "system internal error",
        10702: "internal error",
        70014: "the task does not exist",
        50005: "the same procedure task already exists",
        50006: "procedure task creation failed",
        50007: "procedure parameter invalid",
    }
)


class VodError(Exception):
    """A VOD call or task failed; ``error_class`` says why, ``retryable`` whether to try again."""

    error_class: ClassVar[ErrorClass] = ErrorClass.INTERNAL
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        code_desc: str | None = None,
        action: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.code_desc = code_desc
        self.action = action
        self._retryable = self.default_retryable if retryable is None else retryable
        super().__init__(self._describe())

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed later (frequency limit, transient faults)."""
        return self._retryable

    def _describe(self) -> str:
        where = self.action or "VOD"
        if self.code is None:
            return f"{where}: {self.message}"
        meaning = CODE_MEANINGS.get(self.code, "unknown code")
        said = self.message or self.code_desc or ""
        tail = f": {said}" if said and said != meaning else ""
        return f"{where} answered code {self.code} ({meaning}){tail}"


class InvalidParameter(VodError):
    """VOD rejected the request's parameters (1000, 4000)."""

    error_class = ErrorClass.INVALID_PARAMS


class InvalidRequestParams(InvalidParameter):
    """A request broke a rule of the API; ``parameter`` names it, ``expected`` says what fits.

    Raised before anything is sent (building a request) and by the embedded engine parsing one;
    the engine answers it with code 1000 or 4000.
    """

    def __init__(self, parameter: str, expected: str, *, action: str | None = None) -> None:
        self.parameter = parameter
        self.expected = expected
        super().__init__(f"parameter {parameter!r}: {expected}", code=None, action=action)


class FileNotFound(VodError):
    """The fileId, task or another resource does not exist (10008, 5000; 70014 for a task)."""

    error_class = ErrorClass.FILE_NOT_FOUND


class DuplicateTask(VodError):
    """50005: the same procedure task already exists; already submitted, recover its task IDs."""

    error_class = ErrorClass.DUPLICATE_TASK


class ProcedureInvalid(VodError):
    """50007: the procedure name or its parameters are not valid for this account."""

    error_class = ErrorClass.PROCEDURE_INVALID


class FrequencyLimit(VodError):
    """4400: the account's call quota is exhausted; back off and try again."""

    error_class = ErrorClass.FREQUENCY_LIMIT
    default_retryable = True
    retry_after: float | None = None
    """Seconds to wait, as the shared limiter decided when it was told of this answer."""


class AuthError(VodError):
    """The request was not authenticated or not authorized (41xx, 4200, 4300, 4500, 4600)."""

    error_class = ErrorClass.AUTH


class AccountError(AuthError):
    """The account cannot pay for the operation (5200, 5300); a person must act."""


class InternalError(VodError):
    """VOD failed on its side; the same call may succeed later."""

    error_class = ErrorClass.INTERNAL
    default_retryable = True


class TransportError(VodError):
    """No VOD answer was received (connection refused, reset, TLS failure)."""

    error_class = ErrorClass.TRANSPORT
    default_retryable = True


class MalformedResponse(TransportError):
    """Something answered, but not with a VOD JSON envelope (a proxy page, a truncated body)."""


class VodTimeout(TransportError):
    """No answer (or no task result) arrived in time."""

    error_class = ErrorClass.TIMEOUT


class MediaError(VodError):
    """The source media cannot be processed (VOD task errCode 30009)."""

    error_class = ErrorClass.MEDIA


class TemplateError(VodError):
    """A workflow template could not be resolved into request parameters."""

    error_class = ErrorClass.TEMPLATE


class VerificationError(VodError):
    """A task reported success but its outputs failed a usability check."""

    error_class = ErrorClass.VERIFICATION


class WebhookRejected(VodError):
    """A webhook receiver answered 4xx: sending the same body again will not help."""

    error_class = ErrorClass.REJECTED


class MalformedEvent(ValueError):
    """An inbound event body cannot be read; ``reason`` says which field and what was expected."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


_AUTH_CODES = frozenset({4100, *range(4101, 4111), 4200, 4300, 4500, 4600})
_INTERNAL_CODES = frozenset({1, 1001, 1003, 2000, 10022, 10027, 10702, 50006, 5100, 6000, 6200})

_CODE_TYPES: Mapping[int, type[VodError]] = MappingProxyType(
    {
        1000: InvalidParameter,
        4000: InvalidParameter,
        6100: InvalidParameter,
        10008: FileNotFound,
        5000: FileNotFound,
        70014: FileNotFound,
        50005: DuplicateTask,
        50007: ProcedureInvalid,
        4400: FrequencyLimit,
        5200: AccountError,
        5300: AccountError,
        **dict.fromkeys(_AUTH_CODES, AuthError),
        **dict.fromkeys(_INTERNAL_CODES, InternalError),
    }
)


def error_for_code(
    code: int, message: str = "", code_desc: str | None = None, action: str | None = None
) -> VodError:
    """The typed error for a non-zero ``code`` in a VOD answer (see the module docstring)."""
    error_type = _CODE_TYPES.get(code)
    if error_type is not None:
        return error_type(message, code=code, code_desc=code_desc, action=action)
    # Unknown code: only Tencent's server-side range is worth another try.
    return VodError(
        message,
        code=code,
        code_desc=code_desc,
        action=action,
        retryable=6000 <= code <= 6999,
    )


#: VOD task errCodes (processTaskList[].errCode, per-task event status) and their class.
TASK_ERROR_CLASSES: Mapping[int, ErrorClass] = MappingProxyType(
    {
        30009: ErrorClass.MEDIA,  # v2 sub-task: "source file abnormal"
        30010: ErrorClass.INTERNAL,  # v2 sub-task: "system failure or unknown"
        40000: ErrorClass.INVALID_PARAMS,  # v3 task: "input parameters invalid"
        60000: ErrorClass.MEDIA,  # v3 task: "source file error (e.g. corrupt video data)"
        70000: ErrorClass.INTERNAL,  # v3 task: "internal service error, retry"
    }
)

MEDIA_TASK_CODES = range(-49199, -43000)
"""The v2 per-task event codes Tencent documents ("视频处理类操作错误码": -43001 ... -49199), all
FFmpeg failing to decode or probe the source, or the source not meeting requirements (no audio
for an audio transcode, resolutions that differ in a concat, ...): the same file fails again."""


def task_error_class(err_code: int) -> ErrorClass:
    """The class of a failed VOD task's errCode (or per-task event status).

    Documented source-file failures are ``media`` and not retried; undocumented codes (and the
    ConcatComplete statuses -1 and 4, documented only as "failure") count as VOD-side failures.
    """
    known = TASK_ERROR_CLASSES.get(err_code)
    if known is not None:
        return known
    if err_code in MEDIA_TASK_CODES:
        return ErrorClass.MEDIA
    return ErrorClass.INTERNAL
