"""Render quadlet/ with Podman's own generator and resolve what systemd would run for one instance.

The generator comes from Debian trixie's podman package (scripts/ensure-quadlet caches it; bookworm's
Podman 4.3 has none). It turns `citadel-llm@.container` into `citadel-llm@.service`, whose ExecStart
still holds systemd specifiers (`%i`) and `${VAR}` references; systemd resolves those when it starts
an instance. `resolve_exec_start` does that resolution for one instance the way systemd.service(5)
documents it ("Command lines": `${VAR}` is replaced by the variable from Environment= and
EnvironmentFile=, later assignments winning, EnvironmentFile= over Environment=), which is the step
that makes two instances of one template publish different ports.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def quadlet_binary() -> Path | None:
    """The cached generator (scripts/ensure-quadlet), or None."""
    cache = Path(os.environ.get("HXP_CACHE_DIR") or Path.home() / ".cache" / "hxp-llm")
    path = cache / "quadlet" / "quadlet"
    return path if os.access(path, os.X_OK) else None


def render(quadlet: Path, unit_dir: Path, output: Path) -> dict[str, str]:
    """Run the generator on `unit_dir` (as a system generator) and return {service file name: text}."""
    output.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([str(quadlet), "-no-kmsg-log", str(output), str(output), str(output)],
                            env={**os.environ, "QUADLET_UNIT_DIRS": str(unit_dir)},
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0 or "error" in result.stderr.lower():
        raise RuntimeError(f"quadlet failed ({result.returncode}): {result.stderr}")
    return {path.name: path.read_text(encoding="utf-8") for path in output.glob("*.service")}


_SECTION = re.compile(r"^\[(?P<name>[A-Za-z][A-Za-z0-9 _-]*)\]$")
_ASSIGNMENT = re.compile(r"^(?P<key>[A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?P<value>.*)$")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit syntax: sections, Key=Value (keys may repeat), comments, backslash continuations."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: str | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if match := _SECTION.match(line):
            current = match["name"]
            if current in sections:
                raise ValueError(f"line {number}: section [{current}] appears twice")
            sections[current] = []
            continue
        match = _ASSIGNMENT.match(line)
        if match is None:
            raise ValueError(f"line {number}: not a section header or Key=Value: {raw!r}")
        if current is None:
            raise ValueError(f"line {number}: assignment before the first section: {raw!r}")
        sections[current].append((match["key"], match["value"].strip()))
    if pending:
        raise ValueError("file ends inside a line continuation")
    return sections


def service_section(unit_text: str, section: str) -> list[tuple[str, str]]:
    """Key=value pairs of one section of a generated unit, in order."""
    pairs: list[tuple[str, str]] = []
    current = None
    for line in unit_text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Instance:
    name: str
    etc_dir: Path  # stands for /etc/citadel-llm

    def specifiers(self, text: str) -> str:
        return text.replace("%i", self.name).replace("%N", f"citadel-llm@{self.name}").replace(
            "%n", f"citadel-llm@{self.name}.service").replace("%t", "/run")

    def path(self, text: str) -> Path:
        return Path(self.specifiers(text).replace("/etc/citadel-llm", str(self.etc_dir)))


def service_environment(unit_text: str, instance: Instance) -> dict[str, str]:
    """What systemd puts in the service's environment: Environment= then EnvironmentFile= (`-` optional)."""
    service = service_section(unit_text, "Service")
    env: dict[str, str] = {}
    for key, value in service:
        if key == "Environment":
            for word in shlex.split(instance.specifiers(value)):
                name, _, val = word.partition("=")
                env[name] = val
    for key, value in service:
        if key == "EnvironmentFile":
            optional = value.startswith("-")
            path = instance.path(value.removeprefix("-"))
            if not path.is_file():
                if optional:
                    continue
                raise FileNotFoundError(path)
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    name, _, val = line.partition("=")
                    env[name.strip()] = val.strip()
    return env


def resolve_exec_start(unit_text: str, instance: Instance) -> list[str]:
    """The podman command line systemd would run for `instance`: specifiers and ${VAR} resolved."""
    (exec_start,) = [value for key, value in service_section(unit_text, "Service") if key == "ExecStart"]
    env = service_environment(unit_text, instance)

    def substitute(match: re.Match[str]) -> str:
        return env.get(match["name"], "")  # systemd: an unset variable expands to nothing

    return shlex.split(_ENV_REFERENCE.sub(substitute, instance.specifiers(exec_start)))


def option_values(argv: list[str], option: str) -> list[str]:
    """Every value of `--option value` or `--option=value` in a podman command line."""
    found = []
    for index, word in enumerate(argv):
        if word == option and index + 1 < len(argv):
            found.append(argv[index + 1])
        elif word.startswith(option + "="):
            found.append(word.split("=", 1)[1])
    return found
