"""Every error leaves as `{"error": {message, type, param, code}}`; nothing reaches the client as a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hxp_enterprise_llm.schemas.errors import (
    AuthenticationError,
    EngineFailureError,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotFoundError,
    QueueFullError,
    QueueTimeoutError,
    RequestTimeoutError,
    ServiceError,
    ServiceUnavailableError,
)

logger = logging.getLogger(__name__)


def rejection_reason(error: ServiceError) -> str | None:
    """The `reason` label of openchat_rejections_total for an error, if it is a rejection."""
    for kind, reason in ((QueueFullError, "queue_full"), (QueueTimeoutError, "queue_timeout"),
                         (RequestTimeoutError, "timeout"), (AuthenticationError, "unauthorized"),
                         (ServiceUnavailableError, "unavailable"), (InvalidRequestError, "invalid"),
                         (NotFoundError, "invalid"), (ModelNotFoundError, "invalid")):
        if isinstance(error, kind):
            return reason
    return None


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """The first problem of a request body, naming its field as OpenAI does in `param`."""
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"]]
    # Union members add their type name to the path (`stop.str`); keep only the field path.
    path = ".".join(p for p in location if p not in ("str", "list[str]", "list[ContentPart]", "function-after"))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        text = f"'{path}' is a required property"
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
            error = ServiceError(str(exc.detail))
            error.status_code = exc.status_code
        error.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return error_response(request, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, EngineFailureError("internal error; see the service log "
                                                          f"for request {_request_id(request)}"))


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def error_response(request: Request, error: ServiceError) -> JSONResponse:
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is not None:
        ctx.record_rejection(request, error)
    headers = dict(error.headers)
    headers["X-Request-ID"] = _request_id(request)
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)
