"""/health tells the truth (loading, ready, draining, failed); /health/live never touches the engine."""

from __future__ import annotations

import datetime
import logging
import time

import pytest
from api_harness import MODEL, Served, assert_openai_error, chat_body, eventually

from hxp_enterprise_llm.api.app import EXIT_ENGINE_FAILED
from hxp_enterprise_llm.api.metrics import render_metrics
from hxp_enterprise_llm.orchestration.service_state import Health, ServiceState
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio


async def test_health_when_ready(served: Served) -> None:
    before = time.time()
    response = await served.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["model"] == MODEL
    assert body["context_length"] == 4096
    assert body["streaming"] is True
    # A string, as the spec's example shows: ISO-8601 UTC.
    stamp = datetime.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None
    assert body["timestamp"].endswith("Z")
    assert stamp.timestamp() >= before - 1


async def test_health_reports_configured_context_length(serve_app) -> None:
    async with serve_app(max_model_len=2048, streaming_enabled=False) as served:
        body = (await served.client.get("/health")).json()
    assert (body["context_length"], body["streaming"]) == (2048, False)


async def test_liveness_is_open_in_every_state(serve_app) -> None:
    async with serve_app(FakeEngine(start_delay=60), wait_ready=False) as served:
        loading = await served.client.get("/health/live")
    assert loading.status_code == 200
    assert loading.json()["status"] == "alive"


async def test_an_idle_engine_that_dies_fails_the_service_at_once(serve_app) -> None:
    # The engine says it died (vLLM sees its engine-core process exit): no health check, no request needed.
    async with serve_app(health_check_interval=3600) as served:
        served.engine.kill()
        assert served.fatal_calls, "on_fatal was not called when the engine reported its death"
        health = await served.client.get("/health")
    assert health.json()["status"] == "failed"
    assert "fake engine killed" in health.json()["detail"]


async def test_a_probe_right_after_the_engine_died_never_reads_healthy(serve_app) -> None:
    # vLLM knows its engine core is gone at once; the service's own watch looks every half second.
    # Found in the container tier: two probes in that gap answered "healthy".
    async with serve_app(health_check_interval=3600) as served:
        served.engine.kill(report=False)
        health = await served.client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "failed"
    assert [code for code, _ in served.fatal_calls] == [EXIT_ENGINE_FAILED]


async def test_failed_health_check_turns_health_failed_and_calls_on_fatal(serve_app) -> None:
    async with serve_app(health_check_interval=0.02) as served:
        assert (await served.client.get("/health")).status_code == 200
        served.engine.dead = True  # dead without saying so: only the periodic check can tell

        await eventually(lambda: served.fatal_calls, "on_fatal called")
        health = await served.client.get("/health")
        live = await served.client.get("/health/live")
        chat = await served.chat(chat_body())
    assert health.status_code == 503
    assert health.json()["status"] == "failed"
    assert "health check failed" in health.json()["detail"]
    assert [code for code, _ in served.fatal_calls] == [EXIT_ENGINE_FAILED] == [4]
    assert live.status_code == 200
    assert_openai_error(chat, 503)


async def test_engine_that_fails_to_start_is_failed_and_fatal(serve_app) -> None:
    async with serve_app(FakeEngine(fail_start=True), wait_ready=False) as served:
        await eventually(lambda: served.fatal_calls, "on_fatal called")
        health = await served.client.get("/health")
        chat = await served.chat(chat_body())
    assert health.status_code == 503
    assert health.json()["status"] == "failed"
    assert served.fatal_calls[0][0] == EXIT_ENGINE_FAILED
    assert "fail at start" in served.fatal_calls[0][1]
    assert_openai_error(chat, 503)


async def test_model_load_timeout_is_failed_and_fatal(serve_app) -> None:
    async with serve_app(FakeEngine(start_delay=60), wait_ready=False, model_load_timeout_seconds=0.02) as served:
        await eventually(lambda: served.fatal_calls, "on_fatal called")
        health = await served.client.get("/health")
        metrics = render_metrics(served.ctx.metrics.registry).decode()
    assert health.status_code == 503
    assert health.json()["status"] == "failed"
    assert health.json()["detail"] == "model not loaded within model_load_timeout_seconds=0.02"
    assert served.fatal_calls[0][0] == EXIT_ENGINE_FAILED
    assert "openchat_model_load_seconds{" not in metrics  # no load to report


async def test_the_load_time_is_reported_once_loaded(serve_app) -> None:
    began = time.monotonic()
    async with serve_app(FakeEngine(start_delay=0.05)) as served:
        health = served.ctx.health
        detail = health.detail  # (/health shows a detail only when not healthy)
        metrics = render_metrics(served.ctx.metrics.registry).decode()
    assert health.model_load_seconds is not None
    assert 0.05 <= health.model_load_seconds <= time.monotonic() - began  # the start's delay, within this test
    assert detail == f"model loaded in {health.model_load_seconds:.1f} s"
    assert f'openchat_model_load_seconds{{model="openchat-3.5"}} {health.model_load_seconds}' in metrics


async def test_a_healthy_engine_passes_its_periodic_checks_and_stays_ready(serve_app) -> None:
    async with serve_app(health_check_interval=0.01) as served:
        await eventually(lambda: served.engine.health_checks >= 3, "three health checks")
        health = (await served.client.get("/health")).json()
    assert health["status"] == "healthy"
    assert not served.fatal_calls


async def test_draining_service_is_503_draining(served: Served) -> None:
    served.ctx.health.set(ServiceState.DRAINING, "shutting down")
    health = await served.client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "draining"
    assert (await served.client.get("/health/live")).status_code == 200


async def test_models_endpoints(served: Served) -> None:
    listing = await served.client.get("/v1/models")
    assert listing.status_code == 200
    assert listing.json()["object"] == "list"
    assert [m["id"] for m in listing.json()["data"]] == [MODEL]
    card = await served.client.get(f"/v1/models/{MODEL}")
    assert card.status_code == 200
    assert card.json()["id"] == MODEL
    assert card.json()["max_model_len"] == 4096
    assert_openai_error(await served.client.get("/v1/models/gpt-4"), 404, param="model")


def test_failed_is_final_and_listeners_hear_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hxp_enterprise_llm.orchestration.service_state")
    heard: list[tuple[ServiceState, str]] = []
    health = Health(listeners=[lambda state, detail: heard.append((state, detail))])
    health.set(ServiceState.READY, "model loaded")
    health.set(ServiceState.READY, "model loaded again")  # no change: nothing to hear
    health.set(ServiceState.FAILED, "engine died")
    health.set(ServiceState.DRAINING, "SIGTERM")  # a drain must not hide the dead engine from the probes
    health.set(ServiceState.READY, "late ready")
    assert (health.state, health.detail) == (ServiceState.FAILED, "engine died")
    assert heard == [(ServiceState.READY, "model loaded"), (ServiceState.FAILED, "engine died")]
    # The operator's record of each change, in the service log.
    assert [r.getMessage() for r in caplog.records] == ["service state loading -> ready: model loaded",
                                                        "service state ready -> failed: engine died"]
