"""`scripts/capacity`: how many requests per second one replica holds within the SLO, ours and `vllm serve`.

A request-rate sweep with the field's own tool, `vllm bench serve` (Poisson arrivals, `--goodput` with
TTFT and E2E targets, JSON results), against our service and then the stock `vllm serve` with the same
engine settings, in one run. Each server runs alone (two cores cannot host both fairly): start, wait
for /health, one `vllm bench serve` per rate, stop. Every request asks for a whole answer of
--output-len tokens (`ignore_eos`); goodput is the share of all sent requests that succeeded within
every SLO, and the capacity is the highest rate whose goodput stays >= --min-goodput. Writes
capacity.md (the table for docs/benchmark.md), capacity.png (goodput, TTFT and E2E percentiles
against the rate) and each run's JSON into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_tools.servers import ROOT, ManagedServer, ServerFailed, machine_description

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Engine:
    """The engine settings both servers get: our config file's, with its model path and dtype resolved."""

    config: ModelConfigSchema
    model_path: Path
    dtype: str

    @classmethod
    def from_config(cls, config_file: Path, model_dir: Path | None) -> Engine:
        import torch

        from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
        from hxp_enterprise_llm.services.core.cpu_kernels import resolve_dtype

        config = OpenChat35Config.load(config_file).config
        path = model_dir or config.model_path
        # vllm serve's own `auto` would keep bf16 on a CPU that emulates it: give both servers ours, resolved.
        dtype = resolve_dtype(config.dtype, on_cpu=not torch.cuda.is_available())
        return cls(config, path if path.is_absolute() else ROOT / path, dtype)

    def vllm_serve_flags(self) -> list[str]:
        c = self.config
        return ["--served-model-name", c.served_model_name, "--dtype", self.dtype,
                "--max-model-len", str(c.max_model_len), "--max-num-seqs", str(c.max_num_seqs),
                "--max-num-batched-tokens", str(c.max_num_batched_tokens),
                "--enable-chunked-prefill" if c.enable_chunked_prefill else "--no-enable-chunked-prefill",
                "--enforce-eager" if c.enforce_eager else "--no-enforce-eager",
                "--enable-prefix-caching" if c.enable_prefix_caching else "--no-enable-prefix-caching",
                # Usage as ours reports it (OpenAI's prompt_tokens_details.cached_tokens); off by default there.
                "--enable-prompt-tokens-details"]


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The options our_server and peer_server read; scripts/capacity and scripts/bench-serving both take them."""
    parser.add_argument("--ours-arg", action="append", default=[], metavar="FLAG",
                        help="extra `hxp-llm serve` flag, e.g. --ours-arg=--connection-timeout-seconds=600 "
                             "(stock `vllm serve` has no request deadline; ours cuts a request at 30 s)")
    parser.add_argument("--port", type=int, default=18402, help="ours (metrics on the next port)")
    parser.add_argument("--peer-port", type=int, default=18000)
    parser.add_argument("--start-timeout", type=float, default=600.0)


def our_server(args: argparse.Namespace, engine: Engine) -> ManagedServer:
    # No `: ping` comments: `vllm bench serve` strips every network read before joining them, so a comment
    # (sent when a stream is quiet for stream_ping_seconds, e.g. a first token 15 s+ away under load) glues
    # onto the frames after it and they are skipped as one comment; it then counts the tokens of the text
    # it kept instead of the usage (upstream: vllm-project/vllm#51172). `vllm serve` sends no comments.
    argv = [str(ROOT / ".venv/bin/hxp-llm"), "serve", "--config", str(args.config), "--host", "127.0.0.1",
            "--port", str(args.port), "--metrics-port", str(args.port + 1), "--stream-ping-seconds", "3600",
            *args.ours_arg]
    if args.model_dir:  # a model outside the lock cannot be verified against it
        argv += ["--model-path", str(engine.model_path), "--model-verification", "off"]
    return ManagedServer("ours", argv, f"http://127.0.0.1:{args.port}/health", args.out / "ours.log")


def peer_server(args: argparse.Namespace, engine: Engine) -> ManagedServer:
    argv = [str(ROOT / ".venv/bin/vllm"), "serve", str(engine.model_path), "--host", "127.0.0.1",
            "--port", str(args.peer_port), *engine.vllm_serve_flags()]
    from hxp_enterprise_llm.services.core.cpu_budget import cpu_thread_binding

    # The same compute threads as ours: our engine binds them from cpu_cores (VLLM_CPU_OMP_THREADS_BIND).
    env = {"VLLM_CPU_KVCACHE_SPACE": f"{engine.config.kv_cache_space_gb:g}",
           **cpu_thread_binding(engine.config.cpu_cores, os.environ)}
    return ManagedServer("vllm serve", argv, f"http://127.0.0.1:{args.peer_port}/health",
                         args.out / "vllm-serve.log", env=env)


def bench_serve_command(engine: Engine, base_url: str, args: argparse.Namespace, prompts: int, result: Path,
                        *options: str) -> list[str]:
    """`vllm bench serve` on random `args.input_len`-token prompts for `args.output_len`-token answers
    (`--ignore-eos`: every answer that long), seed 0, its JSON result saved to `result`, exactly as an operator
    would type it; `options` add the load's shape (a rate or a concurrency) and the figures wanted."""
    return [str(ROOT / ".venv/bin/vllm"), "bench", "serve", "--backend", "openai-chat",
            "--endpoint", "/v1/chat/completions", "--base-url", base_url, "--model", engine.config.served_model_name,
            "--tokenizer", str(engine.model_path), "--dataset-name", "random",
            "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len), "--ignore-eos",
            "--num-prompts", str(prompts), "--seed", "0", *options,
            "--save-result", "--result-dir", str(result.parent), "--result-filename", result.name]


def bench_command(args: argparse.Namespace, engine: Engine, base_url: str, rate: float, result: Path) -> list[str]:
    """One step of the sweep: Poisson arrivals at `rate`, goodput against the SLO."""
    return bench_serve_command(engine, base_url, args, args.num_prompts, result, "--request-rate", f"{rate:g}",
                               "--num-warmups", str(args.warmups),
                               "--goodput", *[f"{k}:{v:g}" for k, v in args.slo.items()],
                               "--percentile-metrics", "ttft,e2el",
                               "--metric-percentiles", ",".join(map(str, PERCENTILES)))


def goodput_share(result: dict[str, Any]) -> float:
    """Requests that succeeded within every SLO, over all requests sent (failed ones count against)."""
    good = (result.get("request_goodput") or 0.0) * result["duration"]
    return round(good) / result["num_prompts"]


def sweep(name: str, base_url: str, args: argparse.Namespace, engine: Engine,
          server: ManagedServer | None = None) -> list[dict[str, Any]]:
    """One `vllm bench serve` per rate against `base_url` (and `server` still alive before each)."""
    rows = []
    for rate in args.rates:
        result_file = args.out / f"{re.sub(r'[^A-Za-z0-9.]+', '-', name).strip('-')}-{rate:g}rps.json"
        command = bench_command(args, engine, base_url, rate, result_file)
        print(f"$ {' '.join(command)}", flush=True)
        if server is not None:
            server.check_running()
        subprocess.run(command, check=True, stdout=sys.stdout, stderr=subprocess.STDOUT)
        result = json.loads(result_file.read_text())
        rows.append({"rate": rate, "goodput": goodput_share(result), "load_1m": os.getloadavg()[0],
                     **{k: result.get(k) for k in ("completed", "failed", "request_throughput")},
                     **{f"{m}_p{p}": result.get(f"p{p}_{m}_ms") for m in ("ttft", "e2el") for p in PERCENTILES}})
    return rows


def sweep_started(server: ManagedServer, base_url: str, args: argparse.Namespace,
                  engine: Engine) -> list[dict[str, Any]]:
    print(f"\n### {server.name}: {' '.join(server.argv)}", flush=True)
    with server:
        print(f"### {server.name}: healthy after {server.wait_healthy(args.start_timeout):.0f} s", flush=True)
        return sweep(server.name, base_url, args, engine, server)


def capacity(rows: list[dict[str, Any]], min_goodput: float) -> float | None:
    """The highest rate at which goodput stays >= min_goodput at that rate and every lower one."""
    best = None
    for row in sorted(rows, key=lambda r: r["rate"]):
        if row["goodput"] < min_goodput:
            break
        best = row["rate"]
    return best


def table(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    slo = ", ".join(f"{k} <= {v:g} ms" for k, v in args.slo.items())
    lines = [f"SLO: {slo}; {args.output_len}-token answers, {args.input_len}-token random prompts, "
             f"{args.num_prompts} requests per rate (Poisson arrivals).", "",
             "| server | rate req/s | goodput | done req/s | failed | TTFT p50 / p99 ms | E2E p50 / p99 ms | load 1m |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in runs.items():
        for r in rows:
            lines.append(f"| {name} | {r['rate']:g} | {r['goodput']:.1%} | {r['request_throughput']:.2f} | "
                         f"{r['failed']} | {ms_cell(r['ttft_p50'])} / {ms_cell(r['ttft_p99'])} | "
                         f"{ms_cell(r['e2el_p50'])} / {ms_cell(r['e2el_p99'])} | {r['load_1m']:.1f} |")
    lines.append("")
    for name, rows in runs.items():
        best = capacity(rows, args.min_goodput)
        held = "none of the rates tried" if best is None else f"{best:g} req/s"
        lines.append(f"- **{name}**: highest rate with goodput >= {args.min_goodput:.0%}: {held}")
    return "\n".join(lines) + "\n"


def ms_cell(value: float | None) -> str:
    """Milliseconds in a table cell; `-` where the run had no figure."""
    return "-" if value is None else f"{value:.0f}"


def plot(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, path: Path) -> None:
    from hxp_enterprise_llm.bench.plot import require_matplotlib

    require_matplotlib()
    import matplotlib.pyplot as plt

    fig, (good, ttft, e2e) = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, rows in runs.items():
        rates = [r["rate"] for r in rows]
        good.plot(rates, [100 * r["goodput"] for r in rows], marker="o", label=name)
        for axis, metric in ((ttft, "ttft"), (e2e, "e2el")):
            for p, style in zip(PERCENTILES, ("-", "--", ":"), strict=True):
                axis.plot(rates, [r[f"{metric}_p{p}"] for r in rows], style, marker="o", label=f"{name} p{p}")
    good.axhline(100 * args.min_goodput, color="grey", linewidth=0.8)
    good.set(title="goodput (share within the SLO)", xlabel="request rate (req/s)", ylabel="%")
    for axis, metric, title in ((ttft, "ttft", "time to first token"), (e2e, "e2el", "whole answer (E2E)")):
        if metric in args.slo:
            axis.axhline(args.slo[metric], color="red", linewidth=0.8)
        axis.set(title=title, xlabel="request rate (req/s)", ylabel="ms")
    for axis in (good, ttft, e2e):
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config/demo-cpu.yaml")
    parser.add_argument("--model-dir", type=Path, help="serve this model dir on both (skips the lock check)")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 1, 2, 4, 6, 8],
                        help="comma-separated request rates, req/s")
    parser.add_argument("--num-prompts", type=int, default=100, help="requests per rate")
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=50)
    parser.add_argument("--slo", action="append", default=[], metavar="METRIC:MS",
                        help="ttft or e2el objective (default ttft:500 and e2el: the config's target_latency_ms)")
    parser.add_argument("--min-goodput", type=float, default=0.99)
    parser.add_argument("--only", choices=("ours", "peer"), help="sweep one server only")
    parser.add_argument("--base-url", help="sweep this running service (e.g. HAProxy before replicas) instead")
    add_server_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT / ".build/capacity")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    engine = Engine.from_config(args.config, args.model_dir)
    args.slo = {"ttft": 500.0, "e2el": engine.config.target_latency_ms} | {
        key: float(value) for key, value in (item.split(":", 1) for item in args.slo)}
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_description()}", flush=True)
    plan = {"ours": (our_server, args.port), "vllm serve": (peer_server, args.peer_port)}
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        if args.base_url:
            runs[args.base_url] = sweep(args.base_url, args.base_url.rstrip("/"), args, engine)
        for name, (make, port) in plan.items():
            if not args.base_url and args.only in (None, "ours" if name == "ours" else "peer"):
                runs[name] = sweep_started(make(args, engine), f"http://127.0.0.1:{port}", args, engine)
    except (ServerFailed, subprocess.CalledProcessError) as exc:
        print(f"scripts/capacity: {exc}", file=sys.stderr)
        return 2
    report = f"Machine: {machine_description()}\n\n{table(runs, args)}"
    (args.out / "capacity.md").write_text(report)
    (args.out / "capacity.json").write_text(json.dumps(runs, indent=2) + "\n")
    plot(runs, args, args.out / "capacity.png")
    print(f"\n{report}\nwrote {args.out}/capacity.md, capacity.png, capacity.json", flush=True)
    return 0


if __name__ == "__main__":  # the servers' engines spawn children: the guard keeps them from re-running this
    sys.exit(main())
