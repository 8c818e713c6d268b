"""Two streams with the same X-Request-ID on the real vLLM engine: the first client leaves after three content
frames, the second stream completes. (vLLM keys requests by id; the client's id used to be the engine's, so
the first one's abort stopped the second with `generation_aborted`.)"""

from __future__ import annotations

import asyncio

import httpx

from support.clients import StreamResult, chat_body, stream_chat, wait_idle
from support.server_process import ServerProcess

SHARED_ID = "two-tabs-one-id"


def test_leaving_one_of_two_streams_with_one_request_id_leaves_the_other_intact(demo_server: ServerProcess) -> None:
    url = f"{demo_server.base_url}/v1/chat/completions"
    # min_tokens: the answer is long enough for the second stream to be running when the first leaves.
    body = chat_body("Tell me a long story about a lighthouse keeper.", max_tokens=120, min_tokens=100,
                     temperature=0.8, stream_options={"include_usage": True})

    async def both() -> tuple[StreamResult, StreamResult]:
        async with httpx.AsyncClient(timeout=600, headers={"X-Request-ID": SHARED_ID}) as client:
            def content_frames(result: StreamResult) -> int:
                return sum(1 for f in result.frames if isinstance(f, dict)
                           and any(c.get("delta", {}).get("content") for c in f.get("choices") or ()))

            leaver = stream_chat(client, url, body, lambda r: content_frames(r) >= 3)
            return await asyncio.gather(leaver, stream_chat(client, url, body))

    left, stayed = asyncio.run(both())

    assert left.status == 200
    assert not left.done  # it left mid-answer
    assert stayed.status == 200
    assert stayed.headers["x-request-id"] == SHARED_ID
    assert stayed.error_frames == [], stayed.error_frames
    assert stayed.done
    finishes = [c["finish_reason"] for f in stayed.frames for c in f.get("choices") or () if c.get("finish_reason")]
    assert finishes in (["length"], ["stop"]), finishes
    assert stayed.frames[-1]["usage"]["completion_tokens"] >= 100
    assert wait_idle(demo_server.metrics_url) == dict.fromkeys(wait_idle(demo_server.metrics_url), 0)
