"""`scripts/bench-scale`: throughput of 1 replica and of 2 replicas behind HAProxy on this machine.

The compose `scale` profile starts with one replica; `hxp-llm bench`'s load runs against HAProxy;
then the stack grows to two replicas and the same load runs again. Both figures go through the
same balancer, so the ratio is what the second replica adds, and nothing else. On a host whose
cores both replicas share, that is mostly contention: read the ratio with the core count and the
load average printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hxp_enterprise_llm.bench.report import render_table
from hxp_enterprise_llm.bench.runner import LoadOptions, run_load
from hxp_enterprise_llm.bench.stats import Summary, summarize, verdict
from hxp_tools.peer_compare import FIGURES, _fmt, _ratio, machine_description
from hxp_tools.scale_stack import ROOT, ScaleStack, StackFailed


@dataclass(frozen=True)
class Scenario:
    name: str
    num_requests: int
    concurrency: int
    max_tokens: int


SCENARIOS = (
    Scenario("1 user, 50 tok, stream", 10, 1, 50),
    Scenario("50 users, 50 tok, stream", 150, 50, 50),
)


@dataclass
class PoolRun:
    replicas: int
    ready_s: float
    summaries: dict[str, Summary] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)  # 1-minute load average after each scenario


def run_scenarios(stack: ScaleStack, run: PoolRun, args: argparse.Namespace) -> None:
    for scenario in SCENARIOS:
        options = LoadOptions(base_url=stack.api_url, num_requests=scenario.num_requests,
                              concurrency=scenario.concurrency, max_tokens=scenario.max_tokens, stream=True,
                              ignore_eos=True, warmup=min(scenario.concurrency, 4), timeout_s=args.timeout)
        load = asyncio.run(run_load(options))
        summary = summarize(load.results, load.duration_s)
        print(f"\n--- {run.replicas} replica(s): {scenario.name}\n"
              f"{render_table(load, summary, verdict(summary, 0.0))}", flush=True)
        run.summaries[scenario.name] = summary
        run.loads.append(os.getloadavg()[0])


def comparison(one: PoolRun, two: PoolRun) -> str:
    header = f"{'scenario':<28}{'figure':<14}{'1 replica':>11}{'2 replicas':>12}{'2/1':>7}  better"
    lines = [header, "-" * len(header)]
    mean_load = [sum(r.loads) / len(r.loads) for r in (one, two)]
    lines.append(f"{'(machine)':<28}{'load avg 1m':<14}{_fmt(mean_load[0]):>11}{_fmt(mean_load[1]):>12}"
                 f"{_ratio(mean_load[1], mean_load[0]):>7}  same")
    for name, first in one.summaries.items():
        second = two.summaries[name]
        label = name
        for figure, getter, better in FIGURES:
            a, b = getter(first), getter(second)
            lines.append(f"{label:<28}{figure:<14}{_fmt(a):>11}{_fmt(b):>12}{_ratio(b, a):>7}  {better}")
            label = ""
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=os.environ.get("HXP_LLM_CPU_IMAGE", "hxp-enterprise-llm:cpu"))
    parser.add_argument("--lb-image", default=os.environ.get("HXP_LB_IMAGE", "hxp-haproxy:bookworm"))
    parser.add_argument("--models-root", type=Path, default=Path(os.environ.get("HXP_MODELS_DIR", ROOT / "models")))
    parser.add_argument("--project", default=f"hxp-bench-scale-{os.getpid()}", help="compose project name")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds for the pool to come up")
    parser.add_argument("--timeout", type=float, default=300, help="per-request timeout in seconds")
    args = parser.parse_args(argv)

    print(f"machine: {machine_description()}", flush=True)
    stack = ScaleStack(args.project, replicas=1, service_image=args.image, lb_image=args.lb_image,
                       models_root=args.models_root)
    try:
        with stack:
            one = PoolRun(1, stack.wait_pool(1, args.start_timeout))
            print(f"### 1 replica in the pool after {one.ready_s:.0f} s", flush=True)
            run_scenarios(stack, one, args)
            stack.scale(2)
            two = PoolRun(2, stack.wait_pool(2, args.start_timeout))
            print(f"### 2 replicas in the pool after {two.ready_s:.0f} s more", flush=True)
            run_scenarios(stack, two, args)
    except StackFailed as exc:
        print(f"bench-scale: {exc}", file=sys.stderr)
        return 2
    print(f"\n=== 1 vs 2 replicas behind HAProxy, same machine ({os.cpu_count()} cores)\n{comparison(one, two)}")
    print(f"machine after: {machine_description()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
