"""Token deltas -> OpenAI SSE frames (`data: {json}\\n\\n` ... `data: [DONE]\\n\\n`).

Chunking policy for real-time use: the role frame goes out at once and the first token is flushed
the moment it arrives (time to first token is never delayed by batching); after that, text is sent
every `chunk_size` tokens, or sooner once `flush_interval` has passed since the choice's previous
frame (low-latency mode): a slow engine never makes the reader wait for a full chunk, no token waits
longer than the budget, and a token that comes after a longer gap than that goes out at once (under
load, when every token comes slower than the budget, that is every token: no waiting, no timer). Text that ends inside a
multi-byte character (U+FFFD from the detokenizer) is held back until it completes.

The streamer depends on nothing above the schemas: it reads any `DeltaSource` (the orchestrator's
`Generation` in the service, a plain async iterator of deltas elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hxp_enterprise_llm.schemas.errors import InternalError, ServiceError
from hxp_enterprise_llm.schemas.openai import (
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    CompletionChoice,
    DeltaMessage,
    UsageInfo,
    new_completion_id,
    now,
)
from hxp_enterprise_llm.services.streaming.logprob_format import chat_logprobs, completion_logprobs

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
    def cached_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def index(self) -> int: ...


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

    async def aclose(self) -> None:
        """Stop reading: a read in flight is cancelled and the iterator closed (a generator's cleanup,
        such as an engine request's abort, runs now rather than whenever the garbage collector comes)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(self._deltas, "aclose", None)
        if aclose is not None:
            await aclose()


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


# Stands for the text in a frame template; JSON-encoded it cannot be mistaken for other frame content.
TEXT_SLOT = "\u0000hxp-text\u0000"
ENCODED_TEXT_SLOT = json.dumps(TEXT_SLOT)


def _template(frame: str) -> tuple[str, str] | None:
    """A frame made around TEXT_SLOT, split at the slot: (before, after); None if the slot is not there once."""
    if frame.count(ENCODED_TEXT_SLOT) != 1:
        return None
    head, _, tail = frame.partition(ENCODED_TEXT_SLOT)
    return head, tail


@dataclass
class _Choice:
    """One choice's text not sent yet, and when its previous frame went out (the flush budget runs from there)."""

    index: int
    pending_text: str = ""
    pending_tokens: int = 0
    last_sent: float = 0.0
    pending_logprobs: list[Any] = field(default_factory=list)
    first_sent: bool = False
    finished: bool = False


class ResponseStreamer:
    """Builds the SSE frames of one chat completion stream (any number of choices)."""

    def __init__(self, model: str = "openchat-3.5", chunk_size: int = 10, flush_interval: float | None = 0.05,
                 include_usage: bool = False, completion_id: str | None = None, choices: int = 1,
                 top_logprobs: int | None = None) -> None:
        self.model = model
        self.chunk_size = chunk_size
        self.flush_interval = flush_interval
        self.include_usage = include_usage
        self.completion_id = completion_id or new_completion_id()
        self.created = now()
        self.choices = choices
        self.top_logprobs = top_logprobs  # None: no logprobs in the chunks
        self.content_frames = 0  # frames carrying text or a finish reason (not role, usage, error)
        self.error: ServiceError | None = None  # what ended the stream early, if anything
        self._templates: dict[int, tuple[str, str] | None] = {}  # per choice: its text-only frame, split at the text

    @classmethod
    def for_config(cls, config: ModelConfigSchema, *, model: str | None = None, include_usage: bool = False,
                   choices: int = 1, top_logprobs: int | None = None) -> ResponseStreamer:
        """The streamer the service's settings ask for (chunk size, flush budget in low-latency mode)."""
        return cls(model=model or config.served_model_name, chunk_size=config.response_chunk_size,
                   flush_interval=config.stream_flush_interval_ms / 1000 if config.low_latency_mode else None,
                   include_usage=include_usage, choices=choices, top_logprobs=top_logprobs)

    # --- the format (chat here; CompletionStreamer overrides these three)

    def opening_frames(self) -> list[str]:
        """OpenAI's first chunk of each choice carries the role."""
        return [self._frame(self._choice_payload(i, DeltaMessage(role="assistant", content=""), None, None))
                for i in range(self.choices)]

    def _choice_payload(self, index: int, delta: DeltaMessage, logprobs: list[Any] | None,
                        finish_reason: str | None) -> dict[str, Any]:
        choice = ChatCompletionStreamChoice(
            index=index, delta=delta, finish_reason=finish_reason,
            logprobs=chat_logprobs(logprobs, self.top_logprobs or 0) if logprobs is not None else None)
        payload = choice.model_dump()
        # OpenAI omits unset delta fields ({"content": "Hi"}), but keeps finish_reason and logprobs: null.
        payload["delta"] = delta.model_dump(exclude_none=True)
        return payload

    def _frame(self, choice: dict[str, Any] | None, usage: UsageInfo | None = None) -> str:
        body = ChatCompletionStreamResponse(id=self.completion_id, created=self.created, model=self.model,
                                            choices=[], usage=usage).model_dump()
        body["choices"] = [choice] if choice is not None else []
        if usage is None:
            body.pop("usage")
        return sse_frame(body)

    def _content(self, choice: _Choice, text: str, finish_reason: str | None) -> str:
        self.content_frames += 1
        if self.top_logprobs is None and finish_reason is None and text:
            return self._text_frame(choice.index, text)
        logprobs = None
        if self.top_logprobs is not None:
            logprobs, choice.pending_logprobs = choice.pending_logprobs, []
        delta = DeltaMessage(content=text) if text or finish_reason is None else DeltaMessage()
        return self._frame(self._choice_payload(choice.index, delta, logprobs, finish_reason))

    def _plain_text_frame(self, index: int, text: str) -> str:
        """A frame with only text in it (no logprobs, no finish reason), built field by field."""
        return self._frame(self._choice_payload(index, DeltaMessage(content=text), None, None))

    def _text_frame(self, index: int, text: str) -> str:
        """The same frame from a template made once per choice: most frames of a stream are these, and
        building them field by field (models, dumps, a dict per frame) cost more than the text itself."""
        if index not in self._templates:
            self._templates[index] = _template(self._plain_text_frame(index, TEXT_SLOT))
        template = self._templates[index]
        if template is None:  # the slot's text occurs elsewhere in the frame (a model name with it, say)
            return self._plain_text_frame(index, text)
        return f"{template[0]}{json.dumps(text, ensure_ascii=False)}{template[1]}"

    # --- the stream

    async def frames(self, source: DeltaSource) -> AsyncIterator[str]:
        """Every frame of the stream, ending with `data: [DONE]`; an error becomes an error frame."""
        for frame in self.opening_frames():
            yield frame
        choices = [_Choice(i) for i in range(self.choices)]
        last: Delta | None = None
        loop = asyncio.get_running_loop()
        try:
            while not all(c.finished for c in choices):
                try:
                    delta = await source.next(self._flush_wait(choices, loop.time()))
                except StopAsyncIteration:
                    break
                if delta is None:  # a flush budget passed with tokens pending
                    for frame in self._flush_due(choices, loop.time()):
                        yield frame
                    continue
                last = delta
                for frame in self._take(choices[delta.index], delta, loop.time()):
                    yield frame
        except ServiceError as exc:  # the stream has started: report in-band, then end it cleanly
            self.error = exc
        except Exception:
            logger.exception("stream %s failed", self.completion_id)
            self.error = InternalError(f"stream {self.completion_id} failed; see the service log")
        for frame in self._ending(choices, last, loop.time()):
            yield frame

    def _flush_wait(self, choices: list[_Choice], now: float) -> float | None:
        """How long the next delta may take before pending text must go out (None: no limit)."""
        pending = [c.last_sent for c in choices if c.pending_tokens]
        if not pending or not self.flush_interval:
            return None
        return max(0.0, min(pending) + self.flush_interval - now)

    def _budget_spent(self, choice: _Choice, now: float) -> bool:
        return bool(self.flush_interval) and now - choice.last_sent >= (self.flush_interval or 0)

    def _flush_due(self, choices: list[_Choice], now: float) -> list[str]:
        return [frame for c in choices if c.pending_tokens and self._budget_spent(c, now)
                for frame in self._flush(c, now)]

    def _take(self, choice: _Choice, delta: Delta, now: float) -> list[str]:
        """Add a delta to its choice; the frames it makes due (its first token, a full chunk, a spent budget)."""
        new_tokens = max(len(delta.token_ids), 1 if delta.text else 0)
        choice.pending_text += delta.text
        choice.pending_tokens += new_tokens
        choice.pending_logprobs.extend(getattr(delta, "logprobs", None) or ())
        if delta.finish_reason is not None:
            choice.finished = True
            return [self._content(choice, choice.pending_text, str(delta.finish_reason))]
        if choice.first_sent and choice.pending_tokens < self.chunk_size and not self._budget_spent(choice, now):
            return []
        frames = self._flush(choice, now)
        choice.first_sent = choice.first_sent or bool(frames)
        return frames

    def _ending(self, choices: list[_Choice], last: Delta | None, now: float) -> list[str]:
        if self.error is None:
            # A source without finish reasons (a plain iterator) that ended: its choices stop here.
            frames = [self._content(c, c.pending_text, "stop") for c in choices if not c.finished]
        else:
            # What was generated before the error still reaches the client: the text the chunking held back
            # and, asked for, the usage (those tokens are counted and charged), both before the error frame,
            # where the openai SDK stops reading. The error frame marks the answer incomplete; no choice gets
            # a finish reason, so a cut answer never looks complete.
            frames = [frame for c in choices if not c.finished for frame in self._flush(c, now)]
        if self.include_usage:
            frames.append(self._frame(None, usage=_usage(last)))
        if self.error is not None:
            frames.append(sse_frame(self.error.body()))
        return [*frames, DONE_FRAME]

    def _flush(self, choice: _Choice, now: float) -> list[str]:
        """The choice's complete text so far as one frame; half a character waits for the next token.

        The pending count restarts either way: tokens that decoded to no text yet (half a character)
        must not keep the flush budget spent, or the stream would spin until the next token arrives.
        """
        text, choice.pending_text = _split_complete(choice.pending_text)
        choice.pending_tokens = 0
        if not text:
            return []
        choice.last_sent = now
        return [self._content(choice, text, None)]

    async def stream_response(self, prompt: Any, config: Any = None, **sampling: Any) -> AsyncIterator[str]:
        """The spec's convenience form: SSE frames for a prompt (a string or chat messages).

        `config` is a chat service (an `OpenChat35Service`, started or not), or a service config
        (an `OpenChat35Config`), for which a service is made for this stream (the model loads, and
        is released when the stream ends). The streamer's own settings are not changed: the frames
        follow the service's chunking settings.
        """
        from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema

        owned = isinstance(config, ModelConfigSchema)
        if owned:  # the spec's convenience form: the one place the streamer reaches up to the chat service
            from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service

            source = OpenChat35Service(config)
        else:
            source = config
        if source is None:
            raise TypeError("stream_response needs a service or a service config, e.g. OpenChat35Config()")
        try:
            if not source.ready:
                await source.start()
            streamer = ResponseStreamer.for_config(source.config, include_usage=self.include_usage)
            request = source.prepare(prompt, **sampling)
            deltas = IteratorSource(source.stream(request))
            try:
                async for frame in streamer.frames(deltas):
                    yield frame
            finally:  # a caller that stops reading early leaves no engine request behind
                await deltas.aclose()
        finally:
            if owned:  # made here for this one stream: its engine goes with it
                await source.shutdown()


class CompletionStreamer(ResponseStreamer):
    """The same stream in the legacy completions format (`text` instead of `delta`, no role chunk)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completion_id = self.completion_id.replace("chatcmpl-", "cmpl-", 1)
        self._offsets = [0] * self.choices

    def opening_frames(self) -> list[str]:
        return []

    def echo_frames(self, text: str, prompt_logprobs: Sequence[Any] | None, first_token: str) -> list[str]:
        """`echo`: each choice starts with the prompt (and its logprobs, the first token having none)."""
        frames = []
        for index in range(self.choices):
            logprobs = None
            if self.top_logprobs is not None:
                logprobs = completion_logprobs(list(prompt_logprobs or ()), self.top_logprobs, 0,
                                               none_token=first_token).model_dump()
            frames.append(self._frame(CompletionChoice(index=index, text=text, finish_reason=None).model_dump()
                                      | {"logprobs": logprobs}))
            self._offsets[index] = len(text)
        return frames

    def _frame(self, choice: dict[str, Any] | None, usage: UsageInfo | None = None) -> str:
        body: dict[str, Any] = {"id": self.completion_id, "object": "text_completion", "created": self.created,
                                "model": self.model, "choices": [choice] if choice is not None else []}
        if usage is not None:
            body["usage"] = usage.model_dump()
        return sse_frame(body)

    def _plain_text_frame(self, index: int, text: str) -> str:
        return self._frame(CompletionChoice(index=index, text=text, logprobs=None,
                                            finish_reason=None).model_dump() | {"logprobs": None})

    def _content(self, choice: _Choice, text: str, finish_reason: str | None) -> str:
        self.content_frames += 1
        if self.top_logprobs is None and finish_reason is None and text:
            return self._text_frame(choice.index, text)  # (the offsets only matter with logprobs)
        logprobs = None
        if self.top_logprobs is not None:
            entries, choice.pending_logprobs = choice.pending_logprobs, []
            logprobs = completion_logprobs(entries, self.top_logprobs, self._offsets[choice.index]).model_dump()
        self._offsets[choice.index] += len(text)
        return self._frame(CompletionChoice(index=choice.index, text=text, logprobs=None,
                                            finish_reason=finish_reason).model_dump() | {"logprobs": logprobs})


def _usage(last: Delta | None) -> UsageInfo:
    if last is None:
        return UsageInfo.of(0, 0, 0)
    return UsageInfo.of(last.prompt_tokens, last.completion_tokens, last.cached_tokens)


def _split_complete(text: str) -> tuple[str, str]:
    """(sendable, held back): hold back a trailing incomplete multi-byte character."""
    cut = len(text)
    while cut > 0 and text[cut - 1] == INCOMPLETE_CHARACTER:
        cut -= 1
    return text[:cut], text[cut:]
