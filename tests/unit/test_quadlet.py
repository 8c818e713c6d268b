"""The Podman quadlet unit: valid unit syntax, only documented quadlet keys, and the same deployment
as compose.yaml (ports, limits, mounts, env files, health checks, hardening).

test_quadlet_render.py runs Podman's own generator on it; these checks need no generator.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from support.compose_files import compose_defaults, read_env_file
from support.quadlet import parse_unit

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT_PATH = REPO_ROOT / "quadlet" / "citadel-llm@.container"
COMPOSE_PATH = REPO_ROOT / "compose.yaml"
PRODUCTION_INSTANCE = "openchat-3.5"
PRODUCTION_SERVICE = "openchat-3.5"

# Every [Container] key documented in podman-systemd.unit(5), copied from
# containers/podman docs/source/markdown/podman-systemd.unit.5.md (main branch, Podman 5.x), the
# "[Container] options" table. A key missing here is a typo or an undocumented key; the generator
# rejects unknown keys and then creates no service at all.
_CONTAINER_OPTIONS_TABLE = """
AddCapability AddDevice AddHost Annotation AutoUpdate CgroupsMode ContainerName ContainersConfModule
DNS DNSOption DNSSearch DropCapability Entrypoint Environment EnvironmentFile EnvironmentHost Exec
ExposeHostPort GIDMap GlobalArgs Group GroupAdd HealthCmd HealthInterval HealthLogDestination
HealthMaxLogCount HealthMaxLogSize HealthOnFailure HealthRetries HealthStartPeriod HealthStartupCmd
HealthStartupInterval HealthStartupRetries HealthStartupSuccess HealthStartupTimeout HealthTimeout
HostName Image IP IP6 Label LogDriver LogOpt Mask Memory Mount Network NetworkAlias NoNewPrivileges
Notify PidsLimit Pod PodmanArgs PublishPort Pull ReadOnly ReadOnlyTmpfs ReloadCmd ReloadSignal Retry
RetryDelay Rootfs RunInit SeccompProfile Secret SecurityLabelDisable SecurityLabelFileType
SecurityLabelLevel SecurityLabelNested SecurityLabelType ShmSize StartWithPod StopSignal StopTimeout
SubGIDMap SubUIDMap Sysctl Timezone Tmpfs UIDMap Ulimit Unmask User UserNS Volume WorkingDir
"""
DOCUMENTED_CONTAINER_KEYS = frozenset(_CONTAINER_OPTIONS_TABLE.split())

def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for k, value in section if k == key]


def single(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}= expected once, found {found}"
    return found[0]


def podman_args(container: list[tuple[str, str]]) -> dict[str, str]:
    """`--flag=value` pairs from every PodmanArgs= line."""
    flags: dict[str, str] = {}
    for line in values(container, "PodmanArgs"):
        for token in line.split():
            name, _, value = token.partition("=")
            flags[name] = value
    return flags


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose_service() -> dict:
    document = yaml.safe_load(COMPOSE_PATH.read_text(encoding="utf-8"))
    service = compose_defaults(document["services"][PRODUCTION_SERVICE])
    assert isinstance(service, dict)
    return service


def test_unit_parses_with_the_sections_a_quadlet_needs(unit):
    assert set(unit) == {"Unit", "Container", "Service", "Install"}


def test_parser_rejects_what_systemd_rejects():
    with pytest.raises(ValueError, match="not a section header"):
        parse_unit("[Container]\nImage image\n")
    with pytest.raises(ValueError, match="before the first section"):
        parse_unit("Image=x\n[Container]\n")


def test_every_container_key_is_a_documented_quadlet_key(unit):
    unknown = sorted({key for key, _ in unit["Container"]} - DOCUMENTED_CONTAINER_KEYS)
    assert not unknown, f"not documented in podman-systemd.unit(5): {unknown}"


def test_readiness_gates_the_start_liveness_kills_and_logs_go_to_journald(unit):
    container, service = unit["Container"], unit["Service"]
    assert single(container, "Notify") == "healthy"
    # The startup check (readiness) decides when the unit is started and never kills (retries 0)...
    assert single(container, "HealthStartupCmd") == "hxp-healthcheck ready"
    assert single(container, "HealthStartupRetries") == "0"
    # ...and the check that kills probes liveness only, so a long load or a drain cannot trigger it.
    assert single(container, "HealthCmd") == "hxp-healthcheck live"
    assert single(container, "HealthOnFailure") == "kill"
    assert single(container, "LogDriver") == "journald"
    assert single(service, "Restart") == "on-failure"
    # TimeoutStartSec is the one bound on the start; the kill check's start period must not undercut it.
    start_period = int(single(container, "HealthStartPeriod").removesuffix("s"))
    assert start_period < int(single(service, "TimeoutStartSec"))
    assert int(single(service, "TimeoutStopSec")) > int(single(container, "StopTimeout"))


def test_template_instance_names_the_container_and_its_env_file(unit):
    container = unit["Container"]
    assert "%i" in single(container, "ContainerName")
    assert any("%i" in path for path in values(container, "EnvironmentFile"))
    assert single(unit["Install"], "DefaultInstance") == PRODUCTION_INSTANCE


def service_env_defaults(unit) -> dict[str, str]:
    """The [Service] Environment= defaults that systemd substitutes into PublishPort=."""
    return dict(pair.split("=", 1) for line in values(unit["Service"], "Environment") for pair in line.split())


def test_published_ports_match_compose(unit, compose_service):
    # Same host-side variables in both files, and the same defaults.
    raw_compose = yaml.safe_load(COMPOSE_PATH.read_text(encoding="utf-8"))["x-service"]["ports"]
    assert [re.findall(r"\$\{(\w+)", port) for port in raw_compose] == [
        re.findall(r"\$\{(\w+)\}", port) for port in values(unit["Container"], "PublishPort")]
    defaults = service_env_defaults(unit)
    published = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], port)
                 for port in values(unit["Container"], "PublishPort")]
    # Loopback unless an operator opens them (with an API key): the API is open by default.
    assert published == compose_service["ports"] == ["127.0.0.1:11402:11402", "127.0.0.1:11403:11403"]


def test_each_instance_may_choose_its_ports(unit):
    (ports_file,) = values(unit["Service"], "EnvironmentFile")
    assert ports_file.startswith("-"), "the instance's ports file must be optional"
    assert "%i" in ports_file


def test_limits_match_compose(unit, compose_service):
    flags = podman_args(unit["Container"])
    container = unit["Container"]
    assert flags["--memory"] == compose_service["mem_limit"]
    assert float(flags["--cpus"]) == float(compose_service["cpus"])
    assert single(container, "ShmSize") == compose_service["shm_size"]
    assert f"{single(container, 'StopTimeout')}s" == compose_service["stop_grace_period"]
    assert single(container, "StopSignal") == compose_service["stop_signal"]


def test_hardening_matches_compose(unit, compose_service):
    container = unit["Container"]
    assert single(container, "ReadOnly") == "true"
    assert compose_service["read_only"] is True
    assert values(container, "Tmpfs") == compose_service["tmpfs"] == ["/tmp:rw,nosuid,nodev,size=512m"]
    assert single(container, "NoNewPrivileges") == "true"
    assert compose_service["security_opt"] == ["no-new-privileges:true"]
    assert single(container, "DropCapability").lower() == "all"
    assert compose_service["cap_drop"] == ["ALL"]
    assert int(single(container, "PidsLimit")) == compose_service["pids_limit"] > 0


def test_compose_rotates_its_logs(compose_service):
    logging = compose_service["logging"]
    assert logging["driver"] == "json-file"
    assert logging["options"]["max-size"].endswith("m")
    assert int(logging["options"]["max-file"]) >= 2


def test_the_gpu_unit_asks_for_the_gpu(unit):
    assert values(unit["Container"], "AddDevice") == ["nvidia.com/gpu=all"]
    assert single(unit["Container"], "Image").endswith(":gpu")


def quadlet_volumes(unit) -> dict[str, tuple[str, str]]:
    """target -> (source, options) of every Volume= line."""
    volumes = {}
    for line in values(unit["Container"], "Volume"):
        source, target, *options = line.split(":")
        volumes[target] = (source, options[0] if options else "")
    return volumes


def test_model_mount_is_read_only_at_the_same_path(unit, compose_service):
    _, options = quadlet_volumes(unit)["/opt/models"]
    (compose_volume,) = [v for v in compose_service["volumes"] if v["target"] == "/opt/models"]
    assert "ro" in options.split(",")
    assert compose_volume["read_only"] is True


def test_compile_cache_is_a_writable_named_volume_where_the_image_keeps_it(unit, compose_service):
    # The root filesystem may be read-only: vLLM's and torch's compile caches need a volume of their own,
    # at the path the image's VLLM_CACHE_ROOT and TORCHINDUCTOR_CACHE_DIR point into.
    source, options = quadlet_volumes(unit)["/var/cache/hxp-llm"]
    assert "/" not in source  # a named volume, not a host path
    assert "%i" in source  # one per instance
    assert "ro" not in options.split(",")
    (compose_volume,) = [v for v in compose_service["volumes"] if v["target"] == "/var/cache/hxp-llm"]
    assert compose_volume["type"] == "volume"
    assert not compose_volume.get("read_only")
    dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "VLLM_CACHE_ROOT=/var/cache/hxp-llm/" in dockerfile
    assert "TORCHINDUCTOR_CACHE_DIR=/var/cache/hxp-llm/" in dockerfile


def test_env_files_are_the_ones_compose_uses(unit, compose_service):
    quadlet_files = [Path(path.replace("%i", PRODUCTION_INSTANCE)).name
                     for path in values(unit["Container"], "EnvironmentFile")]
    compose_files = [Path(path).name for path in compose_service["env_file"]]
    assert quadlet_files == compose_files
    for name in compose_files:
        assert (REPO_ROOT / "config" / name).is_file()


def test_readiness_check_matches_compose_and_the_image(unit, compose_service):
    container, check = unit["Container"], compose_service["healthcheck"]
    assert check["test"] == ["CMD", *single(container, "HealthStartupCmd").split()]
    assert single(container, "HealthStartupInterval") == check["interval"]
    assert single(container, "HealthStartupTimeout") == check["timeout"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    (healthcheck,) = [line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK")]
    assert healthcheck.endswith('CMD ["hxp-healthcheck", "ready"]')


def test_image_is_the_one_compose_runs(unit, compose_service):
    # Podman stores Docker's `name:tag` as docker.io/library/name:tag (test_deploy_consistency.py compares all).
    assert single(unit["Container"], "Image") == f"docker.io/library/{compose_service['image']}"


@pytest.mark.parametrize("env_file", sorted((REPO_ROOT / "config").glob("*.env")), ids=lambda p: p.name)
def test_env_files_hold_only_settings_the_service_knows(env_file):
    # The service refuses to start on an unknown OPENCHAT_3_5_* variable; catch a typo here instead.
    known = {OpenChat35Config.env_name(key) for key in OpenChat35Config.model_fields}
    entries = read_env_file(env_file)
    assert entries, f"{env_file.name} is empty"
    assert not sorted(set(entries) - known)
