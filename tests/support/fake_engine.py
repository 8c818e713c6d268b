"""A scripted, deterministic engine for unit tests: real async behaviour, no model.

Tests `enqueue` the answers they want; otherwise the engine echoes a fixed reply. Token timing is
configurable so tests can hold a request "running" while they probe admission and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from hxp_enterprise_llm.schemas.outcomes import FinishReason
from hxp_enterprise_llm.services.core.engine import (
    EngineDeadError,
    EngineError,
    GenerationRequest,
    TokenDelta,
    TokenLogprob,
)


class CharTokenizer:
    """One token per character (id = code point + 3; 1 = BOS, 2 = EOS), so counts are easy to reason about."""

    bos_token_id = 1
    eos_token_id = 2

    def __init__(self) -> None:
        self.encoded_chars = 0  # characters tokenized so far: shows whether a request reached the tokenizer
        self.failure: Exception | None = None  # raised by every encode while set: a tokenizer bug
        # While `hold` is set to an unset Event, encode waits for it (at most 10 s): a slow, huge prompt.
        self.hold: threading.Event | None = None
        self.entered = threading.Event()  # set once an encode has started
        self.inside = 0  # encodes running now
        self.threads: set[str] = set()  # names of the threads that ran encode

    def __len__(self) -> int:
        return 0x110000 + 3

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.failure is not None:
            raise self.failure
        self.encoded_chars += len(text)
        self.threads.add(threading.current_thread().name)
        self.inside += 1
        self.entered.set()
        try:
            if self.hold is not None:
                self.hold.wait(timeout=10)
        finally:
            self.inside -= 1
        ids = [ord(ch) + 3 for ch in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 3) for i in ids if i > 2)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                            tokenize: bool = True) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" if add_generation_prompt
                                                                          else "")
        return self.encode(text)


@dataclass(frozen=True)
class ScriptedReply:
    tokens: Sequence[str]  # each entry is one token's text
    finish_reason: str = "stop"
    hold_after: int | None = None  # after this many tokens, wait until finish() or abort()


PREFIX_CACHE_BLOCK = 16  # tokens per cached block, as vLLM's default block size


class FakeEngine:
    """Implements the Engine protocol; each token takes `token_delay` seconds.

    Its prefix cache behaves as vLLM's does: a prompt reuses the whole blocks it shares with an
    earlier prompt, never its last token (that one is always computed to produce the first output).
    """

    description = "fake"
    version = "fake 1"
    device = "none"
    dtype = "float32"  # what a started VllmEngine reports (`auto` resolved); the config says "auto"

    def __init__(self, token_delay: float = 0.0, start_delay: float = 0.0, fail_start: bool = False,
                 default_reply: str = "Hello from the fake engine.") -> None:
        self.token_delay = token_delay
        self.start_delay = start_delay
        self.fail_start = fail_start
        self.default_reply = default_reply
        self.started = False
        self.dead = False
        self.health_checks = 0
        self._death_unreported = False
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self._running: set[str] = set()
        self._abort_events: dict[str, asyncio.Event] = {}
        self._finish_events: dict[str, asyncio.Event] = {}
        self._on_death: Callable[[str], object] | None = None
        self._script: deque[ScriptedReply] = deque()
        self._tokenizer = CharTokenizer()
        self.prefix_caching = True
        self._seen_prompts: list[tuple[int, ...]] = []

    def enqueue(self, *tokens: str, finish_reason: str = "stop", hold_after: int | None = None) -> None:
        """The next request answers with these tokens (one string per token), pausing after `hold_after`."""
        self._script.append(ScriptedReply(tokens, finish_reason, hold_after))

    def kill(self, *, report: bool = True) -> None:
        """Simulate the engine process dying; `report=False`: dead, but not yet noticed (vLLM's watch gap)."""
        self.dead = True
        self._death_unreported = True
        for event in self._abort_events.values():
            event.set()
        if report:
            self.notice_death()

    def notice_death(self) -> None:
        # Only a kill() is a death the engine knows of; `dead = True` alone is one only a health check finds.
        if self._death_unreported and self._on_death is not None:
            self._death_unreported = False
            self._on_death("fake engine killed")

    async def start(self, on_death: Callable[[str], object] | None = None) -> None:
        self._on_death = on_death
        await asyncio.sleep(self.start_delay)
        if self.fail_start:
            raise EngineError("fake engine configured to fail at start")
        self.started = True

    def get_tokenizer(self) -> CharTokenizer:
        return self._tokenizer

    def check_request(self, request: GenerationRequest) -> None:
        """The fake refuses nothing the service passes; vLLM's refusals are tested on the real engine."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        if not self.started:
            raise EngineError("engine not started")
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        self.requests.append(request)
        reply = self._script.popleft() if self._script else ScriptedReply(list(self.default_reply))
        tokens = list(reply.tokens)
        finish = FinishReason(reply.finish_reason)
        if len(tokens) >= request.sampling.max_tokens:
            tokens, finish = tokens[: request.sampling.max_tokens], FinishReason.LENGTH
        abort = self._abort_events.setdefault(request.request_id, asyncio.Event())
        finish_now = self._finish_events.setdefault(request.request_id, asyncio.Event())
        self._running.add(request.request_id)
        prompt_tokens = len(request.prompt_token_ids)
        cached = self._cached_prefix(tuple(request.prompt_token_ids))
        options = request.sampling
        choices = range(options.n)
        prompt_logprobs = self._prompt_logprobs(request) if options.prompt_logprobs is not None else None
        try:
            # Every choice answers with the scripted tokens, one token of each choice per step.
            for index, text in enumerate(tokens):
                if index == reply.hold_after:
                    await _first_of(abort, finish_now)
                if self.token_delay and not finish_now.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_first_of(abort, finish_now), self.token_delay)
                if self.dead:
                    raise EngineDeadError("fake engine died mid-request")
                for choice in choices:
                    done = options.n * index + choice
                    if abort.is_set():
                        yield TokenDelta("", (), prompt_tokens, done, FinishReason.ABORT, index=choice)
                        continue
                    last = index == len(tokens) - 1
                    token_id = ord(text[0]) + 3 if text else 0
                    yield TokenDelta(text, (token_id,), prompt_tokens, done + 1, finish if last else None,
                                     index=choice, logprobs=_fake_logprobs(token_id, text, options.logprobs),
                                     prompt_logprobs=prompt_logprobs, cached_tokens=cached)
                    prompt_logprobs = None
                if abort.is_set():
                    return
            if not tokens:
                for choice in choices:
                    yield TokenDelta("", (), prompt_tokens, 0, finish, index=choice, prompt_logprobs=prompt_logprobs,
                                     cached_tokens=cached)
                    prompt_logprobs = None
        finally:
            self._running.discard(request.request_id)
            self._abort_events.pop(request.request_id, None)
            self._finish_events.pop(request.request_id, None)

    def _cached_prefix(self, prompt: tuple[int, ...]) -> int:
        """Tokens of this prompt an earlier one already computed, in whole blocks; remembers this one."""
        if not self.prefix_caching:
            return 0
        shared = max((_common_prefix(prompt, seen) for seen in self._seen_prompts), default=0)
        self._seen_prompts.append(prompt)
        return min(shared, len(prompt) - 1) // PREFIX_CACHE_BLOCK * PREFIX_CACHE_BLOCK

    def _prompt_logprobs(self, request: GenerationRequest) -> tuple[TokenLogprob | None, ...]:
        ids = list(request.prompt_token_ids)
        top = request.sampling.prompt_logprobs or 0
        return (None, *(TokenLogprob(i, self._tokenizer.decode([i]), -0.5, ((self._tokenizer.decode([i]), -0.5),)
                         + tuple((f"alt{rank}", -0.5 - rank) for rank in range(1, top))) for i in ids[1:]))

    async def finish(self, request_id: str) -> None:
        """Let a request held by a long token_delay finish now, with its whole scripted answer."""
        await _until(lambda: request_id in self._finish_events)
        self._finish_events[request_id].set()

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        event = self._abort_events.get(request_id)
        if event is not None:
            event.set()
        self._running.discard(request_id)

    async def check_health(self) -> None:
        self.health_checks += 1
        if self.dead or not self.started:
            raise EngineDeadError("fake engine is dead" if self.dead else "fake engine not started")

    @property
    def running_requests(self) -> int:
        """Requests generating now, as the engine itself sees them."""
        return len(self._running)

    async def shutdown(self) -> None:
        self.started = False


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def _fake_logprobs(token_id: int, text: str, top: int | None) -> tuple[TokenLogprob, ...] | None:
    """Deterministic stand-ins: the chosen token at -0.5, alternatives one nat apart below it."""
    if top is None:
        return None
    alternatives = tuple([(text, -0.5)] + [(f"alt{rank}", -0.5 - rank) for rank in range(1, top)])[:top]
    return (TokenLogprob(token_id=token_id, token=text, logprob=-0.5, top=alternatives),)
