"""Schemathesis checks of our own, loaded by `SCHEMATHESIS_HOOKS=hxp_tools.schemathesis_hooks`.

`openai_error_shape`: every 4xx carries `{"error": {"message", "type", "param", "code"}}`, and a
429/503 carries Retry-After (the same rules as the mutation fuzzer, tools/hxp_tools/fuzz.py).
"""

from __future__ import annotations

from typing import Any

import schemathesis

from hxp_tools.fuzz import openai_error_problem


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> None:
    status = response.status_code
    if status < 400 or status >= 500:
        return
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"{status} body is not JSON: {response.content[:200]!r}") from exc
    problem = openai_error_problem(body)
    if problem is not None:
        raise AssertionError(f"{status}: {problem}")
    if status in (429, 503) and "retry-after" not in {k.lower() for k in response.headers}:
        raise AssertionError(f"{status} without Retry-After")


# A generated body that omits max_tokens (or asks for thousands) is valid and would generate to the
# end of the context: minutes per case on a CPU. The answer's length says nothing about the input
# handling under test, so valid lengths are capped; values outside the valid range are sent as generated.
ANSWER_CAP = 16
CONTEXT = 4096


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: Any) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if type(value) is int and ANSWER_CAP < value <= CONTEXT:
            body[key] = ANSWER_CAP
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:  # absent or null
        body["max_tokens"] = ANSWER_CAP
