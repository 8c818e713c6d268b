"""Settings of the OpenChat-3.5 service: the spec's keys, read from `OPENCHAT_3_5_*` variables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_settings import SettingsConfigDict

from hxp_enterprise_llm.schemas.configuration.model_schemas import (
    LoadedConfig,
    ModelConfigSchema,
    load_config,
)

if TYPE_CHECKING:
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service


class OpenChat35Config(ModelConfigSchema):
    """The service configuration; `OpenChat35Config()` gives defaults < environment."""

    model_config = SettingsConfigDict(
        env_prefix="OPENCHAT_3_5_", frozen=True, extra="forbid", validate_default=True)

    @classmethod
    def load(
        cls,
        config_file: Path | None = None,
        cli_overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> LoadedConfig:
        """defaults < YAML `config_file` < environment < `cli_overrides`, validated once."""
        return load_config(cls, config_file, cli_overrides, environ)

    def service(self) -> OpenChat35Service:
        """A service on the vLLM engine for these settings (not started: `await service.start()`)."""
        from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service

        return OpenChat35Service(self)
