"""deploy/kubernetes: both flavours pass the Kubernetes API schemas (kubernetes-validate, offline,
strict), and the probes, ports, grace period and settings agree with the service's own.

No kustomize binary here: support.kustomize renders the small part of kustomize the manifests use.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.routing import APIRoute

from hxp_enterprise_llm.api.health import router as health_router
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from support.compose_files import read_env_file
from support.kustomize import apply_json_patch, containers, one, render

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
FLAVOURS = {
    "base": ("container.env", "openchat-3.5.env"),
    "cpu-demo": ("container.env", "openchat-3.5.env", "container-cpu.env"),
}
# Sized from the Deployment's resource limits, not from the ConfigMap.
FROM_LIMITS = {"OPENCHAT_3_5_MEMORY_GB": "limits.memory", "OPENCHAT_3_5_CPU_CORES": "limits.cpu"}
# The oldest and the newest Kubernetes minor the installed kubernetes-validate bundles schemas for
# that these manifests target (autoscaling/v2 and policy/v1 PDBs are GA since 1.23/1.21).
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def seconds(probe: dict[str, Any]) -> int:
    """How long a probe keeps failing before it acts: periodSeconds x failureThreshold."""
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def flavour(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(KUBERNETES / request.param)


@pytest.fixture(scope="module")
def effective(flavour) -> OpenChat35Config:
    """The settings a replica starts with: defaults < the ConfigMap (environment)."""
    _, documents = flavour
    return OpenChat35Config.load(environ=one(documents, "ConfigMap")["data"]).config


def test_json_patch_helper_fails_on_a_missing_path():
    with pytest.raises(KeyError):
        apply_json_patch({"a": {}}, [{"op": "remove", "path": "/a/b"}])
    assert apply_json_patch({"a": {"b/c": 1}}, [{"op": "replace", "path": "/a/b~1c", "value": 2}]) == {"a": {"b/c": 2}}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_the_api_schema(flavour, version):
    name, documents = flavour
    assert {d["kind"] for d in documents} == {
        "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler"}
    for document in documents:
        # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_a_misspelt_field(flavour):
    _, documents = flavour
    broken = copy.deepcopy(one(documents, "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/health"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_probes_use_the_service_health_routes_and_port(flavour, effective):
    _, documents = flavour
    routes = {route.path for route in health_router.routes if isinstance(route, APIRoute)}
    container = containers(one(documents, "Deployment"))[0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": effective.port, "metrics": effective.metrics_port}
    readiness, liveness, startup = (container[k] for k in ("readinessProbe", "livenessProbe", "startupProbe"))
    # Readiness and start-up wait for a loaded model (/health 200 only when ready); liveness only asks
    # whether the process answers, so a long load or a drain never gets the pod killed.
    assert readiness["httpGet"]["path"] == startup["httpGet"]["path"] == "/health"
    assert liveness["httpGet"]["path"] == "/health/live"
    assert {"/health", "/health/live"} <= routes
    for probe in (readiness, liveness, startup):
        assert probe["httpGet"]["port"] in ("http", effective.port)


def test_startup_probe_outlasts_the_model_load_timeout(flavour, effective):
    _, documents = flavour
    startup = containers(one(documents, "Deployment"))[0]["startupProbe"]
    # The service gives up loading after model_load_timeout_seconds and exits 4; the probe must not
    # kill it first, or the pod restarts without saying why. Hashing the weights comes on top.
    assert seconds(startup) > effective.model_load_timeout_seconds
    assert int(startup["timeoutSeconds"]) < effective.health_check_interval


def test_termination_grace_covers_prestop_and_the_drain(flavour, effective):
    _, documents = flavour
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    pre_stop = containers(one(documents, "Deployment"))[0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # SIGTERM comes after preStop; the drain then takes up to drain_timeout_seconds; SIGKILL only
    # after terminationGracePeriodSeconds in all.
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + effective.drain_timeout_seconds
    # The endpoint removal has to outrun at least one readiness period.
    readiness = containers(one(documents, "Deployment"))[0]["readinessProbe"]
    assert float(pre_stop[1]) >= readiness["periodSeconds"]


def test_configmap_holds_the_flavours_env_files(flavour):
    name, documents = flavour
    expected: dict[str, str] = {}
    for env_file in FLAVOURS[name]:
        expected |= read_env_file(REPO_ROOT / "config" / env_file)
    for key in FROM_LIMITS:
        expected.pop(key, None)
    assert one(documents, "ConfigMap")["data"] == expected


def test_limits_reach_the_service_from_the_resources(flavour, effective):
    name, documents = flavour
    container = containers(one(documents, "Deployment"))[0]
    env = {item["name"]: item for item in container["env"]}
    for key, resource in FROM_LIMITS.items():
        assert env[key]["valueFrom"]["resourceFieldRef"]["resource"] == resource
    resources = container["resources"]
    # Guaranteed QoS; the GPU base's 16Gi and the demo's 8Gi are checked against compose and the
    # quadlet in test_deploy_consistency.py.
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    if name == "base":
        assert resources["limits"]["cpu"] == "4"
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
        assert container["image"] == "hxp-enterprise-llm:gpu"
    else:
        assert "nvidia.com/gpu" not in resources["limits"]
        assert container["image"] == "hxp-enterprise-llm:cpu"
    assert effective.tensor_parallel_size == int(resources["limits"].get("nvidia.com/gpu", 1))


def test_pod_runs_non_root_with_a_read_only_root_and_a_read_only_model(flavour, effective):
    _, documents = flavour
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's `hxp` user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/opt/models"]["readOnly"] is True
    assert Path(effective.model_path).parent == Path("/opt/models")
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = volumes[mounts["/opt/models"]["name"]]["persistentVolumeClaim"]
    assert models["readOnly"] is True
    assert models["claimName"] == one(documents, "PersistentVolumeClaim")["metadata"]["name"]
    # vLLM needs more /dev/shm than the runtime's 64 MB default (compose and the quadlet give 1 GB).
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


def test_service_pdb_and_hpa_select_the_deployment(flavour):
    _, documents = flavour
    deployment = one(documents, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(documents, "Service")["spec"]["selector"].items() <= labels.items()
    assert one(documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = one(documents, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The HPA owns the replica count; a fixed one in the Deployment would fight it on every apply.
    assert "replicas" not in deployment["spec"]
    # Rolling updates add a ready replica before draining an old one.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_hpa_metric_is_the_one_the_service_exports_and_the_adapter_serves(flavour):
    _, documents = flavour
    hpa = one(documents, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2  # a rolling restart or a node drain must leave one serving
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "openchat_requests_waiting"
    adapter = yaml.safe_load((KUBERNETES / "prometheus-adapter-values.yaml").read_text(encoding="utf-8"))
    (rule,) = adapter["rules"]["custom"]
    assert rule["seriesQuery"].startswith(f"{name}{{")
    assert rule["name"]["as"] == name
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
