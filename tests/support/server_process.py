"""Run `hxp-llm serve` as a real process on free loopback ports, for the engine tier."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hxp_tools.servers import free_port, hxp_llm_serve, poll_health

REPO = Path(__file__).resolve().parents[2]
# Where scripts/setup builds the demo models; HXP_MODELS_DIR moves them (the one place tests read it).
MODELS_DIR = Path(os.environ.get("HXP_MODELS_DIR") or REPO / "models")
DEMO_MODEL = MODELS_DIR / "smollm2-135m-instruct"
TINY_OPENCHAT = MODELS_DIR / "openchat-3.5-tiny"


class ServerProcess:
    """`hxp-llm serve` with its log in a file; records every /health state seen while starting."""

    def __init__(self, log_path: Path, *extra_args: str, config: str = "config/demo-cpu.yaml",
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = log_path
        self.states_seen: list[tuple[int, str]] = []
        extra = ("--model-path", str(DEMO_MODEL), *extra_args) if config == "config/demo-cpu.yaml" else extra_args
        self._server = hxp_llm_serve("hxp-llm serve", config, self.port, self.metrics_port, log_path, *extra, env=env)
        self._server.start()
        self.process = self._server.process
        assert self.process is not None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 300) -> None:
        def seen(status: int, body: str) -> None:
            try:
                self.states_seen.append((status, json.loads(body)["status"]))
            except (ValueError, KeyError, TypeError):
                self.states_seen.append((status, body[:50]))

        self._server.wait_healthy(timeout, poll_s=0.5, on_answer=seen)

    def stop(self, timeout: float = 60) -> int | None:
        process = self.process
        self._server.stop(timeout)
        return process.returncode


def require_model(path: Path) -> None:
    """Fail (not skip) when a demo model is missing: the engine tier exists to run on them."""
    import pytest

    if not (path / "config.json").is_file():
        pytest.fail(f"demo model missing at {path}: run scripts/setup (or scripts/fetch-demo-models) first")


@contextmanager
def app_served_in_thread(app: Any, *, ready_within_s: float = 30) -> Iterator[str]:
    """The ASGI app behind a real uvicorn (its default HTTP parser) on a free port; yields the base URL once
    /health answers 200, and stops the server after."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        poll_health(f"{url}/health", timeout_s=ready_within_s, poll_s=0.1,
                    still_running=lambda: None if thread.is_alive() else "the uvicorn thread ended")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=ready_within_s)
