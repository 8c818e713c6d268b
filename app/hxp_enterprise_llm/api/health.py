"""Service state for probes: loading -> ready -> draining, or failed. Answered from memory, never the engine."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hxp_enterprise_llm.services.core.engine import Engine

logger = logging.getLogger(__name__)


class ServiceState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass
class Health:
    state: ServiceState = ServiceState.LOADING
    detail: str = "loading the model"
    since: float = field(default_factory=time.time)
    model_load_seconds: float | None = None

    def set(self, state: ServiceState, detail: str) -> None:
        if state != self.state:
            logger.info("service state %s -> %s: %s", self.state.value, state.value, detail)
        self.state, self.detail, self.since = state, detail, time.time()


async def watch_engine(engine: Engine, health: Health, interval: float,
                       on_failure: Callable[[str], Any]) -> None:
    """Check the engine every `interval` seconds while ready; a failed check marks the service failed."""
    while True:
        await asyncio.sleep(interval)
        if health.state not in (ServiceState.READY, ServiceState.DRAINING):
            continue
        try:
            await asyncio.wait_for(engine.check_health(), timeout=max(interval, 5.0))
        except Exception as exc:  # dead, or too slow to answer: both mean it cannot serve
            detail = f"engine health check failed: {exc or type(exc).__name__}"
            logger.error(detail)
            health.set(ServiceState.FAILED, detail)
            on_failure(detail)
            return


router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    state: Health = ctx.health
    body: dict[str, Any] = {
        "status": "healthy" if state.state == ServiceState.READY else state.state.value,
        "model": ctx.config.served_model_name,
        "context_length": ctx.config.max_model_len,
        "streaming": ctx.config.streaming_enabled,
        "timestamp": time.time(),
    }
    if state.state != ServiceState.READY:
        body["detail"] = state.detail
    else:
        body["running"] = ctx.orchestrator.running
        body["waiting"] = ctx.orchestrator.waiting
    return JSONResponse(body, status_code=200 if state.state == ServiceState.READY else 503)


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"status": "alive", "timestamp": time.time()})
