"""Drive the real app in-process on the FakeEngine: build it, wait for states, parse SSE, hold clients.

Two ways to talk to the app:
- `Served.client`, an httpx client over ASGITransport (it buffers a response until the app is done);
- `RawExchange`, a hand-driven ASGI call for what httpx cannot do in-process: a client that hangs
  up mid-request, or one that reads slowly (its `gate` holds every `send` until the test opens it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from hxp_enterprise_llm.api.app import build_app
from hxp_enterprise_llm.api.context import AppContext
from hxp_enterprise_llm.bench.client import SSEDecoder
from hxp_enterprise_llm.orchestration.service_state import ServiceState
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from support.fake_engine import FakeEngine

MODEL = "openchat-3.5"
CHAT = "/v1/chat/completions"
# Generous bound for waiting on a state; tests never assert on how long anything took.
STATE_WAIT_SECONDS = 10.0


def chat_body(content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


async def eventually(condition: Callable[[], Any], what: str, timeout: float = STATE_WAIT_SECONDS) -> None:
    """Poll until `condition()` is truthy; fail naming `what` if it never is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


class RequestStates:
    """The harness's outermost middleware: each request's `scope["state"]` by the X-Request-ID the test sent,
    so a test can find the engine request the service made for it (its record's `engine_request_id`)."""

    def __init__(self, app: ASGIApp, states: dict[str, list[dict[str, Any]]]) -> None:
        self.app = app
        self.states = states

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            sent = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
            self.states.setdefault(sent, []).append(scope.setdefault("state", {}))
        await self.app(scope, receive, send)


@dataclass
class Served:
    app: FastAPI
    ctx: AppContext
    engine: FakeEngine
    client: httpx.AsyncClient
    fatal_calls: list[tuple[int, str]] = field(default_factory=list)
    states: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def engine_id(self, request_id: str) -> str | None:
        """The engine request id the service gave the (last) request sent with this X-Request-ID, once admitted."""
        records = [state["record"] for state in self.states.get(request_id, ()) if "record" in state]
        return records[-1].engine_request_id if records else None

    async def chat(self, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return await self.client.post(CHAT, json=body if body is not None else chat_body(), **kwargs)

    async def started(self, request_id: str) -> None:
        """Wait until the engine has received the request sent with this X-Request-ID."""
        await eventually(lambda: any(r.request_id == self.engine_id(request_id) for r in self.engine.requests),
                         f"engine request {request_id} started")

    async def release(self, request_id: str) -> None:
        """Let a held engine request finish now with its full answer."""
        await self.started(request_id)
        engine_id = self.engine_id(request_id)
        assert engine_id is not None
        await self.engine.finish(engine_id)


def make_config(**settings: Any) -> OpenChat35Config:
    # The FakeEngine's character tokenizer has no OpenChat tokens: use its chat template.
    settings.setdefault("prompt_format", "chat_template")
    # Queued requests in these tests wait for the test to release a slot, never for a clock: the default
    # 10 s queue timeout turned a slow, busy machine (mutation runs) into a failure. Tests of the timeout set it.
    settings.setdefault("queue_timeout_seconds", 3600)
    return OpenChat35Config(**settings)


@contextlib.asynccontextmanager
async def serve(engine: FakeEngine | None = None, *, wait_ready: bool = True,
                **settings: Any) -> AsyncIterator[Served]:
    """The app (build_app + lifespan) on a FakeEngine, with a client; ready unless wait_ready=False."""
    config = make_config(**settings)
    engine = engine if engine is not None else FakeEngine()
    fatal_calls: list[tuple[int, str]] = []
    app = build_app(config, OpenChat35Service(config, engine=engine), serve_metrics=False,
                    on_fatal=lambda code, detail: fatal_calls.append((code, detail)))
    ctx: AppContext = app.state.ctx
    states: dict[str, list[dict[str, Any]]] = {}
    app.add_middleware(RequestStates, states=states)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            served = Served(app, ctx, engine, client, fatal_calls, states)
            if wait_ready:
                await eventually(lambda: ctx.health.state == ServiceState.READY, "service ready")
            yield served


# --- SSE


def sse_events(body: str) -> list[str]:
    """The `data:` payloads of an SSE body in order, up to and including `[DONE]`; comments skipped.

    Parsed by the benchmark client's decoder, the one SSE parser of the project.
    """
    decoder = SSEDecoder()
    events: list[str] = []
    for line in [*body.replace("\r\n", "\n").split("\n"), ""]:
        for data in decoder.feed(line):
            events.append(data)
            if data == "[DONE]":
                return events
    events.extend(decoder.close())
    return events


def sse_chunks(body: str) -> list[dict[str, Any]]:
    """The JSON chunks before `[DONE]`; fails if the stream does not end with `[DONE]`."""
    events = sse_events(body)
    assert events, f"no SSE events in {body[:300]!r}"
    assert events[-1] == "[DONE]", f"stream did not end with [DONE]: {body[-300:]!r}"
    return [json.loads(event) for event in events[:-1]]


def content_frames(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunks with a choice (not the usage chunk), after the role chunk."""
    return [c for c in chunks if c.get("choices")][1:]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def assert_openai_error(response: httpx.Response, status: int, *, code: str | None = None,
                        param: str | None = None) -> dict[str, Any]:
    """The response is `status` with an OpenAI error body; returns its `error` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["type"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


# --- a hand-driven ASGI exchange


class RawExchange:
    """One HTTP request sent straight to the ASGI app, with the client's side under the test's control."""

    def __init__(self, app: FastAPI, body: dict[str, Any], *, request_id: str,
                 path: str = CHAT, headers: dict[str, str] | None = None, stall_body: bool = False,
                 client: tuple[str, int] | None = ("198.51.100.9", 50000)) -> None:
        self._app = app
        self._client = client  # None: a server on a Unix socket knows no client address
        self._body = json.dumps(body).encode()
        self.request_id = request_id
        self.path = path
        self.headers = {"content-type": "application/json", "x-request-id": request_id, **(headers or {})}
        self.hang_up = asyncio.Event()  # set it to make the client disconnect
        self.gate = asyncio.Event()  # sends wait on it: clear it to model a client that is not reading
        self.gate.set()
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.body = bytearray()
        self._body_sent = False
        self._stall_body = stall_body  # send half the body, then nothing more: a slow-body client
        self.app_error: Exception | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> RawExchange:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": self.path, "raw_path": self.path.encode(), "query_string": b"",
            "root_path": "", "server": ("test", 80), "client": self._client,
            "headers": [(k.encode(), v.encode()) for k, v in
                        {**self.headers, "content-length": str(len(self._body))}.items()],
        }
        self.task = asyncio.create_task(self._call(scope))
        return self

    async def _call(self, scope: dict[str, Any]) -> None:
        try:
            await self._app(scope, self._receive, self._send)
        except Exception as exc:  # Starlette re-raises after sending its 500, for the server to log
            self.app_error = exc

    async def _receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            if self._stall_body:
                return {"type": "http.request", "body": self._body[: len(self._body) // 2], "more_body": True}
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self.hang_up.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        await self.gate.wait()
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.response_headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    @property
    def text(self) -> str:
        return self.body.decode()

    async def finished(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, STATE_WAIT_SECONDS)
