"""`build_app(config, service)`: the FastAPI application, its lifespan and its shared state.

The HTTP server answers at once; the model loads in the background, so probes see `loading`
rather than a refused connection. A model that fails to load, or an engine that dies later, turns
the service `failed` and calls `on_fatal`, which ends the process with a non-zero code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI

from hxp_enterprise_llm.api import health as health_routes
from hxp_enterprise_llm.api import model_routes, routes
from hxp_enterprise_llm.api.auth import ApiKeys
from hxp_enterprise_llm.api.context import AppContext
from hxp_enterprise_llm.api.errors import install_error_handlers
from hxp_enterprise_llm.api.lifecycle import RequestLifecycleMiddleware
from hxp_enterprise_llm.api.metrics import MetricsServer, ServiceMetrics, service_version
from hxp_enterprise_llm.api.openapi import install_openapi
from hxp_enterprise_llm.api.request_input import check_request_head
from hxp_enterprise_llm.api.request_log import RequestLog
from hxp_enterprise_llm.api.streaming_stats import StreamingWindow
from hxp_enterprise_llm.orchestration.interactive_orchestrator import InteractiveOrchestrator
from hxp_enterprise_llm.orchestration.service_state import ServiceState
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from hxp_enterprise_llm.web import mount_web_ui

EXIT_ENGINE_FAILED = 4


def build_app(config: ModelConfigSchema, service: OpenChat35Service, *, serve_metrics: bool = True,
              on_fatal: Callable[[int, str], Any] | None = None) -> FastAPI:
    metrics = ServiceMetrics(config)
    streaming = StreamingWindow(window_seconds=300, target_latency_seconds=config.target_latency_ms / 1000)
    orchestrator = InteractiveOrchestrator(config, service,
                                           observers=[metrics, streaming, RequestLog(config.served_model_name)])
    metrics.track(orchestrator)

    def on_state(state: ServiceState, detail: str) -> None:
        if state is ServiceState.FAILED and on_fatal is not None:
            on_fatal(EXIT_ENGINE_FAILED, detail)

    orchestrator.health.listeners.append(on_state)
    ctx = AppContext(config, service, orchestrator, metrics, streaming, ApiKeys(config.api_key, config.api_keys_file))

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
            await service.shutdown()
            if metrics_server is not None:
                metrics_server.stop()

    app = FastAPI(title="HXP Enterprise LLM: OpenChat-3.5", version=service_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None, dependencies=[Depends(check_request_head)],
                  description="OpenAI-compatible API for OpenChat-3.5 on vLLM's engine. Errors are always "
                              "`{\"error\": {message, type, param, code}}`.")
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(RequestLifecycleMiddleware, orchestrator=orchestrator)
    app.include_router(health_routes.router)
    app.include_router(routes.router)
    app.include_router(model_routes.router)
    mount_web_ui(app, config)
    install_openapi(app)
    return app


async def _run_model(ctx: AppContext) -> None:
    if await ctx.orchestrator.load_model(ctx.config.model_load_timeout_seconds):
        ctx.metrics.model_load_done(ctx.health.model_load_seconds or 0.0)
        await ctx.orchestrator.watch_engine(ctx.config.health_check_interval)
