"""scripts/overload: five times the service's capacity, then figures (a script, not a timed test).

    scripts/overload [--users 8] [--queue 8] [--factor 5] [--seconds 60]

Starts the demo service with `--concurrent-users USERS --max-queue-size QUEUE` (capacity = both),
measures admitted latency with exactly USERS clients (the baseline), then runs FACTOR x capacity
clients in a closed loop for SECONDS: each sends a streaming request and, when refused, waits
Retry-After (capped at 1 s, to keep the pressure on) and tries again. Prints: answers by status,
whether every refusal carried Retry-After and came before any stream byte, 5xx other than the
503 queue timeout, dropped connections, admitted TTFT/e2e against the baseline, RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec
from hxp_enterprise_llm.bench.stats import Distribution
from hxp_tools.live import MODEL, LiveService, by_status, closed_loop, demo_service, load_average


def run(service: LiveService, clients: int, seconds: float, max_tokens: int) -> list[RequestResult]:
    # logit_bias bans the end tokens: every admitted answer is max_tokens long. A new connection per request:
    # on a shared keep-alive pool httpx may send on a connection uvicorn is closing after its 5 s idle
    # timeout, a client-side ReadError that says nothing about the service.
    def spec(index: int, turn: int) -> RequestSpec:
        return RequestSpec(MODEL, f"Client {index}: describe the sea in one paragraph.", max_tokens,
                           temperature=0.7, extra_body={"logit_bias": {"0": -100, "2": -100}})

    return asyncio.run(closed_loop(service.base_url, clients, spec, seconds, keepalive=False, backoff=True))


def summarize(label: str, results: list[RequestResult]) -> dict[str, Distribution]:
    """TTFT and e2e (ms) of the admitted and completed requests, printed with the answers cut by an error frame."""
    admitted = [r for r in results if r.status == 200 and r.ok]
    cut = collections.Counter(r.error for r in results if r.status == 200 and not r.ok)
    figures = {"ttft": Distribution.of_seconds([r.ttft for r in admitted if r.ttft is not None]),
               "e2e": Distribution.of_seconds([r.e2e for r in admitted])}
    print(f"{label}: {len(results)} requests, {len(admitted)} admitted and completed, {sum(cut.values())} admitted "
          f"then ended by an error frame {dict(cut)}; " + "; ".join(
              f"{name} p50 {d.median:.0f} ms p95 {d.p95:.0f} ms" for name, d in figures.items()), flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/overload", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=8, help="concurrent_users (running slots)")
    parser.add_argument("--queue", type=int, default=8, help="max_queue_size")
    parser.add_argument("--factor", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    capacity = args.users + args.queue
    clients = int(capacity * args.factor)
    print(f"overload: capacity {capacity} ({args.users} running + {args.queue} queued), {clients} clients, "
          f"{args.seconds:.0f} s; {load_average()}", flush=True)
    with demo_service(["--concurrent-users", str(args.users), "--max-queue-size", str(args.queue)]) as service:
        rss_before = service.rss_bytes()
        baseline = summarize("baseline (clients = concurrent_users)",
                             run(service, args.users, min(args.seconds, 30), args.max_tokens))
        results = run(service, clients, args.seconds, args.max_tokens)
        rss_after = service.rss_bytes()
        gauges = {name: service.metric(name) for name in ("openchat_requests_running", "openchat_requests_waiting")}
    refusals = [r for r in results if r.status in (429, 503)]
    other_5xx = [r for r in results if r.status is not None and r.status >= 500 and r.status != 503]
    dropped = [r for r in results if r.status is None]
    loaded = summarize(f"overload ({args.factor:g}x capacity)", results)
    print(f"overload: answers by status {by_status(results)}")
    print(f"overload: refusals {len(refusals)}, with Retry-After {sum(1 for r in refusals if r.retry_after)}, "
          f"as a stream instead of before it {sum(1 for r in refusals if r.refused_as_stream)}")
    print(f"overload: 5xx other than 503 {len(other_5xx)}, dropped connections {len(dropped)}"
          + (f" (e.g. {dropped[0].error})" if dropped else ""))
    ratios = {name: loaded[name].median / baseline[name].median if baseline[name].median else float("nan")
              for name in ("e2e", "ttft")}
    print(f"overload: admitted e2e p50 {ratios['e2e']:.2f}x the baseline; TTFT p50 {ratios['ttft']:.2f}x")
    print(f"overload: RSS {rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB after "
          f"({(rss_after - rss_before) / rss_before * 100:+.1f}%); gauges after: {gauges}; {load_average()}")
    ok = (not other_5xx and not dropped and loaded["e2e"].count > 0 and all(r.retry_after for r in refusals)
          and not any(r.refused_as_stream for r in refusals))
    print(f"overload: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
