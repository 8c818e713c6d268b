"""The compose `scale` profile for real: 2 replicas of the CPU image behind HAProxy, 50 streaming users.

- A rolling restart of both replicas (scripts/rolling-restart) under that load fails no request:
  every stream that got a 200 ends with [DONE], and nothing else reaches a client but a 429/503
  refusal sent before any byte.
- A draining replica's refusals (503 before any byte) are replayed by HAProxy on the other replica.
- SIGKILL of one replica under load fails only the streams that replica had already started; every
  request sent after the kill succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from hxp_tools.scale_stack import ScaleStack, StackFailed, container_address
from support.figures import record_figure

from .conftest import DEMO_MODEL, HEALTHY_WITHIN_SECONDS, IMAGE, REPO_ROOT, missing_prerequisite

LB_IMAGE = os.environ.get("HXP_LB_IMAGE", "hxp-haproxy:bookworm")
USERS = 50
# Two engines load at once on the same cores: twice the bound for one container.
POOL_WITHIN_SECONDS = 2 * HEALTHY_WITHIN_SECONDS
# A generous bound, not a target: the survivor serves all users' next requests well within it.
AFTER_KILL_WITHIN_SECONDS = 300
# A draining replica exits once its running stream ends (STORY_TOKENS) or its drain timeout passes.
VICTIM_EXITS_WITHIN_SECONDS = 300
# The draining victim's own stream: about 11 s alone on two cores, several times the few seconds the burst
# takes to arrive, and well within the drain timeout (30 s) that would cut it.
STORY_TOKENS = 400
# Small answers keep each request short, so many requests start and end during a restart.
MAX_TOKENS = 16
# What these tests judge is that no request is lost, not how fast one is answered: on a 2-core host two
# replicas cannot start 50 streams within the spec's 30 s (docs/scaling.md), and a request that ran out
# of time there would be a capacity figure, not a failover fault. The deadline stays inside HAProxy's
# `timeout server` (120 s) so that the replica, not the balancer, answers a request that runs out.
REPLICA_ENV = {"OPENCHAT_3_5_CONNECTION_TIMEOUT_SECONDS": "100"}
REQUEST = {"model": "openchat-3.5", "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0,
           "messages": [{"role": "user", "content": "Name three colours."}]}


@pytest.fixture(scope="module")
def stack(docker_client: Any, demo_model_dir) -> Iterator[ScaleStack]:
    version = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True)
    if version.returncode != 0:
        missing_prerequisite("Compose v2 (`docker compose`) is missing; run scripts/ensure-docker")
    if subprocess.run(["docker", "image", "inspect", LB_IMAGE], capture_output=True).returncode != 0:
        missing_prerequisite(f"image {LB_IMAGE} is not built; run scripts/build-haproxy-image")
    running = ScaleStack(f"hxp-scale-test-{os.getpid()}", replicas=2, service_image=IMAGE, lb_image=LB_IMAGE,
                         models_root=demo_model_dir(DEMO_MODEL).parent, replica_env=REPLICA_ENV)
    with running:
        wait_pool(running, 2)
        yield running


def wait_pool(stack: ScaleStack, size: int) -> None:
    try:
        stack.wait_pool(size, POOL_WITHIN_SECONDS)
    except StackFailed as exc:
        pytest.fail(str(exc))


@dataclass
class Outcome:
    started: float
    ended: float = 0.0
    status: int = 0
    replica: str = ""
    done: bool = False  # the stream ended with data: [DONE]
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and not self.error

    @property
    def refusal(self) -> bool:
        """A well-formed refusal: 429/503 before any stream byte, OpenAI error body, Retry-After."""
        try:
            error = json.loads(self.body)["error"]
        except (ValueError, KeyError, TypeError):
            return False
        return self.status in (429, 503) and bool(error.get("code")) and "retry-after" in self.headers


async def one_request(client: httpx.AsyncClient) -> Outcome:
    outcome = Outcome(started=time.monotonic())
    try:
        async with client.stream("POST", "/v1/chat/completions", json=REQUEST) as response:
            outcome.status = response.status_code
            outcome.replica = response.headers.get("x-served-by", "")
            outcome.headers = {k.lower(): v for k, v in response.headers.items()}
            if response.status_code != 200:
                outcome.body = (await response.aread()).decode(errors="replace")
            else:
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        outcome.done = True
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.ended = time.monotonic()
    return outcome


async def drive(api_url: str, stop: asyncio.Event, outcomes: list[Outcome]) -> None:
    """USERS clients, each sending one streaming request after another until `stop` is set."""

    async def user(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            outcomes.append(await one_request(client))

    limits = httpx.Limits(max_connections=USERS, max_keepalive_connections=USERS)
    async with httpx.AsyncClient(base_url=api_url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(user(client) for _ in range(USERS)))


async def until(condition: Callable[[], bool], what: str, timeout: float = AFTER_KILL_WITHIN_SECONDS) -> None:
    """Keep the load running until `condition()` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.2)


def steady(outcomes: list[Outcome], replicas: int) -> bool:
    """The load is under way: USERS streams answered in full, by every replica."""
    answered = [o for o in outcomes if o.ok]
    return len(answered) >= USERS and len({o.replica for o in answered}) >= replicas


def describe(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.ok and not o.refusal]
    examples = "; ".join(f"{o.status} {o.replica} {o.error or o.body[:120]}" for o in failed[:5])
    refusals = Counter(f"{o.status} {json.loads(o.body)['error']['code']}" for o in outcomes if o.refusal)
    return (f"{len(outcomes)} requests, {sum(o.ok for o in outcomes)} ok, "
            f"{sum(refusals.values())} refused {dict(refusals) or ''}, {len(failed)} failed"
            + (f" ({examples})" if failed else ""))


def test_a_stream_passes_through_the_balancer_unbuffered(stack: ScaleStack):
    story = REQUEST | {"max_tokens": 48, "messages": [{"role": "user", "content": "Tell a story."}]}

    async def reads() -> tuple[httpx.Headers, list[bytes]]:
        async with (httpx.AsyncClient(base_url=stack.api_url, timeout=120) as client,
                    client.stream("POST", "/v1/chat/completions", json=story) as response):
            return response.headers, [chunk async for chunk in response.aiter_raw()]

    headers, chunks = asyncio.run(reads())
    assert headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in headers
    assert b"".join(chunks).rstrip().endswith(b"data: [DONE]")
    # The replica flushes a frame per token or so; a balancer that buffered the response would hand
    # the client one or two large reads instead of one read per flush.
    assert sum(b"data: " in chunk for chunk in chunks) > 5, [len(c) for c in chunks]


def test_rolling_restart_under_50_streaming_users_fails_nothing(stack: ScaleStack):
    before = {c["Id"]: c["State"]["StartedAt"] for c in stack.replicas()}
    counters_before = stack.backend_counters()

    async def scenario() -> tuple[list[Outcome], subprocess.CompletedProcess[str], float, float]:
        stop, outcomes = asyncio.Event(), []
        load = asyncio.create_task(drive(stack.api_url, stop, outcomes))
        await until(lambda: steady(outcomes, 2), f"{USERS} streams answered by both replicas")
        began = time.monotonic()
        restart = await asyncio.to_thread(
            subprocess.run, [sys.executable, str(REPO_ROOT / "scripts" / "rolling-restart"), "-p", stack.project,
                             "--stats-url", stack.stats_url], capture_output=True, text=True)
        finished = time.monotonic()
        # Every user sends at least one more request to the restarted pool before the load stops.
        await until(lambda: sum(o.started > finished for o in outcomes) >= USERS,
                    f"{USERS} requests after the restart")
        stop.set()
        await load
        return outcomes, restart, began, finished

    outcomes, restart, began, finished = asyncio.run(scenario())
    counters = {k: v - counters_before[k] for k, v in stack.backend_counters().items()}
    during = [o for o in outcomes if began <= o.started and o.ended <= finished]
    record_figure(f"rolling restart ({finished - began:.0f} s) under {USERS} streaming users: "
                         f"{describe(outcomes)}; {len(during)} started and ended during the restart; "
                         f"HAProxy retries {counters['wretr']}, redispatches {counters['wredis']}")
    record_figure("rolling-restart output:\n" + restart.stdout)
    pool_changes = [line for line in stack.compose("logs", "--no-log-prefix", "openchat-3.5-lb").stdout.splitlines()
                    if line.startswith("Server replicas/") or "has no server available" in line]
    record_figure("HAProxy's pool changes:\n" + "\n".join(pool_changes))

    assert restart.returncode == 0, restart.stdout + restart.stderr
    after = {c["Id"]: c["State"]["StartedAt"] for c in stack.replicas()}
    assert after.keys() == before.keys()
    assert all(after[i] != before[i] for i in before), "a replica was not restarted"
    assert restart.stdout.count("exited 0 after draining") == 2
    # The load really ran through the restart, on both replicas.
    assert len(during) > USERS
    assert len({o.replica for o in outcomes if o.ok}) == 2
    # Zero failed requests: every 200 stream ended with [DONE]; anything else was a clean refusal.
    failed = [o for o in outcomes if not o.ok and not o.refusal]
    assert not failed, describe(outcomes)
    assert all(o.done for o in outcomes if o.status == 200)


async def health_becomes(client: httpx.AsyncClient, status: str, timeout: float = 10) -> None:
    """Poll /health until it reports `status`. `docker kill` returns once the signal is sent, and the
    replica turns draining on its event loop a moment later: a single read right after can still say
    healthy (it did, on a busy CI run)."""
    deadline = time.monotonic() + timeout
    while (seen := (await client.get("/health")).json()["status"]) != status:
        if time.monotonic() > deadline:
            pytest.fail(f"/health still said {seen!r}, not {status!r}, {timeout} s after the signal")
        await asyncio.sleep(0.05)


async def health_is(client: httpx.AsyncClient, status: str) -> bool:
    """Whether /health reports `status` now; a replica that finished draining has closed its port."""
    try:
        return (await client.get("/health")).json()["status"] == status
    except httpx.HTTPError:
        return False


def refusals_logged(container_id: str) -> int:
    """503 request lines in a replica's JSON request log (its draining refusals)."""
    result = subprocess.run(["docker", "logs", container_id], capture_output=True, text=True)
    logs = result.stdout + result.stderr
    count = 0
    for line in logs.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            count += entry.get("event") == "request" and entry.get("status") == 503
    return count


def test_a_draining_replicas_refusals_are_retried_on_the_other(stack: ScaleStack):
    """503 `draining` is sent before any byte, and HAProxy replays the request on another replica.

    HAProxy normally takes a draining replica out within a second; to make that window certain,
    its health check is paused while requests arrive (Runtime API `disable health`).
    """
    wait_pool(stack, 2)
    victim = stack.replicas()[0]
    address = container_address(victim)
    name = stack.up()[address]
    counters_before = stack.backend_counters()
    refused_before = refusals_logged(victim["Id"])

    async def scenario() -> tuple[bool, list[Outcome]]:
        # A stream running on the victim itself (not through HAProxy) keeps it draining, and so still accepting
        # (and refusing) connections, until it ends. `ignore_eos` makes its length certain: a 200-token story
        # that the model ended early once let the victim finish draining and close its port before the burst
        # arrived (HAProxy then redispatched connection failures, and no refusal was left to see).
        story = REQUEST | {"max_tokens": STORY_TOKENS, "ignore_eos": True,
                           "messages": [{"role": "user", "content": "Tell a long story."}]}
        async with (httpx.AsyncClient(base_url=f"http://{address}", timeout=300) as direct,
                    httpx.AsyncClient(base_url=stack.api_url, timeout=120) as client,
                    direct.stream("POST", "/v1/chat/completions", json=story) as running):
            lines = running.aiter_lines()
            while not (await anext(lines)).startswith("data:"):
                pass
            stack.runtime_api(f"disable health replicas/{name}")
            try:
                subprocess.run(["docker", "kill", "--signal", "TERM", victim["Id"]], check=True)
                await health_becomes(direct, "draining")
                burst = await asyncio.gather(*(one_request(client) for _ in range(16)))
                still_draining = await health_is(direct, "draining")
            finally:
                stack.runtime_api(f"enable health replicas/{name}")
            assert still_draining, "the victim's stream ended before the burst did: the window closed"
            finished = "data: [DONE]" in [line async for line in lines]
        return finished, list(burst)

    try:
        story_finished, burst = asyncio.run(scenario())
        exit_code = subprocess.run(["docker", "wait", victim["Id"]], capture_output=True, text=True,
                                   timeout=VICTIM_EXITS_WITHIN_SECONDS).stdout.strip()
    finally:
        # Whatever failed above, the next test needs both replicas back (the victim may still be draining).
        subprocess.run(["docker", "wait", victim["Id"]], capture_output=True, timeout=VICTIM_EXITS_WITHIN_SECONDS)
        subprocess.run(["docker", "start", victim["Id"]], check=True)
    counters = {k: v - counters_before[k] for k, v in stack.backend_counters().items()}
    refused = refusals_logged(victim["Id"]) - refused_before
    record_figure(f"draining {name}: {len(burst)} requests through HAProxy, {sum(o.ok for o in burst)} ok; "
                         f"{refused} refused by the draining replica, HAProxy retries {counters['wretr']}, "
                         f"redispatches {counters['wredis']}")
    assert refused >= 1, "no request reached the draining replica: the test showed nothing"
    # Each refusal was replayed on the other replica (a retry, redispatched) and succeeded there.
    assert counters["wretr"] >= refused
    assert counters["wredis"] >= refused
    assert all(o.ok for o in burst), describe(burst)
    assert {o.replica for o in burst} == {n for a, n in stack.up().items() if a != address}
    assert story_finished, "the stream running on the draining replica did not finish"
    assert exit_code == "0"
    wait_pool(stack, 2)


def test_sigkill_of_one_replica_fails_only_its_running_streams(stack: ScaleStack):
    wait_pool(stack, 2)
    victim = stack.replicas()[-1]
    victim_server = stack.up()[container_address(victim)]
    counters_before = stack.backend_counters()

    async def scenario() -> tuple[list[Outcome], float]:
        stop, outcomes = asyncio.Event(), []
        load = asyncio.create_task(drive(stack.api_url, stop, outcomes))
        await until(lambda: steady(outcomes, 2), f"{USERS} streams answered by both replicas")
        await asyncio.to_thread(subprocess.run, ["docker", "kill", "--signal", "KILL", victim["Id"]], check=True)
        killed = time.monotonic()  # the container is gone (docker kill returned)
        # Keep the load on until every user had the time to send a request after the kill and get its
        # answer (a request takes seconds to tens of seconds on a busy 2-core machine).
        deadline = killed + AFTER_KILL_WITHIN_SECONDS
        while sum(o.started > killed for o in outcomes) < USERS and time.monotonic() < deadline:
            await asyncio.sleep(1)
        stop.set()
        await load
        return outcomes, killed

    outcomes, killed = asyncio.run(scenario())
    counters = {k: v - counters_before[k] for k, v in stack.backend_counters().items()}
    failed = [o for o in outcomes if not o.ok and not o.refusal]
    after_kill = [o for o in outcomes if o.started > killed]
    record_figure(f"SIGKILL of {victim_server} under {USERS} streaming users: {describe(outcomes)}; "
                         f"{len(after_kill)} sent after the kill, {sum(o.ok for o in after_kill)} of them ok; "
                         f"HAProxy retries {counters['wretr']}, redispatches {counters['wredis']}")

    # The kill hit requests in flight on the victim (else this test showed nothing): streams it had
    # started are cut; those it had not answered yet are replayed by HAProxy (empty-response) ...
    assert failed or counters["wredis"] > 0, "the replica was killed with nothing running on it"
    # ... and only streams fail: started before the kill, on the victim, cut after their 200 headers: the
    # connection broke (a stream that ended cleanly without [DONE] would be a fault, not the kill). The cut
    # may come after [DONE] itself: the body's closing chunk is a write of its own, and the kill can land
    # between the two (CI saw it once in 9 cut streams).
    for outcome in failed:
        assert outcome.started < killed, describe(outcomes)
        assert outcome.replica == victim_server, describe(outcomes)
        assert outcome.status == 200, describe(outcomes)
        assert outcome.error, describe(outcomes)
    # New requests keep succeeding, on the survivor.
    assert len(after_kill) >= USERS, "the survivor did not answer a request from every user after the kill"
    assert all(o.ok for o in after_kill), describe(after_kill)
    assert {o.replica for o in after_kill} == {name for name in stack.up().values()}
    assert victim_server not in {o.replica for o in after_kill}
