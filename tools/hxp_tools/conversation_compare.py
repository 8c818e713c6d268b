"""`scripts/bench-conversations`: the conversation workload with and without what makes it fast.

Single replica (the default): `hxp-llm serve` on the CPU demo runs twice on this machine, one after the
other, with prefix caching on and off; the same workload (`hxp-llm bench --conversations`: N users x T
turns over one shared system prompt, think time between turns) runs against each, and the figures are
printed side by side: TTFT p50 per turn index, the cached-token ratio, goodput.

`--scale` (needs the images: scripts/build-image --flavour cpu, scripts/build-haproxy-image): the compose
`scale` profile with 2 replicas behind HAProxy, and the workload three ways: with a session header
(HAProxy's session affinity), without one (least connections), and with one replica in the pool (the
reference a perfect affinity would reach). Every run salts the system prompt, so no run finds the
previous run's blocks in a cache. `--scale --rolling-restart` instead runs scripts/rolling-restart on the
2 replicas while the workload runs with the session header, round after round until the restart is done,
and reports every failed request and HAProxy's retry and error counters.

    scripts/bench-conversations --json .build/conversations.json --plot docs/bench-conversations.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hxp_enterprise_llm.bench.conversation import (
    ConversationOptions,
    conversation_figures,
    render_conversation_table,
    run_conversations,
    summarize_conversations,
)
from hxp_enterprise_llm.bench.runner import LoadOptions
from hxp_enterprise_llm.bench.stats import Slo
from hxp_tools.capacity import ms_cell
from hxp_tools.servers import ROOT, ServerFailed, hxp_llm_serve, machine_description

if TYPE_CHECKING:
    from hxp_tools.scale_stack import ScaleStack


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


def long_deadlines(timeout: float) -> dict[str, str]:
    """The replicas' request deadlines for a benchmark, as single_replica passes them on the command line.
    The drain deadline goes with them: with the service's own settings (30 s each) a drain never stops a
    request its own deadline would have let finish, and a rolling restart must keep that true."""
    return {f"OPENCHAT_3_5_{name}_TIMEOUT_SECONDS": f"{timeout:g}" for name in ("CONNECTION", "QUEUE", "DRAIN")}


@contextmanager
def two_replica_stack(args: argparse.Namespace) -> Iterator[ScaleStack]:
    """The scale profile with 2 replicas and the benchmark's long deadlines, both in the pool."""
    from hxp_tools.scale_stack import ScaleStack

    with ScaleStack(f"hxp-bench-conv-{os.getpid()}", replicas=2, service_image=args.image, lb_image=args.lb_image,
                    models_root=args.models_root, replica_env=long_deadlines(args.timeout)) as stack:
        print(f"### 2 replicas in the pool after {stack.wait_pool(2, args.start_timeout):.0f} s", flush=True)
        yield stack


def two_replicas(args: argparse.Namespace, load: LoadOptions, options: ConversationOptions,
                 slos: list[Slo]) -> list[dict[str, Any]]:
    from hxp_tools.scale_stack import set_pool

    figures = []
    with two_replica_stack(args) as stack:
        runs: list[tuple[str, int, str | None]] = [("2 replicas, session affinity", 2, "X-Session-ID"),
                                                   ("2 replicas, least connections", 2, None),
                                                   ("1 replica", 1, "X-Session-ID")]
        for salt, (label, pool, header) in enumerate(runs, start=1):
            # Keyless requests go to backend replicas, keyed ones to backend sessions: the same servers.
            set_pool(stack, pool, args.start_timeout, backends=("replicas", "sessions"))
            run_options = replace(options, session_header=header, seed=options.seed + salt)
            figures.append(measure(label, stack.api_url, load, run_options, slos))
    return figures


def rolling_restart(args: argparse.Namespace, load: LoadOptions, options: ConversationOptions,
                    slos: list[Slo]) -> list[dict[str, Any]]:
    """Conversation rounds with affinity on while scripts/rolling-restart restarts both replicas."""
    figures = []
    with two_replica_stack(args) as stack:
        backends = ("sessions", "replicas")  # keyed turns, and the keyless /tokenize of each round's start
        before = {name: stack.backend_counters(name) for name in backends}
        restart_log = args.logs / "rolling-restart.log"
        restart_log.parent.mkdir(parents=True, exist_ok=True)
        with restart_log.open("w", encoding="utf-8") as log:
            # Started with the first round, so the first replica drains while conversations are running.
            restart = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "rolling-restart"), "-p",
                                        stack.project, "--stats-url", stack.stats_url,
                                        # The replica may drain for as long as long_deadlines allows.
                                        "--grace", f"{args.timeout + 15:g}"], stdout=log,
                                       stderr=subprocess.STDOUT)
            started = time.monotonic()
            salt = 0
            while restart.poll() is None or salt == 0:
                salt += 1
                run_options = replace(options, session_header="X-Session-ID", seed=options.seed + salt)
                figures.append(measure(f"affinity, rolling restart, round {salt}", stack.api_url, load,
                                       run_options, slos))
            code = restart.wait()
        after = {name: stack.backend_counters(name) for name in backends}
        print(f"\n### rolling restart exit {code} after {time.monotonic() - started:.0f} s; "
              f"log {restart_log}:\n{restart_log.read_text(encoding='utf-8')}", flush=True)
        counters = {name: {key: after[name][key] - before[name][key] for key in after[name]} for name in backends}
        print(f"HAProxy backends during the rounds (retries, redispatches, errors, 4xx/5xx sent): {counters}",
              flush=True)
        for row in figures:
            row["rolling_restart"] = {"exit_code": code, "backend_counters": counters}
    return figures


def comparison(figures: list[dict[str, Any]]) -> str:
    """TTFT p50 per turn, the cached ratios (whole prompt, own tokens) of every run; ratios against the first run."""
    turns = [row["turn"] for row in figures[0]["per_turn"]]
    header = f"{'run':<38}" + "".join(f"{'t' + str(t):>8}" for t in turns) + f"{'t2..N':>9}{'cached 2..N':>13}" \
        f"{'own 2..N':>10}{'same replica':>14}{'failed':>8}{'goodput':>9}"
    lines = ["TTFT p50 (ms) per turn", header, "-" * len(header)]
    for row in figures:
        ttfts = {r["turn"]: r["ttft_p50_ms"] for r in row["per_turn"]}
        later = row["later_turns"]
        lines.append(f"{row['label']:<38}" + "".join(f"{ms_cell(ttfts.get(t)):>8}" for t in turns)
                     + f"{ms_cell(later['ttft_p50_ms']):>9}{_pct(later['cached_ratio']):>13}"
                     f"{_pct(later['own_cached_ratio']):>10}{_share(later):>14}{row['failed']:>8}"
                     f"{row['goodput_rps']:>9.2f}")
    base = figures[0]["later_turns"]["ttft_p50_ms"]
    for row in figures[1:]:
        other = row["later_turns"]["ttft_p50_ms"]
        if base and other:
            lines.append(f"turns 2..N TTFT p50, {figures[0]['label']} / {row['label']}: {base / other:.3f}x")
    return "\n".join(lines)


def _share(turns: dict[str, Any]) -> str:
    """Later turns answered by the replica of the user's previous turn, of those whose replicas are known."""
    return f"{turns['same_replica']}/{turns['replica_known']}" if turns["replica_known"] else "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def write_plot(path: Path, figures: list[dict[str, Any]]) -> None:
    from hxp_enterprise_llm.bench.plot import require_matplotlib

    require_matplotlib()
    import matplotlib.pyplot as plt

    fig, (ttft_axis, cache_axis) = plt.subplots(1, 2, figsize=(12, 5.5))
    for row in figures:
        turns = [r["turn"] for r in row["per_turn"]]
        (line,) = ttft_axis.plot(turns, [r["ttft_p50_ms"] for r in row["per_turn"]], marker="o", label=row["label"])
        cache_axis.plot(turns, [100 * (r["cached_ratio"] or 0) for r in row["per_turn"]], marker="o",
                        color=line.get_color(), label=f"{row['label']}: whole prompt")
        cache_axis.plot(turns, [100 * (r["own_cached_ratio"] or 0) for r in row["per_turn"]], marker="s",
                        linestyle="--", color=line.get_color(), label=f"{row['label']}: own tokens")
    options = figures[0]["options"]
    ttft_axis.set(title="TTFT p50 by turn", xlabel="turn", ylabel="ms", yscale="log")
    cache_axis.set(title="prompt tokens served from the prefix cache", xlabel="turn", ylabel="%", ylim=(0, 100))
    ttft_axis.legend(fontsize="small")
    # Below the axes: the own-token lines run through the middle of the panel.
    cache_axis.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    for axis in (ttft_axis, cache_axis):
        axis.grid(alpha=0.3)
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
    parser.add_argument("--rolling-restart", action="store_true",
                        help="with --scale: scripts/rolling-restart while the workload runs with affinity")
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
    if args.rolling_restart and not args.scale:
        parser.error("--rolling-restart needs --scale")
    runner: Callable[..., list[dict[str, Any]]] = (
        (rolling_restart if args.rolling_restart else two_replicas) if args.scale else single_replica)
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
