"""A load run, closed or open loop.

Closed loop (the default): `concurrency` workers each send their next request as soon as one finishes, so
the server's speed sets the pace. Open loop (`request_rate`): requests arrive as a Poisson process at that
rate whether or not earlier ones have finished, as `vllm bench serve --request-rate` sends them, so a
server slower than the arrival rate builds a queue, as real traffic would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
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
    request_rate: float | None = None  # requests/s, Poisson arrivals (open loop); None: closed loop
    max_concurrency: int | None = None  # open loop: at most this many in flight (others wait to be sent)
    seed: int = 0  # of the open loop's arrival times, so a run can be repeated

    @property
    def open_loop(self) -> bool:
        return self.request_rate is not None

    def request_extra(self) -> dict[str, Any]:
        """The body fields beyond OpenAI's that every request of the run carries."""
        extra = dict(self.extra_body)
        if self.ignore_eos:
            extra["ignore_eos"] = True  # vLLM's extension; servers without it may reject or ignore it
        return extra

    def describe_load(self) -> str:
        if self.request_rate is None:
            return f"closed loop, {self.concurrency} in flight"
        cap = f", at most {self.max_concurrency} in flight" if self.max_concurrency else ""
        return f"open loop, Poisson arrivals at {self.request_rate:g} req/s{cap}"


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


def poisson_arrivals(count: int, rate: float, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of `count` requests arriving as a Poisson process at `rate`/s."""
    if rate <= 0:
        raise ValueError(f"request rate must be positive, got {rate}")
    draw = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        now += draw.expovariate(rate)
        times.append(now)
    return times


def make_client(options: LoadOptions) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    in_flight = options.concurrency
    if options.open_loop:
        in_flight = options.max_concurrency or options.num_requests
    limits = httpx.Limits(max_connections=in_flight + 4, max_keepalive_connections=in_flight + 4)
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
    """Warm up (results dropped, closed loop), then send `num_requests` closed or open loop."""
    if options.num_requests < 1 or options.concurrency < 1:
        raise ValueError("num_requests and concurrency must be at least 1")
    if options.max_concurrency is not None and options.max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    async with make_client(options) as client:
        model = options.model or await discover_model(client)
        base = RequestSpec(model=model, prompt="", max_tokens=options.max_tokens, stream=options.stream,
                           temperature=options.temperature, extra_body=options.request_extra())
        specs = [replace(base, prompt=options.prompts[i % len(options.prompts)])
                 for i in range(options.num_requests)]
        warmups = [replace(base, prompt=options.prompts[i % len(options.prompts)])
                   for i in range(options.warmup)]
        await _run_closed_loop(client, warmups, min(options.concurrency, max(len(warmups), 1)))
        started = time.perf_counter()
        if options.request_rate is not None:
            arrivals = poisson_arrivals(len(specs), options.request_rate, options.seed)
            results = await _run_open_loop(client, specs, arrivals, options.max_concurrency, started)
        else:
            results = await _run_closed_loop(client, specs, options.concurrency, started)
        duration = time.perf_counter() - started
    return LoadRun(options, model, results, duration)


async def _run_open_loop(client: httpx.AsyncClient, specs: Sequence[RequestSpec], arrivals: Sequence[float],
                         max_concurrency: int | None, started: float) -> list[RequestResult]:
    """Each request is sent at its arrival time (or, with a cap, once a slot frees after it)."""
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(spec: RequestSpec) -> RequestResult:
        async with limit if limit is not None else contextlib.nullcontext():
            return await send_chat_request(client, spec, started)

    tasks = []
    for spec, arrival in zip(specs, arrivals, strict=True):
        delay = started + arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(spec)))
    return list(await asyncio.gather(*tasks))


async def _run_closed_loop(client: httpx.AsyncClient, specs: Sequence[RequestSpec],
                           concurrency: int, started: float | None = None) -> list[RequestResult]:
    results: list[RequestResult | None] = [None] * len(specs)
    queue = iter(range(len(specs)))

    async def worker() -> None:
        # A shared iterator hands each index to exactly one worker: no locking needed in one event loop.
        for index in queue:
            results[index] = await send_chat_request(client, specs[index], started)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
    return [r for r in results if r is not None]
