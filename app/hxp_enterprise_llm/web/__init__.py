"""The browser page: a chat playground and a live dashboard, served as static files at `/ui`.

Plain HTML, CSS and JavaScript shipped in the package (no build step, nothing from a CDN). The page talks
to the API it is served from: `/v1/chat/completions` for the chat, `/metrics/streaming` and `/health`
for the dashboard, and `/ui/config.json` (below) for its refresh interval and whether to ask for a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema

STATIC_DIR = Path(__file__).resolve().parent / "static"
UI_PATH = "/ui"
# Everything the page loads comes from this origin; inline script and style are not needed either.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change with the package version; revalidating is cheap and avoids a stale page after upgrade.
    "Cache-Control": "no-cache",
}


class _PageFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def page_config(config: ModelConfigSchema) -> dict[str, Any]:
    """What the page needs to know about the service; never the key itself."""
    return {
        "model": config.served_model_name,
        "api_key_required": config.api_key is not None or config.api_keys_file is not None,
        "refresh_seconds": config.metrics_collection_interval,
        "max_model_len": config.max_model_len,
        "target_latency_ms": config.target_latency_ms,
    }


def mount_web_ui(app: FastAPI, config: ModelConfigSchema) -> None:
    """Serve the page at `/ui/` and redirect `/` to it, unless `web_ui_enabled` is off."""
    if not config.web_ui_enabled:
        return
    settings = page_config(config)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/", status_code=307)

    # Registered before the mount: routes match in order, and the mount would claim every /ui/* path.
    @app.get(f"{UI_PATH}/config.json", include_in_schema=False)
    async def ui_config() -> JSONResponse:
        return JSONResponse(settings, headers=SECURITY_HEADERS)

    app.mount(UI_PATH, _PageFiles(directory=STATIC_DIR, html=True), name="web-ui")
