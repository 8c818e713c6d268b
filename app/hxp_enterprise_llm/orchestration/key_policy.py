"""What a key is and may do (its name, limits and priority class), and what a request was charged.

Apart from the quota logic (quotas.py), so the request record can carry a key's policy and charge
without importing the module that settles them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

ANONYMOUS = "anonymous"  # requests of a service with no keys
API_KEY_NAME = "api_key"  # requests with the `api_key` setting's key
# Names a keys-file line may not take: it would share the limits' windows and the metrics of those requests.
RESERVED_NAMES = (ANONYMOUS, API_KEY_NAME)


class Priority(enum.StrEnum):
    """Admission order when requests wait for a slot: every interactive request before any batch one."""

    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """Lower is served first (also vLLM's convention for its `priority` argument)."""
        return 0 if self is Priority.INTERACTIVE else 1


@dataclass(frozen=True)
class KeyPolicy:
    """What a key may do; None means no limit."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    priority: Priority = Priority.INTERACTIVE

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


OPEN_ACCESS = KeyPolicy(ANONYMOUS)  # the service without keys


@dataclass(frozen=True)
class WindowState:
    """One limit as the client is told it (OpenAI's x-ratelimit-* headers)."""

    limit: int
    remaining: int
    reset_seconds: float  # until the window holds nothing of this key's: the limit is whole again



@dataclass
class Charge:
    """What a request took from its key's quota; settled once when the request ends."""

    policy: KeyPolicy
    prompt_tokens: int
    taken_at: float
    settled: bool = False
    prompt_at: float | None = None  # when the prompt was charged: taken_at, unless that had left the window
