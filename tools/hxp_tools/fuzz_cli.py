"""scripts/fuzz: schemathesis against /openapi.json, then the mutation fuzzer, against one live service.

    scripts/fuzz --serve --cases 5000 --seed 7            start the demo service on free loopback ports
    scripts/fuzz --base-url http://127.0.0.1:11402         fuzz a service that is already running

Schemathesis generates requests for every operation /openapi.json describes (request bodies as
soon as the routes declare them) and checks `not_a_server_error` plus our `openai_error_shape`
(tools/hxp_tools/schemathesis_hooks.py). The mutation fuzzer (tools/hxp_tools/fuzz.py) then sends
`--cases` mutated chat requests with long prompts in the background. Prints each part's figures and
exits 1 if either found a failure or the engine is not alive at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hxp_tools.fuzz import print_report, run
from hxp_tools.live import stop_cleanly_on_sigterm
from hxp_tools.servers import ManagedServer, free_port

REPO = Path(__file__).resolve().parents[2]
# The fuzzer judges answers, not speed: on a shared 2-core machine a small request batched beside
# ~2,000-token prompts can take longer than the demo's 30 s request budget, and its 504 would hide
# what the fuzzer looks for. The budget itself is tested by the unit tier's timeout tests.
SERVE_ARGS = ("--connection-timeout-seconds", "600")


def run_schemathesis(base_url: str, examples: int, seed: int, workers: int) -> tuple[int, str]:
    """(exit code, summary lines) of one schemathesis run."""
    venv_bin = Path(sys.executable).parent
    command = [str(venv_bin / "schemathesis"), "run", f"{base_url}/openapi.json", "--checks",
               "not_a_server_error,openai_error_shape", "--max-examples", str(examples), "--seed", str(seed),
               "--workers", str(workers), "--no-color", "--request-timeout", "300",
               "--suppress-health-check", "all", "--generation-database", "none",
               "--output-sanitize", "false"]  # else "max_tokens" is shown as "[Filtered]" (it looks like a secret)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hxp_tools.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tools"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="hxp-schemathesis-") as scratch:  # its caches stay out of the clone
        result = subprocess.run(command, env=env, cwd=scratch, capture_output=True, text=True, timeout=7200,
                                check=False)
    output = result.stdout + result.stderr
    # The failures and errors sections whole (with their curl reproducers), then the closing figures.
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if re.search(r"=+ (FAILURES|ERRORS) =+", line)), None)
    details = lines[start:] if start is not None else []
    wanted = re.compile(r"(Test cases|API Operations|generated|Seed)", re.IGNORECASE)
    summary = details[-120:] if details else [line for line in lines if wanted.search(line)]
    return result.returncode, "\n".join(summary) or output[-3000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="a running service (loopback); default: --serve")
    parser.add_argument("--serve", action="store_true", help="start `hxp-llm serve --config config/demo-cpu.yaml`")
    parser.add_argument("--cases", type=int, default=500, help="mutation fuzzer cases")
    parser.add_argument("--schemathesis-examples", type=int, default=100, help="per operation; 0 skips it")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--background", type=int, default=2)
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    server = None
    base_url = args.base_url
    if base_url is None or args.serve:
        port, metrics = free_port(), free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = Path(tempfile.mkdtemp(prefix="hxp-fuzz-")) / "serve.log"
        server = ManagedServer("hxp-llm", [str(Path(sys.executable).parent / "hxp-llm"), "serve", "--config",
                                           "config/demo-cpu.yaml", "--host", "127.0.0.1", "--port", str(port),
                                           "--metrics-port", str(metrics), *SERVE_ARGS], f"{base_url}/health", log)
        server.start()
        print(f"fuzz: serving the demo at {base_url} (log {log})", flush=True)
        server.wait_healthy(600)
    try:
        failed = False
        if args.schemathesis_examples:
            started = time.monotonic()
            code, summary = run_schemathesis(base_url, args.schemathesis_examples, seed, min(args.concurrency, 4))
            print(f"schemathesis: exit {code}, seed {seed}, {time.monotonic() - started:.0f} s\n{summary}", flush=True)
            failed |= code != 0
        started = time.monotonic()
        report = asyncio.run(run(base_url, args.cases, seed, args.concurrency, args.background))
        print_report(report, base_url, time.monotonic() - started)
        failed |= bool(report.failures) or not report.alive_at_end
        if server is not None:
            server.check_running()
            print("fuzz: server process still running at the end: yes")
    finally:
        if server is not None:
            server.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
