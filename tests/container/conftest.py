"""The container tier: the built CPU image under Docker, started by testcontainers.

Needs a running dockerd (scripts/ensure-docker), the image (scripts/build-image --flavour cpu) and
the demo models (scripts/fetch-demo-models). Outside CI a missing prerequisite skips with the reason;
in CI (CI=true) it fails, so a green CI run cannot hide an untested image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Ryuk, testcontainers' reaper, is pulled from Docker Hub, which is unreachable here; the fixtures
# below remove their containers themselves. Set before testcontainers reads its configuration.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer  # noqa: E402

from hxp_tools.servers import ServerFailed, poll_health  # noqa: E402
from support.compose_files import read_env_file  # noqa: E402
from support.figures import record_figure  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("HXP_LLM_CPU_IMAGE", "hxp-enterprise-llm:cpu")
DEMO_MODEL = "smollm2-135m-instruct"
API_PORT = 11402
METRICS_PORT = 11403
# compose.yaml's compile-cache volume (VLLM_CACHE_ROOT and TORCHINDUCTOR_CACHE_DIR under it): a fresh tmpfs
# per container here, owned by the image's user (uid 10001, Dockerfile) as a new named volume would be; a
# tmpfs is root's otherwise, and vLLM fails at start with PermissionError on it. `exec` as a volume is: Docker
# mounts a tmpfs noexec by default, and torch inductor loads the kernels it compiles from this cache.
COMPILE_CACHE = ("/var/cache/hxp-llm", "rw,exec,nosuid,nodev,uid=10001,gid=10001")
# Generous upper bounds, not performance targets: hashing the model and loading the engine take
# about half a minute here; a container that needs more than this is stuck.
HEALTHY_WITHIN_SECONDS = 300
EXIT_WITHIN_SECONDS = 120


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_prerequisite(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"container tier cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable daemon"
        missing_prerequisite(f"no Docker daemon answers ({exc}); run scripts/ensure-docker as root")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        missing_prerequisite(f"image {IMAGE} is not built; run scripts/build-image --flavour cpu")
    return client


def container_env(cpu_env: str = "container-cpu.env") -> dict[str, str]:
    """The environment compose's cpu profile gives the service (its env files and limit settings);
    `cpu_env` is the second env file, as HXP_LLM_CPU_ENV selects it in compose.yaml."""
    env = read_env_file(REPO_ROOT / "config" / "container.env") | read_env_file(REPO_ROOT / "config" / cpu_env)
    env["OPENCHAT_3_5_MEMORY_GB"] = "8"
    env["OPENCHAT_3_5_CPU_CORES"] = str(os.cpu_count() or 1)
    return env


class RunningService:
    """A started service container and how to reach it from the host."""

    def __init__(self, container: DockerContainer) -> None:
        self.container = container
        host = container.get_container_host_ip()
        self.api_url = f"http://{host}:{container.get_exposed_port(API_PORT)}"
        self.metrics_url = f"http://{host}:{container.get_exposed_port(METRICS_PORT)}"
        self.started_at = time.monotonic()

    @property
    def docker(self) -> Any:
        """The docker-py Container, for signals, wait() and top()."""
        return self.container.get_wrapped_container()

    def logs(self) -> str:
        stdout, stderr = self.container.get_logs()
        return (stdout + stderr).decode(errors="replace")

    def state(self) -> dict[str, Any]:
        self.docker.reload()
        return dict(self.docker.attrs["State"])

    def wait_healthy(self) -> float:
        """Seconds from container start until GET /health answers 200; fails if the container exits."""

        def still_running() -> str | None:
            state = self.state()
            return None if state["Running"] else f"container exited with {state['ExitCode']} before turning healthy"

        try:
            poll_health(f"{self.api_url}/health", timeout_s=HEALTHY_WITHIN_SECONDS, still_running=still_running)
        except ServerFailed as exc:
            pytest.fail(f"{exc}:\n{self.logs()[-3000:]}")
        return time.monotonic() - self.started_at

    def wait_exit(self) -> int:
        result = self.docker.wait(timeout=EXIT_WITHIN_SECONDS)
        return int(result["StatusCode"])


def compose_hardening() -> tuple[dict[str, Any], dict[str, str]]:
    """compose.yaml's hardening as docker-py run() arguments and tmpfs mounts (path -> options);
    tests/unit/test_quadlet.py keeps the quadlet in step with the same file."""
    import yaml

    service = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text(encoding="utf-8"))["x-service"]
    kwargs = {"read_only": service["read_only"], "security_opt": service["security_opt"],
              "cap_drop": service["cap_drop"], "pids_limit": service["pids_limit"]}
    return kwargs, dict(entry.split(":", 1) for entry in service["tmpfs"])


@pytest.fixture(scope="session")
def start_service(docker_client: Any, demo_model_dir: Callable[[str], Path]) -> Iterator[Callable[..., RunningService]]:
    """Start the CPU image like compose's cpu profile: 8g memory, the host's CPUs, models read-only,
    and the same hardening (read-only root, /tmp tmpfs, no capabilities, no-new-privileges, pids limit)."""
    started: list[DockerContainer] = []

    def start(models_root: Path | None = None, env: dict[str, str] | None = None,
              extra_tmpfs: dict[str, str] | None = None, cpu_env: str = "container-cpu.env",
              cpus: int | None = None) -> RunningService:
        root = models_root or demo_model_dir(DEMO_MODEL).parent
        hardening, tmpfs = compose_hardening()
        cpus = cpus or os.cpu_count() or 1
        container = (
            DockerContainer(IMAGE)
            .with_exposed_ports(API_PORT, METRICS_PORT)
            .with_volume_mapping(str(root), "/opt/models", "ro")
            .with_kwargs(mem_limit="8g", nano_cpus=int(cpus * 1e9), shm_size="1g", **hardening)
        )
        container.tmpfs.update({**tmpfs, COMPILE_CACHE[0]: COMPILE_CACHE[1], **(extra_tmpfs or {})})
        service_env = {**container_env(cpu_env), "OPENCHAT_3_5_CPU_CORES": str(cpus), **(env or {})}
        for key, value in service_env.items():
            container.with_env(key, value)
        started.append(container)
        container.start()
        return RunningService(container)

    yield start
    for container in started:
        container.stop()


@pytest.fixture(scope="module")
def service(start_service: Callable[..., RunningService]) -> RunningService:
    """One healthy demo service shared by the module's read-only tests."""
    running = start_service()
    seconds = running.wait_healthy()
    record_figure(f"container start-to-healthy: {seconds:.1f} s ({IMAGE})")
    return running


@pytest.fixture
def world_readable_tmp() -> Iterator[Path]:
    """A temporary directory the container's non-root user can read (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hxp-container-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
