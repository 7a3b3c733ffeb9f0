"""The dashboard API's routes as declarations, and the OpenAPI 3.1 document built from them.

Each endpoint names its query, body and response models (pydantic); the same models parse
requests, shape responses and produce the schema, so the published document cannot drift from
what the server does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

Scope = Literal["read", "admin"]


class ApiModel(BaseModel):
    """camelCase on the wire, like VOD's own fields."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Problem(ApiModel):
    """Every error answer: what went wrong, in words, and the HTTP status."""

    error: str
    status: int


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[[Request], Awaitable[Response]]
    summary: str
    response: type[BaseModel] | None
    scope: Scope = "read"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"
    tags: tuple[str, ...] = field(default_factory=tuple)


_STATUS_TEXT = {
    400: "Bad request",
    401: "Missing or wrong bearer token",
    403: "The token's scope does not allow this",
    404: "Not found",
    409: "Conflict",
    422: "Invalid parameters",
}


def document(endpoints: list[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {Problem}
    for ep in endpoints:
        models.update(m for m in (ep.response, ep.body) if m is not None)
    _, schemas = models_json_schema(
        [(m, "serialization") for m in sorted(models, key=lambda m: m.__name__)],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        operation: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": ep.handler.__name__,
            "security": [{"bearer": []}],
            "responses": {},
        }
        if ep.tags:
            operation["tags"] = list(ep.tags)
        if ep.scope == "admin":
            operation["description"] = "Needs the admin token (VODFLOW_API_TOKEN)."
        parameters = _path_parameters(ep.path)
        if ep.query is not None:
            parameters += _query_parameters(ep.query)
        if parameters:
            operation["parameters"] = parameters
        if ep.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": _ref(ep.body)}},
                },
            }
        if ep.response is not None:
            content = {"schema": {"$ref": _ref(ep.response)}}
        else:
            content = {"schema": {"type": "string"}}
        operation["responses"][str(ep.status)] = {
            "description": "OK",
            "content": {ep.media_type: content},
        }
        for status in sorted({401, 403, *ep.errors} if ep.scope == "admin" else {401, *ep.errors}):
            operation["responses"][str(status)] = {
                "description": _STATUS_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": {"$ref": _ref(Problem)}}},
            }
        paths.setdefault(_openapi_path(ep.path), {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _ref(model: type[BaseModel]) -> str:
    return f"#/components/schemas/{model.__name__}"


def _openapi_path(path: str) -> str:
    return path.replace(":path}", "}")


def _path_parameters(path: str) -> list[dict[str, Any]]:
    out = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1].split(":")[0]
            out.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
    return out


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        param["schema"] = {k: v for k, v in prop.items() if k != "title"}
        if "description" in prop:
            param["description"] = prop["description"]
        if prop.get("type") == "array" or any(
            s.get("type") == "array" for s in prop.get("anyOf", [])
        ):
            param["style"] = "form"
            param["explode"] = True
        out.append(param)
    return out
