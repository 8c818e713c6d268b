"""`build_app(config, service)`: the FastAPI application, its lifespan and its shared state.

The HTTP server answers at once; the model loads in the background, so probes see `loading`
rather than a refused connection, and a load that fails ends the process with a non-zero code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hxp_enterprise_llm.api import health as health_routes
from hxp_enterprise_llm.api import routes
from hxp_enterprise_llm.api.errors import install_error_handlers, rejection_reason
from hxp_enterprise_llm.api.health import Health, ServiceState, watch_engine
from hxp_enterprise_llm.api.metrics import MetricsServer, ServiceMetrics
from hxp_enterprise_llm.api.request_log import RequestLog
from hxp_enterprise_llm.api.streaming_stats import StreamingWindow
from hxp_enterprise_llm.orchestration.interactive_orchestrator import InteractiveOrchestrator, RequestRecord
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.schemas.errors import InvalidRequestError, ServiceError
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service

logger = logging.getLogger(__name__)

EXIT_ENGINE_FAILED = 4


@dataclass
class AppContext:
    """Everything the routes share, on `app.state.ctx` (no module globals)."""

    config: ModelConfigSchema
    service: OpenChat35Service
    orchestrator: InteractiveOrchestrator
    metrics: ServiceMetrics
    streaming: StreamingWindow
    health: Health = field(default_factory=Health)
    on_fatal: Callable[[int, str], Any] | None = None

    def model_ids(self) -> tuple[str, ...]:
        return (self.config.served_model_name, self.config.model_name, *self.config.model_aliases)

    def record_rejection(self, request: Request, error: ServiceError) -> None:
        reason = rejection_reason(error)
        if reason is not None:
            self.metrics.reject(reason)
        record: RequestRecord | None = getattr(request.state, "record", None)
        if record is not None:
            if isinstance(error, InvalidRequestError) or error.status_code in (401, 404):
                outcome = "invalid"
            elif error.status_code in (429, 503):
                outcome = "rejected"
            else:  # keep what the orchestrator already knew (e.g. "timeout" for a 504)
                outcome = record.outcome if record.outcome != "running" else "error"
            self.orchestrator.finish(record, outcome=outcome, status=error.status_code)


class RequestIdMiddleware:
    """Give each request an id (the client's X-Request-ID when sane) and return it as a header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


def build_app(config: ModelConfigSchema, service: OpenChat35Service, *, serve_metrics: bool = True,
              on_fatal: Callable[[int, str], Any] | None = None) -> FastAPI:
    metrics = ServiceMetrics(config.served_model_name, config.target_latency_ms / 1000)
    streaming = StreamingWindow(window_seconds=300, target_latency_seconds=config.target_latency_ms / 1000)
    orchestrator = InteractiveOrchestrator(config, abort=service.engine.abort,
                                           observers=[metrics, streaming, RequestLog(config.served_model_name)])
    metrics.track_load(lambda: orchestrator.running, lambda: orchestrator.waiting)
    ctx = AppContext(config, service, orchestrator, metrics, streaming, on_fatal=on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_server = MetricsServer(metrics.registry, config.host, config.metrics_port) if serve_metrics else None
        if metrics_server is not None:
            metrics_server.start()
        loader = asyncio.create_task(_load_model(ctx))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(BaseException):
                await loader
            await service.shutdown()
            if metrics_server is not None:
                metrics_server.stop()

    app = FastAPI(title="HXP Enterprise LLM: OpenChat-3.5", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health_routes.router)
    app.include_router(routes.router)
    return app


async def _load_model(ctx: AppContext) -> None:
    started = time.monotonic()
    ctx.health.set(ServiceState.LOADING, f"loading {ctx.config.model_path}")
    try:
        await asyncio.wait_for(ctx.service.start(), ctx.config.model_load_timeout_seconds)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        detail = f"model failed to load: {exc or type(exc).__name__}"
        logger.error(detail)
        ctx.health.set(ServiceState.FAILED, detail)
        _fatal(ctx, detail)
        return
    ctx.health.model_load_seconds = time.monotonic() - started
    ctx.metrics.model_load.labels(ctx.config.served_model_name).set(ctx.health.model_load_seconds)
    ctx.health.set(ServiceState.READY, f"model loaded in {ctx.health.model_load_seconds:.1f} s")
    await watch_engine(ctx.service.engine, ctx.health, ctx.config.health_check_interval,
                       on_failure=lambda detail: _fatal(ctx, detail))


def _fatal(ctx: AppContext, detail: str) -> None:
    if ctx.on_fatal is not None:
        ctx.on_fatal(EXIT_ENGINE_FAILED, detail)
