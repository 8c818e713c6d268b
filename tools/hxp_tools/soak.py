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
import statistics
import sys

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec
from hxp_tools.live import MODEL, LiveService, by_status, closed_loop, demo_service, load_average

SAMPLE_SECONDS = 10.0
Samples = list[tuple[float, float]]  # (seconds since the start, RSS bytes)


async def soak(service: LiveService, users: int, seconds: float) -> tuple[Samples, list[RequestResult]]:
    samples: Samples = []
    results: list[RequestResult] = []
    clock = asyncio.get_running_loop().time
    started = clock()

    async def sampler() -> None:
        while clock() - started < seconds:
            rss = await asyncio.to_thread(service.rss_bytes)
            samples.append((clock() - started, rss))
            print(f"soak: {samples[-1][0]:5.0f} s  RSS {rss / 2**20:7.1f} MiB  requests {len(results)}", flush=True)
            await asyncio.sleep(SAMPLE_SECONDS)

    def spec(index: int, turn: int) -> RequestSpec:
        return RequestSpec(MODEL, f"User {index}, turn {turn}: tell me a fact.", 48 + (turn % 4) * 16, temperature=0.8)

    await asyncio.gather(sampler(), closed_loop(service.base_url, users, spec, seconds, results=results))
    return samples, results


def growth(samples: Samples, warmup_s: float) -> tuple[float, float, float]:
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
    parser.add_argument("--metrics-url", default="http://127.0.0.1:11403/metrics")
    args = parser.parse_args(argv)
    print(f"soak: {args.users} users, {args.minutes:g} min, warm-up {args.warmup_minutes:g} min; {load_average()}",
          flush=True)
    with demo_service(base_url=args.base_url, metrics_url=args.metrics_url) as service:
        samples, results = asyncio.run(soak(service, args.users, args.minutes * 60))
    base, final, percent = growth(samples, args.warmup_minutes * 60)
    counts = by_status(results)
    print(f"soak: requests by status {counts}")
    print(f"soak: RSS after warm-up {base:.1f} MiB, at the end {final:.1f} MiB: growth {percent:+.2f}% "
          f"(limit {args.max_growth_percent:g}%); {load_average()}")
    # Memory is the verdict. A 503 (queue timeout) or 504 (the request budget, connection_timeout_seconds)
    # is the service's own answer when the machine is too slow for 50 users; any other 5xx or a dropped
    # connection fails the run.
    broken = {k: v for k, v in counts.items() if k == "dropped" or (k.startswith("5") and k not in ("503", "504"))}
    memory_ok = percent < args.max_growth_percent
    print(f"soak: memory {'PASS' if memory_ok else 'FAIL'}; other 5xx or dropped connections: {broken or 'none'}")
    print(f"soak: {'PASS' if memory_ok and not broken else 'FAIL'}")
    return 0 if memory_ok and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
