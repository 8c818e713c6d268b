"""The compose `scale` profile as a throwaway stack: its own project name and free host ports, HAProxy's
view of the replicas from its stats CSV, and `down` at the end. Used by tests/container/test_scale.py."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from hxp_tools.servers import ROOT, free_port

REPLICA_SERVICE = "openchat-3.5-replica"
LB_SERVICE = "openchat-3.5-lb"
BACKEND = "replicas"


class StackFailed(RuntimeError):
    """The stack did not come up as asked; the message ends with the compose log tail."""


class ScaleStack:
    """`docker compose --profile scale` under project `project`, reached on free loopback ports.

    `replica_env`: settings for the replicas beyond the env files (e.g. a benchmark's longer request
    deadlines), given to compose as an override file."""

    def __init__(self, project: str, *, replicas: int, service_image: str, lb_image: str,
                 models_root: Path, replica_env: dict[str, str] | None = None) -> None:
        self.project = project
        self.files = ["-f", str(ROOT / "compose.yaml")]
        if replica_env:
            override = Path(tempfile.mkdtemp(prefix=f"{project}-")) / "compose.override.json"
            override.write_text(json.dumps({"services": {REPLICA_SERVICE: {"environment": replica_env}}}),
                                encoding="utf-8")
            self.files += ["-f", str(override)]
        api_port, stats_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.stats_url = f"http://127.0.0.1:{stats_port}/stats;csv"
        # COMPOSE_PROFILES from .env or the shell would start other profiles' services too.
        self.env = {key: value for key, value in os.environ.items() if key != "COMPOSE_PROFILES"}
        self.env |= {"HXP_LLM_CPU_IMAGE": service_image, "HXP_LB_IMAGE": lb_image, "HXP_REPLICAS": str(replicas),
                     "HXP_LLM_PORT": str(api_port), "HXP_LB_STATS_PORT": str(stats_port),
                     "HXP_MODELS_DIR": str(models_root),
                     "OPENCHAT_3_5_CPU_CORES": str(os.cpu_count() or 1)}

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "compose", *self.files, "-p", self.project, "--profile", "scale", *args],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, check=check)

    def __enter__(self) -> ScaleStack:
        try:
            self.compose("up", "-d")
        except subprocess.CalledProcessError as exc:
            self.down()
            raise StackFailed(f"docker compose up failed: {exc.stderr}") from exc
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def down(self) -> None:
        self.compose("down", "--timeout", "60", check=False)

    def replicas(self) -> list[dict[str, Any]]:
        """`docker inspect` of the replica containers, in compose's numbering order."""
        filters = ["--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", f"label=com.docker.compose.service={REPLICA_SERVICE}"]
        ids = subprocess.run(["docker", "ps", "-a", "-q", *filters], capture_output=True, text=True,
                             check=True).stdout.split()
        if not ids:
            return []
        found = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                                          check=True).stdout)
        return sorted(found, key=lambda c: int(c["Config"]["Labels"]["com.docker.compose.container-number"]))

    def servers(self, backend: str = BACKEND) -> list[dict[str, str]]:
        """HAProxy's stats CSV rows of a backend (its servers and the BACKEND total)."""
        text = httpx.get(self.stats_url, timeout=5).text
        return [row for row in csv.DictReader(io.StringIO(text.lstrip("# "))) if row["pxname"] == backend]

    def up(self) -> dict[str, str]:
        """Address -> HAProxy server name, for the servers in the pool: UP and last checked 200 (HAProxy
        also calls a server UP between learning its address from DNS and its first check)."""
        return {row["addr"]: row["svname"] for row in self.servers()
                if row["svname"] != "BACKEND" and row["status"] == "UP" and row["check_status"] == "L7OK"}

    def backend_counters(self, backend: str = BACKEND) -> dict[str, int]:
        """Retries, redispatches, connection and response errors, 4xx/5xx sent, for a whole backend."""
        (total,) = [row for row in self.servers(backend) if row["svname"] == "BACKEND"]
        return {key: int(total[key] or 0) for key in ("wretr", "wredis", "econ", "eresp", "hrsp_4xx", "hrsp_5xx")}

    def runtime_api(self, command: str) -> str:
        """One command on HAProxy's Runtime API (bound to 127.0.0.1 inside its container)."""
        script = f'exec 3<>/dev/tcp/127.0.0.1/9999; echo "{command}" >&3; cat <&3'
        return self.compose("exec", "-T", LB_SERVICE, "bash", "-c", script).stdout

    def wait_pool(self, size: int, timeout: float) -> float:
        """Seconds until HAProxy has exactly `size` replicas UP; StackFailed after `timeout`, or at once when
        a replica has exited for good (Docker's restart count spent: it will not come back)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with contextlib.suppress(httpx.HTTPError):
                if len(self.up()) == size:
                    return time.monotonic() - started
            if any(replica["State"]["Status"] == "exited" for replica in self.replicas()):
                raise StackFailed(f"a replica exited for good while the pool filled:\n{self.replica_report()}")
            time.sleep(1)
        raise StackFailed(f"HAProxy did not have {size} replicas UP within {timeout:.0f} s:\n{self.replica_report()}")

    def replica_report(self) -> str:
        """Each replica's state, exit code, OOM kill and restart count with its own log tail: the balancer's
        health-check lines would crowd them out of a tail of the whole stack's log."""
        lines = []
        for replica in self.replicas():
            state = replica["State"]
            lines.append(f"--- {replica['Name'].lstrip('/')}: {state['Status']}, exit code {state['ExitCode']}, "
                         f"OOM-killed {state['OOMKilled']}, restarts {replica['RestartCount']}")
            tail = subprocess.run(["docker", "logs", "--tail", "25", replica["Id"]], capture_output=True, text=True)
            lines.append((tail.stdout + tail.stderr)[-2500:])
        return "\n".join(lines)


def container_address(container: dict[str, Any], port: int = 11402) -> str:
    """`ip:port` of a container on its (first) compose network, as HAProxy's stats show it."""
    return next(f"{n['IPAddress']}:{port}" for n in container["NetworkSettings"]["Networks"].values())


def set_pool(stack: ScaleStack, replicas: int, timeout: float, backends: tuple[str, ...] = (BACKEND,)) -> None:
    """Leave the first `replicas` servers in the pool of each backend and put the others in maintenance."""
    servers = sorted((row["svname"] for row in stack.servers() if row["addr"] and row["svname"] != "BACKEND"),
                     key=lambda name: int(name.removeprefix("replica")))
    for backend in backends:
        for index, name in enumerate(servers):
            stack.runtime_api(f"set server {backend}/{name} state {'ready' if index < replicas else 'maint'}")
    stack.wait_pool(replicas, timeout)
