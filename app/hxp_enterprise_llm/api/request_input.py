"""What a client sent, checked before any work: API key, body size, JSON against the protocol models."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from hxp_enterprise_llm.api.errors import validation_error
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.schemas.errors import AuthenticationError, PayloadTooLargeError

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


def check_api_key(request: Request, config: ModelConfigSchema) -> None:
    if config.api_key is None:
        return
    expected = config.api_key.get_secret_value().encode()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell an attacker how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AuthenticationError("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


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
