"""Token deltas -> OpenAI SSE frames (`data: {json}\\n\\n` ... `data: [DONE]\\n\\n`).

Chunking policy for real-time use: the role frame goes out at once and the first token is flushed
the moment it arrives (time to first token is never delayed by batching); after that, text is sent
every `chunk_size` tokens, or sooner when `flush_interval` passes with tokens pending (low-latency
mode), so a slow engine never makes the reader wait for a full chunk. Text that ends inside a
multi-byte character (U+FFFD from the detokenizer) is held back until it completes.

The streamer depends on nothing above the schemas: it reads any `DeltaSource` (the orchestrator's
`Generation` in the service, a plain async iterator of deltas elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from hxp_enterprise_llm.schemas.errors import InternalError, ServiceError
from hxp_enterprise_llm.schemas.openai import (
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    UsageInfo,
    new_completion_id,
    now,
)

if TYPE_CHECKING:
    from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema

logger = logging.getLogger(__name__)

DONE_FRAME = "data: [DONE]\n\n"
PING_FRAME = ": ping\n\n"
INCOMPLETE_CHARACTER = "\ufffd"


class Delta(Protocol):
    """New output since the previous delta (counts are cumulative); `TokenDelta` is one."""

    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> str | None: ...


class DeltaSource(Protocol):
    async def next(self, wait: float | None = None) -> Delta | None:
        """The next delta, None if `wait` seconds passed first; StopAsyncIteration at the end."""


class IteratorSource:
    """A DeltaSource over a plain async iterator of deltas (no deadline, no abort)."""

    def __init__(self, deltas: AsyncIterator[Any]) -> None:
        self._deltas = deltas
        self._pending: asyncio.Future[Any] | None = None

    async def next(self, wait: float | None = None) -> Delta | None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._deltas))
        done, _ = await asyncio.wait({self._pending}, timeout=wait)
        if not done:
            return None
        task, self._pending = self._pending, None
        delta: Delta = task.result()
        return delta


class Prefetched:
    """A DeltaSource whose first delta was read already (the route waits for it before the headers)."""

    def __init__(self, first: Delta | None, rest: DeltaSource) -> None:
        self._first = first
        self._rest = rest

    async def next(self, wait: float | None = None) -> Delta | None:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._rest.next(wait)


def sse_frame(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class ResponseStreamer:
    """Builds the SSE frames of one chat completion stream."""

    def __init__(self, model: str = "openchat-3.5", chunk_size: int = 10, flush_interval: float | None = 0.05,
                 include_usage: bool = False, completion_id: str | None = None) -> None:
        self.model = model
        self.chunk_size = chunk_size
        self.flush_interval = flush_interval
        self.include_usage = include_usage
        self.completion_id = completion_id or new_completion_id()
        self.created = now()
        self.content_frames = 0  # frames carrying text or the finish reason (not role, usage, error)
        self.error: ServiceError | None = None  # what ended the stream early, if anything

    @classmethod
    def for_config(cls, config: ModelConfigSchema, *, model: str | None = None,
                   include_usage: bool = False) -> ResponseStreamer:
        """The streamer the service's settings ask for (chunk size, flush budget in low-latency mode)."""
        return cls(model=model or config.served_model_name, chunk_size=config.response_chunk_size,
                   flush_interval=config.stream_flush_interval_ms / 1000 if config.low_latency_mode else None,
                   include_usage=include_usage)

    def _chunk(self, delta: DeltaMessage, finish_reason: str | None = None) -> str:
        if delta.role is None:
            self.content_frames += 1
        body = ChatCompletionStreamResponse(
            id=self.completion_id, created=self.created, model=self.model,
            choices=[ChatCompletionStreamChoice(delta=delta, finish_reason=finish_reason)])
        payload = body.model_dump()
        # OpenAI omits unset delta fields ({"content": "Hi"}), but keeps finish_reason: null.
        payload["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
        return sse_frame(payload)

    async def frames(self, source: DeltaSource) -> AsyncIterator[str]:
        """Every frame of the stream, ending with `data: [DONE]`; an error becomes an error frame."""
        yield self._chunk(DeltaMessage(role="assistant", content=""))
        pending_text, pending_tokens, first_sent = "", 0, False
        pending_since = 0.0  # when the oldest unsent token arrived: the flush budget runs from there
        last: Delta | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                wait = None
                if pending_tokens and self.flush_interval:
                    wait = max(0.0, pending_since + self.flush_interval - loop.time())
                try:
                    delta = await source.next(wait)
                except StopAsyncIteration:
                    break
                if delta is None:  # the flush budget passed with tokens pending
                    text, pending_text = _split_complete(pending_text)
                    if text:
                        yield self._chunk(DeltaMessage(content=text))
                    # Whatever is held back (half a character) waits for the next token.
                    pending_tokens = 0
                    continue
                last = delta
                new_tokens = max(len(delta.token_ids), 1 if delta.text else 0)
                if new_tokens and not pending_tokens:
                    pending_since = loop.time()
                pending_text += delta.text
                pending_tokens += new_tokens
                if delta.finish_reason is not None:
                    break
                budget_spent = bool(self.flush_interval) and loop.time() - pending_since >= (self.flush_interval or 0)
                if not first_sent or pending_tokens >= self.chunk_size or (pending_tokens and budget_spent):
                    text, pending_text = _split_complete(pending_text)
                    if text:
                        first_sent = True
                        yield self._chunk(DeltaMessage(content=text))
                        pending_tokens = 0
        except ServiceError as exc:  # the stream has started: report in-band, then end it cleanly
            self.error = exc
        except Exception:
            logger.exception("stream %s failed", self.completion_id)
            self.error = InternalError(f"stream {self.completion_id} failed; see the service log")
        if self.error is not None:
            # Text the client has not seen yet is dropped with the error: the answer is incomplete
            # either way, and a half-sent chunk must not look like the end of a complete one.
            yield sse_frame(self.error.body())
            yield DONE_FRAME
            return
        finish = last.finish_reason if last is not None and last.finish_reason is not None else "stop"
        yield self._chunk(DeltaMessage(content=pending_text) if pending_text else DeltaMessage(), str(finish))
        if self.include_usage:
            yield sse_frame(ChatCompletionStreamResponse(
                id=self.completion_id, created=self.created, model=self.model, choices=[],
                usage=_usage(last)).model_dump())
        yield DONE_FRAME

    async def stream_response(self, prompt: Any, config: Any = None, **sampling: Any) -> AsyncIterator[str]:
        """The spec's convenience form: SSE frames for a prompt (a string or chat messages).

        `config` is a chat service (an `OpenChat35Service`, started or not), or a service config
        (an `OpenChat35Config`), whose `service()` makes one; the model loads on first use. The
        streamer's own settings are not changed: the frames follow the service's chunking settings.
        """
        source = config.service() if hasattr(config, "service") and callable(config.service) else config
        if source is None:
            raise TypeError("stream_response needs a service or a service config, e.g. OpenChat35Config()")
        if not source.ready:
            await source.start()
        streamer = ResponseStreamer.for_config(source.config, include_usage=self.include_usage)
        request = source.prepare(prompt, **sampling)
        async for frame in streamer.frames(IteratorSource(source.stream(request))):
            yield frame


def _usage(last: Delta | None) -> UsageInfo:
    prompt = last.prompt_tokens if last is not None else 0
    completion = last.completion_tokens if last is not None else 0
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _split_complete(text: str) -> tuple[str, str]:
    """(sendable, held back): hold back a trailing incomplete multi-byte character."""
    cut = len(text)
    while cut > 0 and text[cut - 1] == INCOMPLETE_CHARACTER:
        cut -= 1
    return text[:cut], text[cut:]
