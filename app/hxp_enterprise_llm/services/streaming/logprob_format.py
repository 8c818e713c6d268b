"""Token log probabilities in OpenAI's two shapes: chat (`logprobs.content[]`) and legacy completions (parallel lists).

Reads anything shaped like the engine's `TokenLogprob` (token, logprob, top: ((token, logprob), ...)),
so the streaming layer does not depend on the engine's module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from hxp_enterprise_llm.schemas.openai import ChoiceLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob


class LogprobLike(Protocol):
    @property
    def token(self) -> str: ...
    @property
    def logprob(self) -> float: ...
    @property
    def top(self) -> Sequence[tuple[str, float]]: ...


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: Sequence[LogprobLike], top: int) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[
        TokenLogprob(token=e.token, logprob=e.logprob, bytes=_bytes(e.token),
                     top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=_bytes(t)) for t, lp in e.top[:top]])
        for e in entries])


def completion_logprobs(entries: Sequence[LogprobLike | None], top: int, text_offset: int,
                        none_token: str = "") -> CompletionLogprobs:
    """Legacy lists; a `None` entry (the prompt's first token, which nothing precedes) has no logprob,
    and `none_token` is its text."""
    result = CompletionLogprobs()
    offset = text_offset
    for entry in entries:
        token = entry.token if entry is not None else none_token
        result.tokens.append(token)
        result.token_logprobs.append(entry.logprob if entry is not None else None)
        result.top_logprobs.append(_top_dict(entry, top) if entry is not None else None)
        result.text_offset.append(offset)
        offset += len(token)
    return result


def _top_dict(entry: Any, top: int) -> dict[str, float]:
    # A dict cannot hold one token twice; the best logprob of a repeated token string is kept.
    found: dict[str, float] = {}
    for token, logprob in entry.top[:top]:
        found.setdefault(token, logprob)
    return found
