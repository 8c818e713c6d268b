"""The browser page against the running demo (`hxp-llm serve`, real vLLM engine), in Debian's chromium.

What a person sees: the chat streams an answer that grows on screen frame by frame, Stop ends it and the
server frees the slot, and the dashboard shows tokens per second once there was traffic. Screenshots go to
test-artifacts/web-ui/ (the path is printed at the end of the module).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.browser import chromium_driver, screenshot, wait_for
from support.server_process import ServerProcess

# Upper bounds for a stuck page on a busy 2-core machine, never performance targets.
ANSWER_WITHIN_SECONDS = 180
STATE_WITHIN_SECONDS = 60

# Records, from outside the page, every length the last answer's text had on screen: each DOM change
# of the transcript is a moment a person could see.
OBSERVE_ANSWER = """
window.__seen = [];
const transcript = document.getElementById("transcript");
new MutationObserver(() => {
  const answers = transcript.querySelectorAll(".msg.assistant .content");
  if (answers.length) window.__seen.push(answers[answers.length - 1].textContent);
}).observe(transcript, {childList: true, subtree: true, characterData: true});
"""


def running_on_server(server: ServerProcess) -> tuple[int, float]:
    """(/health's running, openchat_requests_running from the metrics port)."""
    health = httpx.get(f"{server.base_url}/health", timeout=10).json()
    gauge = next(float(line.split()[-1]) for line in httpx.get(server.metrics_url, timeout=10).text.splitlines()
                 if line.startswith("openchat_requests_running{"))
    return int(health["running"]), gauge


def metric_total(server: ServerProcess, name: str) -> float:
    lines = httpx.get(server.metrics_url, timeout=10).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name + "{"))


@pytest.fixture(scope="module")
def page_url(demo_server: ServerProcess) -> str:
    response = httpx.get(f"{demo_server.base_url}/ui/config.json", timeout=10)
    if response.status_code == 404:
        pytest.fail("the web UI is not mounted: build_app must call "
                    "hxp_enterprise_llm.web.mount_web_ui(app, config) (see docs/monitoring.md)")
    assert response.status_code == 200, response.text
    assert response.json()["api_key_required"] is False
    return f"{demo_server.base_url}/ui/"


@pytest.fixture(scope="module")
def browser(page_url: str) -> Iterator[Any]:
    with chromium_driver() as driver:
        driver.get(page_url)
        wait_for(lambda: driver.find_element("id", "state-badge").text == "ready", "state badge 'ready'",
                 STATE_WITHIN_SECONDS)
        yield driver


def set_field(driver: Any, element_id: str, value: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(value)


def open_sampling(driver: Any) -> None:
    driver.execute_script("document.querySelector('details.sampling').open = true")


def last_answer(driver: Any) -> dict[str, Any]:
    result: dict[str, Any] = driver.execute_script("""
        const nodes = document.querySelectorAll('.msg.assistant');
        if (!nodes.length) return null;
        const node = nodes[nodes.length - 1];
        return {state: node.dataset.state, frames: Number(node.dataset.frames),
                text: node.querySelector('.content').textContent, meta: node.querySelector('.meta').textContent};
    """)
    return result


def test_chat_streams_the_answer_frame_by_frame(browser: Any) -> None:
    open_sampling(browser)
    set_field(browser, "temperature", "0")
    # Short: on a shared 2-core host under load an answer must still end within connection_timeout_seconds
    # (30 s; seen: 1.3 tokens/s there). 16 tokens arrive in several frames all the same.
    set_field(browser, "max-tokens", "16")
    browser.execute_script(OBSERVE_ANSWER)
    set_field(browser, "prompt", "Describe a walk through a busy market in a city by the sea.")
    browser.find_element("id", "send").click()

    answer = wait_for(lambda: (a := last_answer(browser)) and a["state"] in ("done", "error") and a,
                      "the answer to finish", ANSWER_WITHIN_SECONDS)
    screenshot(browser, "web-ui", "chat-streamed-answer")
    assert answer["state"] == "done", answer
    final = answer["text"]
    assert final.strip(), answer
    seen = browser.execute_script("return window.__seen")
    growing = [text for index, text in enumerate(seen) if text and (index == 0 or text != seen[index - 1])]
    # Several partial texts were on screen before the whole answer, each a prefix of the final one.
    partial = [text for text in growing if text != final]
    assert len(partial) >= 3, f"answer did not appear progressively: {len(growing)} distinct texts seen"
    assert all(final.startswith(text) for text in partial), "a partial text is not a prefix of the answer"
    assert answer["frames"] >= 3, answer
    meta = answer["meta"]
    assert "TTFT" in meta, meta
    assert "completion tokens" in meta, meta
    assert "finish: " in meta, meta


def test_stop_cancels_the_answer_and_frees_the_slot(browser: Any, demo_server: ServerProcess) -> None:
    disconnects_before = metric_total(demo_server, "openchat_client_disconnects_total")
    open_sampling(browser)
    set_field(browser, "max-tokens", "2000")
    set_field(browser, "prompt", "Tell me about the history of the bicycle in many long paragraphs.")
    browser.find_element("id", "send").click()

    wait_for(lambda: (a := last_answer(browser)) and a["state"] == "streaming" and a["text"],
             "the first text of the long answer", ANSWER_WITHIN_SECONDS)
    running, _ = running_on_server(demo_server)
    assert running >= 1, "the server holds no slot while the page streams"
    browser.find_element("id", "stop").click()

    stopped = wait_for(lambda: (a := last_answer(browser)) and a["state"] == "stopped" and a,
                       "the answer to show 'stopped'", STATE_WITHIN_SECONDS)
    wait_for(lambda: running_on_server(demo_server) == (0, 0.0),
             "/health running and openchat_requests_running back to 0", STATE_WITHIN_SECONDS)
    assert metric_total(demo_server, "openchat_client_disconnects_total") == disconnects_before + 1
    assert "stopped by you" in stopped["meta"], stopped
    assert browser.find_element("id", "send").is_enabled()
    assert not browser.find_element("id", "stop").is_enabled()
    # Nothing more arrives once stopped, and the dashboard's next refresh shows the slot free.
    assert last_answer(browser)["text"] == stopped["text"]
    settings = httpx.get(f"{demo_server.base_url}/ui/config.json", timeout=10).json()
    wait_for(lambda: browser.find_element("id", "dash-load").text.startswith("0 /"),
             "the dashboard to show 0 running", 3 * settings["refresh_seconds"] + STATE_WITHIN_SECONDS)
    screenshot(browser, "web-ui", "chat-stopped")


def test_dashboard_shows_tokens_per_second_after_traffic(browser: Any, demo_server: ServerProcess) -> None:
    streamed = httpx.get(f"{demo_server.base_url}/metrics/streaming", timeout=10).json()
    assert streamed["tokens_per_second"] > 0, streamed  # the chat tests above streamed
    settings = httpx.get(f"{demo_server.base_url}/ui/config.json", timeout=10).json()

    def tokens_per_second() -> float:
        text = browser.find_element("id", "dash-tokens-per-second").text
        return float(text) if text not in ("", "–") else 0.0

    # A refresh happens after each answer and every refresh_seconds; allow a few.
    wait_for(lambda: tokens_per_second() > 0, "a non-zero tokens/s on the dashboard",
             3 * settings["refresh_seconds"] + STATE_WITHIN_SECONDS)
    assert browser.find_element("id", "dash-state").text == "ready"
    assert browser.find_element("id", "dash-ttft").text != "–"
    assert "%" in browser.find_element("id", "dash-slo").text
    assert "updated" in browser.find_element("id", "dash-updated").text
    # Per-key usage: no keys configured, so every request is counted under "anonymous".
    keys_row = browser.find_element("css selector", "#dash-keys tbody tr").text
    assert keys_row.startswith("anonymous"), keys_row
    screenshot(browser, "web-ui", "dashboard-after-traffic")


def test_api_docs_page_renders_without_a_cdn(browser: Any, demo_server: ServerProcess) -> None:
    # Last in this module: it navigates the shared browser away from the chat page. FastAPI's default /docs
    # loaded Swagger UI from cdn.jsdelivr.net (unreachable here, as on an air-gapped host): a blank page.
    browser.get(f"{demo_server.base_url}/docs")
    wait_for(lambda: "/v1/chat/completions" in browser.find_element("css selector", ".swagger-ui").text,
             "Swagger UI listing /v1/chat/completions", STATE_WITHIN_SECONDS)
