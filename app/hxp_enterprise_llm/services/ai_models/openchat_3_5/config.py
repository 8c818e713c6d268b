"""Settings of the OpenChat-3.5 service: the spec's keys, read from `OPENCHAT_3_5_*` variables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hxp_enterprise_llm.schemas.configuration.model_schemas import (
    LoadedConfig,
    ModelConfigSchema,
    load_config,
)


class OpenChat35Config(BaseSettings, ModelConfigSchema):
    """The service configuration; `OpenChat35Config()` gives defaults < environment."""

    model_config = SettingsConfigDict(
        env_prefix=ModelConfigSchema.env_prefix, frozen=True, extra="forbid", validate_default=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments win over the environment; no .env or secrets files are read.
        return init_settings, env_settings

    @classmethod
    def load(
        cls,
        config_file: Path | None = None,
        cli_overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> LoadedConfig:
        """defaults < YAML `config_file` < environment < `cli_overrides`, validated once."""
        return load_config(cls, config_file, cli_overrides, environ)
