"""A closed-loop load run: `concurrency` workers each send their next request as soon as one finishes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec, send_chat_request
from hxp_enterprise_llm.bench.prompts import BUILTIN_PROMPTS


@dataclass(frozen=True)
class LoadOptions:
    base_url: str = "http://127.0.0.1:11402"
    model: str | None = None  # None: the first id of GET /v1/models
    api_key: str | None = None
    prompts: Sequence[str] = BUILTIN_PROMPTS
    num_requests: int = 20
    concurrency: int = 1
    max_tokens: int = 50
    stream: bool = True
    temperature: float | None = 0.0
    ignore_eos: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    warmup: int = 1
    timeout_s: float = 300.0


@dataclass(frozen=True)
class LoadRun:
    options: LoadOptions
    model: str
    results: list[RequestResult]
    duration_s: float


def normalize_base_url(url: str) -> str:
    """Accept `http://h:p`, `http://h:p/` and `http://h:p/v1` alike."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def make_client(options: LoadOptions) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    limits = httpx.Limits(max_connections=options.concurrency + 4,
                          max_keepalive_connections=options.concurrency + 4)
    return httpx.AsyncClient(base_url=normalize_base_url(options.base_url), headers=headers,
                             timeout=httpx.Timeout(options.timeout_s), limits=limits)


async def discover_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise RuntimeError("the server lists no models at /v1/models; pass --model")
    return str(models[0]["id"])


async def run_load(options: LoadOptions) -> LoadRun:
    """Warm up (results dropped), then send `num_requests` with `concurrency` in flight."""
    if options.num_requests < 1 or options.concurrency < 1:
        raise ValueError("num_requests and concurrency must be at least 1")
    async with make_client(options) as client:
        model = options.model or await discover_model(client)
        extra = dict(options.extra_body)
        if options.ignore_eos:
            extra["ignore_eos"] = True  # vLLM's extension; servers without it may reject or ignore it
        base = RequestSpec(model=model, prompt="", max_tokens=options.max_tokens, stream=options.stream,
                           temperature=options.temperature, extra_body=extra)
        specs = [replace(base, prompt=options.prompts[i % len(options.prompts)])
                 for i in range(options.num_requests)]
        warmups = [replace(base, prompt=options.prompts[i % len(options.prompts)])
                   for i in range(options.warmup)]
        await _run_closed_loop(client, warmups, min(options.concurrency, max(len(warmups), 1)))
        started = time.perf_counter()
        results = await _run_closed_loop(client, specs, options.concurrency)
        duration = time.perf_counter() - started
    return LoadRun(options, model, results, duration)


async def _run_closed_loop(client: httpx.AsyncClient, specs: Sequence[RequestSpec],
                           concurrency: int) -> list[RequestResult]:
    results: list[RequestResult | None] = [None] * len(specs)
    queue = iter(range(len(specs)))

    async def worker() -> None:
        # A shared iterator hands each index to exactly one worker: no locking needed in one event loop.
        for index in queue:
            results[index] = await send_chat_request(client, specs[index])

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
    return [r for r in results if r is not None]
