"""Does vLLM's own `priority` scheduling take effect on the CPU engine? (a script, not a test)

    .venv/bin/python -m hxp_tools.vllm_priority_check [--model models/smollm2-135m-instruct]

For each scheduling policy ("fcfs", then "priority"), one AsyncLLM with max_num_seqs=1 (one running
sequence: everything else waits in vLLM's own queue). Six batch requests (priority 1) are sent, then,
once the first runs, one interactive request (priority 0). Printed: the order requests got their first
token, and the interactive request's TTFT. With priority working, the interactive request is served
right after the running one; with fcfs it waits for all batch requests.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any, Literal

Policy = Literal["fcfs", "priority"]


async def one_policy(model: Path, policy: Policy, batch: int, max_tokens: int) -> tuple[list[str], float]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=str(model), enforce_eager=True, dtype="bfloat16", max_num_seqs=1, max_model_len=1024,
        scheduling_policy=policy, kv_cache_memory_bytes=1 << 30))
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0,
                            output_kind=RequestOutputKind.DELTA)
    order: list[str] = []
    started = asyncio.Event()
    first_token: dict[str, float] = {}

    async def run(request_id: str, priority: int) -> None:
        sent = time.monotonic()
        prompt: Any = {"prompt": f"Request {request_id}: tell a long story about the sea."}
        async for _ in llm.generate(prompt, params, request_id, priority=priority if policy == "priority" else 0):
            if request_id not in first_token:
                first_token[request_id] = time.monotonic() - sent
                order.append(request_id)
                started.set()

    try:
        tasks = [asyncio.create_task(run(f"batch-{i}", 1)) for i in range(batch)]
        await started.wait()
        await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(run("interactive", 0)))
        await asyncio.gather(*tasks)
    finally:
        llm.shutdown()
    return order, first_token["interactive"]


async def main_async(model: Path, batch: int, max_tokens: int) -> None:
    for policy in ("fcfs", "priority"):
        order, ttft = await one_policy(model, policy, batch, max_tokens)
        place = order.index("interactive") + 1
        print(f"scheduling_policy={policy}: first tokens in order {order}; interactive request served "
              f"{place}. of {len(order)}, TTFT {ttft * 1000:.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    asyncio.run(main_async(args.model, args.batch, args.max_tokens))


if __name__ == "__main__":
    main()
