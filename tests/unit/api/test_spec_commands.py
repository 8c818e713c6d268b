"""The spec's validation commands, read from the README as written, pass against the app (in-process)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import httpx
import pytest
from api_harness import Served, sse_chunks

from hxp_enterprise_llm.api.metrics import render_metrics
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


async def replay(served: Served, command: CurlCommand) -> httpx.Response:
    url = urlsplit(command.url)
    if url.port == 11403:  # the metrics port is its own server: read what it would serve
        return httpx.Response(200, content=render_metrics(served.ctx.metrics.registry))
    return await served.client.request(command.method, url.path, headers=command.headers,
                                       content=command.data.encode() if command.data else None)


async def test_every_readme_command_passes_in_process(served: Served) -> None:
    for command in curl_commands(readme_block()):
        responses = await asyncio.gather(*(replay(served, command) for _ in range(command.repeat)))
        for response in responses:
            assert response.status_code == 200, (command, response.text)
        body = command.data and json.loads(command.data)
        if command.url.endswith("/health"):
            health = responses[0].json()
            assert health["status"] == "healthy"
            assert isinstance(health["timestamp"], str)
        elif command.url.endswith(":11403/metrics"):
            assert "openchat_requests_total" in responses[0].text
        elif body and body.get("stream"):
            chunks = sse_chunks(responses[0].text)
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        elif body:
            assert all(r.json()["choices"][0]["message"]["content"] for r in responses)
