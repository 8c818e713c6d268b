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
from starlette.requests import ClientDisconnect
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
        # One timer per request, armed at its first recorded send, not one per send: it cancels a send
        # that is still blocked when the deadline comes (a send that does not block never sees it).
        loop = asyncio.get_running_loop()
        deadline_timer: asyncio.TimerHandle | None = None
        blocked_send: asyncio.Task[object] | None = None
        deadline_passed = cut_by_deadline = False

        def on_deadline() -> None:
            nonlocal deadline_passed, cut_by_deadline
            deadline_passed = True
            if blocked_send is not None:
                cut_by_deadline = True
                blocked_send.cancel()

        async def send_with_id(message: Message) -> None:
            nonlocal sent_status, deadline_timer, blocked_send, cut_by_deadline
            if message["type"] == "http.response.start":
                sent_status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            record = state.get("record")
            if record is None:
                await send(message)
                return
            if deadline_timer is None:
                remaining = self.orchestrator.deadline(record) - time.monotonic()
                deadline_timer = loop.call_later(max(remaining, 0.0), on_deadline)
            if deadline_passed:
                # Past the deadline: this send may still go out if it does not
                # block (a final error frame), and is cut at once if it does.
                try:
                    async with asyncio.timeout(0):
                        await send(message)
                except TimeoutError:
                    raise self._stalled(record) from None
                return
            blocked_send = asyncio.current_task()
            try:
                await send(message)
            except asyncio.CancelledError:
                if not cut_by_deadline or blocked_send is None:
                    raise
                cut_by_deadline = False
                blocked_send.uncancel()
                raise self._stalled(record) from None
            finally:
                blocked_send = None

        try:
            await self.app(scope, receive, send_with_id)
        except ClientStalled:  # nothing more can reach this client; the server closes the connection
            logger.warning("request %s: the client stopped reading; dropped at its deadline", request_id)
        except ClientDisconnect:
            # The client hung up before its whole body had arrived: no answer can reach it, and it is
            # the client leaving (499), not a fault of ours (a 500 in the SLO metrics and an ERROR line).
            logger.info("request %s: the client left before its request body arrived", request_id)
        except Exception:
            logger.exception("unhandled error on %s %s, request %s", scope["method"], scope["path"], request_id)
            error = InternalError(f"internal error; see the service log for request {request_id}")
            if state.get("record") is not None:
                state["record"].fail(error)
            if sent_status is not None:
                raise  # the response has started: the server can only close the connection
            await JSONResponse(error.body(), status_code=error.status_code)(scope, receive, send_with_id)
        finally:
            if deadline_timer is not None:
                deadline_timer.cancel()
            record = state.get("record")
            if record is not None:
                self.orchestrator.close(record, sent_status)

    def _stalled(self, record: RequestRecord) -> ClientStalled:
        record.fail(RequestTimeoutError.after(self.orchestrator.timeout_seconds,
                                              "while the client was not reading its answer"))
        return ClientStalled()
