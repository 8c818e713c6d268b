"""Turn k's OpenChat prompt extends turn k-1's token for token, so vLLM's prefix cache can reuse it.

On the golden ids of openchat-facts.md: the renderer tokenizes each message on its own, so earlier
turns never re-tokenize differently once a turn is appended. The model's answer starts with a
space-prefixed piece (" Hi" = 15359) that the service strips from the text ("Hi"); SentencePiece
puts the same piece back when the client returns "Hi" in the history (and swallows one space if the
client restores it), so even the answer's tokens (which vLLM caches as it generates them) are reused.
An answer that re-tokenizes differently (a trailing space or a leading newline the client strips)
loses only its own tokens from the first difference on, never the earlier turns: measured below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hxp_enterprise_llm.services.ai_models.openchat_3_5.prompt import OpenChatPromptBuilder, PromptMessage

GOLDEN = [1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 22557, 32000, 420, 6316, 28781, 3198, 3123, 21631, 28747,
          15359, 32000, 420, 6316, 28781, 3198, 3123, 1247, 28747, 1602, 460, 368, 3154, 28804, 32000, 420, 6316,
          28781, 3198, 3123, 21631, 28747]
GOLDEN_SYSTEM = [1, 995, 460, 264, 10865, 13892, 28723, 32000, 420, 6316, 28781, 3198, 3123, 1247, 28747, 15359,
                 32000, 420, 6316, 28781, 3198, 3123, 21631, 28747]
ANSWER_IDS = [15359, 32000]  # what the model generates for " Hi", its end of turn included


@pytest.fixture(scope="module")
def builder(demo_model_dir: Callable[[str], Path]) -> OpenChatPromptBuilder:
    from transformers import AutoTokenizer

    return OpenChatPromptBuilder(AutoTokenizer.from_pretrained(demo_model_dir("openchat-3.5-tiny")))


def turns(*contents: str, system: str | None = None) -> list[PromptMessage]:
    messages = [PromptMessage("system", system)] if system is not None else []
    return messages + [PromptMessage("user" if i % 2 == 0 else "assistant", c) for i, c in enumerate(contents)]


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_the_second_turn_extends_the_first_by_the_answer_and_the_new_question(builder: Any) -> None:
    first = builder.build(turns("Hello"))
    second = builder.build(turns("Hello", "Hi", "How are you today?"))
    assert second == GOLDEN
    # Turn 1's prompt, then exactly the tokens the model generated for it: all of it is reusable.
    assert second[:len(first) + len(ANSWER_IDS)] == first + ANSWER_IDS


def test_a_system_prompt_is_shared_by_every_turn(builder: Any) -> None:
    system = "You are a helpful assistant."
    first = builder.build(turns("Hi", system=system))
    assert first == GOLDEN_SYSTEM
    prompts = [builder.build(turns(*["Hi", "Hello!", "What now?", "Nothing.", "Bye"][:n], system=system))
               for n in (1, 3, 5)]
    for earlier, later in zip(prompts, prompts[1:], strict=False):
        assert later[:len(earlier)] == earlier


@pytest.mark.parametrize(("generated", "returned", "reused_answer_tokens"), [
    ([15359, 32000], "Hi", 2),  # " Hi": the service strips the space, the tokenizer's dummy prefix restores it
    ([15359, 32000], " Hi", 2),  # a client that keeps the space: the legacy tokenizer swallows one
    ([15359, 28705, 32000], "Hi", 1),  # "Hi " with a trailing space the client strips
    ([28705, 13, 23809, 32000], "Hi", 0),  # "\nHi": an answer that starts on a new line, stripped
])
def test_how_much_survives_the_answer_coming_back(builder: Any, generated: list[int], returned: str,
                                                  reused_answer_tokens: int) -> None:
    """Where the text a client sends back re-tokenizes differently from what the model generated, the
    earlier turns are still reused in full; only the answer from its first differing token is computed again."""
    first = builder.build(turns("Hello"))
    second = builder.build(turns("Hello", returned, "How are you today?"))
    assert common_prefix(first + generated, second) == len(first) + reused_answer_tokens
