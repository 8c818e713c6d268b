"""The engine seam: what the service needs from an inference engine, and nothing more.

Two implementations: `VllmEngine` (vLLM's AsyncLLM in this process; the GPU and CPU wheels run the
same code) and `FakeEngine` (scripted, deterministic, for unit tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hxp_enterprise_llm.schemas.outcomes import FinishReason

if TYPE_CHECKING:
    from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema


class EngineError(RuntimeError):
    """The engine cannot serve: failed to start, died, or rejected a request it should take."""


class EngineDeadError(EngineError):
    """The engine is gone; every request fails until the process is restarted."""


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) as OpenAI's logit_bias


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: Sequence[int]
    sampling: SamplingOptions


@dataclass(frozen=True)
class TokenDelta:
    """New output since the previous delta of the same request."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int  # cumulative, including this delta
    finish_reason: FinishReason | None = None


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the prompt builders use."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@runtime_checkable
class Engine(Protocol):
    async def start(self) -> None:
        """Load the model; raise EngineError if it cannot."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """Stream deltas until one carries a finish_reason."""

    async def abort(self, request_id: str) -> None:
        """Stop a request now and free its slot; a no-op for unknown or finished requests."""

    async def check_health(self) -> None:
        """Return if the engine can serve, else raise EngineDeadError."""

    async def shutdown(self) -> None:
        """Release the engine; safe to call twice."""

    def get_tokenizer(self) -> Tokenizer:
        """The model's tokenizer, once started."""


def create_engine(config: ModelConfigSchema) -> Engine:
    """The vLLM engine for this config; vLLM is imported here, not at module import."""
    from hxp_enterprise_llm.services.core.vllm_engine import VllmEngine

    return VllmEngine(config)
