"""`scripts/bench-conversations`: the conversation workload with and without what makes it fast.

Single replica (the default): `hxp-llm serve` on the CPU demo runs twice on this machine, one after the
other, with prefix caching on and off; the same workload (`hxp-llm bench --conversations`: N users x T
turns over one shared system prompt, think time between turns) runs against each, and the figures are
printed side by side: TTFT p50 per turn index, the cached-token ratio, goodput.

`--scale` (needs the images: scripts/build-image --flavour cpu, scripts/build-haproxy-image): the compose
`scale` profile with 2 replicas behind HAProxy, and the workload three ways: with a session header
(HAProxy's session affinity), without one (least connections), and with one replica in the pool (the
reference a perfect affinity would reach). Every run salts the system prompt, so no run finds the
previous run's blocks in a cache.

    scripts/bench-conversations --json .build/conversations.json --plot docs/bench-conversations.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.bench.conversation import (
    ConversationOptions,
    conversation_figures,
    render_conversation_table,
    run_conversations,
    summarize_conversations,
)
from hxp_enterprise_llm.bench.runner import LoadOptions
from hxp_enterprise_llm.bench.stats import Slo
from hxp_tools.servers import ROOT, ServerFailed, hxp_llm_serve, machine_description


def measure(label: str, base_url: str, load: LoadOptions, options: ConversationOptions,
            slos: list[Slo]) -> dict[str, Any]:
    run = asyncio.run(run_conversations(replace(load, base_url=base_url), options))
    summary = summarize_conversations(run, slos)
    print(f"\n--- {label}\n{render_conversation_table(run, summary)}", flush=True)
    return {"label": label, "load_1m_after": round(os.getloadavg()[0], 2), **conversation_figures(run, summary)}


def single_replica(args: argparse.Namespace, load: LoadOptions, options: ConversationOptions,
                   slos: list[Slo]) -> list[dict[str, Any]]:
    figures = []
    for label, flag in (("prefix cache on", "--enable-prefix-caching"),
                        ("prefix cache off", "--no-enable-prefix-caching")):
        # A benchmark measures slow answers rather than cutting them off: on a loaded machine the uncached
        # turns' prefills can take longer than the service's interactive deadlines.
        server = hxp_llm_serve(f"hxp-llm serve ({label})", args.config, args.port, args.port + 1,
                               args.logs / f"{flag.strip('-')}.log", flag, "--connection-timeout-seconds",
                               str(args.timeout), "--queue-timeout-seconds", str(args.timeout))
        with server:
            print(f"### {label}: healthy after {server.wait_healthy(args.start_timeout):.0f} s", flush=True)
            figures.append(measure(label, f"http://127.0.0.1:{args.port}", load, options, slos))
    return figures


def two_replicas(args: argparse.Namespace, load: LoadOptions, options: ConversationOptions,
                 slos: list[Slo]) -> list[dict[str, Any]]:
    from hxp_tools.scale_stack import ScaleStack, set_pool

    figures = []
    with ScaleStack(f"hxp-bench-conv-{os.getpid()}", replicas=2, service_image=args.image, lb_image=args.lb_image,
                    models_root=args.models_root) as stack:
        print(f"### 2 replicas in the pool after {stack.wait_pool(2, args.start_timeout):.0f} s", flush=True)
        runs: list[tuple[str, int, str | None]] = [("2 replicas, session affinity", 2, "X-Session-ID"),
                                                   ("2 replicas, least connections", 2, None),
                                                   ("1 replica", 1, "X-Session-ID")]
        for salt, (label, pool, header) in enumerate(runs, start=1):
            # Keyless requests go to backend replicas, keyed ones to backend sessions: the same servers.
            set_pool(stack, pool, args.start_timeout, backends=("replicas", "sessions"))
            run_options = replace(options, session_header=header, seed=options.seed + salt)
            figures.append(measure(label, stack.api_url, load, run_options, slos))
    return figures


def comparison(figures: list[dict[str, Any]]) -> str:
    """TTFT p50 per turn and the cached ratio of every run; ratios against the first run."""
    turns = [row["turn"] for row in figures[0]["per_turn"]]
    header = f"{'run':<32}" + "".join(f"{'t' + str(t):>8}" for t in turns) + f"{'t2..N':>9}{'cached 2..N':>13}" \
        f"{'failed':>8}{'goodput':>9}"
    lines = ["TTFT p50 (ms) per turn", header, "-" * len(header)]
    for row in figures:
        ttfts = {r["turn"]: r["ttft_p50_ms"] for r in row["per_turn"]}
        later = row["later_turns"]
        lines.append(f"{row['label']:<32}" + "".join(f"{_ms(ttfts.get(t)):>8}" for t in turns)
                     + f"{_ms(later['ttft_p50_ms']):>9}{_pct(later['cached_ratio']):>13}{row['failed']:>8}"
                     f"{row['goodput_rps']:>9.2f}")
    base = figures[0]["later_turns"]["ttft_p50_ms"]
    for row in figures[1:]:
        other = row["later_turns"]["ttft_p50_ms"]
        if base and other:
            lines.append(f"turns 2..N TTFT p50, {figures[0]['label']} / {row['label']}: {base / other:.3f}x")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def write_plot(path: Path, figures: list[dict[str, Any]]) -> None:
    from hxp_enterprise_llm.bench.plot import require_matplotlib

    require_matplotlib()
    import matplotlib.pyplot as plt

    fig, (ttft_axis, cache_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for row in figures:
        turns = [r["turn"] for r in row["per_turn"]]
        ttft_axis.plot(turns, [r["ttft_p50_ms"] for r in row["per_turn"]], marker="o", label=row["label"])
        cache_axis.plot(turns, [100 * (r["cached_ratio"] or 0) for r in row["per_turn"]], marker="o",
                        label=row["label"])
    options = figures[0]["options"]
    ttft_axis.set(title="TTFT p50 by turn", xlabel="turn", ylabel="ms", yscale="log")
    cache_axis.set(title="prompt tokens served from the prefix cache", xlabel="turn", ylabel="%", ylim=(0, 100))
    for axis in (ttft_axis, cache_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"{options['users']} users x {options['turns']} turns, shared system prompt of "
                 f"{figures[0]['system_prompt_tokens']} tokens (shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--system-prompt-tokens", type=int, default=2000)
    parser.add_argument("--think-time", type=float, default=1.0, help="mean seconds between a user's turns")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer at most")
    parser.add_argument("--slo", action="append", type=Slo.parse, default=[], metavar="METRIC:MS",
                        help="per-request objective for goodput (e.g. ttft:2000)")
    parser.add_argument("--config", default="config/demo-cpu.yaml", help="single replica: the served config")
    parser.add_argument("--port", type=int, default=11502, help="single replica: API port (metrics: +1)")
    parser.add_argument("--scale", action="store_true", help="2 replicas behind HAProxy instead (Docker)")
    parser.add_argument("--image", default=os.environ.get("HXP_LLM_CPU_IMAGE", "hxp-enterprise-llm:cpu"))
    parser.add_argument("--lb-image", default=os.environ.get("HXP_LB_IMAGE", "hxp-haproxy:bookworm"))
    parser.add_argument("--models-root", type=Path, default=Path(os.environ.get("HXP_MODELS_DIR", ROOT / "models")))
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--timeout", type=float, default=600, help="per-request timeout in seconds")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "hxp-bench-conversations")
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--plot", type=Path, metavar="FILE.png")
    args = parser.parse_args(argv)

    load = LoadOptions(max_tokens=args.max_tokens, stream=True, temperature=0.0, timeout_s=args.timeout)
    options = ConversationOptions(users=args.users, turns=args.turns, system_prompt_tokens=args.system_prompt_tokens,
                                  think_time_s=args.think_time)
    print(f"machine: {machine_description()}", flush=True)
    runner: Callable[..., list[dict[str, Any]]] = two_replicas if args.scale else single_replica
    try:
        figures = runner(args, load, options, args.slo)
    except ServerFailed as exc:
        print(f"bench-conversations: {exc}", file=sys.stderr)
        return 2
    print(f"\n=== {comparison(figures)}\nmachine after: {machine_description()}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        write_plot(args.plot, figures)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
