"""Run `hxp-llm serve` as a real process on free loopback ports, for the engine tier."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        command = [str(Path(sys.executable).parent / "hxp-llm"), "serve", "--config", config, "--host", "127.0.0.1",
                   "--port", str(self.port), "--metrics-port", str(self.metrics_port), *extra_args]
        self._log = open(log_path, "wb")  # noqa: SIM115 - kept open for the process's lifetime
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                response = httpx.get(f"{self.base_url}/health", timeout=5)
                self.states_seen.append((response.status_code, response.json()["status"]))
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


DEMO_MODEL = REPO / "models" / "smollm2-135m-instruct"
TINY_OPENCHAT = REPO / "models" / "openchat-3.5-tiny"


def require_model(path: Path) -> None:
    """Fail (not skip) when a demo model is missing: the engine tier exists to run on them."""
    import pytest

    if not (path / "config.json").is_file():
        pytest.fail(f"demo model missing at {path}: run scripts/setup (or scripts/fetch-demo-models) first")
