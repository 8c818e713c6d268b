"""Text frames byte for byte: the exact JSON OpenAI's shape gives, whatever the text holds.

Most frames of a stream carry only text and are made from a per-choice template; this spells the
expected bytes out from the OpenAI chunk shape itself, for texts chosen to break a template (quotes,
escapes, control characters, line separators, the template's own placeholder, emoji), for chat and
legacy completions, with several choices.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from hxp_enterprise_llm.services.core.engine import TokenDelta
from hxp_enterprise_llm.services.streaming.response_streamer import (
    TEXT_SLOT,
    CompletionStreamer,
    IteratorSource,
    ResponseStreamer,
)

pytestmark = pytest.mark.anyio

TEXTS = ['plain', 'say "hi"', "back\\slash", "line\nbreak\ttab", "nul\x00byte", "\u2028\u2029", "é 漢字 🙂",
         TEXT_SLOT, json.dumps(TEXT_SLOT), "</script>", " ", "{\"json\": [1, 2]}"]


async def deltas(choices: int) -> AsyncIterator[TokenDelta]:
    done = 0
    for text in TEXTS:
        for index in range(choices):
            done += 1
            yield TokenDelta(text, (done,), 3, done, None, index=index)


def encoded(body: dict[str, object]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def text_frames(streamer: ResponseStreamer) -> list[str]:
    frames = [frame async for frame in streamer.frames(IteratorSource(deltas(streamer.choices)))]
    body = frames[len(streamer.opening_frames()):]
    # The plain iterator ends without finish reasons: the last frame per choice is "stop", then [DONE].
    return body[:-(streamer.choices + 1)]


@pytest.mark.parametrize("choices", [1, 3])
async def test_chat_text_frames_are_exactly_openais_chunks(choices: int) -> None:
    streamer = ResponseStreamer(model="openchat-3.5", chunk_size=1, flush_interval=None, choices=choices)
    expected = [encoded({"id": streamer.completion_id, "object": "chat.completion.chunk", "created": streamer.created,
                         "model": "openchat-3.5",
                         "choices": [{"index": index, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": None}]})
                for text in TEXTS for index in range(choices)]
    assert await text_frames(streamer) == expected


@pytest.mark.parametrize("choices", [1, 2])
async def test_completion_text_frames_are_exactly_openais_chunks(choices: int) -> None:
    streamer = CompletionStreamer(model="openchat-3.5", chunk_size=1, flush_interval=None, choices=choices)
    expected = [encoded({"id": streamer.completion_id, "object": "text_completion", "created": streamer.created,
                         "model": "openchat-3.5",
                         "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": None}]})
                for text in TEXTS for index in range(choices)]
    assert await text_frames(streamer) == expected


async def test_a_model_name_holding_the_placeholder_still_gets_the_right_frames() -> None:
    streamer = ResponseStreamer(model=TEXT_SLOT, chunk_size=1, flush_interval=None)
    frames = await text_frames(streamer)
    assert [json.loads(frame.removeprefix("data: "))["choices"][0]["delta"]["content"] for frame in frames] == TEXTS
    assert {json.loads(frame.removeprefix("data: "))["model"] for frame in frames} == {TEXT_SLOT}
