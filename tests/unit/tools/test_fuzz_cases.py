"""scripts/fuzz's own cases (what schemathesis cannot generate) and its verdict on one answer."""

from __future__ import annotations

import collections
import random

import httpx

from hxp_tools.fuzz import generate, judge

ERROR = b'{"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}}'


def test_cases_are_only_what_a_schema_cannot_describe_and_replay_from_the_seed() -> None:
    rng = random.Random(7)
    kinds = collections.Counter(generate(rng).kind for _ in range(400))
    assert set(kinds) == {"raw", "seeded", "slow", "vanishing"}
    first, second = random.Random(11), random.Random(11)
    assert [generate(first).body for _ in range(20)] == [generate(second).body for _ in range(20)]


def test_judge_accepts_openai_errors_and_flags_the_rest() -> None:
    plain = httpx.Headers({"content-type": "application/json"})
    assert judge(400, plain, ERROR, []) is None
    assert judge(500, plain, ERROR, []) is not None
    assert "not an OpenAI error" in (judge(422, plain, b'{"detail": []}', []) or "")
    assert "Retry-After" in (judge(429, plain, ERROR, []) or "")
    assert judge(200, plain, b"", [b'{"choices": []}', b"[DONE]"]) is None
    assert "[DONE]" in (judge(200, plain, b"", [b'{"choices": []}']) or "")
