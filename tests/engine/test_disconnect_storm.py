"""200 clients drop their streams at random moments; afterwards nothing is left behind.

Each client picks one moment to hang up: while queued or before its first byte (a random delay after
sending), right after the first token, or mid-stream after a few frames. More clients than slots
and queue together, so some are queued when they leave and some are refused (429/503, never 5xx).

Left behind would be: a gauge above 0 (ours: openchat_requests_running/waiting; the engine's:
vllm:num_requests_running/waiting), an engine request never aborted (the vLLM gauges), or a task
still holding a stream or a socket. The service exposes no task count, and none is added for the
test: what a leaked request task holds is visible from outside instead, namely /metrics/streaming's
active_streams, the server's TCP connections on its API port (psutil) and its open file descriptors,
which must come back to what they were before the storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from support.clients import StreamResult, chat_body, is_openai_error, stream_chat, wait_idle
from support.server_process import ServerProcess

CLIENTS = 200
SEED = 20261129


def api_connections(server: ServerProcess) -> int:
    process = psutil.Process(server.process.pid)
    return sum(1 for c in process.net_connections(kind="tcp")
               if c.laddr and c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED)


async def _client(client: httpx.AsyncClient, url: str, rng: random.Random,
                  index: int) -> tuple[str, StreamResult | None]:
    moment = rng.choice(["early", "first-token", "mid-stream"])
    body = chat_body(f"Client {index}: write a long poem about the sea.", max_tokens=200, temperature=0.8,
                     logit_bias={"0": -100, "2": -100})
    if moment == "early":
        task = asyncio.create_task(stream_chat(client, url, body))
        await asyncio.sleep(rng.uniform(0.0, 3.0))
        if task.done():
            return moment, task.result()
        task.cancel()  # queued, or admitted but before its first token: the connection just closes
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return moment, None
    frames_before_drop = 2 if moment == "first-token" else rng.randint(3, 12)
    return moment, await stream_chat(client, url, body, lambda r: len(r.frames) >= frames_before_drop)


def server_errors(metrics_url: str) -> float:
    """Requests the service counted as its own failure (5xx) in openchat_requests_total."""
    text = httpx.get(metrics_url, timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == "openchat_requests"
               for sample in family.samples
               if sample.name == "openchat_requests_total" and sample.labels.get("status", "").startswith("5"))


def test_two_hundred_dropped_streams_leave_no_trace(demo_server: ServerProcess) -> None:
    url = f"{demo_server.base_url}/v1/chat/completions"
    assert wait_idle(demo_server.metrics_url) == dict.fromkeys(wait_idle(demo_server.metrics_url), 0)
    errors_before = server_errors(demo_server.metrics_url)
    process = psutil.Process(demo_server.process.pid)
    fds_before = process.num_fds()

    async def storm() -> list[tuple[str, StreamResult | None]]:
        rng = random.Random(SEED)
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            return await asyncio.gather(*(_client(client, url, random.Random(rng.random()), i)
                                          for i in range(CLIENTS)))

    outcomes = asyncio.run(storm())

    refused = [r for _, r in outcomes if r is not None and r.status not in (None, 200)]
    for result in refused:
        assert result.status in (429, 503), (result.status, result.body)
        assert is_openai_error(result.body), result.body
        assert "retry-after" in result.headers, result.headers
    broken = [r for _, r in outcomes if r is not None and r.transport_error is not None]
    assert not broken, [r.transport_error for r in broken[:5]]
    moments = {moment for moment, _ in outcomes}
    assert moments == {"early", "first-token", "mid-stream"}

    gauges = wait_idle(demo_server.metrics_url)
    assert gauges == dict.fromkeys(gauges, 0), gauges
    # A client leaving (also while it was still sending its body) is a 499 or a 200, never counted as a 5xx.
    assert server_errors(demo_server.metrics_url) == errors_before
    streaming = httpx.get(f"{demo_server.base_url}/metrics/streaming", timeout=10).json()
    assert streaming["active_streams"] == 0, streaming
    health = httpx.get(f"{demo_server.base_url}/health", timeout=10).json()
    assert (health["running"], health["waiting"]) == (0, 0), health
    assert api_connections(demo_server) == 0
    # Descriptors opened for the storm are closed again (a few may differ: logging, vLLM's own IPC).
    assert process.num_fds() <= fds_before + 5, (fds_before, process.num_fds())
    # And the service still answers.
    after = httpx.post(url, json=chat_body("Say hi.", max_tokens=4), timeout=120)
    assert after.status_code == 200, after.text
