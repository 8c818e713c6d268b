"""OpenAI's x-ratelimit-* headers on every response to a key with limits (a 200, a stream, a 429).

The figures are the ones the quota check took when it admitted or refused the request; a request of a
limited key refused before that check (a bad body) gets the key's window as it is. A key without limits,
and a request refused before its key was known, get none.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hxp_enterprise_llm.orchestration.quotas import rate_limit_headers


class RateLimitHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                record = scope.get("state", {}).get("record")
                limits = scope["app"].state.ctx.orchestrator.quotas.limits_of(record) if record is not None else {}
                message["headers"] = [*message.get("headers", []),
                                      *((name.encode(), value.encode())
                                        for name, value in rate_limit_headers(limits).items())]
            await send(message)

        await self.app(scope, receive, send_with_limits)
