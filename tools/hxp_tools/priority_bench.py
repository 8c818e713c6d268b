"""scripts/bench-priority: an interactive key's TTFT under a batch key's flood, with and without priority
(a script that prints figures, not a timed test).

    scripts/bench-priority [--slots 4] [--queue 64] [--flood 16] [--interactive 6] [--rounds 2] [--batch-tokens 32]

One demo service (`--concurrent-users SLOTS`, a keys file with two keys). FLOOD batch clients keep the
slots and the queue full (closed loop, streaming, BATCH_TOKENS tokens each); meanwhile one interactive client
sends INTERACTIVE requests one after another (16 tokens) and its TTFT is measured. Each round runs the
flood twice on the same service: once with the batch key's `priority=batch` ("with priority") and
once with it rewritten to `priority=interactive` ("without": one FIFO queue for both keys); the
keys file is reloaded in place, so both modes share the process, the model and the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from hxp_enterprise_llm.percentiles import percentile
from hxp_tools.live import LiveService, demo_service, load_average, stop_cleanly_on_sigterm

KEYS = "sk-interactive name=web priority=interactive\nsk-batch name=etl priority={batch_priority}\n"


async def stream_ttft(client: httpx.AsyncClient, url: str, key: str, body: dict[str, Any]) -> tuple[int, float | None]:
    """(status, seconds to the first content frame) of one streamed request."""
    started = time.perf_counter()
    async with client.stream("POST", url, json={**body, "stream": True},
                             headers={"Authorization": f"Bearer {key}"}) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, None
        ttft = None
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                ttft = time.perf_counter() - started
        return 200, ttft


def body(text: str, max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0.7,
            "logit_bias": {"0": -100, "2": -100}}  # every answer is max_tokens long


async def one_mode(service: LiveService, flood: int, interactive: int, batch_tokens: int) -> dict[str, Any]:
    url = f"{service.base_url}/v1/chat/completions"
    stop = asyncio.Event()
    batch_statuses: list[int] = []
    limits = httpx.Limits(max_connections=flood + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def batch_user(index: int) -> None:
            while not stop.is_set():
                status, _ = await stream_ttft(client, url, "sk-batch", body(f"Batch job {index}: summarise the sea.",
                                                                               batch_tokens))
                batch_statuses.append(status)
                if status != 200:
                    await asyncio.sleep(0.5)

        flooders = [asyncio.create_task(batch_user(i)) for i in range(flood)]
        await asyncio.sleep(5)  # let the flood fill the slots and the queue
        ttfts = []
        for index in range(interactive):
            status, ttft = await stream_ttft(client, url, "sk-interactive", body(f"Quick question {index}: hi?", 16))
            if status == 200 and ttft is not None:
                ttfts.append(ttft)
        stop.set()
        for flooder in flooders:  # the batch clients hang up: the service aborts their requests
            flooder.cancel()
        await asyncio.gather(*flooders, return_exceptions=True)
    return {"ttfts": ttfts, "batch_ok": batch_statuses.count(200), "batch_refused": len(batch_statuses)
            - batch_statuses.count(200)}


async def run(args: argparse.Namespace, keys: Path, service: LiveService) -> None:
    results: dict[str, dict[str, Any]] = {"with priority": {"ttfts": [], "batch_ok": 0, "batch_refused": 0},
                                          "without priority": {"ttfts": [], "batch_ok": 0, "batch_refused": 0}}
    for round_number in range(args.rounds):
        for mode, batch_priority in (("without priority", "interactive"), ("with priority", "batch")):
            keys.write_text(KEYS.format(batch_priority=batch_priority))
            await asyncio.sleep(2.5)  # the service re-reads a changed keys file within a second
            figures = await one_mode(service, args.flood, args.interactive, args.batch_tokens)
            print(f"round {round_number + 1}, {mode}: interactive TTFT "
                  f"{', '.join(f'{t:.2f}' for t in figures['ttfts'])} s; {load_average()}", flush=True)
            for name in ("batch_ok", "batch_refused"):
                results[mode][name] += figures[name]
            results[mode]["ttfts"] += figures["ttfts"]
    print(f"\ninteractive TTFT under a flood of {args.flood} batch clients, {args.slots} slots, queue {args.queue} "
          "(shared, loaded machine: compare the two rows, not with other runs):")
    for mode, figures in results.items():
        ttfts = figures["ttfts"]
        print(f"  {mode:<17} p50 {percentile(ttfts, 50):6.2f} s  p90 {percentile(ttfts, 90):6.2f} s  "
              f"({len(ttfts)} requests; batch answered {figures['batch_ok']}, refused {figures['batch_refused']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--queue", type=int, default=64)
    parser.add_argument("--flood", type=int, default=16)
    parser.add_argument("--interactive", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=32)
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    keys = Path(tempfile.mkdtemp(prefix="hxp-priority-")) / "keys"
    keys.write_text(KEYS.format(batch_priority="batch"))
    extra = ["--api-keys-file", str(keys), "--concurrent-users", str(args.slots), "--max-queue-size",
             str(args.queue), "--queue-timeout-seconds", "600", "--connection-timeout-seconds", "900"]
    with demo_service(extra) as service:
        asyncio.run(run(args, keys, service))


if __name__ == "__main__":
    main()
