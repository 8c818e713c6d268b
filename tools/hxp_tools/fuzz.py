"""scripts/fuzz: schemathesis against /openapi.json, then our own cases for what it cannot generate.

    scripts/fuzz --serve --cases 5000 --seed 7            start the demo service on free loopback ports
    scripts/fuzz --base-url http://127.0.0.1:11402         fuzz a service that is already running

Schemathesis generates requests for every operation /openapi.json describes (every field of the chat
and completions bodies at and beyond its bounds, wrong types, unicode) and checks `not_a_server_error`
plus `openai_error_shape` below (loaded as SCHEMATHESIS_HOOKS=hxp_tools.fuzz). Then `--cases` cases of
what a schema cannot describe, `--concurrency` at a time, while `--background` workers keep ~2,000-token
prompts (some seeded, some streamed) in flight so the engine batches and chunks them beside the cases:
- raw: bytes that are not the JSON the schema describes (truncated, invalid UTF-8, deep nesting,
  duplicate keys, NaN literals, huge numbers, wrong content types, random bytes);
- seeded: `seed` with temperature > 0 beside long prompts (the request class that once killed vLLM CPU);
- slow: a body trickled in pieces; vanishing: a client that leaves after the first frame.
Every answer is checked: no 5xx, no broken connection; a 4xx carries `{"error": {"message", "type",
"param", "code"}}` (429/503 with Retry-After); a 200 is a chat completion or an SSE stream of JSON frames
ending with `[DONE]`. At the end the engine must be alive (/health 200, a chat answered). Prints figures
and each failure with a curl reproducer; exits 1 on any failure. Loopback targets only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import schemathesis

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec
from hxp_tools import ROOT
from hxp_tools.live import MODEL, by_status, closed_loop, demo_service

LONG_WORDS = 2000
SEEDS = [0, 1, -1, 2**31 - 1, 2**32, 2**63 - 1]
# The fuzzer judges answers, not speed: on a shared 2-core machine a small request batched beside
# ~2,000-token prompts can take longer than the demo's 30 s request budget, and its 504 would hide
# what the fuzzer looks for. The budget itself is tested by the unit tier's timeout tests.
SERVE_ARGS = ("--connection-timeout-seconds", "600")


@dataclass(frozen=True)
class Case:
    kind: str
    description: str
    body: bytes
    content_type: str = "application/json"

    def curl(self, base_url: str) -> str:
        header = shlex.quote("content-type: " + self.content_type)
        return (f"curl -sS -X POST {base_url}/v1/chat/completions -H {header}"
                f" --data-binary {shlex.quote(self.body.decode('utf-8', errors='surrogateescape'))}")


def encode(body: Any) -> bytes:
    """JSON as Python writes it: NaN and Infinity as bare literals, which a strict parser refuses."""
    return json.dumps(body, ensure_ascii=False, allow_nan=True).encode("utf-8", errors="surrogatepass")


def valid_body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": rng.choice([1, 4, 8, 16]),
                            "messages": [{"role": "user", "content": rng.choice(
                                ["Hi", "What is 2+2?", "Name a colour.", "Say yes."])}]}
    if rng.random() < 0.3:
        body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    if rng.random() < 0.4:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    return body


def _raw(rng: random.Random) -> Case:
    """Bytes a schema-driven generator never sends."""
    body = encode(valid_body(rng))
    choices: list[tuple[str, bytes, str]] = [
        ("truncated", body[: rng.randrange(1, len(body))], "application/json"),
        ("empty", b"", "application/json"),
        ("whitespace", b"  \n\t ", "application/json"),
        ("array", b"[1, 2, 3]", "application/json"),
        ("number", b"42", "application/json"),
        ("string", b'"hello"', "application/json"),
        ("null", b"null", "application/json"),
        ("invalid utf-8", body[:-2] + b"\xff\xfe" + body[-2:], "application/json"),
        ("latin-1 content", body.replace(b"Hi", "H\xe9".encode("latin-1")), "application/json"),
        ("deep nesting", b'{"model": "' + MODEL.encode() + b'", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
         "application/json"),
        ("deep object", b'{"a":' * 3000 + b"1" + b"}" * 3000, "application/json"),
        ("duplicate keys", body[:-1] + b', "model": "other", "max_tokens": -5}', "application/json"),
        ("duplicate messages", body[:-1] + b', "messages": []}', "application/json"),
        ("NaN literal", body[:-1] + b', "temperature": NaN}', "application/json"),
        ("Infinity literal", body[:-1] + b', "top_p": Infinity}', "application/json"),
        ("huge exponent", body[:-1] + b', "temperature": 1e999999}', "application/json"),
        ("huge integer", body[:-1] + b', "seed": ' + b"9" * 5000 + b"}", "application/json"),
        ("trailing garbage", body + b"}}}", "application/json"),
        ("two documents", body + b"\n" + body, "application/json"),
        ("text/plain", body, "text/plain"),
        ("form", b"model=openchat-3.5&messages=hi", "application/x-www-form-urlencoded"),
        ("no content type", body, ""),
        ("bom", b"\xef\xbb\xbf" + body, "application/json"),
        ("utf-16", json.dumps(valid_body(rng)).encode("utf-16"), "application/json; charset=utf-16"),
        ("random bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), "application/json"),
        ("big body", encode({**valid_body(rng), "user": "u" * 3_000_000}), "application/json"),
    ]
    name, data, content_type = rng.choice(choices)
    return Case("raw", name, data, content_type)


def _seeded(rng: random.Random) -> Case:
    body = valid_body(rng)
    body.update(seed=rng.choice(SEEDS), temperature=rng.choice([1, 1.0, 0.7, 2]),
                max_tokens=rng.choice([4, 16, 32]))
    if rng.random() < 0.5:
        body["messages"][-1]["content"] = "story " * rng.randrange(50, 1500)
    return Case("seeded", f"seed={body['seed']} temperature={body['temperature']}", encode(body))


GENERATORS: list[tuple[float, Callable[[random.Random], Case]]] = [
    (0.45, _raw), (0.35, _seeded),
    (0.10, lambda rng: Case("slow", "body trickled in 4 pieces", encode(valid_body(rng)))),
    (0.10, lambda rng: Case("vanishing", "client leaves after the first frame",
                            encode({**valid_body(rng), "stream": True, "max_tokens": 32})))]


def generate(rng: random.Random) -> Case:
    weights = [weight for weight, _ in GENERATORS]
    (generator,) = rng.choices([g for _, g in GENERATORS], weights=weights)
    return generator(rng)


@dataclass
class Outcome:
    case: Case
    status: int | None
    problem: str | None  # None: the answer is acceptable


@dataclass
class Report:
    seed: int
    outcomes: list[Outcome] = field(default_factory=list)
    background: list[RequestResult] = field(default_factory=list)  # the long prompts sent beside the cases
    alive_at_end: bool = False
    end_detail: str = ""

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem is not None]

    def histogram(self) -> dict[str, int]:
        counts = collections.Counter(str(o.status) if o.status is not None else "no answer" for o in self.outcomes)
        return dict(sorted(counts.items()))


def openai_error_problem(body: Any) -> str | None:
    """None when `body` is an OpenAI error object, else what is wrong with it."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body.get("error"), dict):
        return f"not an OpenAI error body: {str(body)[:200]}"
    error = body["error"]
    for key, kinds in (("message", (str,)), ("type", (str,)), ("param", (str, type(None))),
                       ("code", (str, type(None)))):
        if key not in error or not isinstance(error[key], kinds):
            return f"error.{key} missing or of the wrong type: {str(error)[:200]}"
    return None


async def _trickle(data: bytes) -> AsyncIterator[bytes]:
    step = max(1, len(data) // 4)
    for start in range(0, len(data), step):
        yield data[start:start + step]
        await asyncio.sleep(0.2)


async def check_case(client: httpx.AsyncClient, base_url: str, case: Case) -> Outcome:
    headers = {"content-type": case.content_type} if case.content_type else {}
    content = _trickle(case.body) if case.kind == "slow" else case.body
    try:
        async with client.stream("POST", f"{base_url}/v1/chat/completions", content=content,
                                 headers=headers) as response:
            raw = b""
            frames: list[bytes] = []
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        frames.append(line.removeprefix("data: ").encode())
                        if case.kind == "vanishing":  # leave mid-stream: closing the response drops the connection
                            return Outcome(case, response.status_code, None)
            else:
                raw = await response.aread()
            return Outcome(case, response.status_code, judge(response.status_code, response.headers, raw, frames))
    except httpx.HTTPError as exc:
        return Outcome(case, None, f"transport error: {type(exc).__name__}: {exc}")


def judge(status: int, headers: Mapping[str, Any], raw: bytes, frames: list[bytes]) -> str | None:
    """None when the answer is acceptable, else what is wrong (`headers`: names in lower case, or httpx's)."""
    if status >= 500:
        return f"{status}: {raw[:300]!r}"
    if frames:
        if status != 200:
            return f"SSE stream with status {status}"
        if frames[-1] != b"[DONE]":
            return "stream ended without data: [DONE]"
        for frame in frames[:-1]:
            try:
                parsed = json.loads(frame)
            except ValueError:
                return f"stream frame is not JSON: {frame[:200]!r}"
            if "error" in parsed and (problem := openai_error_problem(parsed)):
                return f"stream error frame: {problem}"
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return f"{status} body is not JSON: {raw[:200]!r}"
    if status == 200:
        if body.get("object") != "chat.completion" or not body.get("choices"):
            return f"200 without a chat completion: {str(body)[:200]}"
        return None
    if status in (429, 503) and "retry-after" not in headers:
        return f"{status} without Retry-After"
    return openai_error_problem(body)


def background_spec(index: int, sent: int) -> RequestSpec:
    """Long prompts back to back: alternately streamed or plain, every third one seeded."""
    rng = random.Random(index * 100_003 + sent)
    words = ["the", "river", "keeps", "its", "quiet", "promise", "to", "the", "valley", "and", "every",
             "stone", "remembers", "rain"]
    seeded = sent % 3 == 0
    return RequestSpec(MODEL, " ".join(rng.choice(words) for _ in range(LONG_WORDS)), 16, stream=sent % 2 == 1,
                       temperature=1.0 if seeded else None, extra_body={"seed": rng.randrange(2**31)} if seeded else {})


async def engine_alive(client: httpx.AsyncClient, base_url: str) -> tuple[bool, str]:
    try:
        health = await client.get(f"{base_url}/health")
        answer = await client.post(f"{base_url}/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]})
    except httpx.HTTPError as exc:
        return False, f"no answer: {exc!r}"
    ok = health.status_code == 200 and answer.status_code == 200
    return ok, f"/health {health.status_code}, chat {answer.status_code}"


async def run(base_url: str, cases: int, seed: int, concurrency: int, background: int,
              progress: bool = True) -> Report:
    report = Report(seed)
    rng = random.Random(seed)
    planned = iter([generate(rng) for _ in range(cases)])  # one iterator: each case goes to one worker
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        workers_bg = asyncio.create_task(closed_loop(base_url, background, background_spec, results=report.background))

        async def fuzz_worker() -> None:
            for case in planned:
                report.outcomes.append(await check_case(client, base_url, case))
                if progress and len(report.outcomes) % 250 == 0:
                    print(f"fuzz: {len(report.outcomes)}/{cases} cases, {len(report.failures)} failures, "
                          f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

        await asyncio.gather(*(fuzz_worker() for _ in range(concurrency)))
        workers_bg.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers_bg
        report.alive_at_end, report.end_detail = await engine_alive(client, base_url)
    return report


def print_report(report: Report, base_url: str, elapsed: float) -> None:
    print(f"fuzz: {len(report.outcomes)} cases, seed {report.seed}, {elapsed:.0f} s")
    print(f"fuzz: status histogram {report.histogram()}")
    kinds = collections.Counter(o.case.kind for o in report.outcomes)
    print(f"fuzz: cases by kind {dict(sorted(kinds.items()))}")
    print(f"fuzz: background long prompts by status {by_status(report.background)}")
    five_xx = sum(1 for o in report.outcomes if o.status is not None and o.status >= 500)
    print(f"fuzz: 5xx {five_xx}, failures {len(report.failures)}")
    print(f"fuzz: engine alive at the end: {'yes' if report.alive_at_end else 'NO'} ({report.end_detail})")
    for outcome in report.failures[:50]:
        print(f"FAIL [{outcome.case.kind}: {outcome.case.description}] {outcome.problem}")
        print(f"     reproduce: {outcome.case.curl(base_url)[:2000]}")


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> None:
    """A 4xx is an OpenAI error (429/503 with Retry-After): the rule `judge` applies to our own cases."""
    if 400 <= response.status_code < 500 and (problem := judge(response.status_code, response.headers,
                                                                response.content, [])):
        raise AssertionError(problem)


# A generated body that omits max_tokens (or asks for thousands) is valid and would generate to the
# end of the context: minutes per case on a CPU. The answer's length says nothing about the input
# handling under test, so valid lengths are capped; values outside the valid range are sent as generated.
ANSWER_CAP = 16
CONTEXT = 4096


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: Any) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if type(value) is int and ANSWER_CAP < value <= CONTEXT:
            body[key] = ANSWER_CAP
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:  # absent or null
        body["max_tokens"] = ANSWER_CAP


def run_schemathesis(base_url: str, examples: int, seed: int, workers: int) -> tuple[int, str]:
    """(exit code, summary lines) of one schemathesis run."""
    venv_bin = Path(sys.executable).parent
    command = [str(venv_bin / "schemathesis"), "run", f"{base_url}/openapi.json", "--checks",
               "not_a_server_error,openai_error_shape", "--max-examples", str(examples), "--seed", str(seed),
               "--workers", str(workers), "--no-color", "--request-timeout", "300",
               "--suppress-health-check", "all", "--generation-database", "none",
               "--output-sanitize", "false"]  # else "max_tokens" is shown as "[Filtered]" (it looks like a secret)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hxp_tools.fuzz",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")])}
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
    parser.add_argument("--cases", type=int, default=500, help="our own cases (raw, seeded, slow, vanishing)")
    parser.add_argument("--schemathesis-examples", type=int, default=100, help="per operation; 0 skips it")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--background", type=int, default=2)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    with demo_service(SERVE_ARGS, base_url=None if args.serve else args.base_url) as service:
        failed = fuzz(service.base_url, args, seed)
        if service.server is not None:
            service.server.check_running()
            print("fuzz: server process still running at the end: yes")
        return failed


def fuzz(base_url: str, args: argparse.Namespace, seed: int) -> int:
    """Schemathesis, then our cases; 1 if either found a failure or the engine is not alive at the end."""
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
