"""A client that opens a stream and never reads loses its slot within the request deadline, and the engine request
is aborted: sends cannot block past the deadline. A real uvicorn and a real socket, so the buffers really fill."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from api_harness import make_config
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_exposition import total

from hxp_enterprise_llm.api.app import build_app
from hxp_enterprise_llm.api.metrics import render_metrics
from hxp_enterprise_llm.server import DrainingServer, server_config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from hxp_tools.servers import poll_health
from support.fake_engine import FakeEngine
from support.server_process import app_served_in_thread, free_port

DEADLINE_SECONDS = 3.0
# Far more than any socket buffer on the way (loopback send buffers autotune up to 4 MiB): 3,000 tokens
# of 2,000 characters each, 6 MB of SSE.
TOKENS, TOKEN = 3000, "y" * 2000
WAIT_SECONDS = DEADLINE_SECONDS + 30  # a generous bound for the condition; nothing asserts on how long it took


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


def long_answer_app(**settings: object) -> tuple[FastAPI, FakeEngine]:
    engine = FakeEngine()
    engine.enqueue(*[TOKEN] * TOKENS)
    # Pings far apart: a ping's own send past the deadline would also end the stream, hiding a deadline
    # that failed to cut the blocked send.
    config = make_config(connection_timeout_seconds=DEADLINE_SECONDS, response_chunk_size=10,
                         stream_ping_seconds=3600, **settings)
    return build_app(config, OpenChat35Service(config, engine=engine), serve_metrics=False), engine


@contextlib.contextmanager
def client_that_never_reads(url: str) -> Iterator[socket.socket]:
    """A stream opened with a small receive buffer, whose answer is never read."""
    body = json.dumps({"messages": [{"role": "user", "content": "a long answer"}], "stream": True,
                       "max_tokens": TOKENS}).encode()
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
        address = urlsplit(url)
        client.connect((address.hostname, address.port))
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        yield client


def test_a_client_that_never_reads_loses_its_slot_within_the_deadline() -> None:
    app, engine = long_answer_app()
    ctx = app.state.ctx
    with app_served_in_thread(app) as url, client_that_never_reads(url):
        wait_until(lambda: engine.requests, "the engine got the request")
        wait_until(lambda: ctx.orchestrator.running == 0, "the stalled client's slot is free")
        wait_until(lambda: engine.aborted, "the engine request is aborted")
        assert engine.aborted == [engine.requests[0].request_id]
        assert engine.running_requests == 0

        def timeouts_counted() -> float:
            samples = [s for f in text_string_to_metric_families(render_metrics(ctx.metrics.registry).decode())
                       for s in f.samples]
            return total(samples, "openchat_requests_total", status="200", outcome="timeout")

        # The record is closed (and counted) by the middleware after the route has released the slot and
        # aborted the engine request, so the count may land a moment after the two conditions above.
        wait_until(timeouts_counted, "the request is counted as a timeout")
        assert timeouts_counted() == 1


def test_a_client_that_never_reads_cannot_hold_the_server_from_stopping() -> None:
    app, engine = long_answer_app(host="127.0.0.1", port=free_port())
    config = app.state.ctx.config
    server = DrainingServer(server_config(app, config), config.drain_timeout_seconds)  # as run_server builds it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    try:
        poll_health(f"{url}/health", timeout_s=WAIT_SECONDS, poll_s=0.1, still_running=lambda: None)
        with client_that_never_reads(url):
            wait_until(lambda: engine.aborted, "the stalled request is over")
            server.should_exit = True  # what the drain does once no request is left
            thread.join(timeout=WAIT_SECONDS)
            assert not thread.is_alive(), "uvicorn still waits for the connection of a client that reads nothing"
    finally:
        server.should_exit = server.force_exit = True
        thread.join(timeout=WAIT_SECONDS)
