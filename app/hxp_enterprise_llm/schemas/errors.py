"""Errors the service answers with, each carrying its HTTP status, OpenAI error fields, and what it means.

Every layer raises these; the API turns them into `{"error": {message, type, param, code}}` bodies
(or an error frame inside a stream that has already started). Each class also says how the request
ends (`outcome`) and under which `reason` label `openchat_rejections_total` counts it, so a new
error cannot be reported one way in the response and another way in the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hxp_enterprise_llm.schemas.outcomes import Outcome


class ServiceError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = "internal_error"
    outcome = Outcome.FAILED
    rejection_reason: str | None = None  # the openchat_rejections_total label, if this is a refusal

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


# --- the client's mistakes (4xx): not counted against the latency SLO


class InvalidRequestError(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"
    outcome = Outcome.INVALID
    rejection_reason = "invalid"


class ContextLengthError(InvalidRequestError):
    default_code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int, prompt_field: str = "messages") -> None:
        """`prompt_field`: what the request called its prompt (chat: messages, completions: prompt)."""
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_field}, {max_tokens} in the "
            f"completion). Please reduce the length of the {prompt_field} or completion.",
            param=prompt_field)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    default_code = "request_too_large"
    rejection_reason = "too_large"


class HeadersTooLargeError(InvalidRequestError):
    status_code = 431
    default_code = "headers_too_large"
    rejection_reason = "too_large"


class BodyTimeoutError(InvalidRequestError):
    """The body did not arrive within body_timeout_seconds (a slow or stalled client)."""

    status_code = 408
    default_code = "body_timeout"
    rejection_reason = "body_timeout"


class LimitExceededError(InvalidRequestError):
    """A configured limit (messages, characters, choices) was passed; the message names it."""

    default_code = "limit_exceeded"
    rejection_reason = "too_large"


class AuthenticationError(InvalidRequestError):
    status_code = 401
    default_code = "invalid_api_key"
    rejection_reason = "unauthorized"


class ModelNotFoundError(InvalidRequestError):
    status_code = 404
    default_code = "model_not_found"


class NotFoundError(InvalidRequestError):
    status_code = 404
    default_code = "not_found"


class MethodNotAllowedError(InvalidRequestError):
    status_code = 405
    default_code = "method_not_allowed"


# --- admission: the service cannot take the request now; retry after Retry-After


class QueueFullError(ServiceError):
    """Every slot busy and the waiting queue full: back off for Retry-After seconds."""

    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "queue_full"
    outcome = Outcome.REJECTED
    rejection_reason = "queue_full"


class RateLimitError(ServiceError):
    """The key's own limit (requests or tokens per minute, concurrent requests): OpenAI's 429, whose
    `type` says which limit ("requests", "tokens"), before any work is done."""

    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"
    outcome = Outcome.LIMITED

    def __init__(self, message: str, *, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.error_type = "tokens" if reason == "tokens" else "requests"
        self.rejection_reason = f"key_{reason}"  # key_requests, key_tokens, key_concurrency


class QueueTimeoutError(ServiceError):
    """Waited in the queue longer than queue_timeout_seconds without getting a slot."""

    status_code = 503
    error_type = "server_overloaded"
    default_code = "queue_timeout"
    outcome = Outcome.REJECTED
    rejection_reason = "queue_timeout"


class ServiceUnavailableError(ServiceError):
    """Not taking requests: the model is still loading."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "model_not_ready"
    outcome = Outcome.REJECTED
    rejection_reason = "unavailable"


class DrainingError(ServiceUnavailableError):
    """Shutting down: running requests finish, new ones go to another replica."""

    default_code = "draining"
    rejection_reason = "draining"


class EngineUnavailableError(ServiceUnavailableError):
    """The engine died: the process is about to exit and be restarted."""

    default_code = "engine_failed"
    outcome = Outcome.FAILED
    rejection_reason = "engine_failed"


# --- the request was admitted but did not end normally


class RequestTimeoutError(ServiceError):
    status_code = 504
    error_type = "timeout"
    default_code = "request_timeout"
    outcome = Outcome.TIMEOUT
    rejection_reason = "timeout"

    @classmethod
    def after(cls, timeout_seconds: float, circumstance: str = "") -> RequestTimeoutError:
        """The request's deadline (`connection_timeout_seconds`, from its arrival) passed; `circumstance`
        says while what, if that helps the client."""
        return cls(f"request exceeded connection_timeout_seconds={timeout_seconds:g}"
                   + (f" {circumstance}" if circumstance else ""))


class GenerationAbortedError(ServiceError):
    """The service stopped the generation before the model finished (drain deadline)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "generation_aborted"
    outcome = Outcome.ABORTED


class InternalError(ServiceError):
    """A bug or an engine error that is not the client's fault; details are in the service log."""
