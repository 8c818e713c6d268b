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
import contextlib
import tempfile
from pathlib import Path

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec
from hxp_enterprise_llm.percentiles import percentile
from hxp_tools.live import MODEL, LiveService, closed_loop, demo_service, load_average

KEYS = "sk-interactive name=web priority=interactive\nsk-batch name=etl priority={batch_priority}\n"


def spec(key: str, text: str, max_tokens: int) -> RequestSpec:
    return RequestSpec(MODEL, text, max_tokens, temperature=0.7, headers={"Authorization": f"Bearer {key}"},
                       extra_body={"logit_bias": {"0": -100, "2": -100}})  # every answer is max_tokens long


async def one_mode(service: LiveService, args: argparse.Namespace) -> tuple[list[float], list[RequestResult]]:
    """(the interactive TTFTs, the batch answers) of one flood."""
    batch: list[RequestResult] = []
    flood = asyncio.create_task(closed_loop(
        service.base_url, args.flood, lambda i, turn: spec("sk-batch", f"Batch job {i}: summarise the sea.",
                                                           args.batch_tokens), results=batch, keepalive=False,
        backoff=True))
    await asyncio.sleep(5)  # let the flood fill the slots and the queue
    interactive = await closed_loop(service.base_url, 1, lambda i, turn: spec(
        "sk-interactive", f"Quick question {turn}: hi?", 16) if turn < args.interactive else None)
    ttfts = [r.ttft for r in interactive if r.ok and r.ttft is not None]
    flood.cancel()  # the batch clients hang up: the service aborts their requests
    with contextlib.suppress(asyncio.CancelledError):
        await flood
    return ttfts, batch


async def run(args: argparse.Namespace, keys: Path, service: LiveService) -> None:
    results: dict[str, tuple[list[float], list[RequestResult]]] = {"with priority": ([], []),
                                                                   "without priority": ([], [])}
    for round_number in range(args.rounds):
        for mode, batch_priority in (("without priority", "interactive"), ("with priority", "batch")):
            keys.write_text(KEYS.format(batch_priority=batch_priority))
            await asyncio.sleep(2.5)  # the service re-reads a changed keys file within a second
            ttfts, batch = await one_mode(service, args)
            print(f"round {round_number + 1}, {mode}: interactive TTFT "
                  f"{', '.join(f'{t:.2f}' for t in ttfts)} s; {load_average()}", flush=True)
            results[mode][0].extend(ttfts)
            results[mode][1].extend(batch)
    print(f"\ninteractive TTFT under a flood of {args.flood} batch clients, {args.slots} slots, queue {args.queue} "
          "(shared, loaded machine: compare the two rows, not with other runs):")
    for mode, (ttfts, batch) in results.items():
        answered = sum(1 for r in batch if r.status == 200)
        print(f"  {mode:<17} p50 {percentile(ttfts, 50):6.2f} s  p90 {percentile(ttfts, 90):6.2f} s  "
              f"({len(ttfts)} requests; batch answered {answered}, refused {len(batch) - answered})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--queue", type=int, default=64)
    parser.add_argument("--flood", type=int, default=16)
    parser.add_argument("--interactive", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=32)
    args = parser.parse_args()
    keys = Path(tempfile.mkdtemp(prefix="hxp-priority-")) / "keys"
    keys.write_text(KEYS.format(batch_priority="batch"))
    extra = ["--api-keys-file", str(keys), "--concurrent-users", str(args.slots), "--max-queue-size",
             str(args.queue), "--queue-timeout-seconds", "600", "--connection-timeout-seconds", "900"]
    with demo_service(extra) as service:
        asyncio.run(run(args, keys, service))


if __name__ == "__main__":
    main()
