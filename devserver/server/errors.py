"""Every error the server answers with, in OpenAI's shape ``{"error": {message, type, param, code}}``.

One handler on ``KitDevError`` covers the whole tree (Starlette finds it along the exception's MRO),
and three more reshape what FastAPI/Starlette raise themselves (request validation, ``HTTPException``
such as 404/405) and anything unexpected (500, logged with its traceback; the server stays up).
Built-in ``ValueError``/``TypeError`` are never mapped to 4xx: a server bug must not look like a
client mistake.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from devserver.errors import InvalidRequest, KitDevError, QueueFull, Unauthorized
from devserver.server.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger(__name__)

QUEUE_FULL_RETRY_AFTER_S = 1


def error_payload(exc: KitDevError) -> dict[str, Any]:
    """The ``{"error": {...}}`` body for ``exc`` (also sent as an SSE event once a stream started)."""
    info = ErrorInfo(message=exc.one_line(), type=exc.error_type, param=exc.param, code=exc.code)
    return ErrorResponse(error=info).model_dump()


def _response(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorInfo(message=message, type=error_type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


# What pydantic puts into an error's location besides field names: union members and dict keys.
_NOT_FIELDS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "[key]"})


def _param(loc: Sequence[int | str]) -> str | None:
    """``("messages", 0, "role")`` → ``"messages[0].role"``; stops at a union member's tag or a dict
    key (``("stop", "list[str]")`` → ``"stop"``, ``("logit_bias", "hello", "[key]")`` → ``"logit_bias"``)."""
    parts = list(loc)
    if "[key]" in parts:
        parts = parts[: max(0, parts.index("[key]") - 1)]
    text = ""
    for part in parts:
        if isinstance(part, str) and (part in _NOT_FIELDS or not part.isidentifier()):
            break
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _union_member(loc: Sequence[int | str]) -> str | None:
    """The tag pydantic puts in a location for the member of a union it tried (``"list[str]"``)."""
    return next(
        (p for p in loc if isinstance(p, str) and p != "[key]" and (p in _NOT_FIELDS or not p.isidentifier())), None
    )


def invalid_request(exc: pydantic.ValidationError) -> InvalidRequest:
    """Translate a request-body validation failure into one 400 that names the offending field(s)."""
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        detail = errors[0].get("ctx", {}).get("error", errors[0]["msg"])
        return InvalidRequest(f"the request body is not valid JSON: {detail}")
    unknown = [p for e in errors if e["type"] == "extra_forbidden" and (p := _param(e["loc"]))]
    if unknown:
        names = ", ".join(unknown)
        return InvalidRequest(f"unsupported field(s): {names}", param=unknown[0])
    first = errors[0]
    param = _param(first["loc"])
    same = [e for e in errors if _param(e["loc"]) == param]
    # A field of several types (``stop``: a string or a list) fails once per type: the error that is
    # not a type mismatch says what is wrong (a list one too long); else name the types it may have.
    constraint = next((e for e in same if not e["type"].endswith("_type")), None)
    types = list(dict.fromkeys(tag for e in same if (tag := _union_member(e["loc"])) is not None))
    if constraint is not None:
        detail = constraint["msg"]
    elif len(types) > 1:
        detail = f"should be one of: {', '.join(types)}"
    else:
        detail = first["msg"]
    message = f"{param}: {detail}" if param else detail
    return InvalidRequest(message, param=param)


async def _on_kitdev_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KitDevError)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(QUEUE_FULL_RETRY_AFTER_S)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_payload(exc), status_code=exc.status_code, headers=headers or None)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = _param([p for p in first["loc"] if p not in ("body", "query", "path", "header")])
    return _response(400, f"{param}: {first['msg']}" if param else first["msg"], "invalid_request_error", param=param)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = "not_found" if exc.status_code == 404 else None
    return _response(exc.status_code, str(exc.detail), error_type, code=code, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return _response(500, "internal server error (see the server log)", "server_error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(KitDevError, _on_kitdev_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
