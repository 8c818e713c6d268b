"""Closing a generation whose pending read finished while the reader was away (sending a flush frame, say):
the read's tokens were generated, and they may be the model's last."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hxp_enterprise_llm.orchestration.generation import Generation
from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.schemas.outcomes import FinishReason
from hxp_enterprise_llm.services.core.engine import TokenDelta

pytestmark = pytest.mark.anyio


async def test_a_read_that_finished_while_the_reader_was_away_is_counted_and_not_aborted() -> None:
    release, yielding = asyncio.Event(), asyncio.Event()

    async def deltas() -> AsyncIterator[TokenDelta]:
        yield TokenDelta("Hi", (1,), prompt_tokens=3, completion_tokens=1)
        await release.wait()
        yielding.set()
        yield TokenDelta("!", (2,), prompt_tokens=3, completion_tokens=2, finish_reason=FinishReason.STOP)

    aborted: list[str] = []

    async def abort() -> None:
        aborted.append("abort")

    record = RequestRecord(request_id="r", route="chat")
    live: set[Generation] = set()
    generation = Generation(deltas(), record, deadline=asyncio.get_running_loop().time() + 60, timeout_seconds=60,
                            abort=abort, on_engine_dead=lambda _: None, live=live)
    first = await generation.next()
    assert first is not None
    assert first.text == "Hi"
    assert await generation.next(wait=0) is None  # the last delta not there yet: its read stays pending
    release.set()
    await yielding.wait()  # the pending read has its delta now; nobody has taken it
    await generation.aclose()  # the client left, say

    assert (record.completion_tokens, record.finish_reason, aborted) == (2, FinishReason.STOP, [])
    assert live == set()
