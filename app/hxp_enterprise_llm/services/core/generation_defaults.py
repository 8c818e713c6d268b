"""The model's own sampling defaults, from its `generation_config.json`, as vLLM's OpenAI server applies them.

A request's value wins, then the service's config (`default_temperature`, `default_top_p`), then the
model's file, then OpenAI's defaults. OpenChat-3.5-0106 ships temperature 0.5, so a request without
a temperature samples at 0.5, as it would under `vllm serve`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The sampling keys vLLM reads from generation_config.json (ModelConfig.get_diff_sampling_param),
# with OpenAI's (and vLLM's) defaults when neither the request nor the model sets them.
OPENAI_DEFAULTS: dict[str, float] = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                                     "repetition_penalty": 1.0}
GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class SamplingDefault:
    value: float
    origin: str  # "config:<key>", "model:generation_config.json" or "openai default"


def model_sampling_defaults(model_path: Path) -> dict[str, float]:
    """The sampling keys the model's generation_config.json sets (none if it has no such file)."""
    try:
        document: Any = json.loads((model_path / GENERATION_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    found = {}
    for key in OPENAI_DEFAULTS:
        value = document.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = float(value)
    return found


def effective_defaults(model_path: Path, configured: dict[str, float | None]) -> dict[str, SamplingDefault]:
    """Each sampling key's default for requests that leave it out, and where it comes from."""
    model = model_sampling_defaults(model_path)
    defaults = {}
    for key, fallback in OPENAI_DEFAULTS.items():
        if configured.get(key) is not None:
            defaults[key] = SamplingDefault(float(configured[key] or 0.0), f"config:default_{key}")
        elif key in model:
            defaults[key] = SamplingDefault(model[key], f"model:{GENERATION_CONFIG}")
        else:
            defaults[key] = SamplingDefault(fallback, "openai default")
    return defaults
