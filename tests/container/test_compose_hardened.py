"""compose.yaml itself (the `cpu` profile, its own project name and free ports): it starts, it runs
hardened, and when the engine core dies under load the process exits and Compose brings it back.

The order matters and is the order of the file: the hardening checks read the first start, the
fault test kills the engine and waits for the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.clients import StreamResult, chat_body, is_openai_error, stream_chat
from support.compose import ComposeProject
from support.figures import record_figure

from .conftest import DEMO_MODEL, IMAGE

NO_END = {"0": -100, "2": -100}  # SmolLM2's end tokens banned: answers run to max_tokens
EXIT_BOUND_SECONDS = 20


@pytest.fixture(scope="module")
def project(docker_client: Any, demo_model_dir) -> Iterator[ComposeProject]:
    running = ComposeProject(f"hxp-test-{os.getpid()}", IMAGE, demo_model_dir(DEMO_MODEL).parent)
    try:
        running.up()
        seconds = running.wait_healthy()
        record_figure(f"compose start-to-healthy: {seconds:.1f} s ({IMAGE})")
        yield running
    finally:
        running.down()


def test_compose_yaml_itself_serves_chat(project: ComposeProject):
    response = httpx.post(f"{project.api_url}/v1/chat/completions", timeout=120,
                          json=chat_body("What is the capital of Japan?", max_tokens=16, temperature=0))
    assert response.status_code == 200, response.text
    assert "Tokyo" in response.json()["choices"][0]["message"]["content"]
    assert httpx.get(project.metrics_url, timeout=10).status_code == 200


def test_root_filesystem_is_read_only_and_tmp_is_writable(project: ComposeProject):
    assert project.inspect()["HostConfig"]["ReadonlyRootfs"] is True
    denied = project.exec("touch", "/app/written-by-test")
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr
    assert project.exec("touch", "/tmp/written-by-test").returncode == 0


def test_no_process_has_a_capability_or_runs_as_root(project: ComposeProject):
    # Every process of the container: tini (PID 1), the server, vLLM's engine core.
    status = project.exec("sh", "-c", "grep -H -E '^(CapEff|CapPrm|CapBnd|Uid):' /proc/[0-9]*/status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert len([line for line in lines if ":CapEff:" in line]) >= 3, lines
    for line in lines:
        field, value = line.split(":", 2)[1:]
        if field.startswith("Cap"):
            assert int(value.strip(), 16) == 0, line
        else:
            assert "0" not in value.split(), line  # real, effective, saved, fs uid
    host_config = project.inspect()["HostConfig"]
    assert [c.upper() for c in host_config["CapDrop"]] == ["ALL"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]


def test_pids_limit_and_log_rotation_are_set(project: ComposeProject):
    host_config = project.inspect()["HostConfig"]
    assert host_config["PidsLimit"] > 0
    log_config = host_config["LogConfig"]
    assert log_config["Type"] == "json-file"
    assert log_config["Config"]["max-size"]
    assert int(log_config["Config"]["max-file"]) >= 2
    assert host_config["RestartPolicy"]["Name"] in ("unless-stopped", "always", "on-failure")


# libnuma (C code in vLLM's CPU worker) writes these straight to file descriptor 2 when the container's
# seccomp profile refuses NUMA memory-policy calls (Docker allows them only with CAP_SYS_NICE, which
# the hardened service drops): not a log line of ours, vLLM's or torch's. docs/operations.md says so.
LIBNUMA_LINES = {"get_mempolicy: Operation not permitted", "set_mempolicy: Operation not permitted"}


def test_every_log_line_is_json(project: ComposeProject):
    plain = []
    for line in project.logs().splitlines():
        _, _, message = line.partition(" | ")
        try:
            json.loads(message)
        except ValueError:
            if message.strip() not in LIBNUMA_LINES:
                plain.append(message)
    assert not plain, f"{len(plain)} plain-text log lines:\n" + "\n".join(plain[:20])


async def _load_then_kill(project: ComposeProject, engine_core_pid: int) -> dict[str, Any]:
    url = f"{project.api_url}/v1/chat/completions"
    mid_stream = asyncio.Event()
    seen = 0

    def on_frame(result: StreamResult) -> bool:
        nonlocal seen
        if len(result.frames) == 2:
            seen += 1
            if seen == 3:
                mid_stream.set()
        return False

    async with httpx.AsyncClient(timeout=120) as client:
        streams = [asyncio.create_task(stream_chat(client, url, chat_body(
            f"Story {n}", max_tokens=1000, logit_bias=NO_END), on_frame)) for n in range(3)]
        plain = [asyncio.create_task(client.post(url, json=chat_body(
            f"Essay {n}", max_tokens=1000, logit_bias=NO_END))) for n in range(3)]
        await asyncio.wait_for(mid_stream.wait(), timeout=300)
        os.kill(engine_core_pid, signal.SIGKILL)
        killed_wall = time.time()  # compared with Docker's event time: same host clock
        killed_at = time.monotonic()
        health = []
        while time.monotonic() - killed_at < 30:
            try:
                response = await client.get(f"{project.api_url}/health", timeout=3)
                health.append(response.json().get("status"))
            except httpx.HTTPError:
                health.append("gone")
                break
            await asyncio.sleep(0.2)
        return {"streams": await asyncio.gather(*streams),
                "plain": await asyncio.gather(*plain, return_exceptions=True), "health": health,
                "killed_wall": killed_wall}


def test_engine_core_killed_under_load_exits_and_compose_restarts_it(project: ComposeProject, docker_client):
    container = docker_client.containers.get(project.container_id())
    top = container.top(ps_args="-eo pid,args")
    (engine_core_pid,) = [int(row[0]) for row in top["Processes"] if "EngineCore" in row[1]]
    since = int(time.time()) - 1
    outcome = asyncio.run(_load_then_kill(project, engine_core_pid))

    for result in outcome["streams"]:
        assert result.status == 200, result
        assert result.done, result
        (error,) = result.error_frames
        assert is_openai_error(error), error
        assert error["error"]["code"] == "engine_failed", error
    for response in outcome["plain"]:
        assert isinstance(response, httpx.Response), repr(response)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "engine_failed"
    assert "healthy" not in outcome["health"][1:], outcome["health"]
    assert "failed" in outcome["health"] or "gone" in outcome["health"], outcome["health"]

    # The process exited non-zero (the `die` event carries the exit code) and Compose restarted it.
    deadline = time.time() + 60
    dies: list[dict[str, Any]] = []
    while not dies and time.time() < deadline:
        dies = list(docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                         filters={"container": container.id, "event": "die"}))
        time.sleep(1)
    assert dies, "the container never exited after its engine core was killed"
    exit_code = int(dies[0]["Actor"]["Attributes"]["exitCode"])
    exited_after = dies[0]["timeNano"] / 1e9 - outcome["killed_wall"]
    record_figure(f"engine core killed under load: the container exited {exit_code}, {exited_after:.1f} s after")
    # Documented: exit 4, whichever of the service's exits ends it (its last resort is a libc timer calling
    # _exit(4), not SIGALRM's 142).
    assert exit_code == 4, exit_code
    # The service's own backstop (10 s after it sees the death) plus the time to see it.
    assert exited_after < EXIT_BOUND_SECONDS, exited_after
    project.wait_healthy()
    assert project.inspect()["RestartCount"] >= 1
    again = httpx.post(f"{project.api_url}/v1/chat/completions", timeout=120,
                       json=chat_body("Say hello.", max_tokens=8))
    assert again.status_code == 200, again.text

