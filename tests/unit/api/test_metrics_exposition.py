"""Prometheus exposition and /metrics/streaming agree with the requests the test made."""

from __future__ import annotations

from collections import defaultdict

import pytest
from api_harness import RawExchange, Served, chat_body, content_frames, eventually, sse_chunks
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from hxp_enterprise_llm.api.metrics import render_metrics
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

HISTOGRAMS = ("openchat_time_to_first_token_seconds", "openchat_inter_token_latency_seconds",
              "openchat_e2e_request_latency_seconds", "openchat_queue_wait_seconds")


def scrape(served: Served) -> dict[str, list[Sample]]:
    """Samples by family name, parsed as Prometheus would (a parse error fails the test)."""
    text = render_metrics(served.ctx.metrics.registry).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def assert_buckets_monotonic(samples: list[Sample], family: str) -> None:
    series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for sample in samples:
        if sample.name == f"{family}_bucket":
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            series[key].append((float(sample.labels["le"]), sample.value))
    assert series, f"{family} has no buckets"
    for key, buckets in series.items():
        counts = [count for _, count in sorted(buckets)]
        assert counts == sorted(counts), f"{family}{dict(key)} buckets decrease: {counts}"
        assert sorted(buckets)[-1][0] == float("inf")
        assert counts[-1] == total(samples, f"{family}_count", **dict(key))


async def test_counts_and_histograms_match_the_requests_made(serve_app) -> None:
    async with serve_app(target_latency_ms=600_000) as served:
        for stream in (False, False, True, False, True):
            served.engine.enqueue(*"twelve token", finish_reason="stop")
            response = await served.chat(chat_body(stream=stream, max_tokens=100))
            assert response.status_code == 200
        families = scrape(served)
    made = 5
    requests = families["openchat_requests"]
    assert total(requests, "openchat_requests_total") == made
    assert total(requests, "openchat_requests_total", status="200", finish_reason="stop",
                 model="openchat-3.5") == made
    for family in ("openchat_time_to_first_token_seconds", "openchat_e2e_request_latency_seconds",
                   "openchat_queue_wait_seconds"):
        assert total(families[family], f"{family}_count") == made, family
    # 12 tokens per request: the first has a TTFT, the other 11 each an inter-token gap.
    assert total(families["openchat_inter_token_latency_seconds"],
                 "openchat_inter_token_latency_seconds_count") == made * 11
    for family in HISTOGRAMS:
        assert_buckets_monotonic(families[family], family)
    assert total(families["openchat_completion_tokens"], "openchat_completion_tokens_total") == made * 12
    assert total(families["openchat_prompt_tokens"], "openchat_prompt_tokens_total") == sum(
        len(r.prompt_token_ids) for r in served.engine.requests)
    assert total(families["openchat_slo_requests"], "openchat_slo_requests_total") == made
    assert total(families["openchat_slo_met_requests"], "openchat_slo_met_requests_total") == made
    assert total(families["openchat_stream_chunks"], "openchat_stream_chunks_total") > 0
    assert total(families["openchat_requests_running"], "openchat_requests_running") == 0
    assert total(families["openchat_process_resident_memory_bytes"],
                 "openchat_process_resident_memory_bytes") > 0
    assert "openchat_model_load_seconds" in families


async def test_a_timed_out_request_counts_against_the_slo(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=30), target_latency_ms=600_000,
                         connection_timeout_seconds=0.02) as served:
        assert (await served.chat(chat_body())).status_code == 504
        families = scrape(served)
    assert total(families["openchat_slo_requests"], "openchat_slo_requests_total") == 1
    assert total(families["openchat_slo_met_requests"], "openchat_slo_met_requests_total") == 0
    assert total(families["openchat_rejections"], "openchat_rejections_total", reason="timeout") == 1
    assert total(families["openchat_requests"], "openchat_requests_total", status="504") == 1


async def test_rejections_by_reason(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=30), concurrent_users=1, max_queue_size=0) as served:
        holder = RawExchange(served.app, chat_body(), request_id="holder").start()
        await served.started("holder")
        assert (await served.chat(chat_body())).status_code == 429
        assert (await served.chat(chat_body(temperature=9))).status_code == 400
        await served.release("holder")
        await holder.finished()
        families = scrape(served)
    rejections = families["openchat_rejections"]
    assert total(rejections, "openchat_rejections_total", reason="queue_full") == 1
    assert total(rejections, "openchat_rejections_total", reason="invalid") == 1
    assert total(families["openchat_requests"], "openchat_requests_total", status="429") == 1


async def test_client_disconnect_is_counted(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=30)) as served:
        leaver = RawExchange(served.app, chat_body(stream=True), request_id="leaver").start()
        await served.started("leaver")
        leaver.hang_up.set()
        await leaver.finished()
        await eventually(lambda: served.ctx.orchestrator.running == 0, "slot released")
        families = scrape(served)
    assert total(families["openchat_client_disconnects"], "openchat_client_disconnects_total") == 1
    # A request the client abandoned says nothing about the latency SLO.
    assert total(families["openchat_slo_requests"], "openchat_slo_requests_total") == 0


async def test_streaming_metrics_json_agrees_with_the_streams_made(serve_app) -> None:
    async with serve_app(target_latency_ms=600_000) as served:
        for stream in (True, False, True, True):
            assert (await served.chat(chat_body(stream=stream))).status_code == 200
        response = await served.client.get("/metrics/streaming")
    assert response.status_code == 200
    body = response.json()
    assert body["streams_completed"] == 3
    assert body["streams_completed_total"] == 3
    assert body["active_streams"] == 0
    assert body["slo"]["requests"] == 3
    assert body["slo"]["met"] == 3
    assert body["slo"]["attainment"] == 1.0
    assert body["time_to_first_token"]["p50_ms"] is not None
    assert body["tokens_per_second"] > 0


async def test_stream_chunks_count_content_frames_only(serve_app) -> None:
    # No time-based flush within the test (a loaded machine would otherwise flush between tokens):
    # frames come from response_chunk_size alone, so their number is known.
    async with serve_app(stream_flush_interval_ms=60_000) as served:
        served.engine.enqueue(*"abcdefghijklmnopqrstuvwxy")
        response = await served.chat(chat_body(stream=True, stream_options={"include_usage": True}))
    content = content_frames(sse_chunks(response.text))
    assert len(content) == 4  # "a", 10, 10, then 4 with finish_reason
    assert total(scrape(served)["openchat_stream_chunks"], "openchat_stream_chunks_total") == len(content)


async def test_a_streamed_completion_counts_its_frames_too(serve_app) -> None:
    async with serve_app(stream_flush_interval_ms=60_000) as served:
        served.engine.enqueue(*"abcdefghijklmnopqrstuvwxy")
        response = await served.client.post("/v1/completions", json={"model": "openchat-3.5", "prompt": "x",
                                                                     "stream": True, "max_tokens": 50})
    frames = [chunk for chunk in sse_chunks(response.text) if chunk["choices"]]
    assert [len(frame["choices"][0]["text"]) for frame in frames] == [1, 10, 10, 4]
    assert total(scrape(served)["openchat_stream_chunks"], "openchat_stream_chunks_total") == len(frames)


async def test_refused_stream_requests_are_not_completed_streams(serve_app) -> None:
    async with serve_app(target_latency_ms=600_000) as served:
        assert (await served.chat(chat_body(stream=True))).status_code == 200
        assert (await served.chat(chat_body(stream=True, model="nope"))).status_code == 404
        body = (await served.client.get("/metrics/streaming")).json()
    assert body["streams_completed"] == 1
    assert body["slo"] == {"target_latency_ms": 600_000.0, "requests": 1, "met": 1, "attainment": 1.0}


async def test_client_errors_do_not_count_against_the_slo(serve_app) -> None:
    async with serve_app(target_latency_ms=600_000) as served:
        assert (await served.chat(chat_body())).status_code == 200
        assert (await served.chat(chat_body(model="nope"))).status_code == 404
        assert (await served.chat(chat_body(temperature=9))).status_code == 400
        families = scrape(served)
    assert total(families["openchat_slo_requests"], "openchat_slo_requests_total") == 1
    assert total(families["openchat_slo_met_requests"], "openchat_slo_met_requests_total") == 1


def test_metrics_port_answers_in_text_format_keeping_vllm_names() -> None:
    import httpx
    from prometheus_client import CollectorRegistry, Gauge

    from hxp_enterprise_llm.api.metrics import MetricsServer
    from hxp_tools.servers import free_port

    registry = CollectorRegistry()
    Gauge("vllm:num_requests_running", "as vLLM names it", registry=registry).set(3)
    port = free_port()
    server = MetricsServer(registry, "127.0.0.1", port)
    server.start()
    try:
        # Prometheus asks for OpenMetrics first; the answer is the text format, names untouched.
        response = httpx.get(f"http://127.0.0.1:{port}/metrics",
                             headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        missing = httpx.get(f"http://127.0.0.1:{port}/nothing-here")
    finally:
        server.stop()
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "vllm:num_requests_running 3.0" in response.text
    assert missing.status_code == 404


async def test_requests_that_reach_no_route_are_counted_once_as_invalid(served: Served) -> None:
    # They open no request record: the error handler counts the refusal itself.
    assert (await served.client.get("/v1/no-such-route")).status_code == 404
    assert (await served.client.get("/v1/chat/completions")).status_code == 405
    families = scrape(served)
    assert [(s.labels["reason"], s.value) for s in families["openchat_rejections"]
            if s.name == "openchat_rejections_total"] == [("invalid", 2)]
    assert total(families["openchat_requests"], "openchat_requests_total") == 0
