"""`StreamingWindow` holds a bounded amount however many streams finish and whether or not anyone polls it."""

from __future__ import annotations

import gc
import tracemalloc

from hxp_enterprise_llm.api.streaming_stats import StreamingWindow
from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.schemas.outcomes import FinishReason

MAX_STREAMS = 500
GAPS_PER_STREAM = 200


def finished_stream(gaps: int = GAPS_PER_STREAM) -> RequestRecord:
    record = RequestRecord(request_id="r", route="chat", stream=True)
    record.first_token = record.last_token = record.arrived + 0.01
    record.completion_tokens = gaps + 1
    record.inter_token_gaps = [0.02 + i * 1e-6 for i in range(gaps)]  # distinct floats: real memory each
    record.finish_reasons[0] = FinishReason.STOP
    record.frames = 3
    record.close(200)
    return record


def held_bytes(window: StreamingWindow, streams: int) -> int:
    """Memory still allocated after `streams` more finishes, with nobody reading the window."""
    for _ in range(streams):
        window.on_finished(finished_stream())
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_finished_streams_are_bounded_without_any_poll() -> None:
    window = StreamingWindow(window_seconds=300, target_latency_seconds=1.0, max_streams=MAX_STREAMS)
    for _ in range(5 * MAX_STREAMS):
        window.on_finished(finished_stream(gaps=2))
    assert len(window) == MAX_STREAMS
    assert window.streams_completed_total == 5 * MAX_STREAMS
    snapshot = window.snapshot(active_streams=0)
    assert snapshot["streams_completed"] == MAX_STREAMS
    assert snapshot["streams_completed_total"] == 5 * MAX_STREAMS


def test_memory_held_stops_growing_once_the_window_is_full() -> None:
    window = StreamingWindow(window_seconds=300, target_latency_seconds=1.0, max_streams=MAX_STREAMS)
    tracemalloc.start()
    try:
        full = held_bytes(window, MAX_STREAMS)  # the window is full: from here on it must not grow
        later = held_bytes(window, 4 * MAX_STREAMS)
    finally:
        tracemalloc.stop()
    # Today's per-stream size (record + gaps) is about 6 KB: 4 x 500 more would add about 12 MB.
    assert later - full < 256 * 1024, (full, later)


def test_the_figures_still_come_from_the_finished_streams() -> None:
    window = StreamingWindow(window_seconds=300, target_latency_seconds=1.0)
    for _ in range(10):
        window.on_finished(finished_stream(gaps=4))
    snapshot = window.snapshot(active_streams=2)
    assert snapshot["active_streams"] == 2
    assert snapshot["streams_completed"] == 10
    assert snapshot["time_to_first_token"]["p50_ms"] is not None
    assert 20.0 <= snapshot["inter_token_latency"]["mean_ms"] <= 20.01
    assert snapshot["slo"] == {"target_latency_ms": 1000.0, "requests": 10, "met": 10, "attainment": 1.0}
