"""Run the app under uvicorn with a graceful drain and honest exit codes.

SIGTERM/SIGINT: readiness turns 503 `draining` first, new requests are refused, running ones finish
(up to drain_timeout_seconds; then they are stopped with an error frame), the server closes and the
process exits 0. A second signal exits at once. An engine that fails to load or dies makes the
process exit 4 within seconds, even with clients connected, so a restart policy (compose
`restart:`, systemd `Restart=on-failure`) brings up a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

from hxp_enterprise_llm.api.app import EXIT_ENGINE_FAILED, build_app
from hxp_enterprise_llm.api.context import AppContext
from hxp_enterprise_llm.exit_backstop import exit_later
from hxp_enterprise_llm.orchestration.interactive_orchestrator import STOPPED_REQUESTS_GRACE_SECONDS
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service

logger = logging.getLogger(__name__)

# After an engine failure: requests in flight get their 503 / error frame during the grace, then the
# server stops without waiting for clients; if the engine's shutdown hangs, the watchdog exits.
FAILURE_GRACE_SECONDS = 1.0
FAILURE_EXIT_SECONDS = 2.0
FAILURE_WATCHDOG_SECONDS = 8.0
# The last resort, in libc: a timer thread that calls _exit(code) without Python (exit_backstop), so
# the exit, with the documented code, is certain within this time even if Python cannot run (a thread
# stuck in C code holding the GIL, an interpreter already finalizing).
FAILURE_ALARM_SECONDS = 10


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_timeout: float) -> None:
        super().__init__(config)
        self.drain_timeout = drain_timeout
        self.exit_code = 0
        self.ctx: AppContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._failed = False

    async def serve(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if self.ctx is not None:
            # SIGHUP re-reads api_keys_file: a key rotates without a restart.
            self._loop.add_signal_handler(signal.SIGHUP, self.ctx.api_keys.reload)
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): uvicorn would re-raise the signal after shutting down, and the
        # process would end "killed by SIGTERM" (143) instead of exiting 0 after a clean drain.
        if self._draining or self.ctx is None or self._loop is None:
            self.should_exit = True
            self.force_exit = self._draining
            return
        self._draining = True
        logger.info("signal %s: draining (readiness 503), then shutting down", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        assert self.ctx is not None
        await self.ctx.orchestrator.drain(self.drain_timeout)
        self.should_exit = True

    def fatal(self, code: int, detail: str) -> None:
        """The engine is gone: answer 503 for a moment, then exit `code` without waiting for clients."""
        if self._failed:
            return
        self._failed = True
        self.exit_code = code
        logger.error("fatal: %s; exiting with code %d", detail, code)
        exit_later(FAILURE_ALARM_SECONDS, code)
        watchdog = threading.Timer(FAILURE_WATCHDOG_SECONDS, lambda: os._exit(code))
        watchdog.daemon = True
        watchdog.start()
        if self._loop is None:
            self.should_exit = self.force_exit = True
        else:
            self._loop.call_later(FAILURE_GRACE_SECONDS, self._stop_now)

    def _stop_now(self) -> None:
        # force_exit: uvicorn stops without waiting for keep-alive connections and open streams,
        # which could otherwise keep a dead service answering 503 for as long as clients stay.
        self.should_exit = True
        self.force_exit = True
        # If the orderly stop itself stalls (vLLM's shutdown, a thread that will not finish), leave
        # from the event loop with the right code before the watchdogs have to.
        assert self._loop is not None
        self._loop.call_later(FAILURE_EXIT_SECONDS, self._exit_now)

    def _exit_now(self) -> None:
        logging.shutdown()
        os._exit(self.exit_code)


def server_config(app: FastAPI, config: ModelConfigSchema) -> uvicorn.Config:
    return uvicorn.Config(app, host=config.host, port=config.port, log_config=None, access_log=False, lifespan="on",
                          workers=config.workers,
                          # Bounds what the h11 parser buffers, when it is the one in use; the 431 every
                          # client sees comes from check_request_head.
                          h11_max_incomplete_event_size=config.max_header_bytes,
                          timeout_keep_alive=config.keep_alive_seconds,
                          proxy_headers=True, forwarded_allow_ips=config.forwarded_allow_ips,
                          # uvicorn's own wait for open connections, after our drain: every request has
                          # ended by then, but a client that stopped reading keeps its connection (the
                          # kernel still holds bytes for it) and would hold the exit forever. Bounded, the
                          # whole stop stays within drain_timeout_seconds + 10 s (compose, quadlet and
                          # Kubernetes allow 45 s for the default 30).
                          timeout_graceful_shutdown=math.ceil(STOPPED_REQUESTS_GRACE_SECONDS))


def run_server(config: ModelConfigSchema, service: OpenChat35Service) -> int:
    servers: list[DrainingServer] = []
    app = build_app(config, service, on_fatal=lambda code, detail: servers[0].fatal(code, detail))
    server = DrainingServer(server_config(app, config), config.drain_timeout_seconds)
    server.ctx = app.state.ctx
    servers.append(server)
    server.run()
    if server.exit_code == EXIT_ENGINE_FAILED:
        # The engine is dead: nothing is left to clean up, and the interpreter's own shutdown can
        # hang on vLLM's threads and finalizers. Leave now, with the code the restart policy reads.
        logging.shutdown()
        os._exit(server.exit_code)
    return server.exit_code
