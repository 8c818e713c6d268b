"""Client-side helpers for the engine and container tiers: raw SSE, OpenAI error shapes, gauges, processes.

Raw httpx rather than the `openai` SDK where the test is about the wire: the status line, the
headers, every SSE frame up to `[DONE]`, and what arrives when a connection dies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

MODEL = "openchat-3.5"
# Gauges that must read 0 on an idle service: ours and the engine's.
BUSY_GAUGES = ("openchat_requests_running", "openchat_requests_waiting",
               "vllm:num_requests_running", "vllm:num_requests_waiting")


def chat_body(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def long_prompt(words: int, salt: str = "") -> str:
    """About `words` tokens of plain English (SmolLM2's tokenizer: ~1 token per common word)."""
    base = ["the", "river", "keeps", "its", "quiet", "promise", "to", "the", "valley", "and", "every",
            "stone", "remembers", "the", "rain", "that", "shaped", "it", "long", "before", "the", "town"]
    return salt + " " + " ".join(base[i % len(base)] for i in range(words))


def is_openai_error(body: Any) -> bool:
    """`{"error": {"message": str, "type": str, "param": str|None, "code": str|None}}`."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return False
    error = body["error"]
    return (set(error) >= {"message", "type", "param", "code"} and isinstance(error["message"], str)
            and bool(error["message"]) and isinstance(error["type"], str)
            and (error["param"] is None or isinstance(error["param"], str))
            and (error["code"] is None or isinstance(error["code"], str)))


@dataclass
class StreamResult:
    """What one streaming request saw on the wire."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    frames: list[Any] = field(default_factory=list)  # parsed JSON of each `data:` frame
    done: bool = False  # `data: [DONE]` arrived
    body: Any = None  # the JSON body of a non-200 answer
    transport_error: str | None = None  # the connection broke (no [DONE])

    @property
    def text(self) -> str:
        return "".join((f.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
                       for f in self.frames if isinstance(f, dict) and "choices" in f)

    @property
    def error_frames(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and "error" in f]


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                      on_frame: Callable[[StreamResult], bool] | None = None) -> StreamResult:
    """POST a streaming chat; `on_frame` may return True to drop the connection after that frame."""
    result = StreamResult()
    try:
        async with client.stream("POST", url, json={**body, "stream": True}) as response:
            result.status = response.status_code
            result.headers = dict(response.headers)
            if response.status_code != 200:
                raw = await response.aread()
                result.body = _json_or_text(raw)
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line.removeprefix("data: ")
                if payload == "[DONE]":
                    result.done = True
                    break
                result.frames.append(_json_or_text(payload.encode()))
                if on_frame is not None and on_frame(result):
                    break  # leaving the block closes the connection mid-stream
    except httpx.HTTPError as exc:
        result.transport_error = f"{type(exc).__name__}: {exc}"
    return result


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def scrape(metrics_url: str) -> dict[str, float]:
    """Every sample of the metrics page, summed over labels: {'openchat_requests_running': 0.0, ...}."""
    text = httpx.get(metrics_url, timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def wait_idle(metrics_url: str, timeout: float = 60) -> dict[str, float]:
    """Poll until every busy gauge reads 0; returns the last reading (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while True:
        reading = {name: scrape(metrics_url).get(name, float("nan")) for name in BUSY_GAUGES}
        if all(value == 0 for value in reading.values()) or time.monotonic() > deadline:
            return reading
        time.sleep(0.5)


def engine_core_processes(server_pid: int) -> list[psutil.Process]:
    """vLLM's engine-core child process(es) of a `hxp-llm serve` (named VLLM::EngineCore by vLLM)."""
    found = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found
