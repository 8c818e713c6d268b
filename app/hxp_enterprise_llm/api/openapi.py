"""The request schemas in `/openapi.json` and `/docs`, for routes that parse their body themselves.

The inference routes validate the raw body in strict JSON mode (no coercion, unknown fields
refused), which FastAPI's own body parameters cannot do; so their schema is declared here instead:
`request_body(Model)` for the route, `install_openapi(app)` to add the models to the components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
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
