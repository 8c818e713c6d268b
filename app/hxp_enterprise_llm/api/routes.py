"""The OpenAI routes: `/v1/chat/completions` (plain and SSE), `/v1/models`, and `/metrics/streaming`.

A chat request, top to bottom: open its record -> check the key -> parse the body -> admit it (one
gate, tokenize and check the context, wait for a slot) -> generate. Every refusal happens before the
first byte of a response, so it is a plain HTTP error with an OpenAI body; once a stream has started,
the only way to report a failure is an error frame inside it. The lifecycle middleware closes the
record when the response is over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from hxp_enterprise_llm.api.lifecycle import open_record
from hxp_enterprise_llm.api.request_input import (
    ClientDisconnected,
    check_api_key,
    parse_body,
    read_body,
    until_disconnected,
)
from hxp_enterprise_llm.orchestration.generation import Generation
from hxp_enterprise_llm.orchestration.request_record import STATUS_CLIENT_GONE, RequestRecord
from hxp_enterprise_llm.schemas.errors import InvalidRequestError, ModelNotFoundError
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
from hxp_enterprise_llm.services.streaming.response_streamer import Delta, Prefetched, ResponseStreamer

if TYPE_CHECKING:
    from hxp_enterprise_llm.api.app import AppContext

router = APIRouter()


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    ctx = _ctx(request)
    record = open_record(request, "chat")
    check_api_key(request, ctx.config)
    chat = parse_body(ChatCompletionRequest, await read_body(request, ctx.config.max_request_body_bytes))
    record.stream = chat.stream
    _check_model(ctx, chat.model)
    if chat.stream and not ctx.config.streaming_enabled:
        raise InvalidRequestError("streaming is disabled on this service (streaming_enabled=false)",
                                  param="stream")
    try:
        prepared = await until_disconnected(
            request, ctx.orchestrator.admit(record, lambda: _prepare(ctx, chat, record.request_id)))
    except ClientDisconnected:
        return Response(status_code=STATUS_CLIENT_GONE)
    generation = ctx.orchestrator.generate(record, prepared)
    try:
        if chat.stream:
            # Headers wait for the first token: whatever fails before it (the engine refusing the
            # request, a dead engine, the deadline) is still a plain HTTP error, not a 200 stream.
            first = await until_disconnected(request, generation.next())
            return _stream(ctx, chat, generation, record, first)
        return await until_disconnected(request, _complete(chat, generation, record))
    except ClientDisconnected:
        await generation.aclose()
        return Response(status_code=STATUS_CLIENT_GONE)
    except BaseException:
        await generation.aclose()
        raise


def _check_model(ctx: AppContext, model: str) -> None:
    if model not in ctx.model_ids():
        raise ModelNotFoundError(f"The model '{model}' does not exist; this service serves "
                                 f"'{ctx.config.served_model_name}'", param="model")


def _prepare(ctx: AppContext, chat: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    return ctx.service.prepare(
        [m.model_dump() | {"content": m.text()} for m in chat.messages],
        max_tokens=chat.requested_max_tokens(), temperature=chat.temperature, top_p=chat.top_p,
        top_k=chat.top_k, seed=chat.seed, stop=chat.stop_sequences(),
        presence_penalty=chat.presence_penalty, frequency_penalty=chat.frequency_penalty,
        logit_bias=chat.token_biases(), request_id=request_id)


async def _complete(chat: ChatCompletionRequest, generation: Generation, record: RequestRecord) -> JSONResponse:
    parts: list[str] = []
    while True:
        try:
            delta = await generation.next()
        except StopAsyncIteration:
            break
        if delta is not None:
            parts.append(delta.text)
    await generation.aclose()
    body = ChatCompletionResponse(
        id=new_completion_id(), created=now(), model=chat.model,
        choices=[ChatCompletionChoice(message=ResponseMessage(content="".join(parts)),
                                      finish_reason=str(record.finish_reason))],
        usage=UsageInfo(prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
                        total_tokens=record.prompt_tokens + record.completion_tokens))
    return JSONResponse(body.model_dump())


def _stream(ctx: AppContext, chat: ChatCompletionRequest, generation: Generation, record: RequestRecord,
            first: Delta | None) -> EventSourceResponse:
    streamer = ResponseStreamer.for_config(
        ctx.config, model=chat.model, include_usage=bool(chat.stream_options and chat.stream_options.include_usage))

    async def body() -> AsyncIterator[bytes]:
        try:
            async for frame in streamer.frames(Prefetched(first, generation)):
                yield frame.encode()
        finally:
            record.frames = streamer.content_frames
            if streamer.error is not None:
                record.fail(streamer.error)

    return GenerationResponse(
        generation, body(), ping=ctx.config.stream_ping_seconds, sep="\n",
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class GenerationResponse(EventSourceResponse):
    """An SSE response that owns its generation: however it ends (even before its first byte, when
    the client has gone), the engine request is closed and aborted if unfinished."""

    def __init__(self, generation: Generation, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generation.aclose()


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    ctx = _ctx(request)
    check_api_key(request, ctx.config)
    return ModelList(data=[_model_card(ctx)])


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> ModelCard:
    ctx = _ctx(request)
    check_api_key(request, ctx.config)
    _check_model(ctx, model_id)
    return _model_card(ctx)


def _model_card(ctx: AppContext) -> ModelCard:
    return ModelCard(id=ctx.config.served_model_name, created=int(ctx.health.since), root=ctx.config.model_name,
                     max_model_len=ctx.config.max_model_len)


@router.get("/metrics/streaming")
async def streaming_metrics(request: Request) -> dict[str, Any]:
    ctx = _ctx(request)
    return ctx.streaming.snapshot(active_streams=ctx.orchestrator.active_streams)
