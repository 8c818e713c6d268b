"""The OpenAI routes: `/v1/chat/completions` (plain and SSE), `/v1/models`, `/metrics/streaming`.

Validation, admission and the context check all happen before the first byte of a response, so
every refusal is a plain HTTP error with an OpenAI body; once a stream has started, the only way
to report a failure is an error frame inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from hxp_enterprise_llm.api.errors import validation_error
from hxp_enterprise_llm.api.health import ServiceState
from hxp_enterprise_llm.orchestration.interactive_orchestrator import RequestRecord, Slot
from hxp_enterprise_llm.schemas.errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from hxp_enterprise_llm.schemas.openai import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    UsageInfo,
    new_completion_id,
    now,
)
from hxp_enterprise_llm.services.core.engine import GenerationRequest
from hxp_enterprise_llm.services.streaming.response_streamer import ResponseStreamer

if TYPE_CHECKING:
    from hxp_enterprise_llm.api.app import AppContext

router = APIRouter()
T = TypeVar("T")


class ClientDisconnected(Exception):
    pass


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


def _check_api_key(request: Request, ctx: AppContext) -> None:
    if ctx.config.api_key is None:
        return
    expected = ctx.config.api_key.get_secret_value().encode()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AuthenticationError("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
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


def _parse(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body or b"null", strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _prepare(ctx: AppContext, chat: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    if chat.model not in ctx.model_ids():
        raise ModelNotFoundError(f"The model '{chat.model}' does not exist; this service serves "
                                 f"'{ctx.config.served_model_name}'", param="model")
    if chat.stream and not ctx.config.streaming_enabled:
        raise InvalidRequestError("streaming is disabled on this service (streaming_enabled=false)",
                                  param="stream")
    if ctx.health.state != ServiceState.READY:
        raise ServiceUnavailableError(f"the model is not ready: {ctx.health.state.value} ({ctx.health.detail})",
                                      headers={"Retry-After": "5"})
    return ctx.service.prepare(
        [m.model_dump() | {"content": m.text()} for m in chat.messages],
        max_tokens=chat.requested_max_tokens(), temperature=chat.temperature, top_p=chat.top_p,
        top_k=chat.top_k, seed=chat.seed, stop=chat.stop_sequences(),
        presence_penalty=chat.presence_penalty, frequency_penalty=chat.frequency_penalty,
        logit_bias=chat.token_biases(), request_id=request_id)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Any:
    ctx = _ctx(request)
    request_id = request.state.request_id
    record = RequestRecord(request_id=request_id, stream=False,
                           client=f"{request.client.host}:{request.client.port}" if request.client else "")
    request.state.record = record
    _check_api_key(request, ctx)
    chat = _parse(await _read_body(request, ctx.config.max_request_body_bytes))
    record.stream = chat.stream
    generation = _prepare(ctx, chat, request_id)
    try:
        slot = await _unless_disconnected(request, ctx.orchestrator.acquire(record))
    except ClientDisconnected:
        ctx.orchestrator.finish(record, outcome="disconnected", status=499)
        return JSONResponse({}, status_code=499)
    if chat.stream:
        return _stream(ctx, chat, generation, record, slot)
    try:
        return await _unless_disconnected(request, _complete(ctx, chat, generation, record))
    except ClientDisconnected:
        ctx.orchestrator.finish(record, outcome="disconnected", status=499)
        return JSONResponse({}, status_code=499)
    finally:
        slot.release()


async def _complete(ctx: AppContext, chat: ChatCompletionRequest, generation: GenerationRequest,
                    record: RequestRecord) -> JSONResponse:
    parts: list[str] = []
    async for delta in ctx.orchestrator.run(ctx.service, generation, record):
        parts.append(delta.text)
    ctx.orchestrator.finish(record, status=200)
    body = ChatCompletionResponse(
        id=new_completion_id(), created=now(), model=chat.model,
        choices=[ChatCompletionChoice(message=ResponseMessage(content="".join(parts)),
                                      finish_reason=_public_finish(record.finish_reason))],
        usage=UsageInfo(prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
                        total_tokens=record.prompt_tokens + record.completion_tokens))
    return JSONResponse(body.model_dump())


def _public_finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


class _SlotHoldingResponse(EventSourceResponse):
    """Releases the slot however the response ends, even if the body never started."""

    def __init__(self, *args: Any, on_close: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _stream(ctx: AppContext, chat: ChatCompletionRequest, generation: GenerationRequest,
            record: RequestRecord, slot: Slot) -> EventSourceResponse:
    config = ctx.config
    streamer = ResponseStreamer(
        model=chat.model, chunk_size=config.response_chunk_size,
        flush_interval=config.stream_flush_interval_ms / 1000 if config.low_latency_mode else None,
        include_usage=bool(chat.stream_options and chat.stream_options.include_usage))
    ctx.streaming.active_streams += 1

    async def frames() -> AsyncIterator[bytes]:
        completed = False
        try:
            async for frame in streamer.frames(ctx.orchestrator.run(ctx.service, generation, record)):
                yield frame.encode()
            completed = True
        finally:
            summary = streamer.summary
            record.frames = summary.content_frames
            ctx.metrics.stream_chunks.labels(ctx.config.served_model_name).inc(record.frames)
            if summary.error is not None:
                ctx.orchestrator.finish(record, outcome=record.outcome if record.outcome != "running"
                                        else "error", status=200)
            else:
                ctx.orchestrator.finish(record, outcome=None if completed else "disconnected", status=200)

    def close() -> None:
        slot.release()
        ctx.streaming.active_streams -= 1
        if record.finished is None:  # the body never ran: the client left before the first byte
            ctx.orchestrator.finish(record, outcome="disconnected", status=499)

    return _SlotHoldingResponse(
        frames(), on_close=close, ping=config.stream_ping_seconds, sep="\n",
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    ctx = _ctx(request)
    _check_api_key(request, ctx)
    return ModelList(data=[_model_card(ctx)])


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> ModelCard:
    ctx = _ctx(request)
    _check_api_key(request, ctx)
    if model_id not in ctx.model_ids():
        raise ModelNotFoundError(f"The model '{model_id}' does not exist", param="model")
    return _model_card(ctx)


def _model_card(ctx: AppContext) -> ModelCard:
    return ModelCard(id=ctx.config.served_model_name, created=int(ctx.health.since), root=ctx.config.model_name,
                     max_model_len=ctx.config.max_model_len)


@router.get("/metrics/streaming")
async def streaming_metrics(request: Request) -> JSONResponse:
    return JSONResponse(_ctx(request).streaming.snapshot())

