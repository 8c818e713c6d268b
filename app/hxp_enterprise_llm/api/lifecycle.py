"""The request's frame: an id for every request, and the one place an inference request ends.

Routes open a record (`open_record`) and everything below marks it; this middleware closes it when
the app has finished with the request, however that happened: a full answer, a refusal, an error
frame, a client gone mid-stream, or a client gone before any byte (status 499). The status is the
one the client was sent, read from the response itself.

An unexpected exception (a bug) is answered here, inside the frame, so it is counted as the 500 it
is, logged with its request id, and the client gets the OpenAI error body.

No send may block past the request's deadline: a client that stops reading fills the socket buffers,
and then a send waits for it; the deadline alone (checked when the engine yields) would never come.
Such a request ends as a timeout, its slot is freed and its engine request aborted, and the server
closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.schemas.errors import InternalError, RequestTimeoutError

if TYPE_CHECKING:
    from hxp_enterprise_llm.orchestration.interactive_orchestrator import InteractiveOrchestrator

logger = logging.getLogger(__name__)


class ClientStalled(Exception):
    """A send stayed blocked until the request's deadline: the client stopped reading."""


def open_record(request: Request, route: str) -> RequestRecord:
    """The route's first step: the record this request's figures, outcome and log line come from."""
    client = f"{request.client.host}:{request.client.port}" if request.client else ""
    record = request.app.state.ctx.orchestrator.open(request.state.request_id, route, client)
    record.traceparent = request.headers.get("traceparent")
    request.state.record = record
    return record


def record_of(request: Request) -> RequestRecord | None:
    return getattr(request.state, "record", None)


class RequestLifecycleMiddleware:
    def __init__(self, app: ASGIApp, orchestrator: InteractiveOrchestrator) -> None:
        self.app = app
        self.orchestrator = orchestrator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        # The client's id when it is sane (log correlation across services), else a fresh one.
        request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
        state["request_id"] = request_id
        sent_status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal sent_status
            if message["type"] == "http.response.start":
                sent_status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            record = state.get("record")
            if record is None:
                await send(message)
                return
            # A send that does not block (the usual case, even after the deadline: a final error frame)
            # completes before the timeout can fire; only a send stuck on full buffers is cut.
            try:
                async with asyncio.timeout(max(self.orchestrator.deadline(record) - time.monotonic(), 0.0)):
                    await send(message)
            except TimeoutError:
                record.fail(RequestTimeoutError(
                    f"request exceeded connection_timeout_seconds={self.orchestrator.timeout_seconds:g} "
                    "while the client was not reading its answer"))
                raise ClientStalled from None

        try:
            await self.app(scope, receive, send_with_id)
        except ClientStalled:  # nothing more can reach this client; the server closes the connection
            logger.warning("request %s: the client stopped reading; dropped at its deadline", request_id)
        except Exception:
            logger.exception("unhandled error on %s %s, request %s", scope["method"], scope["path"], request_id)
            error = InternalError(f"internal error; see the service log for request {request_id}")
            if state.get("record") is not None:
                state["record"].fail(error)
            if sent_status is not None:
                raise  # the response has started: the server can only close the connection
            await JSONResponse(error.body(), status_code=error.status_code)(scope, receive, send_with_id)
        finally:
            record = state.get("record")
            if record is not None:
                self.orchestrator.close(record, sent_status)
