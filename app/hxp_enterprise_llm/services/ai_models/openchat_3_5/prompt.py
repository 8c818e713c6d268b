"""Chat messages -> prompt token ids, exactly as OpenChat's reference server builds them.

OpenChat-3.5-0106 ("GPT4 Correct" mode): BOS once, then per message the role prefix and the content
tokenized separately, each followed by <|end_of_turn|> (32000), and the bare assistant prefix at the
end with no trailing space. Content is tokenized with special tokens split, so a user who types
"<|end_of_turn|>" gets ordinary text pieces, not the stop token. A system message, when present, is
raw text right after BOS (no role prefix), as the reference server places it.

Models without OpenChat's tokens (the SmolLM2 demo) use their own chat template instead. A template
renders content as text and the tokenizer then reads a control token typed in it ("<|im_end|>") as the
real one, so a user could forge a system turn: such content is refused (400) on that path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jinja2 import TemplateError

END_OF_TURN = "<|end_of_turn|>"
END_OF_TURN_ID = 32000
USER_PREFIX = "GPT4 Correct User:"
ASSISTANT_PREFIX = "GPT4 Correct Assistant:"


@dataclass(frozen=True)
class PromptMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


class PromptBuilder(Protocol):
    stop_token_ids: tuple[int, ...]
    strip_leading_space: bool
    vocab_size: int

    def build(self, messages: Sequence[PromptMessage]) -> list[int]: ...


class OpenChatPromptBuilder:
    """The GPT4 Correct template by token ids (no string template, so no double BOS)."""

    stop_token_ids: tuple[int, ...] = (END_OF_TURN_ID,)
    # The model starts most answers with a space-prefixed piece (" Hi"); the reference server drops it.
    strip_leading_space = True

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self._bos = int(tokenizer.bos_token_id)
        self._eot = int(tokenizer.convert_tokens_to_ids(END_OF_TURN))
        if self._eot != END_OF_TURN_ID:
            raise ValueError(f"tokenizer maps {END_OF_TURN} to {self._eot}, expected {END_OF_TURN_ID}")
        self._prefix = {"user": self._plain(USER_PREFIX), "assistant": self._plain(ASSISTANT_PREFIX)}

    def _plain(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _content(self, text: str) -> list[int]:
        # split_special_tokens keeps user-typed control tokens inert.
        return list(self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def build(self, messages: Sequence[PromptMessage]) -> list[int]:
        ids = [self._bos]
        for index, message in enumerate(messages):
            if message.role == "system":
                if index != 0:
                    raise ValueError("messages: a system message is only allowed first")
                if message.content.strip():
                    ids += self._content(message.content.strip()) + [self._eot]
                continue
            ids += self._prefix[message.role] + self._content(message.content) + [self._eot]
        return ids + self._prefix["assistant"]


class ChatTemplatePromptBuilder:
    """Any other model: its own Hugging Face chat template, generation prompt appended."""

    strip_leading_space = False

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.stop_token_ids: tuple[int, ...] = (int(eos),) if eos is not None else ()
        # The tokens templates are built of (BOS, EOS, turn markers): other added tokens (SmolLM2's
        # <filename>, ...) forge nothing, and `vllm bench serve`'s random prompts contain them.
        self._control_tokens = sorted(set(getattr(tokenizer, "all_special_tokens", ())) - {""})

    def build(self, messages: Sequence[PromptMessage]) -> list[int]:
        for message in messages:
            typed = next((token for token in self._control_tokens if token in message.content), None)
            if typed is not None:
                raise ValueError(f"messages: a {message.role} message contains {typed!r}, a control token of this "
                                 "model's chat template; the template would read it as the real token, so it "
                                 "cannot be sent as text to this model")
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            rendered = self._tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        except TemplateError as exc:  # a template's own check, such as "roles must alternate"
            raise ValueError(f"messages: the model's chat template refused them: {exc}") from None
        # transformers 5 returns a BatchEncoding by default, 4.x a plain list.
        ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
        return [int(i) for i in ids]


def has_openchat_tokens(tokenizer: Any) -> bool:
    vocab = tokenizer.get_vocab()
    return vocab.get(END_OF_TURN) == END_OF_TURN_ID


def prompt_builder_for(tokenizer: Any, prompt_format: str = "auto") -> PromptBuilder:
    """OpenChat's builder when asked or when the tokenizer has <|end_of_turn|>; else the chat template."""
    if prompt_format == "openchat" or (prompt_format == "auto" and has_openchat_tokens(tokenizer)):
        return OpenChatPromptBuilder(tokenizer)
    return ChatTemplatePromptBuilder(tokenizer)
