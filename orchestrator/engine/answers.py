"""The engine's answers: the v2 envelope ``{"code", "message", "codeDesc"}`` and the error that
becomes one.

Every answer of the API is HTTP 200 with this envelope, as Tencent's v2 API answers; the upload
endpoint (the engine's own) uses the same body with a matching HTTP status. ``codeDesc`` words
are Tencent's where known ("Success", "InvalidParameter", "AuthFailure", ...); the rest follow
the same pattern (unverified: clients must read ``code``, never ``codeDesc``).
"""

from __future__ import annotations

from pydantic import JsonValue
from starlette.responses import JSONResponse

from orchestrator.vod.errors import CODE_MEANINGS

CODE_DESC: dict[int, str] = {
    1000: "InvalidParameter",
    4000: "InvalidParameter",
    4100: "AuthFailure",
    4104: "AuthFailure.SecretIdNotFound",
    4400: "RequestLimitExceeded",
    4500: "AuthFailure.ReplayAttack",
    5000: "ResourceNotFound",
    6000: "InternalError",
    10008: "FileNotFound",
    50005: "DuplicateTask",
    50006: "TaskCreationFailed",
    50007: "InvalidProcedure",
}

# The upload endpoint's HTTP status for each code (the API itself always answers 200).
_HTTP_STATUS = {1000: 400, 4000: 400, 4100: 401, 4104: 401, 4400: 429, 4500: 401, 6000: 500}


class EngineError(Exception):
    """A request the engine refuses: ``code`` is VOD's, ``message`` names the thing and why."""

    def __init__(self, code: int, message: str, *, http_status: int | None = None) -> None:
        self.code = code
        self.message = message
        self.http_status = http_status or _HTTP_STATUS.get(code, 400)
        """The upload endpoint's HTTP status for it (the API answers 200)."""
        super().__init__(f"code {code} ({CODE_MEANINGS.get(code, 'error')}): {message}")


def success(fields: dict[str, JsonValue]) -> JSONResponse:
    return JSONResponse({"code": 0, "message": "", "codeDesc": "Success", **fields})


def failure(error: EngineError, *, http_status: int = 200) -> JSONResponse:
    body = {
        "code": error.code,
        "message": error.message,
        "codeDesc": CODE_DESC.get(error.code, "Failure"),
    }
    return JSONResponse(body, status_code=http_status)
