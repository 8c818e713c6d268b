"""Prometheus metrics on the service's own registry, served with vLLM's `vllm:*` on the metrics port.

Names start with `openchat_`, carry units, and have a `model` label. Histogram buckets follow vLLM's
so the same dashboards read both.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

from hxp_enterprise_llm.orchestration.service_state import Health, ServiceState
from hxp_enterprise_llm.schemas.outcomes import Outcome

if TYPE_CHECKING:
    from hxp_enterprise_llm.orchestration.interactive_orchestrator import InteractiveOrchestrator
    from hxp_enterprise_llm.orchestration.request_record import RequestRecord
    from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema

logger = logging.getLogger(__name__)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GIB = 1 << 30


class ServiceMetrics:
    """The service's own metrics; `on_finished` is called once per closed request record."""

    def __init__(self, config: ModelConfigSchema, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.model = model = config.served_model_name
        self.target_latency_seconds = config.target_latency_ms / 1000
        r, m = self.registry, ["model"]
        self.requests = Counter("openchat_requests", "Finished inference requests by HTTP status, outcome and "
                                "finish reason", ["model", "status", "outcome", "finish_reason"], registry=r)
        self.rejections = Counter("openchat_rejections", "Requests refused or cut short, by reason (queue_full, "
                                  "queue_timeout, timeout, invalid, too_large, unauthorized, unavailable, "
                                  "draining, engine_failed)", ["model", "reason"], registry=r)
        self.ttft = Histogram("openchat_time_to_first_token_seconds", "Arrival to first generated token",
                              m, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("openchat_inter_token_latency_seconds", "Time between generated tokens",
                             m, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("openchat_e2e_request_latency_seconds", "Arrival to last byte of a complete answer",
                             m, buckets=E2E_BUCKETS, registry=r)
        self.queue_wait = Histogram("openchat_queue_wait_seconds", "Arrival to getting a slot",
                                    m, buckets=QUEUE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("openchat_prompt_tokens", "Prompt tokens processed", m, registry=r)
        self.cached_tokens = Counter("openchat_prompt_tokens_cached", "Prompt tokens served from the prefix "
                                     "cache (of openchat_prompt_tokens)", m, registry=r)
        self.completion_tokens = Counter("openchat_completion_tokens", "Tokens generated", m, registry=r)
        self.disconnects = Counter("openchat_client_disconnects", "Clients gone before their answer ended",
                                   m, registry=r)
        self.stream_chunks = Counter("openchat_stream_chunks", "SSE content frames sent", m, registry=r)
        self.slo_requests = Counter("openchat_slo_requests", "Requests counted for the latency SLO",
                                    m, registry=r)
        self.slo_met = Counter("openchat_slo_met_requests", "Requests answered in full within target_latency_ms",
                               m, registry=r)
        # Admission counts sequences (docs/api.md): a request with n choices holds n slots.
        self.running = Gauge("openchat_requests_running", "Sequences holding a generation slot (a request with "
                             "n choices holds n)", m, registry=r)
        self.waiting = Gauge("openchat_requests_waiting", "Sequences queued for a generation slot (a request with "
                             "n choices counts n)", m, registry=r)
        self.state = Gauge("openchat_service_state", "1 for the service's current state (loading, ready, "
                           "draining, failed), 0 for the others", ["model", "state"], registry=r)
        self.model_load = Gauge("openchat_model_load_seconds", "Time the engine took to load the model",
                                m, registry=r)
        self.rss = Gauge("openchat_process_resident_memory_bytes", "Resident memory of this process and its "
                         "children (the engine core), sampled every metrics_collection_interval", m, registry=r)
        self.sample()
        # The limits and targets the alert rules and dashboards compare against, from the config.
        Gauge("openchat_requests_running_limit", "concurrent_users: sequences that may generate at once",
              m, registry=r).labels(model).set(config.concurrent_users)
        Gauge("openchat_requests_waiting_limit", "max_queue_size: sequences that may wait for a slot",
              m, registry=r).labels(model).set(config.max_queue_size)
        Gauge("openchat_slo_target_latency_seconds", "target_latency_ms: the e2e latency the SLO promises",
              m, registry=r).labels(model).set(self.target_latency_seconds)
        Gauge("openchat_slo_target_throughput_rps", "target_throughput_rps: the request rate the deployment "
              "is sized for (scripts/validate and the dashboards compare against it)",
              m, registry=r).labels(model).set(config.target_throughput_rps)
        Gauge("openchat_memory_limit_bytes", "memory_gb, or the container's memory limit if lower",
              m, registry=r).labels(model).set(memory_limit_bytes(config.memory_gb))
        self.build_info = Gauge("openchat_build_info", "Service, vLLM and model versions (value 1)",
                                ["model", "version", "vllm_version", "model_revision", "dtype", "quantization"],
                                registry=r)

    def track(self, orchestrator: InteractiveOrchestrator) -> None:
        model = self.model
        self.running.labels(model).set_function(lambda: orchestrator.running)
        self.waiting.labels(model).set_function(lambda: orchestrator.waiting)
        health = orchestrator.health
        for state in ServiceState:
            self.state.labels(model, state.value).set_function(_is_current(health, state))
        self._set_build_info(orchestrator)

        def on_state(state: ServiceState, detail: str) -> None:
            # Once loaded, the engine's own dtype replaces the configured one (`auto` is resolved then).
            if state is ServiceState.READY:
                self._set_build_info(orchestrator)

        health.listeners.append(on_state)

    def _set_build_info(self, orchestrator: InteractiveOrchestrator) -> None:
        info = orchestrator.service.get_model_info()
        self.build_info.clear()  # one series, always: the labels describe this process now
        self.build_info.labels(self.model, service_version(), info["engine_version"],
                               info["revision"] or "unlocked", info["dtype"], info["quantization"]).set(1)

    def sample(self) -> None:
        """The gauges the service measures itself (the others are read when Prometheus scrapes)."""
        self.rss.labels(self.model).set(resident_memory_bytes())

    async def sample_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            # psutil walks /proc for every child: off the event loop, so requests never wait for it.
            await asyncio.to_thread(self.sample)

    def model_load_done(self, seconds: float) -> None:
        self.model_load.labels(self.model).set(seconds)

    def reject(self, reason: str) -> None:
        self.rejections.labels(self.model, reason).inc()

    def on_finished(self, record: RequestRecord) -> None:
        model = self.model
        self.requests.labels(model, str(record.status), str(record.outcome),
                             str(record.finish_reason or "none")).inc()
        if record.error is not None and record.error.rejection_reason is not None:
            self.reject(record.error.rejection_reason)
        if record.queue_wait is not None:
            self.queue_wait.labels(model).observe(record.queue_wait)
        if record.ttft is not None:
            self.ttft.labels(model).observe(record.ttft)
        for gap in record.inter_token_gaps:
            self.itl.labels(model).observe(gap)
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.cached_tokens.labels(model).inc(record.cached_tokens)
        self.completion_tokens.labels(model).inc(record.completion_tokens)
        self.stream_chunks.labels(model).inc(record.frames)
        if record.outcome is Outcome.DISCONNECTED:
            self.disconnects.labels(model).inc()
        if record.outcome is Outcome.OK and record.e2e is not None:
            self.e2e.labels(model).observe(record.e2e)
        if record.counts_for_slo():
            self.slo_requests.labels(model).inc()
            if record.met_slo(self.target_latency_seconds):
                self.slo_met.labels(model).inc()


def _is_current(health: Health, state: ServiceState) -> Callable[[], float]:
    return lambda: float(health.state is state)


def service_version() -> str:
    try:
        return importlib.metadata.version("hxp-enterprise-llm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def memory_limit_bytes(memory_gb: float) -> float:
    """The configured budget, or the cgroup's limit when the container is given less."""
    configured = memory_gb * GIB
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(configured, float(text))
    return configured


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


def text_format_app(registry: CollectorRegistry) -> Callable[..., list[bytes]]:
    """A WSGI app that always answers in the classic text format.

    Prometheus asks for OpenMetrics first, and prometheus_client's OpenMetrics output rewrites
    vLLM's `vllm:name` metrics to `vllm_name`; in the text format every scraper sees the names
    that vLLM, its dashboards and our docs use.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"metrics are at /metrics\n"]
        body = generate_latest(registry)
        # 0.0.4: the text format every Prometheus reads; the names are classic ones (colons allowed).
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes are not worth a log line each."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """`GET /metrics` on its own port, in a thread, so a busy event loop never delays a scrape."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = make_server(self._host, self._port, text_format_app(exposition_registry(self._registry)),
                                   _ThreadingServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics", self._host, self._port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
