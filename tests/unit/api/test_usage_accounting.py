"""Token accounting: 1,000 mixed requests (plain, streamed, abandoned, refused) from four keys; the
per-key counters, the rotated usage log and `hxp-llm usage` agree with what the clients were told.

The scripted engine answers each request with a reply of a chosen length, so every figure is known;
a mismatch is any request whose log line or any key whose counter differs from the responses.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from api_harness import RawExchange, Served, chat_body, eventually, sse_chunks

from hxp_enterprise_llm.api.metrics import render_metrics
from hxp_enterprise_llm.cli import main as cli_main
from hxp_enterprise_llm.usage_report import entries, log_files, summarise
from support.fake_engine import FakeEngine
from support.figures import record_figure

pytestmark = pytest.mark.anyio

REQUESTS = 1000
KEYS = "sk-a name=alpha\nsk-b name=beta priority=batch\nsk-c name=gamma tokens_per_minute=100000\n" \
       "sk-l name=limited requests_per_minute=5\n"
KINDS = ("plain", "stream", "abandon", "refused")


async def one_request(served: Served, rng: random.Random, index: int) -> dict[str, Any]:
    """Send one request of a random kind; what the client saw (the expected log line's figures)."""
    kind = KINDS[index % 4]
    key = "sk-l" if kind == "refused" else rng.choice(["sk-a", "sk-b", "sk-c"])
    request_id = f"r{index:04d}"
    headers = {"authorization": f"Bearer {key}", "x-request-id": request_id}
    body = chat_body("q" * rng.randint(1, 40), max_tokens=200)
    reply = rng.randint(1, 30)
    if kind == "abandon":
        if index % 8 == 2:  # every other one leaves before its first token: its prompt was still processed
            reply = 0
        served.engine.enqueue(*("z" * 100), hold_after=reply)
        reached_engine = len(served.engine.requests) + 1
        exchange = RawExchange(served.app, body | {"stream": True}, request_id=request_id, headers=headers).start()
        await eventually(lambda: len(served.engine.requests) == reached_engine, "the engine has the request")
        await eventually(lambda: exchange.body.count(b'"content":"z') == reply, "tokens streamed")
        exchange.hang_up.set()
        await exchange.finished()
        prompt = len(served.engine.requests[-1].prompt_token_ids)
        return {"id": request_id, "key": key, "outcome": "disconnected", "prompt": prompt, "completion": reply}
    if kind != "refused":  # the limited key's few admitted requests get the engine's default reply
        served.engine.enqueue(*("y" * reply))
    if kind == "stream":
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = await served.client.post("/v1/chat/completions", json=body, headers=headers)
    if response.status_code == 429:
        return {"id": request_id, "key": key, "outcome": "limited", "prompt": 0, "completion": 0}
    assert response.status_code == 200, response.text
    usage = sse_chunks(response.text)[-1]["usage"] if kind == "stream" else response.json()["usage"]
    return {"id": request_id, "key": key, "outcome": "ok", "prompt": usage["prompt_tokens"],
            "completion": usage["completion_tokens"]}


async def test_counters_and_the_usage_log_agree_with_the_responses_for_1000_mixed_requests(
        serve_app, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    log = tmp_path / "usage" / "usage.jsonl"
    rng = random.Random(21)
    async with serve_app(FakeEngine(), api_keys_file=keys, usage_log_file=log, usage_log_max_bytes=100_000,
                         usage_log_backups=20, response_chunk_size=1) as served:
        seen = [await one_request(served, rng, i) for i in range(REQUESTS)]
        await eventually(lambda: served.ctx.orchestrator.running == 0, "every request closed")
        metrics = render_metrics(served.ctx.metrics.registry).decode()
    names = {"sk-a": "alpha", "sk-b": "beta", "sk-c": "gamma", "sk-l": "limited"}

    files = log_files(log)
    lines = {entry["request_id"]: entry for entry in entries(files)}
    mismatches = [s["id"] for s in seen if _logged(lines.get(s["id"])) != (names[s["key"]], s["outcome"],
                                                                            s["prompt"], s["completion"])]

    expected: dict[str, Counter[str]] = defaultdict(Counter)
    for s in seen:
        totals = expected[names[s["key"]]]
        totals["prompt"] += s["prompt"]
        totals["completion"] += s["completion"]
        totals[s["outcome"]] += 1
    for name, totals in expected.items():
        counted = {"prompt": _sample(metrics, "openchat_key_prompt_tokens_total", name),
                   "completion": _sample(metrics, "openchat_key_completion_tokens_total", name)}
        counted |= {o: _sample(metrics, "openchat_key_requests_total", name, f'outcome="{o}"')
                    for o in ("ok", "disconnected", "limited")}
        mismatches += [f"{name}.{field}" for field, value in counted.items() if value != totals[field]]

    summary = summarise(entries(files))
    for (_, name), usage in summary.items():
        if (usage.prompt_tokens, usage.completion_tokens) != (expected[name]["prompt"], expected[name]["completion"]):
            mismatches.append(f"usage report {name}")

    kinds = Counter(s["outcome"] for s in seen)
    record_figure(f"usage accounting: {REQUESTS} requests ({dict(kinds)}), {len(files)} usage log files, "
                  f"{len(mismatches)} mismatches")
    assert len(lines) == REQUESTS
    assert len(files) > 1  # the log rotated on the way
    assert kinds["limited"] > 200
    assert kinds["disconnected"] == REQUESTS // 4
    assert mismatches == []

    capsys.readouterr()
    assert cli_main(["usage", str(log), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {row["key"]: row["completion_tokens"] for row in printed} == \
        {name: totals["completion"] for name, totals in expected.items()}


def _logged(entry: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if entry is None else (entry["key"], entry["outcome"], entry["prompt_tokens"],
                                       entry["completion_tokens"])


def _sample(metrics: str, name: str, key: str, extra: str = "") -> int:
    labels = [f'key="{key}"', 'model="openchat-3.5"', *([extra] if extra else [])]
    wanted = f"{name}{{{','.join(sorted(labels))}}} "
    for line in metrics.splitlines():
        if line.startswith(wanted):
            return int(float(line.split()[-1]))
    return 0


def test_usage_reads_the_configured_log_and_says_when_there_is_none(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("monitoring:\n  usage_log_file: " + str(tmp_path / "u.jsonl") + "\n")
    assert cli_main(["usage", "--config", str(config)]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "u.jsonl").write_text('{"ts": "2026-12-03T07:00:00.000Z", "key": "web", "outcome": "ok", '
                                      '"prompt_tokens": 3, "completion_tokens": 4, "charged_tokens": 7}\n')
    (tmp_path / "u.jsonl.1").write_text('{"ts": "2026-12-02T23:59:59.000Z", "key": "web", "outcome": "limited"}\n')
    assert cli_main(["usage", "--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["day", "key", "requests", "ok"]
    assert table[1].split() == ["2026-12-02", "web", "1", "0", "1", "0", "0", "0", "0"]
    assert table[2].split() == ["2026-12-03", "web", "1", "1", "0", "3", "0", "4", "7"]
    assert cli_main(["usage"]) == 2  # no file, and the default config has no usage_log_file
    assert "no usage_log_file" in capsys.readouterr().err


def test_usage_skips_damaged_lines_naming_them_and_refuses_an_unreadable_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "u.jsonl"
    good = b'{"ts": "2026-12-03T07:00:00.000Z", "key": "web", "outcome": "ok", "charged_tokens": 7}\n'
    log.write_bytes(good + b'[1, 2]\n' + b'\xff\xfe not UTF-8\n' + b'{"key": "web", "prompt_tokens": "abc"}\n' + good)
    assert cli_main(["usage", str(log), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [{"day": "2026-12-03", "key": "web", "requests": 2, "ok": 2, "refused": 0,
                                         "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0,
                                         "charged_tokens": 14}]
    assert [line.split(": ")[1] for line in captured.err.splitlines()] == [f"{log}:{n}" for n in (2, 3, 4)]
    assert cli_main(["usage", str(tmp_path)]) == 2  # a directory
    assert "cannot read" in capsys.readouterr().err
