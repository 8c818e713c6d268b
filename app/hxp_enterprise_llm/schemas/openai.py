"""OpenAI protocol models (chat completions, completions, models), mirroring the spec's names and field order.

Requests are validated in strict JSON mode, so `"max_tokens": "50"` is a 400 naming `max_tokens`
rather than a silent coercion, and unknown fields are refused (400 naming the field): a field this
service does not implement is never silently dropped. Fields OpenAI defines that cannot do anything
here are accepted only with their "off" value (e.g. `tools` empty, `store` false). vLLM's sampling
extensions are fenced off at the end of each request class.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TOP_LOGPROBS = 20  # OpenAI's limit, and vLLM's default max_logprobs
MAX_STOP_SEQUENCES = 4  # OpenAI's limit

Strict = ConfigDict(extra="forbid")


class ContentPart(BaseModel):
    model_config = Strict

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = Strict

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        """The message as plain text; non-text parts were rejected at validation."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: str | list[ContentPart]) -> str | list[ContentPart]:
        if isinstance(content, list):
            for part in content:
                if part.type != "text":
                    raise ValueError(f"content part type '{part.type}' is not supported; this model reads text only")
                if part.text is None:
                    raise ValueError("a text part needs its `text`")
        return content


class StreamOptions(BaseModel):
    model_config = Strict

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: Annotated[dict[str, Any], Field(alias="schema")] = Field(default_factory=dict)
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = Strict

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            # No "response_format:" here: a nested model's error already has the field as its path.
            raise ValueError("json_schema is required with type 'json_schema' and only then")
        return self


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TokenCount = Annotated[int, Field(ge=1)]
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for completions (chat's is the rest of the context)


class SamplingFields(BaseModel):
    """What chat and completion requests share: how to sample, how long, when to stop."""

    model_config = Strict

    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    max_tokens: TokenCount | None = None
    n: Annotated[int, Field(ge=1)] = 1
    presence_penalty: Penalty = 0.0
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None  # None: the model's default (generation_config.json), else 1
    top_p: TopP | None = None
    user: Annotated[str, Field(max_length=256)] | None = None  # logged with the request, as an end-user id
    # --- vLLM's sampling extensions
    top_k: Annotated[int, Field(ge=-1, le=2**31 - 1)] | None = None  # -1: off; at least the vocabulary: off too
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    min_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SamplingFields:
        for token in self.logit_bias or {}:
            # ASCII digits only: str.isdigit() also passes a superscript two, which int() refuses (a 500),
            # and int() reads Arabic-Indic or full-width digits, which no OpenAI client sends as an id.
            # Ten digits hold every int32; longer keys are no token id (and past 4,300, int() refuses them).
            if not (token.isascii() and token.isdigit() and len(token) <= 10):
                raise ValueError(f"logit_bias: keys must be token ids, got {token!r}")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

    @field_validator("seed")
    @classmethod
    def _a_real_seed(cls, seed: int | None) -> int | None:
        if seed == -1:  # vLLM reads -1 as "no seed": the answer would not be reproducible, silently
            raise ValueError("-1 means no seed to the engine; give a seed of 0 or more, or leave it out")
        return seed

    def token_biases(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items())

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: str | None = None  # None: the served model
    logprobs: bool = False
    max_completion_tokens: TokenCount | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    store: bool | None = None
    tool_choice: Literal["none", "auto"] | None = None
    tools: Annotated[list[Any], Field(max_length=0)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        if self.store:
            raise ValueError("store: stored completions are not supported; send false or leave it out")
        if self.parallel_tool_calls:
            raise ValueError("parallel_tool_calls: tool calling is not supported by this model")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_completion_tokens: differs from max_tokens; send one of them")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


TokenIds = Annotated[list[int], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    # A batch of one prompt (as evaluation harnesses send) is taken as that prompt; larger batches
    # are refused: send one request per prompt, so each gets its own admission and deadline.
    prompt: str | TokenIds | Annotated[list[str], Field(min_length=1, max_length=1)] \
        | Annotated[list[TokenIds], Field(min_length=1, max_length=1)]
    model: str | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    max_tokens: TokenCount | None = COMPLETION_MAX_TOKENS

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: Any) -> Any:
        # null is "not given" (OpenAI: "integer or null, defaults to 16"), not "as long as the context allows".
        return COMPLETION_MAX_TOKENS if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _one_prompt(cls, data: Any) -> Any:
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
            raise ValueError(f"prompt: a batch of {len(prompt)} prompts; send one prompt per request")
        return data

    def single_prompt(self) -> str | list[int]:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            return prompt[0]
        return prompt  # type: ignore[return-value]


# --- responses


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> UsageInfo:
        """The one construction: the total, and the cached share of the prompt (0 when nothing was reused)."""
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions format: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hxp-enterprise-llm"
    # --- extensions (as vLLM's /v1/models, plus how the weights are stored and what the engine computes in)
    root: str | None = None
    max_model_len: int | None = None
    quantization: str | None = None
    dtype: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def new_completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# --- our utility routes (as vLLM's server has them)


class TokenizeRequest(BaseModel):
    """Either a raw `prompt` or chat `messages` (rendered exactly as a chat request's prompt)."""

    model_config = Strict

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None  # prompt: default true (BOS, as completions); chat: fixed by the template
    add_generation_prompt: bool | None = None  # messages only, and only true: the assistant's turn is opened

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: send either prompt or messages")
        if self.prompt is not None and self.add_generation_prompt is not None:
            raise ValueError("add_generation_prompt: applies to chat messages only; leave it out with prompt")
        if self.messages is not None and self.add_generation_prompt is False:
            raise ValueError("add_generation_prompt: chat messages are always rendered with the assistant's turn "
                             "opened, as a chat request sends them")
        if self.messages is not None and self.add_special_tokens is not None:
            raise ValueError("add_special_tokens: fixed by the chat template for messages; leave it out")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    model_config = Strict

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str  # this service
    engine: str  # the vLLM wheel and version
    model: str
    model_revision: str | None
    quantization: str
    dtype: str  # as configured until the engine has loaded, then the one it computes in (`auto` resolved)
