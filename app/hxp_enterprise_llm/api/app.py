"""`build_app(config, service)`: the FastAPI application, its lifespan and its shared state.

The HTTP server answers at once; the model loads in the background, so probes see `loading`
rather than a refused connection. A model that fails to load, or an engine that dies later, turns
the service `failed` and calls `on_fatal`, which ends the process with a non-zero code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI

from hxp_enterprise_llm.api import health as health_routes
from hxp_enterprise_llm.api import model_routes, routes
from hxp_enterprise_llm.api.auth import ApiKeys
from hxp_enterprise_llm.api.context import AppContext
from hxp_enterprise_llm.api.errors import install_error_handlers
from hxp_enterprise_llm.api.key_metrics import KeyMetrics
from hxp_enterprise_llm.api.lifecycle import RequestLifecycleMiddleware
from hxp_enterprise_llm.api.metrics import MetricsServer, ServiceMetrics, service_version
from hxp_enterprise_llm.api.openapi import install_openapi
from hxp_enterprise_llm.api.rate_limit_headers import RateLimitHeadersMiddleware
from hxp_enterprise_llm.api.request_input import check_request_head
from hxp_enterprise_llm.api.request_log import RequestLog
from hxp_enterprise_llm.api.streaming_stats import StreamingWindow
from hxp_enterprise_llm.api.usage_log import UsageLog
from hxp_enterprise_llm.orchestration.interactive_orchestrator import InteractiveOrchestrator
from hxp_enterprise_llm.orchestration.service_state import ServiceState
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from hxp_enterprise_llm.web import mount_web_ui

if TYPE_CHECKING:
    from hxp_enterprise_llm.api.tracing import RequestTracer

EXIT_ENGINE_FAILED = 4


def build_app(config: ModelConfigSchema, service: OpenChat35Service, *, serve_metrics: bool = True,
              on_fatal: Callable[[int, str], Any] | None = None) -> FastAPI:
    metrics = ServiceMetrics(config)
    streaming = StreamingWindow(window_seconds=300, target_latency_seconds=config.target_latency_ms / 1000)
    api_keys = ApiKeys(config.api_key, config.api_keys_file)
    tenants = _Tenants.build(config, metrics, api_keys)
    orchestrator = InteractiveOrchestrator(
        config, service, observers=[metrics, streaming, RequestLog(config.served_model_name), *tenants.observers],
        tracer=tenants.tracer)
    metrics.track(orchestrator)

    def on_state(state: ServiceState, detail: str) -> None:
        if state is ServiceState.FAILED and on_fatal is not None:
            on_fatal(EXIT_ENGINE_FAILED, detail)

    orchestrator.health.listeners.append(on_state)
    ctx = AppContext(config, service, orchestrator, metrics, streaming, api_keys, tenants.key_metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_server = MetricsServer(metrics.registry, config.metrics_host or config.host,
                                       config.metrics_port) if serve_metrics else None
        if metrics_server is not None:
            metrics_server.start()
        background = [asyncio.create_task(_run_model(ctx)),
                      asyncio.create_task(metrics.sample_every(config.metrics_collection_interval))]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            orchestrator.shutdown()
            await service.shutdown()
            tenants.shutdown()
            if metrics_server is not None:
                metrics_server.stop()

    app = FastAPI(title="HXP Enterprise LLM: OpenChat-3.5", version=service_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None, dependencies=[Depends(check_request_head)],
                  description="OpenAI-compatible API for OpenChat-3.5 on vLLM's engine. Errors are always "
                              "`{\"error\": {message, type, param, code}}`.")
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(RequestLifecycleMiddleware, orchestrator=orchestrator)
    app.include_router(health_routes.router)
    app.include_router(routes.router)
    app.include_router(model_routes.router)
    mount_web_ui(app, config)
    install_openapi(app)
    return app


@dataclass
class _Tenants:
    """Per-key counters, and the usage log and the tracer when configured: orchestrator observers."""

    key_metrics: KeyMetrics
    usage_log: UsageLog | None
    tracer: RequestTracer | None

    @classmethod
    def build(cls, config: ModelConfigSchema, metrics: ServiceMetrics, api_keys: ApiKeys) -> _Tenants:
        key_metrics = KeyMetrics(config.served_model_name, metrics.registry)
        key_metrics.know(api_keys.policies)
        api_keys.listeners.append(key_metrics.know)
        usage_log = UsageLog(config.usage_log_file, config.served_model_name, config.usage_log_max_bytes,
                             config.usage_log_backups) if config.usage_log_file is not None else None
        tracer = None
        if config.otel_traces_endpoint is not None:
            from hxp_enterprise_llm.api.tracing import RequestTracer

            tracer = RequestTracer(config.otel_traces_endpoint, config.served_model_name, service_version())
        return cls(key_metrics, usage_log, tracer)

    @property
    def observers(self) -> list[Any]:
        return [part for part in (self.key_metrics, self.usage_log, self.tracer) if part is not None]

    def shutdown(self) -> None:
        """Flush the buffered spans and close the usage log."""
        for part in (self.usage_log, self.tracer):
            if part is not None:
                part.shutdown()


def _freeze_startup_heap() -> None:
    """Put what the start left on the heap out of the garbage collector's reach, as `vllm serve` does
    (vllm.utils.gc_utils.freeze_gc_heap). vLLM, torch and the tokenizer leave over 600,000 objects that live
    as long as the process; every full collection walked them all (about 0.3 s on 2 cores, the event loop
    stopped, every stream waiting) whenever enough request objects had outlived the younger generations."""
    gc.collect()
    gc.freeze()


async def _run_model(ctx: AppContext) -> None:
    if await ctx.orchestrator.load_model(ctx.config.model_load_timeout_seconds):
        ctx.metrics.model_load_done(ctx.health.model_load_seconds or 0.0)
        _freeze_startup_heap()
        await ctx.orchestrator.watch_engine(ctx.config.health_check_interval)
