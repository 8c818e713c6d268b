"""OpenChat35Service: the model as a Python object, usable without HTTP.

    service = OpenChat35Service(OpenChat35Config(model_path=...))
    await service.start()
    result = await service.chat([{"role": "user", "content": "Hello"}], max_tokens=50)
    async for text in service.stream_chat("Tell me a story", max_tokens=50): ...
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
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
)
from hxp_enterprise_llm.services.core.engine_factory import create_engine
from hxp_enterprise_llm.services.core.generation_defaults import SamplingDefault, effective_defaults


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
    """How the weights are stored, from the model's config.json `quantization_config`: "none", or the method
    and, where the config says, the bits and group size (e.g. "compressed-tensors:w4a16-g32", "awq:w4-g128")."""
    try:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quantization, dict):
        return "none"
    method = str(quantization.get("quant_method", "unknown"))
    detail = _quantization_scheme(quantization) or quantization.get("format")
    return f"{method}:{detail}" if isinstance(detail, str) and detail else method


def _quantization_scheme(quantization: dict[str, Any]) -> str | None:
    """"w4a16-g32" from compressed-tensors' first config group, "w4-g128" from AWQ/GPTQ's `bits`."""
    groups = quantization.get("config_groups")
    if isinstance(groups, dict) and groups:
        group = next(iter(groups.values()))
        weights, activations = group.get("weights") or {}, group.get("input_activations") or {}
        if not weights.get("num_bits"):
            return None
        scheme = f"w{weights['num_bits']}a{activations.get('num_bits', 16)}"
        return f"{scheme}-g{weights['group_size']}" if weights.get("group_size") else scheme
    bits = quantization.get("bits") or quantization.get("w_bit")
    if not bits:
        return None
    group_size = quantization.get("group_size") or quantization.get("q_group_size")
    return f"w{bits}-g{group_size}" if group_size else f"w{bits}"


class OpenChat35Service:
    """Prompt building, sampling defaults and output clean-up around an Engine."""

    def __init__(self, config: OpenChat35Config | None = None, engine: Engine | None = None,
                 revision: str | None = None) -> None:
        self.config = config or OpenChat35Config()
        self.engine: Engine = engine if engine is not None else create_engine(self.config)
        self.revision = revision
        # Read once: the weights on disk do not change while the service runs.
        self.quantization = model_quantization(self.config.model_path)
        self._prompt: PromptBuilder | None = None
        self._sampling_defaults: dict[str, SamplingDefault] | None = None

    @property
    def ready(self) -> bool:
        return self._prompt is not None

    async def start(self, on_death: Callable[[str], object] | None = None) -> None:
        await self.engine.start(on_death)
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
            # What the engine computes in: `auto` resolved (cpu_kernels.resolve_dtype) once it has started.
            "dtype": getattr(self.engine, "dtype", self.config.dtype) if self.ready else self.config.dtype,
            "quantization": self.quantization,
            "streaming": self.config.streaming_enabled,
            "engine": getattr(self.engine, "description", type(self.engine).__name__),
            "engine_version": getattr(self.engine, "version", "unknown"),
            "device": getattr(self.engine, "device", "unknown"),
            "loaded": self.ready,
            "prompt_format": type(self._prompt).__name__ if self._prompt else None,
        }

    def prepare(self, messages: MessagesInput, *, request_id: str | None = None,
                **sampling: Any) -> GenerationRequest:
        """A chat request: the prompt built from the messages, checked against the context window.

        `sampling` takes SamplingOptions' fields (`max_tokens`, `temperature`, ...); a field left out
        or None gets its default. Raises InvalidRequestError (a 400) for anything out of bounds.
        """
        builder = self._builder()
        try:
            prompt_ids = builder.build(to_prompt_messages(messages))
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="messages") from exc
        return self._request(prompt_ids, sampling, request_id, strip_leading_space=builder.strip_leading_space)

    def prepare_prompt(self, prompt: str | Sequence[int], *, request_id: str | None = None,
                       **sampling: Any) -> GenerationRequest:
        """A raw completion: text (tokenized with BOS, as vLLM's completions do) or token ids as given."""
        builder = self._builder()
        if isinstance(prompt, str):
            prompt_ids = list(self.engine.get_tokenizer().encode(prompt, add_special_tokens=True))
        else:
            prompt_ids = list(prompt)
            self._check_token_ids(prompt_ids, "prompt", builder.vocab_size)
        return self._request(prompt_ids, sampling, request_id, strip_leading_space=False, prompt_field="prompt")

    def tokenize_chat(self, messages: MessagesInput) -> list[int]:
        """The prompt token ids a chat request with these messages would send (OpenChat's template)."""
        try:
            return self._builder().build(to_prompt_messages(messages))
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="messages") from exc

    def tokenize_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self._builder()
        return list(self.engine.get_tokenizer().encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        self._check_token_ids(token_ids, "tokens", self._builder().vocab_size)
        return self.engine.get_tokenizer().decode(list(token_ids), skip_special_tokens=False)

    def sampling_defaults(self) -> dict[str, SamplingDefault]:
        """Read once (the model's file does not change under a running service)."""
        if self._sampling_defaults is None:
            self._sampling_defaults = effective_defaults(self.config.model_path, {
                "temperature": self.config.default_temperature, "top_p": self.config.default_top_p})
        return self._sampling_defaults

    def _builder(self) -> PromptBuilder:
        if self._prompt is None:
            raise EngineError("service not started")
        return self._prompt

    @staticmethod
    def _check_token_ids(token_ids: Sequence[int], param: str, vocab_size: int) -> None:
        for token_id in token_ids:
            if not 0 <= token_id < vocab_size:
                raise InvalidRequestError(f"{param}: token id {token_id} is outside the vocabulary "
                                          f"(0..{vocab_size - 1})", param=param)

    def _request(self, prompt_ids: list[int], sampling: dict[str, Any], request_id: str | None, *,
                 strip_leading_space: bool, prompt_field: str = "messages") -> GenerationRequest:
        builder = self._builder()
        requested = {key: value for key, value in sampling.items() if value is not None}
        unknown = set(requested) - set(SamplingOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        limit = self.config.max_model_len
        n = int(requested.get("n", 1))
        if n > self.config.max_n:
            raise InvalidRequestError(f"n: {n} choices requested, this service allows at most max_n="
                                      f"{self.config.max_n}", param="n", code="too_many_choices")
        self._check_token_ids([token for token, _ in requested.get("logit_bias", ())], "logit_bias",
                              builder.vocab_size)
        self._check_token_ids(requested.get("stop_token_ids", ()), "stop_token_ids", builder.vocab_size)
        max_tokens = requested.get("max_tokens")
        if max_tokens is None:
            max_tokens = limit - len(prompt_ids)
            if max_tokens < 1:
                raise ContextLengthError(len(prompt_ids), 1, limit, prompt_field)
        elif len(prompt_ids) + max_tokens > limit:
            raise ContextLengthError(len(prompt_ids), max_tokens, limit, prompt_field)
        for key, default in self.sampling_defaults().items():
            requested.setdefault(key, default.value)
        if n > 1 and requested["temperature"] == 0:
            raise InvalidRequestError("n: greedy sampling (temperature 0) would give every choice the same answer; "
                                      "use temperature > 0 with n > 1", param="n")
        # Keeping the top k of a vocabulary of at most k tokens keeps them all: the same as off.
        top_k = int(requested["top_k"])
        requested["top_k"] = -1 if top_k >= builder.vocab_size else top_k
        # The model's end of turn stops it, unless the client asked to ignore it (`ignore_eos`, as vLLM
        # ignores the EOS and generation_config's eos ids then); the client's own stop ids always stop it.
        model_stop_ids = () if requested.get("ignore_eos") else builder.stop_token_ids
        stop_ids = tuple(dict.fromkeys((*model_stop_ids, *requested.pop("stop_token_ids", ()))))
        options = SamplingOptions(**{**requested, "max_tokens": max_tokens, "stop_token_ids": stop_ids,
                                     "stop": tuple(requested.get("stop", ())),
                                     "logit_bias": tuple(requested.get("logit_bias", ()))})
        request = GenerationRequest(request_id or f"req-{uuid.uuid4().hex}", prompt_ids, options,
                                    strip_leading_space=strip_leading_space)
        # The engine's own refusals (vLLM's: an empty stop string, min_tokens above max_tokens) come now,
        # before the request waits for a slot or is charged to its key.
        self.engine.check_request(request)
        return request

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """The engine's deltas; a chat answer's cosmetic leading space is dropped from each choice."""
        unstripped = set(range(request.sampling.n)) if request.strip_leading_space else set()
        async for delta in self.engine.generate(request):
            if delta.index in unstripped and delta.text:
                unstripped.discard(delta.index)
                if delta.text.startswith(" "):
                    delta = dataclasses.replace(delta, text=delta.text[1:])
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
