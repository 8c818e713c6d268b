"""`GET /metrics/streaming`: streaming figures over a sliding window, as JSON for humans and probes.

What the window holds is bounded whether or not anyone reads it: each finished stream leaves a few
numbers (not its record), old ones are dropped on every finish, at most `max_streams` are kept, and
inter-token gaps are a ring of the most recent `max_gaps`.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any, NamedTuple

from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.percentiles import percentile
from hxp_enterprise_llm.schemas.outcomes import Outcome

# At 10 streams/s a 5-minute window holds 3,000 streams; these bound it at any rate (about 2 MB). The
# rates stay right under the cap (their span starts at the oldest stream held); percentiles of the
# latest 5,000 streams and 10,000 gaps are as good as of all of them.
MAX_STREAMS = 5_000
MAX_GAPS = 10_000


class _Finished(NamedTuple):
    """What the window needs of one finished stream."""

    finished: float
    arrived: float
    ttft: float | None
    e2e_ok: float | None  # the e2e of a complete answer
    frames: int
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int  # of prompt_tokens, served from the prefix cache
    counted: bool  # for the SLO
    met: bool


def _summary_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean_ms": None, "p50_ms": None, "p95_ms": None}
    return {"mean_ms": round(statistics.fmean(values) * 1000, 3),
            "p50_ms": round(percentile(values, 50) * 1000, 3), "p95_ms": round(percentile(values, 95) * 1000, 3)}


class StreamingWindow:
    """Finished streaming requests of the last `window_seconds` (the orchestrator says how many stream now)."""

    def __init__(self, window_seconds: float, target_latency_seconds: float, *,
                 max_streams: int = MAX_STREAMS, max_gaps: int = MAX_GAPS) -> None:
        self.window_seconds = window_seconds
        self.target_latency_seconds = target_latency_seconds
        self.streams_completed_total = 0
        self._streams: deque[_Finished] = deque(maxlen=max_streams)
        self._max_gaps = max_gaps
        self._gaps: deque[tuple[float, float]] = deque(maxlen=max_gaps)  # (finished, gap)

    def __len__(self) -> int:
        """Finished streams held now."""
        return len(self._streams)

    def on_finished(self, record: RequestRecord) -> None:
        if not (record.stream and record.status == 200):  # a refused stream never streamed
            return
        now = time.monotonic()
        self.streams_completed_total += 1
        self._streams.append(_Finished(
            now, record.arrived, record.ttft, record.e2e if record.outcome is Outcome.OK else None, record.frames,
            record.completion_tokens, record.prompt_tokens, record.cached_tokens, record.counts_for_slo(),
            record.met_slo(self.target_latency_seconds)))
        self._gaps.extend((now, gap) for gap in record.inter_token_gaps[-self._max_gaps:])
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._streams and now - self._streams[0].finished > self.window_seconds:
            self._streams.popleft()
        while self._gaps and now - self._gaps[0][0] > self.window_seconds:
            self._gaps.popleft()

    def snapshot(self, active_streams: int) -> dict[str, Any]:
        now = time.monotonic()
        self._prune(now)
        streams = list(self._streams)
        # The rates' time span starts when the oldest request in the window arrived (not when it
        # finished): one stream that has just ended must not read as thousands of tokens a second.
        oldest_arrival = min((s.arrived for s in streams), default=now)
        span = max(min(self.window_seconds, now - oldest_arrival), 1e-9)
        counted = sum(s.counted for s in streams)
        met = sum(s.met for s in streams)
        prompt_tokens = sum(s.prompt_tokens for s in streams)
        cached_tokens = sum(s.cached_tokens for s in streams)
        return {
            "window_seconds": self.window_seconds,
            "active_streams": active_streams,
            "streams_completed": len(streams),
            "streams_completed_total": self.streams_completed_total,
            "time_to_first_token": _summary_ms([s.ttft for s in streams if s.ttft is not None]),
            "inter_token_latency": _summary_ms([gap for _, gap in self._gaps]),
            "e2e_latency": _summary_ms([s.e2e_ok for s in streams if s.e2e_ok is not None]),
            "chunks_per_second": round(sum(s.frames for s in streams) / span, 3) if streams else 0.0,
            "tokens_per_second": round(sum(s.completion_tokens for s in streams) / span, 3) if streams else 0.0,
            "slo": {"target_latency_ms": self.target_latency_seconds * 1000,
                    "requests": counted, "met": met,
                    "attainment": round(met / counted, 4) if counted else None},
            # The share of prompt tokens the prefix cache spared: near 0 for one-off prompts, high for
            # conversations that return to the replica holding their earlier turns.
            "prompt_cache": {"prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens,
                             "hit_rate": round(cached_tokens / prompt_tokens, 4) if prompt_tokens else None},
        }
