"""What a client asks besides completions: the model list, token counts, the versions, streaming figures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from hxp_enterprise_llm.api.metrics import service_version
from hxp_enterprise_llm.api.openapi import request_body
from hxp_enterprise_llm.api.request_input import check_api_key, check_messages, parse_body, read_body
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
    from hxp_enterprise_llm.api.context import AppContext

router = APIRouter()


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


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
                     max_model_len=ctx.config.max_model_len, quantization=info["quantization"],
                     dtype=info["dtype"])


# /tokenize and /detokenize: the chat route's limits, and its gate (503 unless ready, 429 when the key is at
# its limits or every slot and queue place is taken: tokenizing is work too); they take no slot, and run on
# the tokenizer's thread holding a queue place (`tokenize_for_client`).
@router.post("/tokenize", openapi_extra=request_body(TokenizeRequest),
             summary="Token ids of a prompt, or of chat messages exactly as a chat request renders them")
async def tokenize(request: Request) -> TokenizeResponse:
    ctx = _ctx(request)
    key = check_api_key(request)
    body = parse_body(TokenizeRequest, await read_body(request, ctx.config))
    ctx.served_model(body.model)
    if body.messages is not None:
        check_messages(body.messages, ctx.config)
    if body.messages is not None:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        tokens = await ctx.orchestrator.tokenize_for_client(key, lambda: ctx.service.tokenize_chat(messages))
    else:
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        tokens = await ctx.orchestrator.tokenize_for_client(
            key, lambda: ctx.service.tokenize_text(body.prompt or "", add_special_tokens=add_special))
    return TokenizeResponse(count=len(tokens), max_model_len=ctx.config.max_model_len, tokens=tokens)


@router.post("/detokenize", openapi_extra=request_body(DetokenizeRequest), summary="Text of token ids")
async def detokenize(request: Request) -> DetokenizeResponse:
    ctx = _ctx(request)
    key = check_api_key(request)
    body = parse_body(DetokenizeRequest, await read_body(request, ctx.config))
    ctx.served_model(body.model)
    return DetokenizeResponse(
        prompt=await ctx.orchestrator.tokenize_for_client(key, lambda: ctx.service.detokenize(body.tokens)))


@router.get("/version")
async def version(request: Request) -> VersionResponse:
    # Behind the key like every API route: versions tell an attacker which known bugs to try.
    check_api_key(request)
    ctx = _ctx(request)
    info = ctx.service.get_model_info()
    return VersionResponse(version=service_version(), engine=info["engine_version"],
                           model=ctx.config.served_model_name, model_revision=info["revision"],
                           quantization=info["quantization"], dtype=info["dtype"])


@router.get("/metrics/streaming")
async def streaming_metrics(request: Request) -> dict[str, Any]:
    ctx = _ctx(request)
    return ctx.streaming.snapshot(active_streams=ctx.orchestrator.active_streams)


@router.get("/metrics/keys")
async def key_usage(request: Request) -> dict[str, Any]:
    """Per key name: requests by outcome, tokens, refusals by reason, limits and what is left of them.

    Needs a key when keys are configured (it names the teams); any valid key sees every name.
    """
    ctx = _ctx(request)
    check_api_key(request)
    return {"keys": ctx.key_metrics.snapshot(ctx.api_keys.policies, ctx.orchestrator.quotas.store)}
