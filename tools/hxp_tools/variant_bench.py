"""`scripts/bench-variants`: the demo model's variants (dtype, int4, int8, eager or compiled) side by side.

For each variant, `hxp-llm serve` with the variant's config runs alone on this machine:
- start to a healthy /health: eager once; compiled twice, first with an empty compile cache (cold), then
  again with the cache the first start left (warm); the warm server is the one measured;
- the quality gate (tools/hxp_tools/data/quality_questions.json, greedy, through the API);
- output tok/s and TTFT p50 at 1 and at 50 streaming users (`hxp-llm bench`'s load generator,
  `ignore_eos` so every variant writes the same number of tokens);
- peak RSS of the service's whole process tree (API process + vLLM engine core), sampled every 0.5 s;
- the 1-minute load average after each figure: the machine is shared, figures taken at load 10 mean little.

    scripts/bench-variants                          # every variant (about 15 minutes on 2 quiet cores)
    scripts/bench-variants --variant bf16-eager --variant int4-eager --json .build/variants.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from hxp_enterprise_llm.bench.runner import LoadOptions
from hxp_enterprise_llm.bench.stats import summarize
from hxp_tools.quality_gate import ask_all, load_questions
from hxp_tools.servers import ROOT, ManagedServer, ServerFailed, hxp_llm_serve, machine_description


@dataclass(frozen=True)
class Variant:
    key: str
    config: str
    flags: tuple[str, ...] = ()

    @property
    def compiled(self) -> bool:
        return "--no-enforce-eager" in self.flags


VARIANTS = (
    Variant("fp32-eager", "config/demo-cpu.yaml", ("--dtype", "float32", "--enforce-eager")),
    Variant("bf16-eager", "config/demo-cpu.yaml", ("--dtype", "bfloat16", "--enforce-eager")),
    Variant("bf16-compiled", "config/demo-cpu.yaml", ("--dtype", "bfloat16", "--no-enforce-eager")),
    Variant("int4-eager", "config/demo-cpu-int4.yaml", ("--enforce-eager",)),
    Variant("int4-compiled", "config/demo-cpu-int4.yaml", ("--no-enforce-eager",)),
    Variant("int8-eager", "config/demo-cpu-int8.yaml", ("--enforce-eager",)),
    Variant("int8-compiled", "config/demo-cpu-int8.yaml", ("--no-enforce-eager",)),
)


@dataclass
class Figures:
    variant: str
    start_s: dict[str, float] = field(default_factory=dict)  # eager | compiled-cold | compiled-warm
    quality: str = ""
    wrong: list[str] = field(default_factory=list)
    tok_s_1: float = float("nan")
    ttft_p50_1_ms: float = float("nan")
    tok_s_50: float = float("nan")
    ttft_p50_50_ms: float = float("nan")
    errors: int = 0
    peak_rss_mib: float = float("nan")
    peak_pss_mib: float = float("nan")
    load_1m: dict[str, float] = field(default_factory=dict)  # figure -> 1-minute load average after it


class TreeMemorySampler:
    """Peak summed RSS and PSS of a process and its children (the API process and vLLM's engine core).

    RSS counts pages shared between the API process and the engine core (torch's libraries, shared
    memory) once per process; PSS splits them, so its sum is what the processes really occupy.
    """

    def __init__(self, server: ManagedServer, interval_s: float = 0.5) -> None:
        assert server.process is not None, "start the server first"
        self.root = psutil.Process(server.process.pid)
        self.interval_s = interval_s
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = pss = 0
            with contextlib.suppress(psutil.Error):  # a process may end while we look
                for process in [self.root, *self.root.children(recursive=True)]:
                    info = process.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)


def server_for(variant: Variant, args: argparse.Namespace, compile_cache: Path, tag: str) -> ManagedServer:
    # vLLM 0.32's AOT-compiled artifacts fail to load on CPU ("'function' object has no attribute
    # 'finalize_loading'") and every start compiles again; without AOT, torch inductor's own caches (FX graphs,
    # AOTAutograd, compiled kernels) make the warm start. Both live in this variant's cache directory (else
    # torch shares /tmp/torchinductor_<user> with every other run on the machine and "cold" is not cold).
    env = {"VLLM_CACHE_ROOT": str(compile_cache / "vllm"), "VLLM_USE_AOT_COMPILE": "0",
           "TORCHINDUCTOR_CACHE_DIR": str(compile_cache / "torchinductor")}
    # 50 streams of 50 tokens on a busy 2-core host can outlast the demo's 30 s bound.
    return hxp_llm_serve(f"{variant.key} ({tag})", ROOT / variant.config, args.port, args.port + 1,
                         args.logs / f"{variant.key}-{tag}.log", "--connection-timeout-seconds", "300",
                         *variant.flags, env=env)


def load_now() -> float:
    return round(os.getloadavg()[0], 2)


def measure(variant: Variant, args: argparse.Namespace) -> Figures:
    figures = Figures(variant.key)
    compile_cache = args.logs / f"compile-cache-{variant.key}"
    shutil.rmtree(compile_cache, ignore_errors=True)  # cold: nothing compiled yet
    if variant.compiled:
        with server_for(variant, args, compile_cache, "cold") as cold:
            figures.start_s["compiled-cold"] = round(cold.wait_healthy(args.start_timeout), 1)
            figures.load_1m["start compiled-cold"] = load_now()
    tag = "compiled-warm" if variant.compiled else "eager"
    with server_for(variant, args, compile_cache, tag) as server, TreeMemorySampler(server) as memory:
        figures.start_s[tag] = round(server.wait_healthy(args.start_timeout), 1)
        figures.load_1m[f"start {tag}"] = load_now()
        base_url = f"http://127.0.0.1:{args.port}"
        score = asyncio.run(ask_all(base_url, load_questions()))
        figures.quality, figures.wrong = str(score), [a.question.id for a in score.answers if not a.correct]
        figures.load_1m["quality"] = load_now()
        for users, requests in ((1, args.single_requests), (50, args.multi_requests)):
            options = LoadOptions(base_url=base_url, num_requests=requests, concurrency=users, max_tokens=50,
                                  stream=True, ignore_eos=True, warmup=min(users, 2), timeout_s=600)
            run = server.run_load(options, f"{variant.key}, {users} user(s)")
            summary = summarize(run.results, run.duration_s)
            setattr(figures, f"tok_s_{users}", round(summary.output_throughput, 1))
            setattr(figures, f"ttft_p50_{users}_ms", round(summary.ttft.median, 0))
            figures.errors += summary.failed
            figures.load_1m[f"{users} user(s)"] = load_now()
    figures.peak_rss_mib, figures.peak_pss_mib = round(memory.peak_rss / 2**20), round(memory.peak_pss / 2**20)
    return figures


def render(results: list[Figures]) -> str:
    header = (f"{'variant':<15}{'quality':>8}{'tok/s 1u':>10}{'tok/s 50u':>11}{'TTFT50 1u':>11}{'TTFT50 50u':>12}"
              f"{'start s':>24}{'RSS MiB':>9}{'PSS MiB':>9}  load 1m (start, quality, 1u, 50u)")
    lines = [header, "-" * len(header)]
    for f in results:
        starts = " / ".join(f"{k.replace('compiled-', '')} {v:.0f}" for k, v in f.start_s.items())
        loads = ", ".join(f"{v:.1f}" for k, v in f.load_1m.items() if not k.startswith("start compiled-cold"))
        lines.append(f"{f.variant:<15}{f.quality:>8}{f.tok_s_1:>10.1f}{f.tok_s_50:>11.1f}{f.ttft_p50_1_ms:>11.0f}"
                     f"{f.ttft_p50_50_ms:>12.0f}{starts:>24}{f.peak_rss_mib:>9.0f}{f.peak_pss_mib:>9.0f}  {loads}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench-variants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", choices=[v.key for v in VARIANTS],
                        help="measure only these variants (repeatable; default: all)")
    parser.add_argument("--port", type=int, default=18602, help="API port (metrics on port + 1)")
    parser.add_argument("--single-requests", type=int, default=10, help="requests at 1 user")
    parser.add_argument("--multi-requests", type=int, default=100, help="requests at 50 users")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--logs", type=Path, default=ROOT / ".build/bench-variants",
                        help="server logs and compile caches go here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    print(f"machine at start: {machine_description()}", flush=True)
    results = []
    try:
        for variant in VARIANTS:
            if args.variant and variant.key not in args.variant:
                continue
            print(f"### {variant.key}: {variant.config} {' '.join(variant.flags)}", flush=True)
            results.append(measure(variant, args))
            print(render(results[-1:]).splitlines()[-1], flush=True)
    except ServerFailed as exc:
        print(f"scripts/bench-variants: {exc}", file=sys.stderr)
        return 2
    finally:
        print(f"\n{render(results)}\nmachine at end: {machine_description()}", flush=True)
        if args.json:
            args.json.write_text(json.dumps([asdict(f) for f in results], indent=2) + "\n")
    return 2 if any(f.errors for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
