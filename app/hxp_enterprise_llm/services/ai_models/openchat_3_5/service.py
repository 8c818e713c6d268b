"""OpenChat35Service: the model as a Python object, usable without HTTP.

    service = OpenChat35Service(OpenChat35Config(model_path=...))
    await service.start()
    result = await service.chat([{"role": "user", "content": "Hello"}], max_tokens=50)
    async for text in service.stream_chat("Tell me a story", max_tokens=50): ...
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.schemas.errors import ContextLengthError, InvalidRequestError
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.prompt import (
    PromptBuilder,
    PromptMessage,
    prompt_builder_for,
)
from hxp_enterprise_llm.services.core.engine import (
    Engine,
    EngineError,
    GenerationRequest,
    SamplingOptions,
    TokenDelta,
    create_engine,
)


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


MessagesInput = str | Sequence[PromptMessage] | Sequence[dict[str, Any]]


def to_prompt_messages(messages: MessagesInput) -> list[PromptMessage]:
    if isinstance(messages, str):
        return [PromptMessage("user", messages)]
    result = []
    for message in messages:
        if isinstance(message, PromptMessage):
            result.append(message)
        else:
            role = "system" if message["role"] == "developer" else message["role"]
            result.append(PromptMessage(role, message["content"]))
    return result


def model_quantization(model_path: Path) -> str:
    """How the weights are stored, from the model's config.json: "none", or the method (e.g. "awq")."""
    try:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quantization, dict):
        return "none"
    method = str(quantization.get("quant_method", "unknown"))
    detail = quantization.get("format")
    return f"{method}:{detail}" if isinstance(detail, str) and detail else method


class OpenChat35Service:
    """Prompt building, sampling defaults and output clean-up around an Engine."""

    def __init__(self, config: OpenChat35Config | None = None, engine: Engine | None = None,
                 revision: str | None = None) -> None:
        self.config = config or OpenChat35Config()
        self.engine: Engine = engine if engine is not None else create_engine(self.config)
        self.revision = revision
        self._prompt: PromptBuilder | None = None

    @property
    def ready(self) -> bool:
        return self._prompt is not None

    async def start(self) -> None:
        await self.engine.start()
        self._prompt = prompt_builder_for(self.engine.get_tokenizer(), self.config.prompt_format)

    async def shutdown(self) -> None:
        await self.engine.shutdown()

    def get_model_info(self) -> dict[str, Any]:
        return {
            "name": self.config.served_model_name,
            "model_name": self.config.model_name,
            "model_path": str(self.config.model_path),
            "revision": self.revision,
            "context_length": self.config.max_model_len,
            "dtype": self.config.dtype,
            "quantization": model_quantization(self.config.model_path),
            "streaming": self.config.streaming_enabled,
            "engine": getattr(self.engine, "description", type(self.engine).__name__),
            "engine_version": getattr(self.engine, "version", "unknown"),
            "device": getattr(self.engine, "device", "unknown"),
            "loaded": self.ready,
            "prompt_format": type(self._prompt).__name__ if self._prompt else None,
        }

    def prepare(
        self,
        messages: MessagesInput,
        *,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        seed: int | None = None,
        stop: Sequence[str] = (),
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: Sequence[tuple[int, float]] = (),
        request_id: str | None = None,
    ) -> GenerationRequest:
        """Tokenize and check the request against the context window; raises InvalidRequestError."""
        if self._prompt is None:
            raise EngineError("service not started")
        try:
            prompt_ids = self._prompt.build(to_prompt_messages(messages))
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="messages") from exc
        limit = self.config.max_model_len
        vocab_size = self._prompt.vocab_size
        for token_id, _ in logit_bias:
            if not 0 <= token_id < vocab_size:
                raise InvalidRequestError(f"logit_bias: token id {token_id} is outside the vocabulary "
                                          f"(0..{vocab_size - 1})", param="logit_bias")
        if max_tokens is None:
            max_tokens = limit - len(prompt_ids)
            if max_tokens < 1:
                raise ContextLengthError(len(prompt_ids), 1, limit)
        elif len(prompt_ids) + max_tokens > limit:
            raise ContextLengthError(len(prompt_ids), max_tokens, limit)
        sampling = SamplingOptions(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
            stop=tuple(stop), stop_token_ids=self._prompt.stop_token_ids,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, logit_bias=tuple(logit_bias))
        return GenerationRequest(request_id or f"req-{uuid.uuid4().hex}", prompt_ids, sampling)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """The engine's deltas, with the model's cosmetic leading space removed from the first text."""
        strip = self._prompt is not None and self._prompt.strip_leading_space
        async for delta in self.engine.generate(request):
            if strip and delta.text:
                strip = False
                if delta.text.startswith(" "):
                    delta = TokenDelta(delta.text[1:], delta.token_ids, delta.prompt_tokens,
                                       delta.completion_tokens, delta.finish_reason)
            yield delta

    async def chat(self, messages: MessagesInput, **sampling: Any) -> ChatResult:
        request = self.prepare(messages, **sampling)
        parts: list[str] = []
        last: TokenDelta | None = None
        async for delta in self.stream(request):
            parts.append(delta.text)
            last = delta
        if last is None:
            raise EngineError("engine returned no output")
        return ChatResult("".join(parts), last.finish_reason or "stop", last.prompt_tokens, last.completion_tokens)

    async def stream_chat(self, messages: MessagesInput, **sampling: Any) -> AsyncIterator[str]:
        request = self.prepare(messages, **sampling)
        async for delta in self.stream(request):
            if delta.text:
                yield delta.text
