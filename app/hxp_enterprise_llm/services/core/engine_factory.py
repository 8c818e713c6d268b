"""`create_engine`: the engine for a config. Above both the Engine protocol (engine.py) and its vLLM
implementation (vllm_engine.py), so neither imports the other's module back."""

from __future__ import annotations

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.services.core.engine import Engine


def create_engine(config: ModelConfigSchema) -> Engine:
    """The vLLM engine for this config; vLLM is imported here, not at module import."""
    from hxp_enterprise_llm.services.core.vllm_engine import VllmEngine

    return VllmEngine(config)
