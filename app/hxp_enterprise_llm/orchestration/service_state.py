"""The service's state for probes and admission: loading -> ready -> draining, or failed.

Kept in memory and answered without touching the engine. Admission reads it (one gate for every
route), `/health` reports it, and listeners (the state gauge, the fatal-exit hook) hear each change.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class ServiceState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass
class Health:
    state: ServiceState = ServiceState.LOADING
    detail: str = "loading the model"
    since: float = field(default_factory=time.time)
    model_load_seconds: float | None = None
    listeners: list[Callable[[ServiceState, str], object]] = field(default_factory=list)

    def set(self, state: ServiceState, detail: str) -> None:
        # Failed is final: a drain or a late "ready" must not hide a dead engine from the probes.
        if self.state is ServiceState.FAILED or state is self.state:
            return
        logger.info("service state %s -> %s: %s", self.state.value, state.value, detail)
        self.state, self.detail, self.since = state, detail, time.time()
        for listener in self.listeners:
            listener(state, detail)
