"""Per-key Prometheus counters: requests, tokens and refusals by key *name*.

The label's values are the names in the keys file, `api_key`, `unnamed` (bare keys) and `anonymous`
(no keys configured, or a request refused before its key was known): bounded by the operator, never by
clients. The figures are the closed request's, the same the response's `usage` and the usage log carry.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from hxp_enterprise_llm.orchestration.key_policy import KeyPolicy
    from hxp_enterprise_llm.orchestration.quotas import QuotaStore
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
            # The alert's ratio (limited / all) then reads 0 for a key within its limits, not "no data".
            for outcome in ("ok", "limited"):
                self.requests.labels(self.model, policy.name, outcome)
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

    def snapshot(self, policies: list[KeyPolicy], store: QuotaStore) -> list[dict[str, Any]]:
        """Per key name: the counters' totals since start, its limits and what is left of them now
        (read from the counters themselves: /ui shows the figures Prometheus scrapes)."""
        totals: dict[str, dict[str, Any]] = defaultdict(lambda: {"requests": {}, "refusals": {}})
        for counter, field in ((self.prompt_tokens, "prompt_tokens"), (self.cached_tokens, "cached_tokens"),
                               (self.completion_tokens, "completion_tokens")):
            for sample in _totals(counter):
                totals[sample.labels["key"]][field] = int(sample.value)
        for sample in _totals(self.requests):
            totals[sample.labels["key"]]["requests"][sample.labels["outcome"]] = int(sample.value)
        for sample in _totals(self.rejections):
            totals[sample.labels["key"]]["refusals"][sample.labels["reason"]] = int(sample.value)
        now = time.monotonic()
        limits = {p.name: p for p in policies}
        rows = []
        for name in sorted(set(totals) | set(limits)):
            row = {"key": name, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0, **totals[name]}
            policy = limits.get(name)
            if policy is not None:
                row["priority"] = str(policy.priority)
                row["limits"] = {kind: {"limit": state.limit, "remaining": state.remaining}
                                 for kind, state in store.state(policy, now).items()}
            rows.append(row)
        return rows


def _totals(counter: Counter) -> list[Any]:
    return [s for metric in counter.collect() for s in metric.samples if s.name.endswith("_total")]
