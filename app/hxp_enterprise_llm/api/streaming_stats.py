"""`GET /metrics/streaming`: streaming figures over a sliding window, as JSON for humans and probes."""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.percentiles import percentile
from hxp_enterprise_llm.schemas.outcomes import Outcome


def _summary_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean_ms": None, "p50_ms": None, "p95_ms": None}
    return {"mean_ms": round(statistics.fmean(values) * 1000, 3),
            "p50_ms": round(percentile(values, 50) * 1000, 3), "p95_ms": round(percentile(values, 95) * 1000, 3)}


class StreamingWindow:
    """Finished streaming requests of the last `window_seconds` (the orchestrator says how many stream now)."""

    def __init__(self, window_seconds: float, target_latency_seconds: float) -> None:
        self.window_seconds = window_seconds
        self.target_latency_seconds = target_latency_seconds
        self.streams_completed_total = 0
        self._records: deque[tuple[float, RequestRecord]] = deque()

    def on_finished(self, record: RequestRecord) -> None:
        if record.stream and record.status == 200:  # a refused stream never streamed
            self.streams_completed_total += 1
            self._records.append((time.monotonic(), record))

    def snapshot(self, active_streams: int) -> dict[str, Any]:
        now = time.monotonic()
        while self._records and now - self._records[0][0] > self.window_seconds:
            self._records.popleft()
        records = [r for _, r in self._records]
        # The rates' time span starts when the oldest request in the window arrived (not when it
        # finished): one stream that has just ended must not read as thousands of tokens a second.
        oldest_arrival = min((r.arrived for r in records), default=now)
        span = max(min(self.window_seconds, now - oldest_arrival), 1e-9)
        ttfts = [r.ttft for r in records if r.ttft is not None]
        gaps = [g for r in records for g in r.inter_token_gaps]
        e2es = [r.e2e for r in records if r.outcome is Outcome.OK and r.e2e is not None]
        counted = [r for r in records if r.counts_for_slo()]
        prompt_tokens = sum(r.prompt_tokens for r in records)
        cached_tokens = sum(r.cached_tokens for r in records)
        met = [r for r in counted if r.met_slo(self.target_latency_seconds)]
        return {
            "window_seconds": self.window_seconds,
            "active_streams": active_streams,
            "streams_completed": len(records),
            "streams_completed_total": self.streams_completed_total,
            "time_to_first_token": _summary_ms(ttfts),
            "inter_token_latency": _summary_ms(gaps),
            "e2e_latency": _summary_ms(e2es),
            "chunks_per_second": round(sum(r.frames for r in records) / span, 3) if records else 0.0,
            "tokens_per_second": round(sum(r.completion_tokens for r in records) / span, 3) if records else 0.0,
            "slo": {"target_latency_ms": self.target_latency_seconds * 1000,
                    "requests": len(counted), "met": len(met),
                    "attainment": round(len(met) / len(counted), 4) if counted else None},
            # The share of prompt tokens the prefix cache spared: near 0 for one-off prompts, high for
            # conversations that return to the replica holding their earlier turns.
            "prompt_cache": {"prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens,
                             "hit_rate": round(cached_tokens / prompt_tokens, 4) if prompt_tokens else None},
        }
