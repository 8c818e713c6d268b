"""Shared by the load scripts (overload, soak, fuzz): the demo service on free loopback ports and its gauges.
Their requests go through `hxp-llm bench`'s client (hxp_enterprise_llm.bench.client)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from hxp_tools.servers import ManagedServer, free_port

MODEL = "openchat-3.5"  # the demo config's served name


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


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} CPUs"
