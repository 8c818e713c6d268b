"""The spec's validation commands, read from the README as written, pass against the app (in-process)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import httpx
import pytest
from api_harness import Served, sse_chunks

from hxp_enterprise_llm.api.metrics import MetricsServer
from support.server_process import free_port
from support.spec_commands import CurlCommand, curl_commands, readme_block

pytestmark = pytest.mark.anyio


def test_the_readme_shows_the_specs_commands() -> None:
    commands = curl_commands(readme_block())
    posts = [c for c in commands if c.method == "POST"]
    assert [c.repeat for c in posts] == [1, 1, 10]
    for command in posts:
        body = json.loads(command.data or "")
        assert "model" not in body, "the spec's commands send no model"
        assert command.headers == {"Content-Type": "application/json"}


async def replay(served: Served, command: CurlCommand, metrics_url: str) -> httpx.Response:
    url = urlsplit(command.url)
    if url.port == 11403:  # the metrics port is its own server: the real one, on a free port
        return await asyncio.to_thread(httpx.get, metrics_url, timeout=10)
    return await served.client.request(command.method, url.path, headers=command.headers,
                                       content=command.data.encode() if command.data else None)


def answered(exposition: str) -> float:
    """openchat_requests_total over every 200 answered in full, from a scrape."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
               if line.startswith("openchat_requests_total{") and 'status="200"' in line and 'outcome="ok"' in line)


async def test_every_readme_command_passes_in_process(served: Served) -> None:
    port = free_port()
    metrics = MetricsServer(served.ctx.metrics.registry, "127.0.0.1", port)
    metrics.start()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    try:
        posts = 0
        for command in curl_commands(readme_block()):
            responses = await asyncio.gather(*(replay(served, command, metrics_url) for _ in range(command.repeat)))
            for response in responses:
                assert response.status_code == 200, (command, response.text)
            body = command.data and json.loads(command.data)
            posts += command.repeat if command.method == "POST" else 0
            if command.url.endswith("/health"):
                health = responses[0].json()
                assert health["status"] == "healthy"
                assert isinstance(health["timestamp"], str)
            elif command.url.endswith(":11403/metrics"):
                assert responses[0].headers["content-type"].startswith("text/plain")
                assert answered(responses[0].text) == 0  # nothing answered yet: the count below is ours
            elif command.url.endswith("/metrics/streaming"):
                assert responses[0].json()["window_seconds"] == 300
            elif body and body.get("stream"):
                chunks = sse_chunks(responses[0].text)
                assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            elif body:
                assert all(r.json()["choices"][0]["message"]["content"] for r in responses)
        # The real metrics port counted every answer the commands got, once.
        scrape = await asyncio.to_thread(httpx.get, metrics_url, timeout=10)
    finally:
        metrics.stop()
    assert posts == 12
    assert answered(scrape.text) == posts
