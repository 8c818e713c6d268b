"""One truth across the deployments: the image, compose.yaml, the quadlet and Kubernetes agree on memory,
CPUs, ports, the model path, the image name, the stop timeout and the health endpoints (support.deploy_facts
reads them); a lock or configuration error stops instead of looping; compose works for a newcomer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from hxp_enterprise_llm.api.app import EXIT_ENGINE_FAILED
from hxp_enterprise_llm.cli import EXIT_CONFIG, EXIT_MODEL
from support.compose_files import compose_defaults, read_env_file
from support.deploy_facts import (
    QUADLET_CPU_DROP_IN,
    QUADLET_TEMPLATE,
    disagreements,
    dockerfile_env,
    dockerfile_instructions,
    merged_unit,
    read_facts,
)
from support.kustomize import containers, one, render

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the checker reads; a planted change goes into a copy of these.
DEPLOYMENT_FILES = ("Dockerfile", "compose.yaml", "quadlet", "deploy/kubernetes", "config", "scripts/image-healthcheck")
FACTS = ("memory_gib", "cpus", "ports", "model_root", "host_model_root", "image", "stop_timeout_s",
         "readiness", "liveness")


def test_the_deployments_agree():
    assert disagreements(read_facts(REPO_ROOT)) == []


def test_every_fact_is_read_from_every_kind_of_deployment():
    # An agreement among sources that were never read would prove nothing.
    facts = read_facts(REPO_ROOT)
    for name in FACTS:
        sources = {item.source.split()[0] for item in facts if name in item.values}
        expected = {"quadlet/citadel-llm@.container"} | (
            {"hxp-llm"} if name == "host_model_root" else {"deploy/kubernetes/base", "deploy/kubernetes/cpu-demo"})
        if name not in ("host_model_root", "liveness"):
            expected.add("compose.yaml")
        assert expected <= sources, f"{name}: read from {sorted(sources)}"


def copy_deployment(tmp_path: Path) -> Path:
    for name in DEPLOYMENT_FILES:
        source, target = REPO_ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    return tmp_path


# One planted difference per fact, each in a copy of one file: (file, text, replacement, the fact reported).
PLANTED = {
    "memory: the GPU unit back at 8 GB": (QUADLET_TEMPLATE, "--memory=16g", "--memory=8g", "memory_gib (gpu)"),
    "memory: the CPU demo's drop-in": (QUADLET_CPU_DROP_IN, "--memory=8g", "--memory=6g", "memory_gib (cpu)"),
    "memory: compose tells the service another figure": (
        "compose.yaml", "OPENCHAT_3_5_MEMORY_GB: ${OPENCHAT_3_5_MEMORY_GB:-16}",
        "OPENCHAT_3_5_MEMORY_GB: ${OPENCHAT_3_5_MEMORY_GB:-8}", "memory_gib (gpu)"),
    "cpus": ("deploy/kubernetes/base/deployment.yaml", 'cpu: "4"', 'cpu: "2"', "cpus (gpu)"),
    "ports": ("compose.yaml", ':${HXP_LLM_METRICS_PORT:-11403}:11403"', ':${HXP_LLM_METRICS_PORT:-11403}:9090"',
              "ports"),
    "model path in the container": (QUADLET_TEMPLATE, "Volume=/opt/models:/opt/models:ro",
                                    "Volume=/opt/models:/models:ro", "model_root"),
    "model path on the host (the old unit's)": (QUADLET_TEMPLATE, "Volume=/opt/models:/opt/models:ro",
                                                "Volume=/var/lib/citadel-llm/models:/opt/models:ro", "host_model_root"),
    "model path in a settings file": ("config/container-cpu.env", "=/opt/models/smollm2", "=/srv/models/smollm2",
                                      "model_root"),
    "image name: Podman's localhost/ name for Docker's build": (
        QUADLET_TEMPLATE, "Image=docker.io/library/hxp-enterprise-llm:gpu", "Image=localhost/hxp-enterprise-llm:gpu",
        "image (gpu)"),
    "image built as the other flavour": ("compose.yaml", "FLAVOUR: cpu", "FLAVOUR: gpu", "image (cpu)"),
    "stop timeout": ("compose.yaml", "stop_grace_period: 45s", "stop_grace_period: 30s", "stop_timeout_s"),
    "stop timeout: Kubernetes' preStop eats into the grace": (
        "deploy/kubernetes/base/deployment.yaml", "terminationGracePeriodSeconds: 50",
        "terminationGracePeriodSeconds: 45", "stop_timeout_s"),
    "health endpoint": ("deploy/kubernetes/base/deployment.yaml", "path: /health/live", "path: /healthz", "liveness"),
    "health check mode": ("Dockerfile", 'CMD ["hxp-healthcheck", "ready"]', 'CMD ["hxp-healthcheck", "live"]',
                          "readiness"),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_a_planted_disagreement_is_reported(case: str, tmp_path: Path):
    relative, text, replacement, fact = PLANTED[case]
    root = copy_deployment(tmp_path)
    path = root / relative
    original = path.read_text(encoding="utf-8")
    assert text in original, f"{relative} no longer holds {text!r}: update the planted case"
    path.write_text(original.replace(text, replacement), encoding="utf-8")

    reported = disagreements(read_facts(root))

    lines = [line for line in reported if line.startswith(f"{fact}: ")]
    assert lines, reported
    # The line names the changed file (a Kubernetes overlay by its directory).
    named = str(Path(relative).parent) if relative.startswith("deploy/") else relative
    assert any(named in line for line in lines), lines


# Caches that default to $HOME (read-only in every deployment) and are written at run time on the GPU path.
HOME_CACHES = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_HOME", "CUDA_CACHE_PATH",
               "FLASHINFER_WORKSPACE_BASE", "TORCH_EXTENSIONS_DIR", "TVM_FFI_CACHE_DIR")
CACHE_VOLUME = "/var/cache/hxp-llm"


def test_jit_caches_go_to_the_writable_cache_volume_in_every_deployment():
    env = dockerfile_env(dockerfile_instructions((REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")))
    for name in HOME_CACHES:
        assert env.get(name, "").startswith(f"{CACHE_VOLUME}/"), name
    document = compose_defaults(yaml.safe_load((REPO_ROOT / "compose.yaml").read_text(encoding="utf-8")))
    assert isinstance(document, dict)
    for name in ("openchat-3.5", "openchat-3.5-cpu"):
        (cache,) = [v for v in document["services"][name]["volumes"] if v["target"] == CACHE_VOLUME]
        assert not cache.get("read_only")
    unit = merged_unit((REPO_ROOT / QUADLET_TEMPLATE).read_text(encoding="utf-8"))
    assert any(line.split(":")[1] == CACHE_VOLUME for line in unit[("Container", "Volume")])
    for overlay in ("base", "cpu-demo"):
        (container,) = containers(one(render(REPO_ROOT / "deploy" / "kubernetes" / overlay), "Deployment"))
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert not mounts[CACHE_VOLUME].get("readOnly")
        # $HOME is read-only here too: nothing may depend on writing it.
        assert env["HOME"] not in mounts


# --- a lock or configuration error stops -------------------------------------------------------------

def test_quadlet_does_not_restart_what_a_restart_cannot_fix():
    unit = merged_unit((REPO_ROOT / QUADLET_TEMPLATE).read_text(encoding="utf-8"))
    assert unit[("Service", "Restart")] == ["on-failure"]
    prevented = {int(code) for line in unit[("Service", "RestartPreventExitStatus")] for code in line.split()}
    assert prevented == {EXIT_CONFIG, EXIT_MODEL}
    assert EXIT_ENGINE_FAILED not in prevented  # a dead engine is what the restart is for


def test_compose_gives_up_after_a_few_failed_starts():
    # Docker has no per-exit-code policy: a bounded on-failure count is what stops a lock error's loop.
    document = compose_defaults(yaml.safe_load((REPO_ROOT / "compose.yaml").read_text(encoding="utf-8")))
    assert isinstance(document, dict)
    for name in ("openchat-3.5", "openchat-3.5-cpu", "openchat-3.5-replica"):
        policy, _, retries = document["services"][name]["restart"].partition(":")
        assert policy == "on-failure"
        assert 1 <= int(retries) <= 10


@pytest.mark.parametrize("overlay", ["base", "cpu-demo"])
def test_a_pod_that_fails_to_start_says_why_in_its_status(overlay: str):
    (container,) = containers(one(render(REPO_ROOT / "deploy" / "kubernetes" / overlay), "Deployment"))
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def image_environment() -> dict[str, str]:
    """The production container's settings: the image's ENV, then config/container.env and openchat-3.5.env."""
    env = dockerfile_env(dockerfile_instructions((REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")))
    for name in ("container.env", "openchat-3.5.env"):
        env |= read_env_file(REPO_ROOT / "config" / name)
    return {key: value for key, value in env.items() if key.startswith("OPENCHAT_3_5_")}


@pytest.mark.skipif(not (Path(sys.executable).parent / "hxp-llm").exists(), reason="hxp-llm is not installed")
def test_the_production_model_first_start_prints_one_line_naming_the_fix(tmp_path: Path):
    # The shipped models.lock leaves OpenChat-3.5-0106 unlocked: the container's first start must stop
    # with exit 3 and one line that says which command fixes it.
    entry = next(model for model in tomllib.loads((REPO_ROOT / "models.lock").read_text(encoding="utf-8"))["model"]
                 if model["name"] == "openchat-3.5-0106")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENCHAT_3_5_")}
    env |= image_environment() | {"OPENCHAT_3_5_MODELS_LOCK": str(REPO_ROOT / "models.lock"),
                                  "OPENCHAT_3_5_MODEL_PATH": str(tmp_path / "openchat-3.5-0106")}
    result = subprocess.run([str(Path(sys.executable).parent / "hxp-llm"), "serve"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == EXIT_MODEL, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"hxp-llm model lock openchat-3.5-0106 --revision {entry['revision']}" in lines[0]


# --- compose for a newcomer --------------------------------------------------------------------------

def default_profiles() -> list[str]:
    env = read_env_file(REPO_ROOT / ".env")
    return env["COMPOSE_PROFILES"].split(",")


def test_plain_compose_up_runs_the_cpu_demo_from_a_local_build():
    document = compose_defaults(yaml.safe_load((REPO_ROOT / "compose.yaml").read_text(encoding="utf-8")))
    assert isinstance(document, dict)
    started = {name: service for name, service in document["services"].items()
               if set(service.get("profiles", [])) & set(default_profiles())}
    assert set(started) == {"openchat-3.5-cpu"}
    for service in started.values():
        # No NVIDIA device on a CPU host, and an image that is built here rather than pulled.
        assert "devices" not in str(service.get("deploy", {}))
        assert service["build"]["context"] == "."
        assert service.get("pull_policy", "missing") in ("missing", "build", "never")


def test_published_ports_bind_to_loopback_unless_told_otherwise():
    # The API is open until a key is configured: by default only this host reaches it.
    document = compose_defaults(yaml.safe_load((REPO_ROOT / "compose.yaml").read_text(encoding="utf-8")))
    assert isinstance(document, dict)
    for name, service in document["services"].items():
        if name == "prometheus":
            continue
        for port in service.get("ports", []):
            assert re.match(r"127\.0\.0\.1:\d+:\d+$", port), f"{name}: {port}"


def test_docker_compose_renders_the_file_with_the_default_env():
    try:
        version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        version = None
    if version is None or version.returncode != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("docker compose is not installed: run scripts/ensure-docker")
        pytest.skip("docker compose is not installed")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HXP_", "OPENCHAT_3_5_", "COMPOSE_"))}
    rendered = subprocess.run(["docker", "compose", "config", "--format", "json"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    assert set(services) == {"openchat-3.5-cpu"}
    service = services["openchat-3.5-cpu"]
    assert service["build"]["args"]["FLAVOUR"] == "cpu"
    assert service["restart"] == "on-failure:5"
    assert {port["host_ip"] for port in service["ports"]} == {"127.0.0.1"}
