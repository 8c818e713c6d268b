"""The request schemas in `/openapi.json` and `/docs`, for routes that parse their body themselves.

`/docs` is Swagger UI 5 from the `fastapi-offline` package's assets, served by the service itself: FastAPI's
default page loads it from a CDN and stays blank on an air-gapped host. (swagger-ui-bundle's Swagger UI 4
cannot render FastAPI's OpenAPI 3.1 document.)

The inference routes validate the raw body in strict JSON mode (no coercion, unknown fields
refused), which FastAPI's own body parameters cannot do; so their schema is declared here instead:
`request_body(Model)` for the route, `install_openapi(app)` to add the models to the components.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

REF = "#/components/schemas/{model}"
_request_models: dict[str, type[BaseModel]] = {}  # filled as the route modules are imported


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    _request_models[model.__name__] = model
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in _request_models.items():
                model_schema = model.model_json_schema(ref_template=REF, by_alias=True)
                components.update(model_schema.pop("$defs", {}))
                components[name] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    _install_docs(app)


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from local assets (build the app with `docs_url=None`)."""
    import fastapi_offline  # only its static assets are used, not its FastAPI subclass

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs/assets", StaticFiles(directory=assets), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API docs",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png")
