"""scripts/soak: USERS streaming clients for MINUTES, RSS sampled every 10 s (a script, not a timed test).

    scripts/soak [--users 50] [--minutes 10] [--warmup-minutes 2] [--base-url URL]

RSS is the service's own openchat_process_resident_memory_bytes (the server process plus vLLM's
engine core). Growth = (mean of the last minute) / (mean of the first minute after warm-up) - 1;
PASS when it is under --max-growth-percent (5) and no answer was a 5xx other than the service's own
503/504 (queue or request deadline, reported) and no connection dropped. Without --base-url the demo
service is started on free loopback ports. Prints every sample, the request counts and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time

import httpx

from hxp_enterprise_llm.bench.client import RequestSpec, send_chat_request
from hxp_tools.live import MODEL, LiveService, demo_service, load_average, stop_cleanly_on_sigterm

SAMPLE_SECONDS = 10.0


Samples = list[tuple[float, float]]  # (seconds since the start, RSS bytes)


async def soak(service: LiveService, users: int, seconds: float) -> tuple[Samples, collections.Counter[str]]:
    samples: list[tuple[float, float]] = []
    counts: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    deadline = started + seconds
    limits = httpx.Limits(max_connections=users + 4, max_keepalive_connections=users + 4)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=300, limits=limits) as client:

        async def user(index: int) -> None:
            turn = 0
            while time.monotonic() < deadline:
                spec = RequestSpec(MODEL, f"User {index}, turn {turn}: tell me a fact.", 48 + (turn % 4) * 16,
                                   temperature=0.8)
                result = await send_chat_request(client, spec)
                counts[str(result.status) if result.status is not None else "dropped"] += 1
                turn += 1

        async def sampler() -> None:
            while time.monotonic() < deadline:
                rss = await asyncio.to_thread(service.rss_bytes)
                elapsed = time.monotonic() - started
                samples.append((elapsed, rss))
                print(f"soak: {elapsed:5.0f} s  RSS {rss / 2**20:7.1f} MiB  requests {sum(counts.values())}",
                      flush=True)
                await asyncio.sleep(SAMPLE_SECONDS)

        await asyncio.gather(sampler(), *(user(i) for i in range(users)))
    return samples, counts


def growth(samples: list[tuple[float, float]], warmup_s: float) -> tuple[float, float, float]:
    """(baseline MiB, final MiB, growth %) after warm-up: first minute vs last minute."""
    after = [(t, rss) for t, rss in samples if t >= warmup_s]
    if len(after) < 2:
        raise SystemExit("soak: too few samples after warm-up; run longer")
    first = [rss for t, rss in after if t < after[0][0] + 60]
    last = [rss for t, rss in after if t > after[-1][0] - 60]
    base, final = statistics.mean(first), statistics.mean(last)
    return base / 2**20, final / 2**20, (final - base) / base * 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--max-growth-percent", type=float, default=5.0)
    parser.add_argument("--base-url", help="a running service (its metrics URL via --metrics-url)")
    parser.add_argument("--metrics-url")
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    print(f"soak: {args.users} users, {args.minutes:g} min, warm-up {args.warmup_minutes:g} min; {load_average()}",
          flush=True)
    seconds = args.minutes * 60
    if args.base_url:
        service = LiveService(args.base_url.rstrip("/"), args.metrics_url or "http://127.0.0.1:11403/metrics")
        samples, counts = asyncio.run(soak(service, args.users, seconds))
    else:
        with demo_service() as service:
            samples, counts = asyncio.run(soak(service, args.users, seconds))
    base, final, percent = growth(samples, args.warmup_minutes * 60)
    print(f"soak: requests by status {dict(sorted(counts.items()))}")
    print(f"soak: RSS after warm-up {base:.1f} MiB, at the end {final:.1f} MiB: growth {percent:+.2f}% "
          f"(limit {args.max_growth_percent:g}%)")
    print(f"soak: {load_average()}")
    # Memory is the verdict. A 503 (queue timeout) or 504 (the request budget, connection_timeout_seconds)
    # is the service's own answer when the machine is too slow for 50 users; any other 5xx or a dropped
    # connection fails the run.
    broken = {k: v for k, v in counts.items() if k == "dropped" or (k.startswith("5") and k not in ("503", "504"))}
    memory_ok = percent < args.max_growth_percent
    print(f"soak: memory {'PASS' if memory_ok else 'FAIL'}; other 5xx or dropped connections: {broken or 'none'}")
    ok = memory_ok and not broken
    print(f"soak: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
