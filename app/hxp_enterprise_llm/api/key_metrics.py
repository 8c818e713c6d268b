"""Per-key Prometheus counters: requests, tokens and refusals by key *name*.

The label's values are the names in the keys file, `api_key`, `unnamed` (bare keys) and `anonymous`
(no keys configured, or a request refused before its key was known): bounded by the operator, never by
clients. The figures are the closed request's, the same the response's `usage` and the usage log carry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from hxp_enterprise_llm.orchestration.quotas import KeyPolicy
    from hxp_enterprise_llm.orchestration.request_record import RequestRecord


class KeyMetrics:
    def __init__(self, model: str, registry: CollectorRegistry) -> None:
        self.model = model
        labels, r = ["model", "key"], registry
        self.requests = Counter("openchat_key_requests", "Finished inference requests per key name, by outcome",
                                [*labels, "outcome"], registry=r)
        self.prompt_tokens = Counter("openchat_key_prompt_tokens", "Prompt tokens processed per key name",
                                     labels, registry=r)
        self.cached_tokens = Counter("openchat_key_cached_tokens", "Prompt tokens found in the prefix cache, per "
                                     "key name (part of the prompt tokens)", labels, registry=r)
        self.completion_tokens = Counter("openchat_key_completion_tokens", "Tokens generated per key name",
                                         labels, registry=r)
        self.rejections = Counter("openchat_key_rejections", "Requests refused or cut short per key name, by "
                                  "reason (key_requests, key_tokens, key_concurrency for the key's own limits; "
                                  "the service-wide reasons of openchat_rejections_total)",
                                  [*labels, "reason"], registry=r)
        self.limits = Gauge("openchat_key_limit", "A key name's configured limit (requests_per_minute, "
                            "tokens_per_minute, concurrent_requests)", [*labels, "limit"], registry=r)

    def know(self, policies: list[KeyPolicy]) -> None:
        """Publish the names' limits, and zeros for their counters, so dashboards list every key at once."""
        self.limits.clear()
        for policy in policies:
            for counter in (self.prompt_tokens, self.cached_tokens, self.completion_tokens):
                counter.labels(self.model, policy.name)
            for limit in ("requests_per_minute", "tokens_per_minute", "concurrent_requests"):
                value = getattr(policy, limit)
                if value is not None:
                    self.limits.labels(self.model, policy.name, limit).set(value)

    def on_finished(self, record: RequestRecord) -> None:
        model, key = self.model, record.key.name
        self.requests.labels(model, key, str(record.outcome)).inc()
        self.prompt_tokens.labels(model, key).inc(record.prompt_tokens)
        self.cached_tokens.labels(model, key).inc(record.cached_tokens)
        self.completion_tokens.labels(model, key).inc(record.completion_tokens)
        if record.error is not None and record.error.rejection_reason is not None:
            self.rejections.labels(model, key, record.error.rejection_reason).inc()
