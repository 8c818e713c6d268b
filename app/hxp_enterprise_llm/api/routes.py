"""The inference routes: `/v1/chat/completions` and `/v1/completions`, plain and streamed (SSE).

A request, top to bottom: open its record -> check the key -> read and parse the body -> admit it
(one gate, tokenize and check the context, wait for a slot) -> wait for the first token -> answer.
Every refusal, and anything that fails before the first token, is a plain HTTP error with an
OpenAI body; once a stream has started, the only way to report a failure is an error frame
inside it. The lifecycle middleware closes the record when the response is over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Receive, Scope, Send

from hxp_enterprise_llm.api.lifecycle import open_record
from hxp_enterprise_llm.api.openapi import request_body
from hxp_enterprise_llm.api.request_input import (
    ClientDisconnected,
    check_api_key,
    check_messages,
    parse_body,
    read_body,
    until_disconnected,
)
from hxp_enterprise_llm.orchestration.generation import Generation
from hxp_enterprise_llm.orchestration.request_record import STATUS_CLIENT_GONE, RequestRecord
from hxp_enterprise_llm.schemas.errors import InvalidRequestError
from hxp_enterprise_llm.schemas.openai import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ResponseMessage,
    SamplingFields,
    UsageInfo,
    new_completion_id,
    now,
)
from hxp_enterprise_llm.services.core.engine import GenerationRequest, TokenDelta, TokenLogprob
from hxp_enterprise_llm.services.streaming.logprob_format import chat_logprobs, completion_logprobs
from hxp_enterprise_llm.services.streaming.response_streamer import (
    CompletionStreamer,
    Delta,
    Prefetched,
    ResponseStreamer,
)

if TYPE_CHECKING:
    from hxp_enterprise_llm.api.context import AppContext

router = APIRouter()


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


@router.post("/v1/chat/completions", response_model=None, openapi_extra=request_body(ChatCompletionRequest),
             summary="Create a chat completion (OpenAI API)",
             responses={200: {"model": ChatCompletionResponse,
                              "description": "The answer; with `stream: true`, SSE chunks ending with [DONE]"}})
async def chat_completions(request: Request) -> Response:
    ctx = _ctx(request)
    record = open_record(request, "chat")
    record.key = check_api_key(request)
    chat = parse_body(ChatCompletionRequest, await read_body(request, ctx.config))
    check_messages(chat.messages, ctx.config)
    model = _check_common(ctx, record, chat, chat.model)
    sampling = _sampling(chat) | {
        "max_tokens": chat.requested_max_tokens(),
        "logprobs": (chat.top_logprobs or 0) if chat.logprobs else None,
        "json_schema": chat.response_format.json_schema.schema_
        if chat.response_format and chat.response_format.json_schema else None,
        "json_object": bool(chat.response_format and chat.response_format.type == "json_object"),
    }
    messages = [{"role": m.role, "content": m.text()} for m in chat.messages]
    answer = _Answer(model=model, n=chat.n, top_logprobs=sampling["logprobs"])
    return await _generate(request, ctx, record, chat.stream, answer,
                           lambda: ctx.service.prepare(messages, **sampling),
                           streamer=lambda: ResponseStreamer.for_config(
                               ctx.config, model=model, include_usage=chat.include_usage(), choices=chat.n,
                               top_logprobs=answer.top_logprobs),
                           respond=_chat_body)


@router.post("/v1/completions", response_model=None, openapi_extra=request_body(CompletionRequest),
             summary="Create a completion from a raw prompt (OpenAI legacy API; for evaluation harnesses)",
             responses={200: {"model": CompletionResponse,
                              "description": "The completion; with `stream: true`, SSE chunks ending with [DONE]"}})
async def completions(request: Request) -> Response:
    ctx = _ctx(request)
    record = open_record(request, "completion")
    record.key = check_api_key(request)
    body = parse_body(CompletionRequest, await read_body(request, ctx.config))
    model = _check_common(ctx, record, body, body.model)
    sampling = _sampling(body) | {"max_tokens": body.max_tokens, "logprobs": body.logprobs,
                                  "prompt_logprobs": body.logprobs if body.echo and body.logprobs is not None
                                  else None}
    answer = _Answer(model=model, n=body.n, top_logprobs=body.logprobs, echo=body.echo)
    prompt = body.single_prompt()

    def prepare() -> GenerationRequest:
        prepared = ctx.service.prepare_prompt(prompt, **sampling)
        if body.echo:  # the prompt as text, as the client will see it in front of the completion
            answer.echo_text = prompt if isinstance(prompt, str) else ctx.service.detokenize(prepared.prompt_token_ids)
            answer.first_prompt_token = ctx.service.detokenize(prepared.prompt_token_ids[:1])
        return prepared

    return await _generate(request, ctx, record, body.stream, answer, prepare,
                           streamer=lambda: CompletionStreamer.for_config(
                               ctx.config, model=model, include_usage=body.include_usage(), choices=body.n,
                               top_logprobs=body.logprobs),
                           respond=_completion_body)


def _check_common(ctx: AppContext, record: RequestRecord, body: SamplingFields, model: str | None) -> str:
    """The model the client names (the served one if none), and the checks both routes share."""
    record.stream = body.stream
    record.end_user = body.user
    record.choices = body.n  # the slots admission takes: one per sequence
    chosen = ctx.served_model(model)
    if body.stream and not ctx.config.streaming_enabled:
        raise InvalidRequestError("streaming is disabled on this service (streaming_enabled=false)",
                                  param="stream")
    return chosen


def _sampling(body: SamplingFields) -> dict[str, Any]:
    """The sampling fields both routes share, None where the client left them to the defaults."""
    return {"n": body.n, "temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
            "min_p": body.min_p, "repetition_penalty": body.repetition_penalty, "seed": body.seed,
            "presence_penalty": body.presence_penalty, "frequency_penalty": body.frequency_penalty,
            "stop": body.stop_sequences(), "stop_token_ids": tuple(body.stop_token_ids or ()),
            "min_tokens": body.min_tokens, "ignore_eos": body.ignore_eos, "logit_bias": body.token_biases()}


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class _Answer:
    """What a plain (not streamed) answer collects, and how the client asked for it."""

    model: str
    n: int
    top_logprobs: int | None
    echo: bool = False
    echo_text: str = ""
    first_prompt_token: str = ""
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    choices: list[_Choice] = field(default_factory=list)

    def add(self, delta: TokenDelta) -> None:
        while len(self.choices) <= delta.index:
            self.choices.append(_Choice())
        choice = self.choices[delta.index]
        choice.text.append(delta.text)
        choice.logprobs.extend(delta.logprobs or ())
        if delta.finish_reason is not None:
            choice.finish_reason = str(delta.finish_reason)
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs


async def _generate(request: Request, ctx: AppContext, record: RequestRecord, stream: bool, answer: _Answer,
                    prepare: Callable[[], GenerationRequest], *, streamer: Callable[[], ResponseStreamer],
                    respond: Callable[[_Answer, RequestRecord], Any]) -> Response:
    try:
        prepared = await until_disconnected(request, ctx.orchestrator.admit(record, prepare))
    except ClientDisconnected:
        return Response(status_code=STATUS_CLIENT_GONE)
    record.choices = prepared.sampling.n
    generation = ctx.orchestrator.generate(record, prepared)
    if stream:
        return _stream(ctx, streamer(), generation, record, answer)
    try:
        await until_disconnected(request, _collect(generation, answer))
    except ClientDisconnected:
        await generation.aclose()
        return Response(status_code=STATUS_CLIENT_GONE)
    except BaseException:
        await generation.aclose()
        raise
    await generation.aclose()
    return JSONResponse(respond(answer, record))


async def _collect(generation: Generation, answer: _Answer) -> None:
    while True:
        try:
            delta = await generation.next()
        except StopAsyncIteration:
            return
        if isinstance(delta, TokenDelta):
            answer.add(delta)


def _usage(record: RequestRecord) -> UsageInfo:
    return UsageInfo.of(record.prompt_tokens, record.completion_tokens, record.cached_tokens)


def _chat_body(answer: _Answer, record: RequestRecord) -> dict[str, Any]:
    return ChatCompletionResponse(
        id=new_completion_id(), created=now(), model=answer.model, usage=_usage(record),
        choices=[ChatCompletionChoice(
            index=index, message=ResponseMessage(content="".join(choice.text)), finish_reason=choice.finish_reason,
            logprobs=chat_logprobs(choice.logprobs, answer.top_logprobs or 0)
            if answer.top_logprobs is not None else None)
            for index, choice in enumerate(answer.choices)]).model_dump()


def _completion_body(answer: _Answer, record: RequestRecord) -> dict[str, Any]:
    choices = []
    for index, choice in enumerate(answer.choices):
        logprobs = None
        if answer.top_logprobs is not None:
            entries: list[TokenLogprob | None] = list(answer.prompt_logprobs or ()) if answer.echo else []
            entries += choice.logprobs
            logprobs = completion_logprobs(entries, answer.top_logprobs, 0, none_token=answer.first_prompt_token)
        choices.append(CompletionChoice(index=index, text=answer.echo_text + "".join(choice.text),
                                        logprobs=logprobs, finish_reason=choice.finish_reason))
    return CompletionResponse(id=new_completion_id("cmpl"), created=now(), model=answer.model, choices=choices,
                              usage=_usage(record)).model_dump()


def _stream(ctx: AppContext, streamer: ResponseStreamer, generation: Generation, record: RequestRecord,
            answer: _Answer) -> EventSourceResponse:
    async def body(first: Delta | None) -> AsyncIterator[bytes]:
        try:
            if isinstance(streamer, CompletionStreamer) and answer.echo:
                for frame in streamer.echo_frames(answer.echo_text, getattr(first, "prompt_logprobs", None),
                                                  answer.first_prompt_token):
                    yield frame.encode()
            async for frame in streamer.frames(Prefetched(first, generation)):
                yield frame.encode()
        finally:
            record.frames = streamer.content_frames
            if streamer.error is not None:
                record.fail(streamer.error)

    return GenerationResponse(
        generation, body, ping=ctx.config.stream_ping_seconds, sep="\n",
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _no_frames() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator with nothing in it: the body until the first token is known


class GenerationResponse(EventSourceResponse):
    """An SSE response that owns its generation, made as soon as the request is admitted.

    Its headers wait for the first token: whatever fails before it (the engine refusing the request, a
    dead engine, the deadline) is raised before any byte and reaches the app's error handlers as the
    plain HTTP error it is, not a 200 stream. Meanwhile the response is set up (sse-starlette's tasks
    started), so the first token goes out the moment the engine yields it. Pings and sse-starlette's
    exit signal start with the headers: before them the request is the route's, as any other. However
    it ends (even before its first byte, when the client has gone), the engine request is closed and
    aborted if unfinished.
    """

    def __init__(self, generation: Generation, body: Callable[[Delta | None], AsyncIterator[bytes]],
                 *args: Any, **kwargs: Any) -> None:
        super().__init__(_no_frames(), *args, **kwargs)
        self._generation = generation
        self._body = body
        self._headers_due = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generation.aclose()

    async def _stream_response(self, send: Send) -> None:
        first = await self._generation.next()
        self.body_iterator = self._body(first)  # (the placeholder was never started: nothing to close)
        self._headers_due.set()
        await super()._stream_response(send)

    async def _ping(self, send: Send) -> None:
        await self._headers_due.wait()
        await super()._ping(send)

    async def _listen_for_exit_signal_with_grace(self) -> None:
        await self._headers_due.wait()
        await super()._listen_for_exit_signal_with_grace()

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # Every send is bounded by the request's deadline already (RequestLifecycleMiddleware); without a
        # send_timeout of its own, sse-starlette's cancel scope around each frame would bound nothing.
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)
