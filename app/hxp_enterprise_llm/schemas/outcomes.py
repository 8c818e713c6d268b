"""How a request ended: one value per request, decided once when its record closes."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    OK = "ok"  # answered in full: finish reason stop or length
    INVALID = "invalid"  # the client's request was refused: bad body, unknown model, too large, bad key
    REJECTED = "rejected"  # admission refused it: queue full, queue timeout, not ready, draining
    LIMITED = "limited"  # the key's own limits refused it (requests, tokens per minute, concurrency)
    TIMEOUT = "timeout"  # connection_timeout_seconds passed before the answer ended
    DISCONNECTED = "disconnected"  # the client left before the answer ended
    ABORTED = "aborted"  # the service stopped the generation (drain deadline)
    FAILED = "failed"  # the engine failed or died, or an internal error

    @property
    def counts_for_slo(self) -> bool:
        """The latency SLO is the service's promise: a client's own mistake or departure does not count."""
        return self not in (Outcome.INVALID, Outcome.DISCONNECTED, Outcome.LIMITED)


class FinishReason(enum.StrEnum):
    """Why generation stopped, as the engine reports it (OpenAI's values, plus abort)."""

    STOP = "stop"  # end of turn or a stop string
    LENGTH = "length"  # max_tokens or the context window
    ABORT = "abort"  # cut off before the model finished: the answer is incomplete

    @property
    def complete(self) -> bool:
        return self is not FinishReason.ABORT
