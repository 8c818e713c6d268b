"""Run the app under uvicorn with a graceful drain and honest exit codes.

SIGTERM/SIGINT: readiness turns 503 `draining` first, new requests are refused, running ones finish
(up to drain_timeout_seconds), then the server closes and the process exits 0. A second signal
exits at once. An engine that fails to load or dies makes the process exit 4, so a restart policy
(compose `restart:`, systemd `Restart=on-failure`) brings up a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from types import FrameType

import uvicorn

from hxp_enterprise_llm.api.app import AppContext, build_app
from hxp_enterprise_llm.api.health import ServiceState
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_timeout: float, failure_grace: float = 0.0) -> None:
        super().__init__(config)
        self.drain_timeout = drain_timeout
        self.failure_grace = failure_grace
        self.exit_code = 0
        self.ctx: AppContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
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
        if self.ctx.health.state != ServiceState.FAILED:
            self.ctx.health.set(ServiceState.DRAINING, "shutting down: finishing running requests")
        finished = await self.ctx.orchestrator.drain(self.drain_timeout)
        if not finished:
            logger.warning("drain_timeout_seconds=%s passed with %d requests running; closing anyway",
                           self.drain_timeout, self.ctx.orchestrator.running)
        self.should_exit = True

    def fatal(self, code: int, detail: str) -> None:
        """The engine is gone: keep answering /health 503 `failed` for a moment, then exit `code`."""
        self.exit_code = code
        grace = min(max(self.failure_grace, 0.0), 30.0)
        logger.error("fatal: %s; exiting with code %d in %.0f s", detail, code, grace)
        if self._loop is None:
            self.should_exit = True
        else:
            # Probes polling every health_check_interval see `failed` before the process goes.
            self._loop.call_later(grace, lambda: setattr(self, "should_exit", True))
        # The engine may be wedged in a thread that cannot be interrupted (vLLM can hang after its
        # core dies): if a clean shutdown has not ended the process in time, end it anyway.
        watchdog = threading.Timer(grace + 30.0, lambda: os._exit(code))
        watchdog.daemon = True
        watchdog.start()


def run_server(config: ModelConfigSchema, service: OpenChat35Service) -> int:
    servers: list[DrainingServer] = []
    app = build_app(config, service, on_fatal=lambda code, detail: servers[0].fatal(code, detail))
    server = DrainingServer(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                           access_log=False, lifespan="on"),
                            config.drain_timeout_seconds, failure_grace=config.health_check_interval)
    server.ctx = app.state.ctx
    servers.append(server)
    server.run()
    return server.exit_code
