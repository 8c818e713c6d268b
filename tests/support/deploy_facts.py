"""What each deployment file says about the service, read the way its tool reads it, and where they disagree.

The deployments: the image (Dockerfile), compose.yaml's GPU and CPU services, the quadlet template (GPU)
and the template with quadlet/cpu-host.conf (CPU), deploy/kubernetes base (GPU) and cpu-demo (CPU), and
the settings files they load (config/*.env, the Kubernetes ConfigMap). `disagreements(read_facts(root))`
lists every fact on which two of them differ; the test plants a difference in a copy to show it is seen.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hxp_enterprise_llm.cli_model import DEFAULT_MODELS_ROOT
from support.compose_files import compose_defaults, read_env_file
from support.kustomize import containers, one, render
from support.quadlet import parse_unit

GPU, CPU = "gpu", "cpu"
COMPOSE_SERVICES = {GPU: "openchat-3.5", CPU: "openchat-3.5-cpu"}
KUBERNETES_FLAVOURS = {GPU: "base", CPU: "cpu-demo"}
QUADLET_TEMPLATE = "quadlet/citadel-llm@.container"
QUADLET_CPU_DROP_IN = "quadlet/cpu-host.conf"
# Per flavour (the GPU service and the CPU demo differ on purpose); every other fact is one for all.
PER_FLAVOUR = ("memory_gib", "cpus", "image")
MEMORY_ENV, CPUS_ENV, MODEL_PATH_ENV = "OPENCHAT_3_5_MEMORY_GB", "OPENCHAT_3_5_CPU_CORES", "OPENCHAT_3_5_MODEL_PATH"


@dataclass
class Facts:
    source: str  # a file, and the part of it: "compose.yaml openchat-3.5"
    flavour: str | None  # None: the same for both flavours
    values: dict[str, Any] = field(default_factory=dict)


def disagreements(facts: list[Facts]) -> list[str]:
    """One line per fact that two sources state differently: the fact, and every source with its value."""
    groups: dict[tuple[str, str | None], list[tuple[str, Any]]] = defaultdict(list)
    for item in facts:
        for name, value in item.values.items():
            groups[(name, item.flavour if name in PER_FLAVOUR else None)].append((item.source, value))
    problems = []
    for (name, flavour), stated in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or "")):
        if len({json.dumps(value, sort_keys=True) for _, value in stated}) > 1:
            label = f"{name} ({flavour})" if flavour else name
            problems.append(f"{label}: " + "; ".join(f"{source} says {value!r}" for source, value in stated))
    return problems


def read_facts(root: Path) -> list[Facts]:
    health_paths = healthcheck_paths(root)
    return [*dockerfile_facts(root, health_paths), *compose_facts(root, health_paths),
            *quadlet_facts(root, health_paths), *kubernetes_facts(root), *env_file_facts(root)]


# --- shared readers -----------------------------------------------------------------------------------

def normalise_image(reference: str) -> str:
    """Docker's reading of an image name: `name:tag` is docker.io/library/name:tag (Podman stores it so)."""
    first, _, rest = reference.partition("/")
    if not rest:
        return f"docker.io/library/{reference}"
    if "." in first or ":" in first or first == "localhost":
        return reference
    return f"docker.io/{reference}"


def gib(quantity: str) -> float:
    """`16g` (Docker, Podman: GiB), `16Gi` (Kubernetes), `16` (GB setting, read as GiB by the service)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(g|gb|gi)?", str(quantity).strip().lower())
    if match is None:
        raise ValueError(f"not a memory size in GiB: {quantity!r}")
    return float(match[1])


def seconds(duration: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s?)", str(duration).strip())
    if match is None:
        raise ValueError(f"not a duration in seconds: {duration!r}")
    return float(match[1])


def healthcheck_paths(root: Path) -> dict[str, str]:
    """`hxp-healthcheck MODE` -> the path it probes, from the script's own PATHS table."""
    tree = ast.parse((root / "scripts" / "image-healthcheck").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PATHS" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    raise ValueError("scripts/image-healthcheck has no PATHS table")


def probe_path(command: list[str], paths: dict[str, str]) -> str:
    """The endpoint a health command probes (`hxp-healthcheck ready` -> /health)."""
    words = [word for word in command if word != "CMD"]
    if not words or Path(words[0]).name != "hxp-healthcheck":
        raise ValueError(f"not an hxp-healthcheck command: {command}")
    return paths[words[1] if len(words) > 1 else "ready"]


# --- the image ----------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(arguments))
    return env


def dockerfile_facts(root: Path, health_paths: dict[str, str]) -> list[Facts]:
    instructions = dockerfile_instructions((root / "Dockerfile").read_text(encoding="utf-8"))
    env = dockerfile_env(instructions)
    exposed = sorted(int(port) for keyword, args in instructions if keyword == "EXPOSE" for port in args.split())
    (healthcheck,) = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    check = json.loads(healthcheck.split(" CMD ", 1)[1])
    return [
        Facts("Dockerfile EXPOSE", None, {"ports": exposed}),
        Facts("Dockerfile ENV", None, {
            "ports": sorted(int(env[key]) for key in ("OPENCHAT_3_5_PORT", "OPENCHAT_3_5_METRICS_PORT")),
            "model_root": [str(Path(env[MODEL_PATH_ENV]).parent)]}),
        Facts("Dockerfile HEALTHCHECK", None, {"readiness": probe_path(check, health_paths)}),
    ]


# --- compose ------------------------------------------------------------------------------------------

def compose_facts(root: Path, health_paths: dict[str, str]) -> list[Facts]:
    document = compose_defaults(yaml.safe_load((root / "compose.yaml").read_text(encoding="utf-8")))
    assert isinstance(document, dict)
    found = []
    for flavour, name in COMPOSE_SERVICES.items():
        service = document["services"][name]
        source = f"compose.yaml {name}"
        models = [v for v in service["volumes"] if v.get("read_only")]
        env_files: dict[str, str] = {}
        for env_file in service["env_file"]:
            env_files |= read_env_file(root / env_file)
        found += [
            Facts(source, flavour, {
                "memory_gib": gib(service["mem_limit"]), "cpus": float(service["cpus"]),
                "image": normalise_image(service["image"]),
                "ports": sorted(int(port.rsplit(":", 1)[1]) for port in service["ports"]),
                "model_root": [v["target"] for v in models],
                "stop_timeout_s": seconds(service["stop_grace_period"]),
                "readiness": probe_path(service["healthcheck"]["test"], health_paths)}),
            Facts(f"{source} environment", flavour, {
                "memory_gib": gib(service["environment"][MEMORY_ENV]),
                "cpus": float(service["environment"][CPUS_ENV])}),
            Facts(f"{source} env_file", None, {"model_root": [str(Path(env_files[MODEL_PATH_ENV]).parent)]}),
            # What `build:` makes must be the flavour the service runs.
            Facts(f"{source} build", flavour, {"image": built_image(service)}),
        ]
    return found


def built_image(service: dict[str, Any]) -> str | None:
    """The image a service's `build:` makes: its own `image:` name, checked to carry the built flavour."""
    if "build" not in service:
        return None
    flavour = service["build"]["args"]["FLAVOUR"]
    name = normalise_image(service["image"])
    return name if name.endswith(f":{flavour}") else f"{name} built as FLAVOUR={flavour}"


# --- quadlet ------------------------------------------------------------------------------------------

def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit file, in order within each section."""
    return [(section, key, value) for section, pairs in parse_unit(text).items() for key, value in pairs]


def merged_unit(*texts: str) -> dict[tuple[str, str], list[str]]:
    """A unit with its drop-ins, as systemd and quadlet merge them: repeated keys add, an empty value resets."""
    merged: dict[tuple[str, str], list[str]] = defaultdict(list)
    for text in texts:
        for section, key, value in unit_entries(text):
            if value == "":
                merged[(section, key)] = []
            else:
                merged[(section, key)].append(value)
    return merged


def quadlet_facts(root: Path, health_paths: dict[str, str]) -> list[Facts]:
    template = (root / QUADLET_TEMPLATE).read_text(encoding="utf-8")
    drop_in = (root / QUADLET_CPU_DROP_IN).read_text(encoding="utf-8")
    found = []
    for flavour, texts, source in ((GPU, (template,), QUADLET_TEMPLATE),
                                   (CPU, (template, drop_in), f"{QUADLET_TEMPLATE} + {QUADLET_CPU_DROP_IN}")):
        unit = merged_unit(*texts)
        container = {key: values for (section, key), values in unit.items() if section == "Container"}
        flags = dict(word.split("=", 1) for line in container.get("PodmanArgs", []) for word in line.split())
        env = dict(pair.split("=", 1) for line in container.get("Environment", []) for pair in shlex.split(line))
        volumes = [line.split(":") for line in container.get("Volume", [])]
        found += [
            Facts(source, flavour, {
                "memory_gib": gib(flags["--memory"]), "cpus": float(flags["--cpus"]),
                "image": normalise_image(container["Image"][-1]),
                "ports": sorted(int(line.rsplit(":", 1)[1]) for line in container["PublishPort"]),
                "model_root": [target for _, target, *options in volumes if "ro" in ",".join(options).split(",")],
                "host_model_root": [source for source, _, *options in volumes
                                    if "ro" in ",".join(options).split(",")],
                "stop_timeout_s": seconds(container["StopTimeout"][-1]),
                "readiness": probe_path(container["HealthStartupCmd"][-1].split(), health_paths),
                "liveness": probe_path(container["HealthCmd"][-1].split(), health_paths)}),
            Facts(f"{source} Environment=", flavour,
                  {"memory_gib": gib(env[MEMORY_ENV]), "cpus": float(env[CPUS_ENV])}),
        ]
    return found


# --- Kubernetes ---------------------------------------------------------------------------------------

def kubernetes_facts(root: Path) -> list[Facts]:
    found = []
    for flavour, overlay in KUBERNETES_FLAVOURS.items():
        documents = render(root / "deploy" / "kubernetes" / overlay)
        pod = one(documents, "Deployment")["spec"]["template"]["spec"]
        (container,) = containers(one(documents, "Deployment"))
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", pre_stop
        limits = container["resources"]["limits"]
        source = f"deploy/kubernetes/{overlay}"
        found += [
            Facts(source, flavour, {
                "memory_gib": gib(limits["memory"]), "cpus": float(limits["cpu"]),
                "image": normalise_image(container["image"]),
                "ports": sorted(port["containerPort"] for port in container["ports"]),
                "model_root": [m["mountPath"] for m in container["volumeMounts"] if m.get("readOnly")],
                # SIGTERM comes after the preStop sleep; the grace period counts from before it.
                "stop_timeout_s": float(pod["terminationGracePeriodSeconds"]) - float(pre_stop[1]),
                "readiness": container["readinessProbe"]["httpGet"]["path"],
                "liveness": container["livenessProbe"]["httpGet"]["path"]}),
            Facts(f"{source} startupProbe", None, {"readiness": container["startupProbe"]["httpGet"]["path"]}),
            Facts(f"{source} ConfigMap", None, {
                "model_root": [str(Path(one(documents, "ConfigMap")["data"][MODEL_PATH_ENV]).parent)]}),
        ]
    return found


# --- settings files and tools -------------------------------------------------------------------------

def env_file_facts(root: Path) -> list[Facts]:
    """Every container settings file puts its model under the mounted models root, and the host's
    models root is where `hxp-llm model download` puts a model by default."""
    found = [Facts("hxp-llm model download (default --models-root)", None,
                   {"host_model_root": [str(DEFAULT_MODELS_ROOT)]})]
    for path in sorted((root / "config").glob("*.env")):
        env = read_env_file(path)
        if MODEL_PATH_ENV in env:
            found.append(Facts(f"config/{path.name}", None, {"model_root": [str(Path(env[MODEL_PATH_ENV]).parent)]}))
    return found
