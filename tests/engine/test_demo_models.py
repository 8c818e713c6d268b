"""The demo models run on vLLM's CPU engine: SmolLM2 knows its capitals, the tiny OpenChat stops on 32000."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _engine(model_dir: Path) -> Iterator[Any]:
    from vllm import LLM

    # 1 GiB of KV cache is plenty for these prompts and keeps two engines in a row cheap. As an argument:
    # VLLM_CPU_KVCACHE_SPACE set here would reach every server the tier starts later (which refuse it).
    llm = LLM(model=str(model_dir), dtype="float32", enforce_eager=True, max_model_len=1024,
              max_num_seqs=4, seed=0, kv_cache_memory_bytes=1 << 30)
    yield llm
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def smollm2(demo_model_dir) -> Iterator[Any]:
    yield from _engine(demo_model_dir("smollm2-135m-instruct"))


def test_smollm2_answers_paris_under_greedy_decoding(smollm2) -> None:
    from vllm import SamplingParams

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    outputs = smollm2.chat(messages, SamplingParams(temperature=0.0, max_tokens=20))
    answer = outputs[0].outputs[0].text
    assert "Paris" in answer, answer
    assert outputs[0].outputs[0].finish_reason == "stop"


def test_openchat_tiny_runs_the_golden_prompt_and_stops_on_end_of_turn(demo_model_dir) -> None:
    from vllm import SamplingParams

    golden = [1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 22557, 32000, 420, 6316, 28781, 3198, 3123,
              21631, 28747]
    engine = _engine(demo_model_dir("openchat-3.5-tiny"))
    llm = next(engine)
    try:
        generated = llm.generate({"prompt_token_ids": golden},
                                 SamplingParams(temperature=0.0, max_tokens=8))[0].outputs[0]
        assert len(generated.token_ids) == 8
        assert all(0 <= t < 32002 for t in generated.token_ids)
        # Forcing the stop token through a logit bias: the engine must stop on id 32000 (the tokenizer's EOS).
        stopped = llm.generate({"prompt_token_ids": golden},
                               SamplingParams(temperature=0.0, max_tokens=8, logit_bias={32000: 100.0}))
        assert stopped[0].outputs[0].finish_reason == "stop"
        assert list(stopped[0].outputs[0].token_ids) == [32000]
    finally:
        next(engine, None)
