"""Limits that protect the service (each breach names its limit) and API keys that rotate without a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from api_harness import RawExchange, Served, assert_openai_error, chat_body

from hxp_enterprise_llm.api.app import build_app
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from support.fake_engine import FakeEngine
from support.server_process import app_served_in_thread

pytestmark = pytest.mark.anyio


async def test_too_many_messages_names_the_limit(serve_app) -> None:
    async with serve_app(max_messages=3) as served:
        body = {"messages": [{"role": "user", "content": str(i)} for i in range(4)]}
        error = assert_openai_error(await served.chat(body), 400, param="messages", code="too_many_messages")
    assert "max_messages=3" in error["message"]
    assert served.engine.requests == []


async def test_a_message_over_the_character_limit_names_it(serve_app) -> None:
    async with serve_app(max_message_chars=10) as served:
        body = {"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "x" * 11}]}
        error = assert_openai_error(await served.chat(body), 400, param="messages.1.content",
                                    code="message_too_long")
    assert "max_message_chars=10" in error["message"]


async def test_more_than_four_stop_sequences_is_400(served: Served) -> None:
    assert_openai_error(await served.chat(chat_body(stop=["a", "b", "c", "d", "e"])), 400, param="stop")


async def test_a_body_over_the_size_limit_is_413(serve_app) -> None:
    async with serve_app(max_request_body_bytes=2048) as served:
        response = await served.chat(chat_body("x" * 4000))
    assert_openai_error(response, 413, code="request_too_large")


async def test_a_slow_body_is_cut_off_with_408(serve_app) -> None:
    async with serve_app(body_timeout_seconds=0.05) as served:
        exchange = RawExchange(served.app, chat_body(), request_id="slowloris", stall_body=True).start()
        await exchange.finished()
        assert served.ctx.orchestrator.running == served.ctx.orchestrator.waiting == 0
    assert exchange.status == 408
    assert '"body_timeout"' in exchange.text


async def test_keys_from_the_file_rotate_without_a_restart(serve_app, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team A\nkey-one\n\nkey-two\n")
    async with serve_app(api_keys_file=keys) as served:
        assert (await served.chat(headers={"Authorization": "Bearer key-one"})).status_code == 200
        assert (await served.chat(headers={"Authorization": "Bearer key-two"})).status_code == 200
        keys.write_text("key-two\nkey-three\n")
        served.ctx.api_keys.reload()  # what SIGHUP does (the file is also re-read when it changes)
        assert_openai_error(await served.chat(headers={"Authorization": "Bearer key-one"}), 401,
                            code="invalid_api_key")
        assert (await served.chat(headers={"Authorization": "Bearer key-three"})).status_code == 200


async def test_a_changed_keys_file_is_picked_up_without_a_signal(serve_app, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from hxp_enterprise_llm.api import auth

    monkeypatch.setattr(auth, "RECHECK_SECONDS", 0.0)
    keys = tmp_path / "keys"
    keys.write_text("old-key\n")
    async with serve_app(api_keys_file=keys) as served:
        assert (await served.chat(headers={"Authorization": "Bearer old-key"})).status_code == 200
        keys.write_text("new-key-of-another-length\n")
        assert (await served.chat(headers={"Authorization": "Bearer new-key-of-another-length"})).status_code == 200
        assert (await served.chat(headers={"Authorization": "Bearer old-key"})).status_code == 401


async def test_a_broken_keys_file_keeps_the_keys_in_use(serve_app, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("good-key\n")
    async with serve_app(api_keys_file=keys) as served:
        keys.unlink()
        served.ctx.api_keys.reload()
        assert (await served.chat(headers={"Authorization": "Bearer good-key"})).status_code == 200


async def test_api_key_and_keys_file_both_open_the_api(serve_app, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("from-file\n")
    async with serve_app(api_key="from-env", api_keys_file=keys) as served:
        for key in ("from-env", "from-file"):
            assert (await served.chat(headers={"Authorization": f"Bearer {key}"})).status_code == 200
        assert (await served.client.get("/health")).status_code == 200  # probes need no key


async def test_keys_never_reach_the_log(serve_app, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "keys"
    keys.write_text("secret-in-file\n")
    with caplog.at_level(logging.DEBUG):
        async with serve_app(api_key="secret-in-env", api_keys_file=keys) as served:
            await served.chat(headers={"Authorization": "Bearer secret-in-env"})
            await served.chat(headers={"Authorization": "Bearer wrong-guess-secret"})
            served.ctx.api_keys.reload()
    text = caplog.text + "".join(str(getattr(r, "fields", "")) for r in caplog.records)
    for secret in ("secret-in-file", "secret-in-env", "wrong-guess-secret"):
        assert secret not in text


def test_an_unreadable_keys_file_stops_the_start(tmp_path: Path) -> None:
    from hxp_enterprise_llm.api.auth import ApiKeyFileError, ApiKeys

    with pytest.raises(ApiKeyFileError, match="missing-keys"):
        ApiKeys(None, tmp_path / "missing-keys")


async def test_request_headers_over_the_limit_are_431_naming_it(serve_app) -> None:
    async with serve_app(max_header_bytes=2048) as served:
        fits = await served.chat(headers={"X-Trace": "t" * 1000})
        error = assert_openai_error(await served.chat(headers={"X-Trace": "t" * 3000}), 431,
                                    code="headers_too_large")
        health = await served.client.get("/health", headers={"X-Trace": "t" * 3000})
    assert fits.status_code == 200
    assert "max_header_bytes (2048)" in error["message"]
    assert health.status_code == 431
    assert len(served.engine.requests) == 1  # only the request that fitted reached the engine


def test_the_header_limit_holds_behind_uvicorns_own_parser() -> None:
    # uvicorn picks httptools when it is installed (it is: uvicorn[standard]); that parser has no
    # header limit of its own, and the h11 setting the service once relied on was never read.
    config = OpenChat35Config(max_header_bytes=4096, prompt_format="chat_template")
    app = build_app(config, OpenChat35Service(config, engine=FakeEngine()), serve_metrics=False)
    with app_served_in_thread(app) as url:
        response = httpx.get(f"{url}/health", headers={"X-Trace": "t" * 200_000}, timeout=10)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "headers_too_large"
