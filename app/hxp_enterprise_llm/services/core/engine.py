"""The engine seam: what the service needs from an inference engine, and nothing more.

The service's implementation is `VllmEngine` (vLLM's AsyncLLM in this process; the GPU and CPU wheels run
the same code); the unit tier drives the same seam with a scripted engine kept under tests/support.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hxp_enterprise_llm.schemas.outcomes import FinishReason


class EngineError(RuntimeError):
    """The engine cannot serve: failed to start, died, or rejected a request it should take."""


class EngineDeadError(EngineError):
    """The engine is gone; every request fails until the process is restarted."""


@dataclass(frozen=True)
class SamplingOptions:
    """Everything that decides the tokens, already resolved (request > config > model defaults)."""

    max_tokens: int
    n: int = 1  # choices generated from the one prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # the model's end of turn and the client's own
    min_tokens: int = 0
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) as OpenAI's logit_bias
    logprobs: int | None = None  # per generated token: the chosen one and this many top alternatives
    prompt_logprobs: int | None = None  # the same for every prompt token (completions' echo)
    json_schema: Mapping[str, Any] | None = None  # constrain the output to JSON valid against this schema
    json_object: bool = False  # constrain the output to any JSON object


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: Sequence[int]
    sampling: SamplingOptions
    # The model's habit of starting an answer with a space ("Hi" as " Hi"): the service drops it
    # from chat answers, as OpenChat's reference server does; a raw completion keeps every byte.
    strip_leading_space: bool = False
    # Lower runs first when the engine schedules by priority (vLLM's convention); 0 for everyone otherwise.
    priority: int = 0
    # W3C trace context for the engine's own spans (vLLM's trace_headers), when tracing is on.
    trace_headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log probability and the most likely alternatives at its position (best first)."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    """New output of one choice since its previous delta."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int  # cumulative over every choice of the request, including this delta
    finish_reason: FinishReason | None = None  # set on the choice's last delta
    index: int = 0  # which choice (0 .. n-1)
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token in token_ids, when asked for
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # first delta only, when asked for
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache (vLLM's num_cached_tokens)


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the prompt builders use."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@runtime_checkable
class Engine(Protocol):
    async def start(self, on_death: Callable[[str], object] | None = None) -> None:
        """Load the model; raise EngineError if it cannot. `on_death(why)` is called at once if the
        engine dies later, even while no request is running."""

    def check_request(self, request: GenerationRequest) -> None:
        """Raise InvalidRequestError for a request this engine would refuse: called while the request is
        prepared, so that it is refused before it waits for a slot or is charged to its key."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """Stream deltas until one carries a finish_reason."""

    async def abort(self, request_id: str) -> None:
        """Stop a request now and free its slot; a no-op for unknown or finished requests."""

    async def check_health(self) -> None:
        """Return if the engine can serve, else raise EngineDeadError."""

    def notice_death(self) -> None:
        """If the engine has died and `on_death` has not been called yet, call it now (cheap: no I/O)."""

    async def shutdown(self) -> None:
        """Release the engine; safe to call twice."""

    def get_tokenizer(self) -> Tokenizer:
        """The model's tokenizer, once started."""

