"""What a client sent, checked before any work: API key, body size, JSON against the protocol models."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from hxp_enterprise_llm.api.errors import validation_error
from hxp_enterprise_llm.orchestration.key_policy import KeyPolicy
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.schemas.errors import (
    BodyTimeoutError,
    HeadersTooLargeError,
    LimitExceededError,
    PayloadTooLargeError,
)
from hxp_enterprise_llm.schemas.openai import ChatMessage

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


async def check_request_head(request: Request) -> None:
    """Every route's first check: the request line and headers within `max_header_bytes`.

    Checked here, whatever HTTP parser uvicorn picked (httptools, its default when installed, has no
    limit of its own), so the refusal is a 431 in the OpenAI error shape. A coroutine, though it never
    waits: FastAPI runs a plain-function dependency on a worker thread, a thread hop for every request.
    """
    scope = request.scope
    size = len(scope["method"]) + len(scope.get("raw_path") or scope["path"]) + len(scope["query_string"]) \
        + sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    limit = request.app.state.ctx.config.max_header_bytes
    if size > limit:
        raise HeadersTooLargeError(f"the request line and headers are {size} bytes, more than max_header_bytes "
                                   f"({limit})")


def check_api_key(request: Request) -> KeyPolicy:
    """The key's policy (its name, limits and priority), or a 401."""
    policy: KeyPolicy = request.app.state.ctx.api_keys.check(request.headers.get("authorization", ""))
    return policy


async def read_body(request: Request, config: ModelConfigSchema) -> bytes:
    """The whole body, refused once it passes max_request_body_bytes or takes over body_timeout_seconds."""
    try:
        async with asyncio.timeout(config.body_timeout_seconds):
            return await _read_limited(request, config.max_request_body_bytes)
    except TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within body_timeout_seconds="
                               f"{config.body_timeout_seconds:g}") from None


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def check_messages(messages: list[ChatMessage], config: ModelConfigSchema) -> None:
    if len(messages) > config.max_messages:
        raise LimitExceededError(f"messages: {len(messages)} messages, this service takes at most max_messages="
                                 f"{config.max_messages}", param="messages", code="too_many_messages")
    for index, message in enumerate(messages):
        length = len(message.text())
        if length > config.max_message_chars:
            raise LimitExceededError(f"messages.{index}.content: {length} characters, this service takes at most "
                                     f"max_message_chars={config.max_message_chars} per message",
                                     param=f"messages.{index}.content", code="message_too_long")


def parse_body(model: type[M], body: bytes) -> M:
    """Strict JSON validation: `"max_tokens": "50"` is a 400 naming the field, not a silent coercion."""
    try:
        return model.model_validate_json(body or b"null", strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it the moment the client goes away (queued or generating)."""
    task = asyncio.ensure_future(work)

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientDisconnected
