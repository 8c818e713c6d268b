"""Token deltas -> OpenAI SSE frames (`data: {json}\\n\\n` ... `data: [DONE]\\n\\n`).

Chunking policy for real-time use: the role frame goes out at once and the first token is flushed
the moment it arrives (time to first token is never delayed by batching); after that, text is sent
every `chunk_size` tokens, or sooner when `flush_interval` passes with tokens pending (low-latency
mode), so a slow engine never makes the reader wait for a full chunk. Text that ends inside a
multi-byte character (U+FFFD from the detokenizer) is held back until it completes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hxp_enterprise_llm.schemas.errors import EngineFailureError, ServiceError
from hxp_enterprise_llm.schemas.openai import (
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    UsageInfo,
    new_completion_id,
    now,
)

if TYPE_CHECKING:
    from hxp_enterprise_llm.services.core.engine import TokenDelta

DONE_FRAME = "data: [DONE]\n\n"
PING_FRAME = ": ping\n\n"
INCOMPLETE_CHARACTER = "\ufffd"


def sse_frame(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass
class StreamSummary:
    """What was streamed, for usage accounting, metrics and the request log."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    content_frames: int = 0  # frames carrying text or the finish reason (not role, usage, error)
    error: ServiceError | None = None


class ResponseStreamer:
    """Builds the SSE frames of one chat completion stream."""

    def __init__(self, model: str = "openchat-3.5", chunk_size: int = 10, flush_interval: float | None = 0.05,
                 include_usage: bool = False, completion_id: str | None = None,
                 error_mapper: Callable[[BaseException], ServiceError] | None = None) -> None:
        self.model = model
        self.chunk_size = chunk_size
        self.flush_interval = flush_interval
        self.include_usage = include_usage
        self.completion_id = completion_id or new_completion_id()
        self.created = now()
        self.summary = StreamSummary()
        self._map_error = error_mapper or _default_error

    def _chunk(self, delta: DeltaMessage, finish_reason: str | None = None) -> str:
        if delta.role is None:
            self.summary.content_frames += 1
        body = ChatCompletionStreamResponse(
            id=self.completion_id, created=self.created, model=self.model,
            choices=[ChatCompletionStreamChoice(delta=delta, finish_reason=finish_reason)])
        payload = body.model_dump()
        # OpenAI omits unset delta fields ({"content": "Hi"}), but keeps finish_reason: null.
        payload["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
        return sse_frame(payload)

    async def frames(self, deltas: AsyncIterable[TokenDelta]) -> AsyncIterator[str]:
        """Every frame of the stream, ending with `data: [DONE]`; errors become an error frame."""
        yield self._chunk(DeltaMessage(role="assistant", content=""))
        pending_text, pending_tokens, first_sent = "", 0, False
        pending_since = 0.0  # when the oldest unsent token arrived: the flush budget runs from there
        loop = asyncio.get_running_loop()
        iterator = aiter(deltas)
        next_delta: asyncio.Task[TokenDelta] | None = None
        try:
            while True:
                if next_delta is None:
                    next_delta = asyncio.ensure_future(anext(iterator))
                timeout = None
                if pending_tokens and self.flush_interval:
                    timeout = max(0.0, pending_since + self.flush_interval - loop.time())
                done, _ = await asyncio.wait({next_delta}, timeout=timeout)
                if not done:  # the flush budget passed with tokens pending
                    text, pending_text = _split_complete(pending_text)
                    if text:
                        yield self._chunk(DeltaMessage(content=text))
                    # Whatever is held back (half a character) waits for the next token.
                    pending_tokens = 0
                    continue
                try:
                    delta = next_delta.result()
                except StopAsyncIteration:
                    break
                finally:
                    next_delta = None
                self.summary.prompt_tokens = delta.prompt_tokens
                self.summary.completion_tokens = delta.completion_tokens
                new_tokens = max(len(delta.token_ids), 1 if delta.text else 0)
                if new_tokens and not pending_tokens:
                    pending_since = loop.time()
                pending_text += delta.text
                pending_tokens += new_tokens
                if delta.finish_reason is not None:
                    self.summary.finish_reason = delta.finish_reason
                    break
                budget_spent = bool(self.flush_interval) and loop.time() - pending_since >= (self.flush_interval or 0)
                if not first_sent or pending_tokens >= self.chunk_size or (pending_tokens and budget_spent):
                    text, pending_text = _split_complete(pending_text)
                    if text:
                        first_sent = True
                        yield self._chunk(DeltaMessage(content=text))
                        pending_tokens = 0
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # the stream has started: report in-band, then end it cleanly
            error = self._map_error(exc)
            self.summary.error = error
            yield sse_frame(error.body())
            yield DONE_FRAME
            return
        finally:
            if next_delta is not None:
                next_delta.cancel()
        finish = self.summary.finish_reason or "stop"
        if finish == "abort":
            finish = "stop"
        yield self._chunk(DeltaMessage(content=pending_text) if pending_text else DeltaMessage(), finish)
        if self.include_usage:
            yield sse_frame(ChatCompletionStreamResponse(
                id=self.completion_id, created=self.created, model=self.model, choices=[],
                usage=self.usage()).model_dump())
        yield DONE_FRAME

    def usage(self) -> UsageInfo:
        s = self.summary
        return UsageInfo(prompt_tokens=s.prompt_tokens, completion_tokens=s.completion_tokens,
                         total_tokens=s.prompt_tokens + s.completion_tokens)

    async def stream_response(self, prompt: Any, config: Any = None, **sampling: Any) -> AsyncIterator[str]:
        """The spec's convenience form: SSE frames for a prompt (str or messages) on a started service.

        `config` is an `OpenChat35Service` that has been started, or an `OpenChat35Config` (a service
        is then created and started here, which loads the model).
        """
        from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service

        service = config if isinstance(config, OpenChat35Service) else OpenChat35Service(config)
        if not service.ready:
            await service.start()
        self.chunk_size = service.config.response_chunk_size
        self.model = service.config.served_model_name
        request = service.prepare(prompt, **sampling)
        async for frame in self.frames(service.stream(request)):
            yield frame


def _split_complete(text: str) -> tuple[str, str]:
    """(sendable, held back): hold back a trailing incomplete multi-byte character."""
    cut = len(text)
    while cut > 0 and text[cut - 1] == INCOMPLETE_CHARACTER:
        cut -= 1
    return text[:cut], text[cut:]


def _default_error(exc: BaseException) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    return EngineFailureError(f"generation failed: {type(exc).__name__}")
