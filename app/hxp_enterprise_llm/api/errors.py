"""Every error leaves as `{"error": {message, type, param, code}}`; nothing reaches the client as a traceback."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hxp_enterprise_llm.api.lifecycle import record_of
from hxp_enterprise_llm.schemas.errors import (
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ServiceError,
)


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """The first problem of a request body, naming its field as OpenAI does in `param`."""
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"]]
    # Union members add their type name to the path (`stop.str`, `prompt.list[int]`); keep the field path.
    # An unknown field's name comes last and is the client's own, whatever it looks like (`max-tokens`).
    own_name = len(location) - 1 if first["type"] == "extra_forbidden" else len(location)
    path = ".".join(p for i, p in enumerate(location) if i >= own_name or not _is_type_tag(p))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        text = f"'{path}' is a required property"
    elif first["type"] == "extra_forbidden":
        return InvalidRequestError(f"Unrecognized request argument supplied: {path} (this service does not "
                                   "implement it, and does not drop it silently)", param=path,
                                   code="unsupported_parameter")
    elif first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", message)
        return InvalidRequestError(f"We could not parse the JSON body of your request: {reason}", code="invalid_json")
    elif first["type"] == "model_type" and not path:
        return InvalidRequestError("the request body must be a JSON object", code="invalid_json")
    elif first["type"] == "value_error" and ":" in message and not path:
        field = message.split(":", 1)[0]
        return InvalidRequestError(message, param=field, code="unsupported_parameter")
    else:
        text = f"{path}: {message} (got {_short_repr(first.get('input'))})" if path else message
    return InvalidRequestError(text, param=path or None, code="invalid_value")


def _is_type_tag(part: str) -> bool:
    return "[" in part or "-" in part or part in ("str", "int", "float", "bool", "dict", "list", "ContentPart")


def _short_repr(value: object, limit: int = 100) -> str:
    """The offending value for the message, cut so a huge body is not echoed back in full."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, InvalidRequestError(str(exc.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error: ServiceError = NotFoundError(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowedError(f"method {request.method} is not allowed on {request.url.path}")
        else:
            error = InvalidRequestError(str(exc.detail)) if exc.status_code < 500 else ServiceError(str(exc.detail))
            error.status_code = exc.status_code
        error.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return error_response(request, error)


def error_response(request: Request, error: ServiceError) -> JSONResponse:
    """The error as the client sees it; the request's record (if it has one) learns why it ended.

    A refusal is counted once: by the record when it closes, or here for requests that never
    opened one (no such route, wrong method).
    """
    record = record_of(request)
    if record is not None:
        record.fail(error)
    elif error.rejection_reason is not None:
        request.app.state.ctx.metrics.reject(error.rejection_reason)
    # X-Request-ID is not set here: the lifecycle middleware gives every response its one.
    return JSONResponse(error.body(), status_code=error.status_code, headers=dict(error.headers))
