"""What a client asks besides completions: the model list, token counts, the versions, streaming figures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from hxp_enterprise_llm.api.metrics import service_version
from hxp_enterprise_llm.api.openapi import request_body
from hxp_enterprise_llm.api.request_input import check_api_key, parse_body, read_body
from hxp_enterprise_llm.orchestration.service_state import ServiceState
from hxp_enterprise_llm.schemas.errors import ServiceUnavailableError
from hxp_enterprise_llm.schemas.openai import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)

if TYPE_CHECKING:
    from hxp_enterprise_llm.api.app import AppContext

router = APIRouter()


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


def _loaded(ctx: AppContext) -> None:
    """Tokenizing needs the model's tokenizer, which exists once the model has loaded."""
    if not ctx.service.ready or ctx.health.state is ServiceState.FAILED:
        raise ServiceUnavailableError(f"the model is not ready: {ctx.health.state.value}",
                                      headers={"Retry-After": "5"})


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    ctx = _ctx(request)
    check_api_key(request)
    return ModelList(data=[_model_card(ctx)])


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> ModelCard:
    ctx = _ctx(request)
    check_api_key(request)
    ctx.served_model(model_id)
    return _model_card(ctx)


def _model_card(ctx: AppContext) -> ModelCard:
    info = ctx.service.get_model_info()
    return ModelCard(id=ctx.config.served_model_name, created=int(ctx.health.since), root=ctx.config.model_name,
                     max_model_len=ctx.config.max_model_len, quantization=info["quantization"])


@router.post("/tokenize", openapi_extra=request_body(TokenizeRequest),
             summary="Token ids of a prompt, or of chat messages exactly as a chat request renders them")
async def tokenize(request: Request) -> TokenizeResponse:
    ctx = _ctx(request)
    check_api_key(request)
    body = parse_body(TokenizeRequest, await read_body(request, ctx.config))
    ctx.served_model(body.model)
    _loaded(ctx)
    if body.messages is not None:
        tokens = ctx.service.tokenize_chat([{"role": m.role, "content": m.text()} for m in body.messages])
    else:
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        tokens = ctx.service.tokenize_text(body.prompt or "", add_special_tokens=add_special)
    return TokenizeResponse(count=len(tokens), max_model_len=ctx.config.max_model_len, tokens=tokens)


@router.post("/detokenize", openapi_extra=request_body(DetokenizeRequest), summary="Text of token ids")
async def detokenize(request: Request) -> DetokenizeResponse:
    ctx = _ctx(request)
    check_api_key(request)
    body = parse_body(DetokenizeRequest, await read_body(request, ctx.config))
    ctx.served_model(body.model)
    _loaded(ctx)
    return DetokenizeResponse(prompt=ctx.service.detokenize(body.tokens))


@router.get("/version")
async def version(request: Request) -> VersionResponse:
    # Behind the key like every API route: versions tell an attacker which known bugs to try.
    check_api_key(request)
    ctx = _ctx(request)
    info = ctx.service.get_model_info()
    return VersionResponse(version=service_version(), engine=info["engine_version"],
                           model=ctx.config.served_model_name, model_revision=info["revision"],
                           quantization=info["quantization"])


@router.get("/metrics/streaming")
async def streaming_metrics(request: Request) -> dict[str, Any]:
    ctx = _ctx(request)
    return ctx.streaming.snapshot(active_streams=ctx.orchestrator.active_streams)
