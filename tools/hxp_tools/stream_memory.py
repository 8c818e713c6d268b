"""scripts/stream-memory: does the server's memory stay flat over many short streams nobody watches?

    scripts/stream-memory [--streams 20000] [--baseline-after 1000] [--users 8] [--max-tokens 2]
                          [--base-url URL | --scripted]

Sends STREAMS short streaming chats (max_tokens 1-2) from USERS clients and never reads
`/metrics/streaming`, so nothing but the service itself may free what a finished stream left behind.
RSS is read after the first BASELINE streams and at the end: the API process's own (psutil, when
this script started the service; vLLM's engine core is a separate process) and the service's
`openchat_process_resident_memory_bytes` (the API process plus the engine core). PASS when the API
process grew less than --max-growth-percent (5). A benchmark that prints figures, not a timed test.

--scripted serves the app on the unit tests' scripted engine (tests/support) under uvicorn in a thread
of this process instead, and reads this process's RSS: no model, so 20,000 streams take minutes on a
loaded machine rather than hours, and the API side's memory is not hidden beside vLLM's. The scripted
engine lists every request it got (for the tests' assertions); that list is emptied before each reading,
as it is the test double's memory, not the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

import psutil

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec
from hxp_tools.live import MODEL, LiveService, by_status, closed_loop, demo_service, load_average
from hxp_tools.servers import ROOT


@contextlib.contextmanager
def scripted_service() -> Iterator[tuple[LiveService, Callable[[], None]]]:
    """The app on the unit tests' scripted engine, behind a real uvicorn in a thread of this process."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hxp_enterprise_llm.api.app import build_app
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
    from support.fake_engine import FakeEngine
    from support.server_process import app_served_in_thread

    config = OpenChat35Config(prompt_format="chat_template")  # the scripted tokenizer has no OpenChat tokens
    engine = FakeEngine(default_reply="ok")
    app = build_app(config, OpenChat35Service(config, engine=engine), serve_metrics=False)

    def forget_requests() -> None:
        engine.requests.clear()
        engine.aborted.clear()

    with app_served_in_thread(app) as url:
        yield LiveService(url, metrics_url=""), forget_requests


def own_rss_bytes(pid: int | None) -> float:
    """RSS of one process (NaN without a pid: a service this script did not start)."""
    return float("nan") if pid is None else float(psutil.Process(pid).memory_info().rss)


def send_streams(service: LiveService, count: int, args: argparse.Namespace, results: list[RequestResult]) -> None:
    remaining = iter(range(count))

    def spec(user: int, turn: int) -> RequestSpec | None:
        index = next(remaining, None)
        return None if index is None else RequestSpec(MODEL, f"Say one word ({index}).", 1 + index % args.max_tokens,
                                                      temperature=0.8)

    asyncio.run(closed_loop(service.base_url, args.users, spec, results=results))


def run(service: LiveService, pid: int | None, args: argparse.Namespace,
        before_reading: Callable[[], None] = lambda: None) -> bool:
    results: list[RequestResult] = []
    started = time.monotonic()
    step = max(args.baseline_after, (args.streams - args.baseline_after) // 4)
    readings: list[tuple[float, float]] = []  # (API process RSS, with the engine core) at each checkpoint
    sent = 0
    for checkpoint in [args.baseline_after, *range(args.baseline_after + step, args.streams, step), args.streams]:
        send_streams(service, checkpoint - sent, args, results)
        sent = checkpoint
        before_reading()
        readings.append((own_rss_bytes(pid), service.rss_bytes() if service.metrics_url else float("nan")))
        label = "baseline" if len(readings) == 1 else "end" if sent == args.streams else "progress"
        print(f"stream-memory: after {sent:6d} streams ({time.monotonic() - started:5.0f} s): API process RSS "
              f"{readings[-1][0] / 2**20:7.1f} MiB, with the engine core {readings[-1][1] / 2**20:7.1f} MiB "
              f"({label}); {load_average()}", flush=True)
    (base_own, base_total), (end_own, end_total) = readings[0], readings[-1]
    base, end = (base_own, end_own) if pid is not None else (base_total, end_total)
    growth = (end - base) / base * 100
    counts = by_status(results)
    print(f"stream-memory: answers by status {counts}")
    print(f"stream-memory: {'API process' if pid is not None else 'service'} RSS {base / 2**20:.1f} MiB after "
          f"{args.baseline_after} streams, {end / 2**20:.1f} MiB after {args.streams}: {growth:+.2f}% "
          f"(limit {args.max_growth_percent:g}%); with the engine core {base_total / 2**20:.1f} -> "
          f"{end_total / 2**20:.1f} MiB")
    ok = growth < args.max_growth_percent and set(counts) == {"200"}
    print(f"stream-memory: {'PASS' if ok else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/stream-memory", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--baseline-after", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=2, choices=(1, 2))
    parser.add_argument("--max-growth-percent", type=float, default=5.0)
    parser.add_argument("--base-url", help="a running service (its metrics URL via --metrics-url)")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:11403/metrics")
    parser.add_argument("--scripted", action="store_true", help="the app on the scripted engine, in this process")
    args = parser.parse_args(argv)
    print(f"stream-memory: {args.streams} streams of max_tokens <= {args.max_tokens} from {args.users} clients, "
          f"nobody polling /metrics/streaming; {load_average()}", flush=True)
    if args.scripted:
        with scripted_service() as (service, forget_requests):
            return 0 if run(service, os.getpid(), args, forget_requests) else 1
    with demo_service(base_url=args.base_url, metrics_url=args.metrics_url) as service:
        process = service.server.process if service.server else None
        return 0 if run(service, process.pid if process else None, args) else 1


if __name__ == "__main__":
    sys.exit(main())
