"""Prometheus metrics on the service's own registry, served with vLLM's `vllm:*` on the metrics port.

Names start with `openchat_`, carry units, and have a `model` label. Histogram buckets follow vLLM's
so the same dashboards read both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.metrics_core import Metric

from hxp_enterprise_llm.orchestration.interactive_orchestrator import RequestRecord

logger = logging.getLogger(__name__)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    """The service's own metrics; `on_finished` is called once per request by the orchestrator."""

    def __init__(self, model: str, target_latency_seconds: float,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.model = model
        self.target_latency_seconds = target_latency_seconds
        r, m = self.registry, ["model"]
        self.requests = Counter("openchat_requests", "Finished chat requests by HTTP status and finish reason",
                                ["model", "status", "finish_reason"], registry=r)
        self.rejections = Counter("openchat_rejections", "Requests refused, by reason "
                                  "(queue_full, queue_timeout, timeout, invalid, unauthorized, unavailable)",
                                  ["model", "reason"], registry=r)
        self.ttft = Histogram("openchat_time_to_first_token_seconds", "Arrival to first generated token",
                              m, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("openchat_inter_token_latency_seconds", "Time between generated tokens",
                             m, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("openchat_e2e_request_latency_seconds", "Arrival to last token",
                             m, buckets=E2E_BUCKETS, registry=r)
        self.queue_wait = Histogram("openchat_queue_wait_seconds", "Arrival to getting a slot",
                                    m, buckets=QUEUE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("openchat_prompt_tokens", "Prompt tokens processed", m, registry=r)
        self.completion_tokens = Counter("openchat_completion_tokens", "Tokens generated", m, registry=r)
        self.disconnects = Counter("openchat_client_disconnects", "Clients gone before their answer ended",
                                   m, registry=r)
        self.stream_chunks = Counter("openchat_stream_chunks", "SSE content frames sent", m, registry=r)
        self.slo_requests = Counter("openchat_slo_requests", "Requests counted for the latency SLO",
                                    m, registry=r)
        self.slo_met = Counter("openchat_slo_met_requests", "Requests whose e2e latency met target_latency_ms",
                               m, registry=r)
        self.running = Gauge("openchat_requests_running", "Requests holding a slot", m, registry=r)
        self.waiting = Gauge("openchat_requests_waiting", "Requests queued for a slot", m, registry=r)
        self.model_load = Gauge("openchat_model_load_seconds", "Time the engine took to load the model",
                                m, registry=r)
        self.rss = Gauge("openchat_process_resident_memory_bytes",
                         "Resident memory of this process and its children (the engine core)", m, registry=r)
        self.rss.labels(model).set_function(resident_memory_bytes)

    def track_load(self, running: Callable[[], float], waiting: Callable[[], float]) -> None:
        self.running.labels(self.model).set_function(running)
        self.waiting.labels(self.model).set_function(waiting)

    def reject(self, reason: str) -> None:
        self.rejections.labels(self.model, reason).inc()

    def on_finished(self, record: RequestRecord) -> None:
        model = self.model
        self.requests.labels(model, str(record.status), record.finish_reason or record.outcome).inc()
        if record.queue_wait is not None:
            self.queue_wait.labels(model).observe(record.queue_wait)
        if record.ttft is not None:
            self.ttft.labels(model).observe(record.ttft)
        for gap in record.inter_token_gaps:
            self.itl.labels(model).observe(gap)
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.completion_tokens.labels(model).inc(record.completion_tokens)
        if record.outcome == "disconnected":
            self.disconnects.labels(model).inc()
        if record.outcome == "ok" and record.e2e is not None:
            self.e2e.labels(model).observe(record.e2e)
        # The SLO is the service's promise: a client's own mistake (4xx) or departure does not count.
        if record.outcome not in ("disconnected", "invalid"):
            self.slo_requests.labels(model).inc()
            if record.outcome == "ok" and record.e2e is not None and record.e2e <= self.target_latency_seconds:
                self.slo_met.labels(model).inc()


def resident_memory_bytes() -> float:
    try:
        import psutil

        process = psutil.Process(os.getpid())
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a child may exit while we look
                total += child.memory_info().rss
        return float(total)
    except Exception:  # psutil missing or /proc unreadable: report this process only
        with open("/proc/self/statm") as statm:
            return float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))


class _Proxy:
    """Lets one registry expose another's metrics (ours + the default one vLLM registers into)."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()

    def describe(self) -> list[Metric]:
        return []


def exposition_registry(service_registry: CollectorRegistry) -> CollectorRegistry:
    combined = CollectorRegistry(auto_describe=False)
    combined.register(_Proxy(service_registry))
    combined.register(_Proxy(REGISTRY))
    return combined


def render_metrics(service_registry: CollectorRegistry) -> bytes:
    return generate_latest(exposition_registry(service_registry))


class MetricsServer:
    """`GET /metrics` on its own port, in a thread, so a busy event loop never delays a scrape."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_wsgi_server(self._port, self._host,
                                                       exposition_registry(self._registry))
        logger.info("metrics on http://%s:%d/metrics", self._host, self._port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
