"""Errors the service answers with, each carrying its HTTP status and OpenAI error fields.

Every layer raises these; the API turns them into `{"error": {message, type, param, code}}` bodies
(or an error frame inside a stream that has already started).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ServiceError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}


class InvalidRequestError(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    default_code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            "completion). Please reduce the length of the messages or completion.",
            param="messages")
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    default_code = "request_too_large"


class AuthenticationError(ServiceError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class ModelNotFoundError(ServiceError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class NotFoundError(ServiceError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowedError(ServiceError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class QueueFullError(ServiceError):
    """Every slot busy and the waiting queue full: back off for Retry-After seconds."""

    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "queue_full"


class QueueTimeoutError(ServiceError):
    """Waited in the queue longer than queue_timeout_seconds without getting a slot."""

    status_code = 503
    error_type = "server_overloaded"
    default_code = "queue_timeout"


class RequestTimeoutError(ServiceError):
    status_code = 504
    error_type = "timeout"
    default_code = "request_timeout"


class ServiceUnavailableError(ServiceError):
    """Loading, draining or failed: not taking requests."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "model_not_ready"


class EngineFailureError(ServiceError):
    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"
