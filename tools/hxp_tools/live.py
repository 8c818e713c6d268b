"""Shared by the load scripts (overload, soak, fuzz): the demo service on free loopback ports, its gauges,
and one streaming request seen from the wire (status, Retry-After, bytes before a refusal)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from hxp_tools.servers import ManagedServer, free_port


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so `finally` blocks run and the server started here is stopped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


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
def demo_service(extra_args: Sequence[str] = (), config: str = "config/demo-cpu.yaml") -> Iterator[LiveService]:
    """`hxp-llm serve` on the demo config and free loopback ports, stopped (SIGTERM) on exit."""
    port, metrics_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="hxp-live-")) / "serve.log"
    argv = [str(Path(sys.executable).parent / "hxp-llm"), "serve", "--config", config, "--host", "127.0.0.1",
            "--port", str(port), "--metrics-port", str(metrics_port), *extra_args]
    server = ManagedServer("hxp-llm", argv, f"{base_url}/health", log, env={"PYTHONUNBUFFERED": "1", **os.environ})
    server.start()
    print(f"serving the demo at {base_url} (log {log}): {' '.join(extra_args)}", flush=True)
    try:
        seconds = server.wait_healthy(900)
        print(f"healthy after {seconds:.0f} s", flush=True)
        yield LiveService(base_url, f"http://127.0.0.1:{metrics_port}/metrics", server)
    finally:
        server.stop()


@dataclass
class WireResult:
    """One streaming chat request as the client saw it."""

    status: int | None = None
    retry_after: str | None = None
    content_type: str = ""
    stream_bytes_before_refusal: int = 0  # SSE bytes received on a refused request (must be 0)
    ttft: float | None = None
    e2e: float = 0.0
    done: bool = False
    stream_error: str | None = None  # the code of an error frame inside a started stream
    error: str | None = None  # transport failure: a dropped connection


async def stream_once(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> WireResult:
    result = WireResult()
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json={**body, "stream": True}) as response:
            result.status = response.status_code
            result.retry_after = response.headers.get("retry-after")
            result.content_type = response.headers.get("content-type", "")
            if response.status_code != 200:
                raw = await response.aread()
                if result.content_type.startswith("text/event-stream") or raw.startswith(b"data:"):
                    result.stream_bytes_before_refusal = len(raw)
            else:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and result.ttft is None and '"content"' in line:
                        result.ttft = time.perf_counter() - started
                    if line.startswith('data: {"error"'):
                        result.stream_error = json.loads(line.removeprefix("data: "))["error"].get("code")
                    if line == "data: [DONE]":
                        result.done = True
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.e2e = time.perf_counter() - started
    return result


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} CPUs"
