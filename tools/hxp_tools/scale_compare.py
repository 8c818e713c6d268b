"""`scripts/bench-scale`: throughput of 1 replica and of 2 replicas behind HAProxy on this machine.

The compose `scale` profile runs two replicas; `hxp-llm bench`'s load runs against HAProxy with both
in the pool, then with the second one set to maintenance through HAProxy's Runtime API (it stays up,
idle), alternating for a few rounds so that the shared machine's changing load falls on both sides
alike. Both figures go through the same balancer, so the ratio is what the second replica adds. On a
host whose cores both replicas share, that is mostly contention: read the ratio with the core count
and the load average printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hxp_enterprise_llm.bench.report import render_table
from hxp_enterprise_llm.bench.runner import LoadOptions, run_load
from hxp_enterprise_llm.bench.stats import Summary, summarize, verdict
from hxp_tools.peer_compare import FIGURES, _fmt, _ratio, machine_description
from hxp_tools.scale_stack import ROOT, ScaleStack, StackFailed


@dataclass
class PoolRuns:
    replicas: int
    summaries: list[Summary] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # 1-minute load average after each run

    def figure(self, getter: Callable[[Summary], float]) -> float:
        return statistics.fmean(getter(s) for s in self.summaries)


def set_pool(stack: ScaleStack, replicas: int, timeout: float) -> None:
    """Leave the first `replicas` servers in the pool and put the others in maintenance."""
    servers = sorted((row["svname"] for row in stack.servers() if row["addr"] and row["svname"] != "BACKEND"),
                     key=lambda name: int(name.removeprefix("replica")))
    for index, name in enumerate(servers):
        state = "ready" if index < replicas else "maint"
        stack.runtime_api(f"set server replicas/{name} state {state}")
    stack.wait_pool(replicas, timeout)


def run_once(stack: ScaleStack, runs: PoolRuns, args: argparse.Namespace, label: str) -> None:
    options = LoadOptions(base_url=stack.api_url, num_requests=args.num_requests, concurrency=args.concurrency,
                          max_tokens=args.max_tokens, stream=True, ignore_eos=True,
                          warmup=min(args.concurrency, 4), timeout_s=args.timeout)
    load = asyncio.run(run_load(options))
    summary = summarize(load.results, load.duration_s)
    print(f"\n--- {label}\n{render_table(load, summary, verdict(summary, 0.0))}", flush=True)
    runs.summaries.append(summary)
    runs.loads.append(os.getloadavg()[0])


def comparison(one: PoolRuns, two: PoolRuns) -> str:
    header = f"{'figure':<14}{'1 replica':>11}{'2 replicas':>12}{'2/1':>7}  better"
    lines = [header, "-" * len(header)]
    loads = [statistics.fmean(r.loads) for r in (one, two)]
    lines.append(f"{'load avg 1m':<14}{_fmt(loads[0]):>11}{_fmt(loads[1]):>12}{_ratio(loads[1], loads[0]):>7}  same")
    for figure, getter, better in FIGURES:
        a, b = one.figure(getter), two.figure(getter)
        lines.append(f"{figure:<14}{_fmt(a):>11}{_fmt(b):>12}{_ratio(b, a):>7}  {better}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=os.environ.get("HXP_LLM_CPU_IMAGE", "hxp-enterprise-llm:cpu"))
    parser.add_argument("--lb-image", default=os.environ.get("HXP_LB_IMAGE", "hxp-haproxy:bookworm"))
    parser.add_argument("--models-root", type=Path, default=Path(os.environ.get("HXP_MODELS_DIR", ROOT / "models")))
    parser.add_argument("--project", default=f"hxp-bench-scale-{os.getpid()}", help="compose project name")
    parser.add_argument("-c", "--concurrency", type=int, default=50, help="users (requests in flight)")
    parser.add_argument("-n", "--num-requests", type=int, default=150, help="requests per run")
    parser.add_argument("--max-tokens", type=int, default=50, help="tokens per answer (ignore_eos: exactly)")
    parser.add_argument("--rounds", type=int, default=2, help="1-replica and 2-replica runs, alternating")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds for the pool to come up")
    parser.add_argument("--timeout", type=float, default=300, help="per-request timeout in seconds")
    args = parser.parse_args(argv)

    print(f"machine: {machine_description()}", flush=True)
    one, two = PoolRuns(1), PoolRuns(2)
    started = time.monotonic()
    try:
        with ScaleStack(args.project, replicas=2, service_image=args.image, lb_image=args.lb_image,
                        models_root=args.models_root) as stack:
            print(f"### 2 replicas in the pool after {stack.wait_pool(2, args.start_timeout):.0f} s", flush=True)
            for round_number in range(1, args.rounds + 1):
                for runs in (one, two) if round_number % 2 else (two, one):
                    set_pool(stack, runs.replicas, args.start_timeout)
                    run_once(stack, runs, args, f"round {round_number}: {runs.replicas} replica(s) in the pool")
    except StackFailed as exc:
        print(f"bench-scale: {exc}", file=sys.stderr)
        return 2
    print(f"\n=== {args.concurrency} users, {args.max_tokens} tokens, stream: 1 vs 2 replicas behind HAProxy, "
          f"mean of {args.rounds} alternating rounds, {time.monotonic() - started:.0f} s in all\n"
          f"{comparison(one, two)}")
    print(f"machine after: {machine_description()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
