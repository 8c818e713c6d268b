"""A real Prometheus (our image, Debian's prometheus 2.42) scraping the service image on one Docker network,
as compose profile `monitoring` runs them: after some traffic, every piece of PromQL that monitoring/ ships
must find data, or it names a metric or label value the service does not export.

What "finds data" means for each kind of expression (support/promql.py takes them apart):
- every metric selector `name{matchers}` in any expression matches at least one series;
- a recording rule's and a dashboard panel's expression, evaluated whole, returns at least one series
  (this also proves the joins: `a / b` with label sets that do not match returns nothing);
- an alert's expression is empty while all is well (the comparison filters everything out), so each side of
  its top-level comparison is evaluated instead (`signal > threshold` -> `signal`), and `absent(X)` -> `X`;
- a dashboard variable `label_values(metric, label)`: the metric's series carry that label;
- Prometheus itself evaluates every loaded rule without error (rule health "ok") and scrapes the target.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hxp_tools.servers import ServerFailed, poll_health
from support.promql import comparison_operands, metric_name, selectors, shipped_queries

from .conftest import DEMO_MODEL, HEALTHY_WITHIN_SECONDS, IMAGE, container_env, missing_prerequisite

PROMETHEUS_IMAGE = os.environ.get("HXP_PROMETHEUS_IMAGE", "hxp-llm-prometheus:local")
SERVICE_ALIAS = "openchat-3.5-cpu"  # compose's service name, which prometheus.yml resolves
MODEL = "openchat-3.5"
# Upper bounds for a stuck stack, not targets: scrapes and rule evaluations run every 5 s.
DATA_WITHIN_SECONDS = 120


class Stack:
    def __init__(self, client: Any, network: Any, service: Any, prometheus: Any) -> None:
        self.client, self.network, self.service, self.prometheus = client, network, service, prometheus
        service.reload()
        prometheus.reload()
        self.api_url = f"http://127.0.0.1:{service.ports['11402/tcp'][0]['HostPort']}"
        self.prometheus_url = f"http://127.0.0.1:{prometheus.ports['9090/tcp'][0]['HostPort']}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {expr!r}: {body.get('error', response.text)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.logs(tail=60).decode(errors='replace')}"
                         for c in (self.service, self.prometheus))


@pytest.fixture(scope="module")
def stack(docker_client: Any, demo_model_dir: Callable[[str], Path]) -> Iterator[Stack]:
    import docker

    try:
        docker_client.images.get(PROMETHEUS_IMAGE)
    except docker.errors.ImageNotFound:
        missing_prerequisite(f"image {PROMETHEUS_IMAGE} is not built; run scripts/build-monitoring-image")
    name = f"hxp-monitoring-test-{uuid.uuid4().hex[:8]}"
    network = docker_client.networks.create(name, driver="bridge")
    started: list[Any] = []
    try:
        env = container_env()
        # One slot and no queue: a second request while one runs is a 429 (queue_full), cheaply.
        # A generous latency target: some requests meet it even on a loaded host, so the "met" counter exists.
        env.update(OPENCHAT_3_5_CONCURRENT_USERS="1", OPENCHAT_3_5_MAX_QUEUE_SIZE="0",
                   OPENCHAT_3_5_TARGET_LATENCY_MS="120000")
        service = docker_client.containers.run(
            IMAGE, detach=True, name=f"{name}-service", environment=env,
            volumes={str(demo_model_dir(DEMO_MODEL).parent): {"bind": "/opt/models", "mode": "ro"}},
            mem_limit="8g", nano_cpus=int((os.cpu_count() or 1) * 1e9), shm_size="1g",
            ports={"11402/tcp": ("127.0.0.1", None)}, network=name,
            networking_config={name: docker_client.api.create_endpoint_config(aliases=[SERVICE_ALIAS])})
        started.append(service)
        prometheus = docker_client.containers.run(
            PROMETHEUS_IMAGE, detach=True, name=f"{name}-prometheus", network=name,
            ports={"9090/tcp": ("127.0.0.1", None)}, mem_limit="1g")
        started.append(prometheus)
        yield Stack(docker_client, network, service, prometheus)
    finally:
        for container in started:
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
        network.remove()


def wait_healthy(stack: Stack) -> None:
    def still_running() -> str | None:
        stack.service.reload()
        return None if stack.service.status == "running" else "service exited before turning healthy"

    try:
        poll_health(f"{stack.api_url}/health", timeout_s=HEALTHY_WITHIN_SECONDS, still_running=still_running)
    except ServerFailed as exc:
        pytest.fail(f"{exc}:\n{stack.logs()}")


def chat(max_tokens: int, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": max_tokens, "stream": stream, "temperature": 0, **extra}


def send_traffic(stack: Stack) -> None:
    """Answers (plain and streamed), client errors, a 429, and a client that leaves mid-stream."""
    url = f"{stack.api_url}/v1/chat/completions"
    with httpx.Client(timeout=120) as client:
        assert client.post(url, json=chat(4)).status_code == 200
        assert client.post(url, json=chat(8, stream=True, stream_options={"include_usage": True})).status_code == 200
        assert client.post(url, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
        assert client.post(url, json={"model": MODEL}).status_code == 400
        # Hold the only slot with a long stream, get refused, then hang up on the stream.
        with client.stream("POST", url, json=chat(400, stream=True)) as held:
            assert held.status_code == 200
            lines = held.iter_lines()
            while not next(lines).startswith("data: {"):
                pass
            refused = client.post(url, json=chat(4))
            assert refused.status_code == 429, refused.text
        # The service notices the departure, aborts the engine request and frees the slot.
        deadline = time.monotonic() + 60
        while httpx.get(f"{stack.api_url}/health", timeout=10).json().get("running") != 0:
            assert time.monotonic() < deadline, "slot not freed after the client left"
            time.sleep(0.2)


def missing_data(stack: Stack) -> list[str]:
    """Every shipped expression that finds no data, with why; empty when all do."""
    problems: list[str] = []
    seen: set[str] = set()

    def check(source: str, expr: str, what: str) -> None:
        if (expr, what) in seen:
            return
        seen.add((expr, what))
        if not stack.query(expr):
            problems.append(f"{source}: {what} `{expr}` returned no series")

    for query in shipped_queries(MODEL):
        for selector in selectors(query.expr):
            check(query.source, selector, f"selector of metric {metric_name(selector)}")
        if query.kind in ("record", "panel"):
            check(query.source, query.expr, "expression")
        elif query.kind == "alert":
            for operand in comparison_operands(query.expr):
                check(query.source, operand, "alert signal")
        elif query.kind == "variable":
            label = query.source.split("(label ")[1].rstrip(")")
            if not any(label in series["metric"] for series in stack.query(query.expr)):
                problems.append(f"{query.source}: `{query.expr}` has no series with label {label}")
    return problems


def test_prometheus_scrapes_the_service_and_every_shipped_query_finds_data(stack: Stack) -> None:
    wait_healthy(stack)
    send_traffic(stack)

    targets = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=30).json()["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["labels"]["service"]) for t in targets] == [("hxp-llm", SERVICE_ALIAS)], targets

    # Scrapes and rule evaluations run every 5 s: poll until everything has data (or the bound passes).
    deadline = time.monotonic() + DATA_WITHIN_SECONDS
    problems = missing_data(stack)
    while problems and time.monotonic() < deadline:
        time.sleep(5)
        problems = missing_data(stack)
    assert not problems, "PromQL that finds no data:\n" + "\n".join(problems)

    groups = httpx.get(f"{stack.prometheus_url}/api/v1/rules", timeout=30).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    shipped = [q for q in shipped_queries(MODEL) if q.kind in ("alert", "record")]
    assert len(rules) == len(shipped), "Prometheus did not load every rule"
    broken = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not broken, f"rules that Prometheus cannot evaluate: {broken}"
    # Healthy and lightly used: nothing critical fires.
    firing = httpx.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
    assert not [a for a in firing if a["labels"].get("severity") == "critical" and a["state"] == "firing"], firing

