"""`AppContext`: what the routes share, on `app.state.ctx`; its own module so routes need not import app.py."""

from __future__ import annotations

from dataclasses import dataclass

from hxp_enterprise_llm.api.auth import ApiKeys
from hxp_enterprise_llm.api.key_metrics import KeyMetrics
from hxp_enterprise_llm.api.metrics import ServiceMetrics
from hxp_enterprise_llm.api.streaming_stats import StreamingWindow
from hxp_enterprise_llm.orchestration.interactive_orchestrator import InteractiveOrchestrator
from hxp_enterprise_llm.orchestration.service_state import Health
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.schemas.errors import ModelNotFoundError
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service


@dataclass
class AppContext:
    """Everything the routes share, on `app.state.ctx` (no module globals)."""

    config: ModelConfigSchema
    service: OpenChat35Service
    orchestrator: InteractiveOrchestrator
    metrics: ServiceMetrics
    streaming: StreamingWindow
    api_keys: ApiKeys
    key_metrics: KeyMetrics

    @property
    def health(self) -> Health:
        return self.orchestrator.health

    def served_model(self, requested: str | None) -> str:
        """The model a request names (the served one when it names none), refused unless this service serves it."""
        served = self.config.served_model_name
        chosen = served if requested is None else requested
        if chosen not in (served, self.config.model_name, *self.config.model_aliases):
            raise ModelNotFoundError(f"The model '{chosen}' does not exist; this service serves '{served}'",
                                     param="model")
        return chosen
