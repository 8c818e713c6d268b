"""One chat-completion request against an OpenAI-compatible server, timed token by token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class RequestSpec:
    """What every request of a run sends; `extra_body` carries server-specific fields (vLLM's ignore_eos)."""

    model: str
    prompt: str
    max_tokens: int
    stream: bool = True
    temperature: float | None = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    # A conversation's whole history (then `prompt` is unused) and its session header, if any.
    messages: tuple[dict[str, str], ...] = ()
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(self.messages) or [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.stream:
            # Without the usage frame a streamed answer's token count is unknown: servers may put
            # several tokens in one SSE frame (ours sends up to `response_chunk_size`).
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body


@dataclass
class RequestResult:
    """Timings in seconds from the moment the request was sent; `error` is None on success.

    `sent_at` is when it was sent, in seconds from the start of the run (for throughput over time).
    """

    ok: bool = False
    status: int | None = None
    error: str | None = None
    ttft: float | None = None
    e2e: float = 0.0
    content_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens; None: not reported
    output_tokens: int = 0
    text: str = ""
    sent_at: float = 0.0
    retry_after: str | None = None  # a refusal's Retry-After header
    refused_as_stream: bool = False  # a refusal that came as SSE bytes (a service must refuse before streaming)
    served_by: str | None = None  # X-Served-By: which replica a balancer (our HAProxy config) chose

    @property
    def finished_at(self) -> float:
        return self.sent_at + self.e2e

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive content frames (a frame may hold several tokens)."""
        times = self.content_times
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first, as `vllm bench serve` defines it."""
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def error_key(self) -> str:
        """How errors are grouped in the report: `status 429`, `ReadTimeout`, `stream error`..."""
        if self.ok:
            return "ok"
        if self.status is not None and self.status >= 400:
            return f"status {self.status}"
        return (self.error or "unknown").split(":", 1)[0]


class SSEDecoder:
    """Server-sent events from text lines: yields each event's data (multi-line data joined by newlines)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[str]:
        line = line.rstrip("\r")
        if line == "":
            if self._data:
                yield "\n".join(self._data)
                self._data = []
            return
        if line.startswith(":"):
            return  # comment, e.g. `: ping` keep-alives
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)

    def close(self) -> Iterator[str]:
        """A stream that ends without the final blank line still delivers its last event."""
        if self._data:
            yield "\n".join(self._data)
            self._data = []


async def send_chat_request(client: httpx.AsyncClient, spec: RequestSpec,
                            run_started: float | None = None) -> RequestResult:
    """Send one request; never raises for server or transport failures, they land in the result.

    `run_started` is the run's `time.perf_counter()` origin for `sent_at`.
    """
    result = RequestResult()
    start = time.perf_counter()
    result.sent_at = start - (start if run_started is None else run_started)
    try:
        async with client.stream("POST", CHAT_PATH, json=spec.body(), headers=spec.headers or None) as response:
            result.status = response.status_code
            result.served_by = response.headers.get("x-served-by")
            if response.status_code >= 400:
                raw = await response.aread()
                result.retry_after = response.headers.get("retry-after")
                result.refused_as_stream = (response.headers.get("content-type", "").startswith("text/event-stream")
                                            or raw.startswith(b"data:"))
                body = raw.decode("utf-8", "replace")
                result.error = f"HTTP {response.status_code}: {body[:300]}"
            elif spec.stream:
                await _read_stream(response, result, start)
            else:
                _read_json(json.loads(await response.aread()), result)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    except (ValueError, KeyError, TypeError) as exc:
        result.error = f"bad response: {type(exc).__name__}: {exc}"
    result.e2e = time.perf_counter() - start
    return result


async def _read_stream(response: httpx.Response, result: RequestResult, start: float) -> None:
    decoder = SSEDecoder()
    done = False
    async for line in response.aiter_lines():
        for data in decoder.feed(line):
            done = done or _apply_event(data, result, time.perf_counter() - start)
    for data in decoder.close():
        done = done or _apply_event(data, result, time.perf_counter() - start)
    if result.error is None and not done:
        result.error = "stream error: ended without [DONE]"
    if result.output_tokens == 0:
        # No usage frame (server ignored include_usage): one token per content frame is the best guess.
        result.output_tokens = len(result.content_times)
    result.ok = result.error is None


def _apply_event(data: str, result: RequestResult, elapsed: float) -> bool:
    """Fold one SSE event into the result; True once `[DONE]` arrives."""
    if data.strip() == "[DONE]":
        return True
    event = json.loads(data)
    if "error" in event:
        # Some servers report failures inside a 200 stream (peers.md): still a failed request.
        message = event["error"].get("message") if isinstance(event["error"], dict) else event["error"]
        result.error = f"stream error: {message}"
        return False
    for choice in event.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content:
            if result.ttft is None:
                result.ttft = elapsed
            result.content_times.append(elapsed)
            result.text += content
    usage = event.get("usage")
    if usage:
        _apply_usage(usage, result)
    return False


def _apply_usage(usage: dict[str, Any], result: RequestResult) -> None:
    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    result.output_tokens = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    result.cached_tokens = int(cached) if cached is not None else None


def _read_json(payload: dict[str, Any], result: RequestResult) -> None:
    result.text = payload["choices"][0]["message"].get("content") or ""
    _apply_usage(payload.get("usage") or {}, result)
    result.ok = True
