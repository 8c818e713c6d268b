"""The request that killed the engine: seeded sampling while chunked prefill splits prompts.

The exact condition, on the demo config (max_num_batched_tokens 2048, chunked prefill on): two
~2,000-token prompts arrive together with a dozen seeded temperature-1 requests. Their prompts
queue behind and between the long ones, so the 2,048-token step budget ends inside some of them:
those are prefilled in chunks, and vLLM 0.32's CPU worker then raised "CPU Generator does not use
offset" and died. Each seeded prompt is a few hundred tokens so the split falls inside one every
round; a second round shows the engine takes another storm after the first. Afterwards: the engine
is alive, every request got its answer, and a seeded request gives the same text as when it was
sent alone (the fix must not trade the crash for lost reproducibility).
"""

from __future__ import annotations

import asyncio

import httpx

from support.clients import chat_body, long_prompt, scrape
from support.server_process import ServerProcess

ROUNDS = 2
SEEDED_PER_ROUND = 12


def seeded_body(index: int) -> dict:
    return chat_body(long_prompt(300, salt=f"Story {index}: tell me how it ends."), seed=1000 + index,
                     temperature=1.0, max_tokens=12)


async def _round(client: httpx.AsyncClient, url: str, round_index: int) -> list[httpx.Response]:
    longs = [client.post(url, json=chat_body(long_prompt(2000, salt=f"Round {round_index} part {n}."),
                                             max_tokens=4, temperature=0)) for n in (1, 2)]
    seeded = [client.post(url, json=seeded_body(i)) for i in range(SEEDED_PER_ROUND)]
    return list(await asyncio.gather(*longs, *seeded))


def test_seeded_requests_beside_long_prompts_keep_the_engine_alive(demo_server: ServerProcess) -> None:
    url = f"{demo_server.base_url}/v1/chat/completions"
    alone = httpx.post(url, json=seeded_body(0), timeout=120)
    assert alone.status_code == 200, alone.text
    alone_text = alone.json()["choices"][0]["message"]["content"]

    async def run() -> list[list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=300) as client:
            return [await _round(client, url, r) for r in range(ROUNDS)]

    rounds = asyncio.run(run())

    statuses = [response.status_code for responses in rounds for response in responses]
    assert statuses == [200] * len(statuses), [(r.status_code, r.text[:200]) for rs in rounds for r in rs
                                              if r.status_code != 200]
    health = httpx.get(f"{demo_server.base_url}/health", timeout=10)
    assert health.status_code == 200, health.text
    assert demo_server.process.poll() is None
    # Chunked prefill really happened: steps were filled to the budget (more prompt tokens than one step).
    assert scrape(demo_server.metrics_url).get("vllm:prompt_tokens_total", 0) > 2048 * 2
    # Reproducible: the same seeded request, chunked beside the long prompts, as when it ran alone.
    in_storm = [responses[2].json()["choices"][0]["message"]["content"] for responses in rounds]
    assert in_storm == [alone_text] * ROUNDS, (alone_text, in_storm)
