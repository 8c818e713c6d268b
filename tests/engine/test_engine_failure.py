"""A dead engine turns /health into 503 `failed` within health_check_interval, then the process exits 4."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil

from support.server_process import DEMO_MODEL, ServerProcess, require_model


def test_killed_engine_core_fails_health_and_exits(tmp_path: Path) -> None:
    require_model(DEMO_MODEL)
    server = ServerProcess(tmp_path / "serve.log", "--health-check-interval", "2")
    try:
        server.wait_ready()
        children = psutil.Process(server.process.pid).children(recursive=True)
        engine_cores = [c for c in children if "EngineCore" in " ".join(c.cmdline()) or "EngineCore" in c.name()]
        victims = engine_cores or children
        assert victims, "no engine core process found under the server"
        for child in victims:
            child.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        seen = []
        while time.monotonic() - killed_at < 15:
            try:
                response = httpx.get(f"{server.base_url}/health", timeout=2)
                seen.append((response.status_code, response.json()["status"]))
                if response.status_code == 503:
                    break
            except httpx.TransportError:
                seen.append((0, "gone"))
                break
            time.sleep(0.2)
        assert (503, "failed") in seen, f"/health never said failed: {seen}"
        assert server.process.wait(60) == 4, server.log_text()[-2000:]
    finally:
        server.stop()
