"""Prometheus on the metrics port after real requests: parseable, and the figures match what was sent."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.server_process import ServerProcess


def scrape(server: ServerProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = httpx.get(server.metrics_url)
    assert response.status_code == 200
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return sum(value for key, value in samples.get(name, {}).items() if set(labels.items()) <= set(key))


def test_metrics_move_with_requests(demo_server: ServerProcess) -> None:
    before = scrape(demo_server)
    body = {"model": "openchat-3.5", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Name a colour."}]}
    for stream in (False, False, True):
        response = httpx.post(f"{demo_server.base_url}/v1/chat/completions", json={**body, "stream": stream},
                              timeout=60)
        assert response.status_code == 200
    bad = httpx.post(f"{demo_server.base_url}/v1/chat/completions", json={**body, "model": "nope"})
    assert bad.status_code == 404
    after = scrape(demo_server)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    model = {"model": "openchat-3.5"}
    assert moved("openchat_requests_total", status="200", **model) == 3
    assert moved("openchat_time_to_first_token_seconds_count", **model) == 3
    assert moved("openchat_e2e_request_latency_seconds_count", **model) == 3
    assert moved("openchat_queue_wait_seconds_count", **model) == 3
    assert moved("openchat_inter_token_latency_seconds_count", **model) >= 3
    assert moved("openchat_completion_tokens_total", **model) >= 3
    assert moved("openchat_prompt_tokens_total", **model) > 10
    assert moved("openchat_rejections_total", reason="invalid", **model) == 1
    assert moved("openchat_slo_requests_total", **model) == 3
    assert moved("openchat_stream_chunks_total", **model) >= 1
    assert total(after, "openchat_model_load_seconds", **model) > 0
    assert total(after, "openchat_process_resident_memory_bytes", **model) > 100e6
    # The engine's own metrics are served beside ours, under vLLM's names.
    assert moved("vllm:request_success_total") >= 3
    assert "vllm:time_to_first_token_seconds_count" in after
    assert "vllm:kv_cache_usage_perc" in after


def test_histogram_buckets_are_monotonic(demo_server: ServerProcess) -> None:
    response = httpx.get(demo_server.metrics_url)
    for family in text_string_to_metric_families(response.text):
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                series.setdefault(labels, []).append((float(sample.labels["le"]), sample.value))
        for labels, buckets in series.items():
            counts = [count for _, count in sorted(buckets)]
            assert counts == sorted(counts), f"{family.name}{dict(labels)} buckets not monotonic"


def test_streaming_metrics_endpoint_agrees(demo_server: ServerProcess) -> None:
    before = httpx.get(f"{demo_server.base_url}/metrics/streaming").json()
    body = {"model": "openchat-3.5", "max_tokens": 8, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Name an animal."}]}
    for _ in range(2):
        assert httpx.post(f"{demo_server.base_url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    after = httpx.get(f"{demo_server.base_url}/metrics/streaming").json()
    assert after["streams_completed_total"] - before["streams_completed_total"] == 2
    assert after["active_streams"] == 0
    assert after["time_to_first_token"]["p50_ms"] > 0
    assert after["tokens_per_second"] > 0
    assert after["slo"]["requests"] >= 2
