"""`hxp-llm bench --conversations` against the real app on the scripted engine, served by uvicorn.

The scripted engine's prefix cache reuses whole blocks as vLLM's does, so the figures the bench reads
from each answer's usage are the service's own: every later turn finds its earlier turns cached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hxp_enterprise_llm.api.app import build_app
from hxp_enterprise_llm.bench.cli import main as bench_main
from hxp_enterprise_llm.bench.conversation import shared_system_prompt
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from support.fake_engine import FakeEngine
from support.server_process import app_served_in_thread


@pytest.fixture
def served() -> Iterator[tuple[str, FakeEngine]]:
    config = OpenChat35Config(prompt_format="chat_template", max_model_len=8192)
    engine = FakeEngine()
    with app_served_in_thread(build_app(config, OpenChat35Service(config, engine=engine), serve_metrics=False)) as url:
        yield url, engine


def test_each_turn_resends_the_history_and_reports_cached_tokens(served: tuple[str, FakeEngine],
                                                                 tmp_path: Path) -> None:
    url, engine = served
    out = tmp_path / "conversations.json"
    code = bench_main(["--base-url", url, "--conversations", "3", "--turns", "4", "--think-time", "0",
                       "--system-prompt-tokens", "600", "--max-tokens", "8", "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert [row["turn"] for row in figures["per_turn"]] == [1, 2, 3, 4]
    assert figures["requests"] == 12
    assert figures["failed"] == 0
    # /tokenize sized the shared prompt (one token per character with the scripted tokenizer).
    assert abs(figures["system_prompt_tokens"] - 600) < 60 + len(shared_system_prompt(1))
    for row in figures["per_turn"]:
        assert row["usage_with_cached"] == 3  # every answer's usage carried cached_tokens
    later = figures["later_turns"]
    assert later["cached_ratio"] > 0.8  # the system prompt and earlier turns, all but a block's remainder
    # The engine saw each user's turns as growing histories: turn k's prompt extends turn k-1's.
    by_user: dict[str, list[list[int]]] = {}
    for request in engine.requests:
        text = engine.get_tokenizer().decode(request.prompt_token_ids)
        by_user.setdefault(text.split("(customer ", 1)[1][0], []).append(list(request.prompt_token_ids))
    assert sorted(len(prompts) for prompts in by_user.values()) == [4, 4, 4]
    for prompts in by_user.values():
        for earlier, later_prompt in zip(prompts, prompts[1:], strict=False):
            assert len(later_prompt) > len(earlier)
            assert later_prompt[:len(earlier)] == earlier
