"""Shared by the load checks (overload, soak, stream-memory, bench-priority, fuzz): the demo service on free
loopback ports, its gauges, and clients in a closed loop through `hxp-llm bench`'s client."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec, send_chat_request
from hxp_tools.servers import ManagedServer, free_port, hxp_llm_serve

MODEL = "openchat-3.5"  # the demo config's served name


@dataclass
class LiveService:
    base_url: str
    metrics_url: str
    server: ManagedServer | None = None

    def metric(self, name: str) -> float:
        """One metric summed over its labels (NaN when absent)."""
        text = httpx.get(self.metrics_url, timeout=10).text
        values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
        return sum(values) if values else float("nan")

    def rss_bytes(self) -> float:
        """This process and its engine-core children, as the service reports it."""
        return self.metric("openchat_process_resident_memory_bytes")


@contextlib.contextmanager
def demo_service(extra_args: Sequence[str] = (), base_url: str | None = None,
                 metrics_url: str = "http://127.0.0.1:11403/metrics") -> Iterator[LiveService]:
    """The service at `base_url`, or else `hxp-llm serve` on the demo config and free loopback ports, stopped
    (SIGTERM) on exit, also when this process gets SIGTERM."""
    # SIGTERM raises SystemExit, so `finally` blocks run and the server started here is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if base_url:
        yield LiveService(base_url.rstrip("/"), metrics_url)
        return
    port, metrics_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="hxp-live-")) / "serve.log"
    with hxp_llm_serve("hxp-llm", "config/demo-cpu.yaml", port, metrics_port, log, *extra_args,
                       env={"PYTHONUNBUFFERED": "1"}) as server:
        print(f"serving the demo on port {port} (log {log}): {' '.join(extra_args)}", flush=True)
        print(f"healthy after {server.wait_healthy(900):.0f} s", flush=True)
        yield LiveService(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", server)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} CPUs"


async def closed_loop(base_url: str, users: int, spec_of: Callable[[int, int], RequestSpec | None],
                      seconds: float = math.inf, *, results: list[RequestResult] | None = None,
                      keepalive: bool = True, backoff: bool = False) -> list[RequestResult]:
    """`users` clients, each sending spec_of(user, turn) after its previous answer, until `seconds` have passed
    or spec_of gives None. `backoff`: after a 429/503, wait its Retry-After (at most 1 s, to keep the pressure
    on). Without `keepalive` a new connection per request, as from many distinct clients."""
    results = [] if results is None else results
    deadline = asyncio.get_running_loop().time() + seconds
    limits = httpx.Limits(max_connections=users + 4, max_keepalive_connections=users + 4 if keepalive else 0)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def user(index: int) -> None:
            turn = 0
            while asyncio.get_running_loop().time() < deadline and (spec := spec_of(index, turn)) is not None:
                result = await send_chat_request(client, spec)
                results.append(result)
                turn += 1
                if backoff and result.status in (429, 503):
                    await asyncio.sleep(min(float(result.retry_after or 1), 1.0))

        await asyncio.gather(*(user(i) for i in range(users)))
    return results


def by_status(results: Sequence[RequestResult]) -> dict[str, int]:
    """Answers by HTTP status; `dropped` for a connection that ended without one."""
    return dict(sorted(Counter(str(r.status) if r.status is not None else "dropped" for r in results).items()))
