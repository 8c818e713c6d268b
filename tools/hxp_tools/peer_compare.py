"""`scripts/bench`: our service and the stock `vllm serve`, one after the other, under the same scenarios.

Two cores cannot host both servers fairly, so each runs alone: start, wait for /health, run every
scenario, stop; then the next. The comparison table gives ours / peer for each figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.bench.report import render_table, report_document
from hxp_enterprise_llm.bench.runner import LoadOptions
from hxp_enterprise_llm.bench.stats import Summary, summarize, verdict
from hxp_tools.servers import ManagedServer, ServerFailed

ROOT = Path(__file__).resolve().parents[2]  # tools/hxp_tools/peer_compare.py -> the checkout


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    num_requests: int
    concurrency: int
    max_tokens: int
    stream: bool


SCENARIOS = (
    Scenario("single-stream", "1 user, 50 tok, stream", 10, 1, 50, True),
    Scenario("20-users", "20 users, 30 tok", 60, 20, 30, False),
    Scenario("50-users-stream", "50 users, 50 tok, stream", 100, 50, 50, True),
    # The seed's checks: a sequential loop of 20 requests of 30 tokens, and 10 requests at once.
    Scenario("latency-loop", "latency loop 20 x 30 tok", 20, 1, 30, False),
    Scenario("10-way", "10-way concurrency, 30 tok", 10, 10, 30, False),
)

# (label, getter, which way is better); "same" rows show both servers did the same work.
FIGURES: tuple[tuple[str, Any, str], ...] = (
    ("out tokens", lambda s: float(s.output_tokens), "same"),
    ("req/s", lambda s: s.request_throughput, "higher"),
    ("out tok/s", lambda s: s.output_throughput, "higher"),
    ("E2E p50 ms", lambda s: s.e2el.median, "lower"),
    ("E2E p95 ms", lambda s: s.e2el.p95, "lower"),
    ("TTFT p50 ms", lambda s: s.ttft.median, "lower"),
    ("TTFT p95 ms", lambda s: s.ttft.p95, "lower"),
    ("TPOT mean ms", lambda s: s.tpot.mean, "lower"),
    ("ITL p50 ms", lambda s: s.itl.median, "lower"),
    ("errors", lambda s: float(s.failed), "lower"),
)


@dataclass
class ServerRun:
    name: str
    ready_s: float
    summaries: dict[str, Summary]
    documents: dict[str, dict[str, Any]]
    # 1-minute load average after each scenario: on a shared machine, other work skews the figures.
    loads: list[float] = field(default_factory=list)

    @property
    def mean_load(self) -> float:
        return sum(self.loads) / len(self.loads) if self.loads else math.nan


def engine_settings(config_file: Path, model_dir: Path | None) -> dict[str, Any]:
    """The demo config's engine settings, so the peer runs the same engine as our service."""
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

    config = OpenChat35Config.load(config_file).config
    model_path = model_dir or config.model_path
    return {
        "model_path": model_path if model_path.is_absolute() else ROOT / model_path,
        "served_model_name": config.served_model_name,
        "dtype": config.dtype,
        "enforce_eager": config.enforce_eager,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "enable_chunked_prefill": config.enable_chunked_prefill,
        "kv_cache_space_gb": config.kv_cache_space_gb,
    }


def our_server(args: argparse.Namespace, logs: Path) -> ManagedServer:
    argv = [str(ROOT / ".venv/bin/hxp-llm"), "serve", "--config", str(args.config),
            "--host", "127.0.0.1", "--port", str(args.port), "--metrics-port", str(args.metrics_port)]
    argv += args.ours_arg
    if args.model_dir:
        # A model outside the lock cannot be verified against it.
        argv += ["--model-path", str(args.model_dir), "--model-verification", "off"]
    return ManagedServer("ours", argv, f"http://127.0.0.1:{args.port}/health", logs / "ours.log")


def peer_server(args: argparse.Namespace, logs: Path) -> ManagedServer:
    settings = engine_settings(args.config, args.model_dir)
    argv = [str(ROOT / "scripts/vllm-serve-peer"), "--port", str(args.peer_port),
            "--model-dir", str(settings["model_path"]), "--",
            "--served-model-name", settings["served_model_name"],
            "--dtype", settings["dtype"], "--max-model-len", str(settings["max_model_len"]),
            "--max-num-seqs", str(settings["max_num_seqs"]),
            "--max-num-batched-tokens", str(settings["max_num_batched_tokens"]),
            "--enable-chunked-prefill" if settings["enable_chunked_prefill"] else "--no-enable-chunked-prefill"]
    if not settings["enforce_eager"]:
        argv.append("--no-enforce-eager")
    env = {"VLLM_CPU_KVCACHE_SPACE": f"{settings['kv_cache_space_gb']:g}"}
    return ManagedServer("vllm serve", argv, f"http://127.0.0.1:{args.peer_port}/health",
                         logs / "vllm-serve.log", env=env)


def run_scenarios(server: ManagedServer, base_url: str, args: argparse.Namespace) -> ServerRun:
    print(f"\n### {server.name}: starting ({' '.join(server.argv)})", flush=True)
    with server:
        ready_s = server.wait_healthy(args.start_timeout)
        print(f"### {server.name}: healthy after {ready_s:.1f} s", flush=True)
        run = ServerRun(server.name, ready_s, {}, {})
        for scenario in args.scenarios:
            options = LoadOptions(
                base_url=base_url, api_key=args.api_key, num_requests=_scaled(scenario.num_requests, args),
                concurrency=scenario.concurrency, max_tokens=scenario.max_tokens, stream=scenario.stream,
                ignore_eos=args.ignore_eos, warmup=min(scenario.concurrency, 2), timeout_s=args.timeout)
            load = server.run_load(options, scenario.name)
            summary = summarize(load.results, load.duration_s)
            result = verdict(summary, 0.0, max_errors=0)
            print(f"\n--- {server.name}: {scenario.name}\n{render_table(load, summary, result)}", flush=True)
            run.summaries[scenario.name] = summary
            run.documents[scenario.name] = report_document(load, summary, result)
            run.loads.append(os.getloadavg()[0])
        print(f"### {server.name}: stopping", flush=True)
    return run


def _scaled(count: int, args: argparse.Namespace) -> int:
    return max(1, math.ceil(count * args.scale))


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"


def comparison_table(ours: ServerRun, peer: ServerRun) -> str:
    header = f"{'scenario':<30}{'figure':<14}{'ours':>10}{'vllm':>10}{'ours/vllm':>11}  better"
    lines = [header, "-" * len(header),
             f"{'(start-up)':<30}{'ready s':<14}{_fmt(ours.ready_s):>10}{_fmt(peer.ready_s):>10}"
             f"{_ratio(ours.ready_s, peer.ready_s):>11}  lower",
             f"{'(machine)':<30}{'load avg 1m':<14}{_fmt(ours.mean_load):>10}{_fmt(peer.mean_load):>10}"
             f"{_ratio(ours.mean_load, peer.mean_load):>11}  same"]
    for name, ours_summary in ours.summaries.items():
        peer_summary = peer.summaries.get(name)
        if peer_summary is None:
            continue
        label = name
        for figure, getter, better in FIGURES:
            a, b = getter(ours_summary), getter(peer_summary)
            if math.isnan(a) and math.isnan(b):
                continue
            lines.append(f"{label:<30}{figure:<14}{_fmt(a):>10}{_fmt(b):>10}{_ratio(a, b):>11}  {better}")
            label = ""
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}"


def machine_description() -> str:
    """CPU, cores, memory and load: figures from a shared 2-core machine mean little without them."""
    import platform

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; load average {load}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config/demo-cpu.yaml")
    parser.add_argument("--model-dir", type=Path, help="serve this model dir on both (skips lock check)")
    parser.add_argument("--port", type=int, default=18402, help="our service's port")
    parser.add_argument("--metrics-port", type=int, default=18403)
    parser.add_argument("--peer-port", type=int, default=18000, help="vllm serve's port")
    parser.add_argument("--api-key", help="Bearer key for our service, if the config sets one")
    parser.add_argument("--only", choices=("ours", "peer"), help="run one server only")
    parser.add_argument("--ours-arg", action="append", default=[], metavar="FLAG",
                        help="extra `hxp-llm serve` flag, repeatable (--ours-arg=--connection-timeout-seconds=120)")
    parser.add_argument("--peer-first", action="store_true",
                        help="run vllm serve first (a second run in the other order cancels load drift)")
    parser.add_argument("--scenario", action="append", choices=[s.key for s in SCENARIOS],
                        help="run only these scenarios (repeatable)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every request count")
    parser.add_argument("--ignore-eos", action="store_true", help="send vLLM's ignore_eos to both")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument("--logs", type=Path, default=ROOT / ".build/bench", help="server logs go here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.scenarios = [s for s in SCENARIOS if not args.scenario or s.key in args.scenario]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine_at_start = machine_description()
    print(f"machine: {machine_at_start}", flush=True)
    runs: dict[str, ServerRun] = {}
    plan = {"ours": lambda: run_scenarios(our_server(args, args.logs), f"http://127.0.0.1:{args.port}", args),
            "peer": lambda: run_scenarios(peer_server(args, args.logs),
                                          f"http://127.0.0.1:{args.peer_port}", args)}
    order = ["peer", "ours"] if args.peer_first else ["ours", "peer"]
    try:
        for key in order:
            if args.only in (None, key):
                runs[key] = plan[key]()
    except ServerFailed as exc:
        print(f"scripts/bench: {exc}", file=sys.stderr)
        return 2
    if "ours" in runs and "peer" in runs:
        print(f"\n=== ours vs vllm serve ({started}; same model, engine settings from {args.config.name}) ===")
        print(f"machine at start: {machine_at_start}\nmachine at end:   {machine_description()}")
        print(comparison_table(runs["ours"], runs["peer"]))
    if args.json:
        args.json.write_text(json.dumps({
            "started": started,
            "machine_at_start": machine_at_start,
            "servers": {key: {"name": run.name, "ready_s": run.ready_s, "load_1m_after_each": run.loads,
                              "scenarios": run.documents}
                        for key, run in runs.items()},
        }, indent=2) + "\n")
    failed = sum(s.failed for run in runs.values() for s in run.summaries.values())
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
