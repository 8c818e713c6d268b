"""`/health` (readiness: 200 only when ready) and `/health/live` (liveness), answered from memory."""

from __future__ import annotations

import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hxp_enterprise_llm.orchestration.service_state import ServiceState

router = APIRouter()


def utc_timestamp() -> str:
    """ISO-8601 UTC, as the spec's health example shows a string timestamp."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    ctx.service.engine.notice_death()
    state = ctx.health
    ready = state.state is ServiceState.READY
    body: dict[str, Any] = {
        "status": "healthy" if ready else state.state.value,
        "model": ctx.config.served_model_name,
        "context_length": ctx.config.max_model_len,
        "quantization": ctx.service.quantization,
        "streaming": ctx.config.streaming_enabled,
        "timestamp": utc_timestamp(),
    }
    if ready:
        body["running"] = ctx.orchestrator.running
        body["waiting"] = ctx.orchestrator.waiting
    else:
        body["detail"] = state.detail
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"status": "alive", "timestamp": utc_timestamp()})
