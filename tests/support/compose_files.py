"""Read deployment files the way their tools do: Compose's `${VAR:-default}` and `KEY=value` env files."""

from __future__ import annotations

import re
from pathlib import Path

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def compose_defaults(node: object) -> object:
    """compose.yaml as Compose reads it with nothing set in the environment: `${VAR:-default}` -> default."""
    if isinstance(node, str):
        return _INTERPOLATION.sub(lambda m: m["default"] or "", node)
    if isinstance(node, list):
        return [compose_defaults(item) for item in node]
    if isinstance(node, dict):
        return {key: compose_defaults(value) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """An env file (Compose `env_file`, quadlet `EnvironmentFile`): `KEY=value` lines, `#` comments."""
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries[key] = value
    return entries
