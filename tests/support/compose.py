"""Run the repository's own compose.yaml (not a copy) as a separate Compose project on free ports."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from hxp_tools.servers import ServerFailed, free_port, poll_health

REPO = Path(__file__).resolve().parents[2]
SERVICE = "openchat-3.5-cpu"


class ComposeProject:
    """`docker compose -p NAME -f compose.yaml --profile cpu` with its own host ports, on loopback."""

    def __init__(self, name: str, image: str, models_dir: Path) -> None:
        self.name = name
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.env = {**os.environ, "HXP_LLM_CPU_IMAGE": image, "HXP_MODELS_DIR": str(models_dir),
                    "HXP_LLM_PORT": str(self.api_port), "HXP_LLM_METRICS_PORT": str(self.metrics_port),
                    "HXP_LLM_ADDRESS": "127.0.0.1", "HXP_LLM_METRICS_ADDRESS": "127.0.0.1",
                    "OPENCHAT_3_5_CPU_CORES": str(os.cpu_count() or 1)}

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", self.name, "-f", str(REPO / "compose.yaml"), "--profile", "cpu", *args]
        return subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def up(self) -> None:
        result = self.compose("up", "-d", "--no-build", "--pull", "never")
        if result.returncode != 0:
            raise RuntimeError(f"docker compose up failed ({result.returncode}):\n{result.stderr}")

    def down(self) -> None:
        self.compose("down", "--timeout", "45", "--remove-orphans")

    def container_id(self) -> str:
        return self.compose("ps", "-q", "--all", SERVICE).stdout.strip()

    def inspect(self) -> dict[str, Any]:
        output = subprocess.run(["docker", "inspect", self.container_id()], capture_output=True, text=True,
                                timeout=60, check=True).stdout
        return dict(json.loads(output)[0])

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "exec", self.container_id(), *command], capture_output=True, text=True,
                              timeout=60, check=False)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", SERVICE).stdout

    def wait_healthy(self, timeout: float = 300) -> float:
        """Seconds until GET /health answered 200."""
        try:
            return poll_health(f"{self.api_url}/health", timeout_s=timeout, still_running=lambda: None)
        except ServerFailed as exc:
            raise TimeoutError(f"compose service: {exc}:\n{self.logs()[-3000:]}") from None
