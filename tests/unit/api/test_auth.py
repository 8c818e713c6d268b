"""With an api_key, every inference route wants `Authorization: Bearer <key>`; probes stay open."""

from __future__ import annotations

import logging

import pytest
from api_harness import CHAT, Served, assert_openai_error, chat_body

from hxp_enterprise_llm.api.metrics import render_metrics

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
async def secured(serve_app):
    async with serve_app(api_key=KEY) as served:
        yield served


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": KEY},
    {"Authorization": "Bearer "},
])
async def test_missing_or_wrong_key_is_401_on_inference_routes(secured: Served, headers: dict[str, str]) -> None:
    for response in (await secured.chat(chat_body(), headers=headers),
                     await secured.chat(chat_body(stream=True), headers=headers),
                     await secured.client.get("/v1/models", headers=headers),
                     await secured.client.get("/v1/models/openchat-3.5", headers=headers)):
        assert_openai_error(response, 401, code="invalid_api_key")
        assert "text/event-stream" not in response.headers["content-type"]
    assert secured.engine.requests == []


async def test_right_key_is_served(secured: Served) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert (await secured.chat(chat_body(), headers=auth)).status_code == 200
    assert (await secured.chat(chat_body(), headers={"authorization": f"bearer {KEY}"})).status_code == 200
    assert (await secured.client.get("/v1/models", headers=auth)).status_code == 200


async def test_key_is_checked_before_the_body_is_read(secured: Served) -> None:
    response = await secured.client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(response, 401, code="invalid_api_key")


async def test_probes_stay_open(secured: Served) -> None:
    assert (await secured.client.get("/health")).status_code == 200
    assert (await secured.client.get("/health/live")).status_code == 200


async def test_unauthorized_requests_are_counted_and_the_key_never_logged(
        secured: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await secured.chat(chat_body(), headers={"Authorization": "Bearer wrong-key"})
    await secured.chat(chat_body(), headers={"Authorization": f"Bearer {KEY}"})
    metrics = render_metrics(secured.ctx.metrics.registry).decode()
    assert 'openchat_rejections_total{model="openchat-3.5",reason="unauthorized"} 1.0' in metrics
    assert KEY not in caplog.text
    assert all(KEY not in str(getattr(r, "fields", "")) for r in caplog.records)
