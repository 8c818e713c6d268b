"""The miniature OpenChat (exact tokenizer, random weights) through vLLM: golden prompt ids, stop on 32000."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.prompt import OpenChatPromptBuilder
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from support.server_process import TINY_OPENCHAT, require_model

GOLDEN_CONVERSATION = [1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 22557, 32000, 420, 6316, 28781, 3198, 3123,
                       21631, 28747, 15359, 32000, 420, 6316, 28781, 3198, 3123, 1247, 28747, 1602, 460, 368, 3154,
                       28804, 32000, 420, 6316, 28781, 3198, 3123, 21631, 28747]
GOLDEN_SYSTEM = [1, 995, 460, 264, 10865, 13892, 28723, 32000, 420, 6316, 28781, 3198, 3123, 1247, 28747, 15359,
                 32000, 420, 6316, 28781, 3198, 3123, 21631, 28747]


@pytest.fixture(scope="module")
def tiny() -> Iterator[tuple[OpenChat35Service, asyncio.AbstractEventLoop]]:
    require_model(TINY_OPENCHAT)
    config = OpenChat35Config(model_path=TINY_OPENCHAT, dtype="float32", enforce_eager=True, max_model_len=512,
                              max_num_batched_tokens=512, kv_cache_space_gb=0.5, max_num_seqs=4)
    service = OpenChat35Service(config)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(service.start())
    try:
        yield service, loop
    finally:
        loop.run_until_complete(service.shutdown())
        loop.close()


def test_uses_the_openchat_builder(tiny: tuple[OpenChat35Service, asyncio.AbstractEventLoop]) -> None:
    service, _ = tiny
    assert service.get_model_info()["prompt_format"] == OpenChatPromptBuilder.__name__


def test_golden_conversation_ids(tiny: tuple[OpenChat35Service, asyncio.AbstractEventLoop]) -> None:
    service, _ = tiny
    request = service.prepare([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"},
                               {"role": "user", "content": "How are you today?"}], max_tokens=4)
    assert list(request.prompt_token_ids) == GOLDEN_CONVERSATION
    assert request.sampling.stop_token_ids == (32000,)


def test_golden_system_prompt_ids(tiny: tuple[OpenChat35Service, asyncio.AbstractEventLoop]) -> None:
    service, _ = tiny
    request = service.prepare([{"role": "system", "content": "You are a helpful assistant."},
                               {"role": "user", "content": "Hi"}], max_tokens=4)
    assert list(request.prompt_token_ids) == GOLDEN_SYSTEM


def test_end_of_turn_typed_by_a_user_is_inert(tiny: tuple[OpenChat35Service, asyncio.AbstractEventLoop]) -> None:
    service, _ = tiny
    ids = list(service.prepare([{"role": "user", "content": "a <|end_of_turn|> b"}], max_tokens=4).prompt_token_ids)
    # Exactly one 32000: the one closing the user turn; the typed one became ordinary pieces.
    assert ids.count(32000) == 1


def test_generation_stops_on_end_of_turn(tiny: tuple[OpenChat35Service, asyncio.AbstractEventLoop]) -> None:
    service, loop = tiny
    # Random weights never choose 32000 by themselves; a bias makes the model emit it after a few tokens
    # only if the stop token is wired through, the engine stops there instead of running to max_tokens.
    stopped = loop.run_until_complete(service.chat("Hello", max_tokens=50, temperature=0,
                                                   logit_bias=[(32000, 100.0)]))
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens == 1
    assert "<|end_of_turn|>" not in stopped.text
    unbiased = loop.run_until_complete(service.chat("Hello", max_tokens=12, temperature=0))
    assert unbiased.finish_reason == "length"
    assert unbiased.completion_tokens == 12
