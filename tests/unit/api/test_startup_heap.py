"""Once the model is loaded, what the start left on the heap is out of the garbage collector's reach.

In the real service that is vLLM's, torch's and the tokenizer's 600,000-odd objects: before, every full
collection walked them all, and under load (50 requests a second of short answers, 2 cores) one came every
10-11 s and stopped the event loop for 0.35-0.6 s; with the heap frozen they took 5-13 ms (docs/benchmark.md).
"""

from __future__ import annotations

import gc

import pytest
from api_harness import eventually

from hxp_enterprise_llm.orchestration.service_state import ServiceState
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio


def reachable_by_the_collector(obj: object) -> bool:
    return any(tracked is obj for tracked in gc.get_objects())


async def test_the_heap_left_by_the_start_is_frozen_once_the_model_is_ready(serve_app) -> None:
    gc.unfreeze()  # an earlier test's service froze this process's heap
    made_at_start = [["an object of the start, alive as long as the process"]]
    engine = FakeEngine(start_delay=0.2)
    async with serve_app(engine, wait_ready=False) as served:
        assert served.ctx.health.state is not ServiceState.READY
        while_loading = reachable_by_the_collector(made_at_start)
        await eventually(lambda: served.ctx.health.state is ServiceState.READY, "service ready")
        once_ready = reachable_by_the_collector(made_at_start)
        frozen = gc.get_freeze_count()
    assert while_loading is True  # nothing is frozen before the model is ready: its load still makes garbage
    assert once_ready is False
    assert frozen > 0
