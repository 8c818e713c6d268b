"""`scripts/bench-serving`: our serving layer against stock `vllm serve` and the raw engine, same engine.

Three ways to serve the same engine (settings from our config file, as scripts/capacity gives them):
ours, `vllm serve`, and vLLM's `AsyncLLM` driven in-process with no HTTP at all (the ceiling a
serving layer can reach). Each runs alone, in a rotating order, --rounds times; every round measures
50 streaming users x 50 tokens (closed loop) and 1 user, both with `vllm bench serve` for the two HTTP
servers and with the same workload shape in-process for the raw engine. Reported per server: the
median over the rounds of output tok/s, TTFT p50 and E2E mean, the ratios ours / peer and ours / raw,
and the API process's own CPU time per output token (the serving layer's cost, which on a 2-core host
is taken from generation). Each round's figures and the medians go to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.percentiles import percentile
from hxp_tools.capacity import Engine, add_server_options, bench_serve_command, our_server, peer_server
from hxp_tools.servers import ROOT, ManagedServer, ServerFailed, machine_description

SERVERS = ("ours", "vllm serve", "raw engine")
FIGURES = ("output tok/s", "TTFT p50 ms", "E2E mean ms", "API CPU ms/token")


def process_cpu_seconds(pid: int) -> float:
    """CPU time of the process itself (all its threads, not its children: the engine runs in those)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_loop_command(args: argparse.Namespace, engine: Engine, base_url: str, users: int, prompts: int,
                        result: Path) -> list[str]:
    """`vllm bench serve` closed loop: `users` greedy streams at once until `prompts` answers."""
    return bench_serve_command(engine, base_url, args, prompts, result, "--temperature", "0",
                               "--max-concurrency", str(users), "--request-rate", "inf", "--num-warmups", "2",
                               "--percentile-metrics", "ttft,e2el", "--disable-tqdm")


def bench_serve(args: argparse.Namespace, engine: Engine, base_url: str, users: int, prompts: int,
                result: Path) -> dict[str, Any]:
    """One closed loop run; its JSON result, checked for failures and miscounted tokens."""
    command = closed_loop_command(args, engine, base_url, users, prompts, result)
    print(f"$ {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    data: dict[str, Any] = json.loads(result.read_text())
    if data["failed"]:
        raise ServerFailed(f"{base_url}: {data['failed']} of {prompts} requests failed")
    # Every answer is --output-len tokens (ignore_eos): fewer counted means the client lost frames, and
    # the throughput it reports is wrong (see capacity.our_server on SSE comments).
    if data["total_output_tokens"] != data["completed"] * args.output_len:
        raise ServerFailed(f"{base_url}: `vllm bench serve` counted {data['total_output_tokens']} output tokens "
                           f"for {data['completed']} answers of {args.output_len}: it mis-read the stream")
    return data


def http_round(server: ManagedServer, args: argparse.Namespace, engine: Engine, base_url: str,
               tag: str) -> dict[str, dict[str, float]]:
    with server:
        server.wait_healthy(args.start_timeout)
        assert server.process is not None
        pid = server.process.pid
        cpu_before = process_cpu_seconds(pid)
        many = bench_serve(args, engine, base_url, args.users, args.prompts, args.out / f"{tag}-many.json")
        cpu_per_token = (process_cpu_seconds(pid) - cpu_before) / many["total_output_tokens"]
        one = bench_serve(args, engine, base_url, 1, args.single_prompts, args.out / f"{tag}-one.json")
        if args.profile:
            # A pass of its own, whose figures are never reported: on 2 cores the sampler cut ours to 145
            # tok/s against 284-328 unprofiled (vllm serve: 274 against 287-329), the 0.67x of 2026-12-03.
            profiler = start_profile(pid, args.out / f"{tag}.pyspy")
            bench_serve(args, engine, base_url, args.users, args.prompts, args.out / f"{tag}-profiled.json")
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled on Ctrl-C (on SIGTERM, nothing)
            profiler.wait(timeout=60)
            print(profile_summary(args.out / f"{tag}.pyspy"), flush=True)
    return {"many": {"output tok/s": many["output_throughput"], "TTFT p50 ms": many["median_ttft_ms"],
                     "E2E mean ms": many["mean_e2el_ms"], "API CPU ms/token": 1000 * cpu_per_token},
            "one": {"output tok/s": one["output_throughput"], "TTFT p50 ms": one["median_ttft_ms"],
                    "E2E mean ms": one["mean_e2el_ms"]}}


# --- where the API process spends its time (py-spy, sampling; --profile)

def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the server's own process for the many-user load: collapsed stacks, idle time left out."""
    return subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(pid), "--rate", "100",
                             "--format", "raw", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(path: Path, top: int = 25) -> str:
    """Functions by their share of the samples, counting each function once per stack (inclusive)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}  # the innermost Python frame: with uvloop, Runner.run is the event loop's own C code
    total = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        total += int(count)
        # A frame is "function (file:line)"; the line number would split one function into many.
        frames = [frame.rpartition(":")[0] + ")" for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)

    def rows(shares: dict[str, int], count: int) -> list[str]:
        return [f"{100 * n / max(total, 1):5.1f}%  {frame}"
                for frame, n in sorted(shares.items(), key=lambda item: (-item[1], item[0]))[:count]]

    return "\n".join([f"profile {path.name}: {total} samples; inclusive:", *rows(inclusive, top), "own time:",
                      *rows(own, 10)])


# --- the raw engine: AsyncLLM in this process, the same workload without HTTP

async def _raw_load(llm: Any, prompts: list[list[int]], users: int, output_len: int) -> dict[str, float]:
    from vllm.inputs.engine import tokens_input
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0,
                            output_kind=RequestOutputKind.DELTA)
    queue = list(enumerate(prompts))
    ttfts: list[float] = []
    e2es: list[float] = []
    tokens = 0

    async def user() -> None:
        nonlocal tokens
        while queue:
            index, prompt = queue.pop()
            started = time.perf_counter()
            first = None
            # Rendered input, as both HTTP servers hand it (a bare {"prompt_token_ids"} would take vLLM's
            # deprecated raw-prompt path, through a worker thread).
            async for output in llm.generate(tokens_input(prompt), params, f"raw-{index}-{random.random()}"):
                first = first or time.perf_counter()
                tokens += len(output.outputs[0].token_ids)
            ttfts.append(1000 * ((first or started) - started))
            e2es.append(1000 * (time.perf_counter() - started))

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(users)))
    return {"output tok/s": tokens / (time.perf_counter() - started), "TTFT p50 ms": percentile(ttfts, 50),
            "E2E mean ms": statistics.fmean(e2es)}


def raw_engine_main(args: argparse.Namespace) -> int:
    """Child process: build the engine exactly as our service does, run both workloads, print JSON."""
    from transformers import AutoTokenizer
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
    from hxp_enterprise_llm.services.core.cpu_budget import cpu_thread_binding
    from hxp_enterprise_llm.services.core.vllm_engine import engine_args_from_config

    config = OpenChat35Config.load(args.config).config
    os.environ.update(cpu_thread_binding(config.cpu_cores, os.environ))
    tokenizer = AutoTokenizer.from_pretrained(str(config.model_path))
    rng = random.Random(0)  # prompts shaped as `vllm bench serve --dataset-name random` makes them

    def prompt() -> list[int]:
        text = str(tokenizer.decode([rng.randrange(tokenizer.vocab_size) for _ in range(args.input_len)]))
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
        ids: list[int] = tokenizer.encode(chat, add_special_tokens=False)
        return ids

    async def run() -> dict[str, Any]:
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args_from_config(config, on_cpu=True)))
        try:
            await _raw_load(llm, [prompt() for _ in range(2)], 1, args.output_len)  # warm-up, as bench serve's
            cpu_before = process_cpu_seconds(os.getpid())
            many = await _raw_load(llm, [prompt() for _ in range(args.prompts)], args.users, args.output_len)
            many["API CPU ms/token"] = 1000 * (process_cpu_seconds(os.getpid()) - cpu_before) / (
                args.prompts * args.output_len)
            one = await _raw_load(llm, [prompt() for _ in range(args.single_prompts)], 1, args.output_len)
            return {"many": many, "one": one}
        finally:
            llm.shutdown()

    print("RESULT " + json.dumps(asyncio.run(run())), flush=True)
    return 0


def raw_round(args: argparse.Namespace, tag: str) -> dict[str, dict[str, float]]:
    log = args.out / f"{tag}.log"
    command = [sys.executable, "-m", "hxp_tools.serving_compare", "--raw-engine-child", *args.passthrough]
    print(f"$ {' '.join(command)}  > {log}", flush=True)
    with log.open("w") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, timeout=3600)
    line = next(line for line in log.read_text().splitlines() if line.startswith("RESULT "))
    result: dict[str, dict[str, float]] = json.loads(line.removeprefix("RESULT "))
    return result


def report(rounds: list[dict[str, dict[str, dict[str, float]]]], args: argparse.Namespace) -> str:
    def median(server: str, load: str, figure: str) -> float:
        return percentile([r[server][load][figure] for r in rounds], 50)

    lines = [f"{len(rounds)} rounds, median of each figure; {args.users} streaming users x {args.output_len} tokens "
             f"({args.prompts} requests, closed loop) and 1 user ({args.single_prompts} requests); "
             f"{args.input_len}-token random prompts, greedy, ignore_eos."
             + (f" Ours with {' '.join(args.ours_arg)}." if args.ours_arg else ""), "",
             "| load | figure | ours | vllm serve | raw engine | ours / vllm serve | ours / raw engine |",
             "|---|---|---|---|---|---|---|"]
    for load, name in (("many", f"{args.users} users"), ("one", "1 user")):
        for figure in FIGURES:
            if figure not in rounds[0]["ours"][load]:
                continue
            ours, peer, raw = (median(s, load, figure) for s in SERVERS)
            lines.append(f"| {name} | {figure} | {ours:.3g} | {peer:.3g} | {raw:.3g} | {ours / peer:.3f}x | "
                         f"{ours / raw:.3f}x |")
    lines += ["", "Each round (output tok/s at the many-user load, ours / vllm serve / raw engine):"]
    lines += [f"- round {i + 1}: " + " / ".join(f"{r[s]['many']['output tok/s']:.1f}" for s in SERVERS)
              for i, r in enumerate(rounds)]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench-serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config/demo-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=3, help="each server this many times (median reported)")
    parser.add_argument("--users", type=int, default=50, help="concurrent streams of the many-user load")
    parser.add_argument("--prompts", type=int, default=200, help="requests of the many-user load")
    parser.add_argument("--single-prompts", type=int, default=20, help="requests of the 1-user load")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=50)
    add_server_options(parser)
    parser.add_argument("--profile", action="store_true",
                        help="then py-spy on each HTTP server's process during one more many-user load, not counted in "
                             "the figures (it slows the server it samples); top functions printed")
    parser.add_argument("--out", type=Path, default=ROOT / ".build/bench-serving")
    parser.add_argument("--raw-engine-child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.raw_engine_child:
        return raw_engine_main(args)
    args.passthrough = [a for a in argv if a != "--raw-engine-child"]
    # What our_server/peer_server read from scripts/capacity's options.
    args.model_dir = None
    engine = Engine.from_config(args.config, None)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_description()}", flush=True)
    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
    try:
        for index in range(args.rounds):
            order = SERVERS[index % 3:] + SERVERS[:index % 3]  # each server first once in three rounds
            results: dict[str, dict[str, dict[str, float]]] = {}
            for server in order:
                tag = f"round{index + 1}-{server.replace(' ', '-')}"
                print(f"\n### round {index + 1}: {server} (load average {os.getloadavg()[0]:.2f})", flush=True)
                if server == "raw engine":
                    results[server] = raw_round(args, tag)
                else:
                    make, port = (our_server, args.port) if server == "ours" else (peer_server, args.peer_port)
                    results[server] = http_round(make(args, engine), args, engine, f"http://127.0.0.1:{port}", tag)
                print(json.dumps(results[server]), flush=True)
            rounds.append(results)
    except (ServerFailed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"scripts/bench-serving: {exc}", file=sys.stderr)
        return 2
    text = f"Machine: {machine_description()}\n\n{report(rounds, args)}"
    (args.out / "bench-serving.md").write_text(text)
    (args.out / "bench-serving.json").write_text(json.dumps(rounds, indent=2) + "\n")
    print(f"\n{text}\nwrote {args.out}/bench-serving.md, bench-serving.json", flush=True)
    return 0


if __name__ == "__main__":  # the engines spawn children: the guard keeps them from re-running this
    sys.exit(main())
