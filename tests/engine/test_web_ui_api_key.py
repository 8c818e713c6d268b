"""The page with an API key configured, in Debian's chromium: it asks for the key, keeps it in the tab, asks again
when the service refuses it, and streams once it is right. The service is the real app under uvicorn on the
scripted FakeEngine: the key handling is the page's and the API's, not the model's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hxp_enterprise_llm.api.app import build_app
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from support.browser import chromium_driver, screenshot, wait_for
from support.fake_engine import FakeEngine
from support.server_process import app_served_in_thread

KEY = "page-test-key-123"
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def keyed_service() -> Iterator[str]:
    config = OpenChat35Config(api_key=KEY, prompt_format="chat_template", metrics_collection_interval=1)
    app = build_app(config, OpenChat35Service(config, engine=FakeEngine(token_delay=0.05)), serve_metrics=False)
    with app_served_in_thread(app, ready_within_s=WAIT_SECONDS) as url:
        yield url


def dialog_open(driver: Any) -> bool:
    return bool(driver.execute_script("return document.getElementById('key-dialog').open"))


def enter_key(driver: Any, key: str) -> None:
    field = driver.find_element("id", "key-input")
    field.clear()
    field.send_keys(key)
    driver.find_element("id", "key-save").click()
    wait_for(lambda: not dialog_open(driver), "the key dialog to close", WAIT_SECONDS)


def ask(driver: Any, prompt: str) -> dict[str, Any]:
    count = len(driver.find_elements("css selector", ".msg.assistant"))
    driver.find_element("id", "prompt").send_keys(prompt)
    driver.find_element("id", "send").click()

    def finished() -> dict[str, Any] | None:
        nodes = driver.find_elements("css selector", ".msg.assistant")
        if len(nodes) <= count or nodes[-1].get_attribute("data-state") not in ("done", "error"):
            return None
        return {"state": nodes[-1].get_attribute("data-state"), "text": nodes[-1].find_element(
            "css selector", ".content").text, "meta": nodes[-1].find_element("css selector", ".meta").text}

    result: dict[str, Any] = wait_for(finished, f"the answer to {prompt!r}", WAIT_SECONDS)
    return result


def test_the_page_asks_for_the_key_and_keeps_it_in_the_tab_only(keyed_service: str) -> None:
    with chromium_driver() as driver:
        driver.get(f"{keyed_service}/ui/")
        wait_for(lambda: dialog_open(driver), "the page to ask for the key", WAIT_SECONDS)
        enter_key(driver, "wrong-key")
        refused = ask(driver, "hello")
        assert refused["state"] == "error"
        assert "401" in refused["meta"]
        wait_for(lambda: dialog_open(driver), "the page to ask again after a 401", WAIT_SECONDS)
        assert "refused the key" in driver.find_element("id", "key-error").text

        enter_key(driver, KEY)
        answer = ask(driver, "hello")
        screenshot(driver, "web-ui", "api-key-accepted")
        assert answer["state"] == "done", answer
        assert answer["text"] == "Hello from the fake engine."
        assert driver.execute_script("return sessionStorage.getItem('hxp-llm-api-key')") == KEY
        assert driver.execute_script("return localStorage.length") == 0
        cookies = driver.get_cookies()
        assert cookies == []

        driver.find_element("id", "forget-key").click()
        assert driver.execute_script("return sessionStorage.getItem('hxp-llm-api-key')") is None
        driver.refresh()
        wait_for(lambda: dialog_open(driver), "the page to ask again once the key is forgotten", WAIT_SECONDS)
