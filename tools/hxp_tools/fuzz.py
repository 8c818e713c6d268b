"""Mutation fuzzer for /v1/chat/completions, with long prompts running in the background.

    python -m hxp_tools.fuzz --base-url http://127.0.0.1:11402 --cases 5000 --seed 7

Sends `--cases` mutated requests (tools/hxp_tools/fuzz_cases.py) `--concurrency` at a time while
`--background` workers keep ~2,000-token prompts (some seeded, some streamed) in flight, so the
engine batches and chunks the fuzz cases beside long prompts. Every answer is checked:
- no 5xx, no broken connection;
- a 4xx carries `{"error": {"message", "type", "param", "code"}}`;
- a 200 is a chat completion, or an SSE stream whose frames are JSON and that ends with `[DONE]`
  (an error frame inside a stream must have the same shape);
and at the end the engine must be alive: /health 200 and a plain request answered.
Prints the count, the seed, a status histogram and each failure with a curl reproducer; exits 1 on
any failure. Loopback targets only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from hxp_tools.fuzz_cases import MODEL, Case, generate

LONG_WORDS = 2000


@dataclass
class Outcome:
    case: Case
    status: int | None
    problem: str | None  # None: the answer is acceptable


@dataclass
class Report:
    seed: int
    outcomes: list[Outcome] = field(default_factory=list)
    background: collections.Counter[str] = field(default_factory=collections.Counter)
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


async def check_case(client: httpx.AsyncClient, base_url: str, case: Case) -> Outcome:
    headers = {"content-type": case.content_type} if case.content_type else {}
    url = f"{base_url}/v1/chat/completions"
    try:
        async with client.stream("POST", url, content=case.body, headers=headers) as response:
            raw = b""
            frames: list[bytes] = []
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        frames.append(line.removeprefix("data: ").encode())
            else:
                raw = await response.aread()
            return Outcome(case, response.status_code, judge(response.status_code, response.headers, raw, frames))
    except httpx.HTTPError as exc:
        return Outcome(case, None, f"transport error: {type(exc).__name__}: {exc}")


def judge(status: int, headers: httpx.Headers, raw: bytes, frames: list[bytes]) -> str | None:
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


async def background_worker(client: httpx.AsyncClient, base_url: str, index: int, stop: asyncio.Event,
                            counts: collections.Counter[str]) -> None:
    """Long prompts back to back until `stop`: alternately seeded/unseeded, streamed/plain."""
    rng = random.Random(index)
    words = ["the", "river", "keeps", "its", "quiet", "promise", "to", "the", "valley", "and", "every",
             "stone", "remembers", "rain"]
    sent = 0
    while not stop.is_set():
        body: dict[str, Any] = {
            "model": MODEL, "max_tokens": 16, "stream": sent % 2 == 1,
            "messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(LONG_WORDS))}]}
        if sent % 3 == 0:
            body.update(seed=rng.randrange(2**31), temperature=1.0)
        try:
            response = await client.post(f"{base_url}/v1/chat/completions", json=body)
            counts[f"background {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            counts[f"background {type(exc).__name__}"] += 1
        sent += 1


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
    planned = [generate(rng) for _ in range(cases)]
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for case in planned:
        queue.put_nowait(case)
    stop = asyncio.Event()
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency + background + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        workers_bg = [asyncio.create_task(background_worker(client, base_url, i, stop, report.background))
                      for i in range(background)]

        async def fuzz_worker() -> None:
            while not queue.empty():
                outcome = await check_case(client, base_url, queue.get_nowait())
                report.outcomes.append(outcome)
                if progress and len(report.outcomes) % 250 == 0:
                    print(f"fuzz: {len(report.outcomes)}/{cases} cases, {len(report.failures)} failures, "
                          f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

        await asyncio.gather(*(fuzz_worker() for _ in range(concurrency)))
        stop.set()
        await asyncio.gather(*workers_bg)
        report.alive_at_end, report.end_detail = await engine_alive(client, base_url)
    return report


def print_report(report: Report, base_url: str, elapsed: float) -> None:
    print(f"fuzz: {len(report.outcomes)} cases, seed {report.seed}, {elapsed:.0f} s")
    print(f"fuzz: status histogram {report.histogram()}")
    kinds = collections.Counter(o.case.kind for o in report.outcomes)
    print(f"fuzz: cases by kind {dict(sorted(kinds.items()))}")
    print(f"fuzz: background long prompts {dict(sorted(report.background.items()))}")
    five_xx = sum(1 for o in report.outcomes if o.status is not None and o.status >= 500)
    print(f"fuzz: 5xx {five_xx}, failures {len(report.failures)}")
    print(f"fuzz: engine alive at the end: {'yes' if report.alive_at_end else 'NO'} ({report.end_detail})")
    for outcome in report.failures[:50]:
        print(f"FAIL [{outcome.case.kind}: {outcome.case.description}] {outcome.problem}")
        print(f"     reproduce: {outcome.case.curl(base_url)[:2000]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hxp_tools.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:11402")
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--background", type=int, default=2, help="workers sending long prompts meanwhile")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    started = time.monotonic()
    report = asyncio.run(run(args.base_url, args.cases, seed, args.concurrency, args.background))
    print_report(report, args.base_url, time.monotonic() - started)
    return 0 if not report.failures and report.alive_at_end else 1


if __name__ == "__main__":
    sys.exit(main())
