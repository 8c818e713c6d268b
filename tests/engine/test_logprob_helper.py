"""vLLM's token-rank helper (torch.compile'd, used by every request asking for logprobs) is compiled while the
engine starts: a request never pays for the compile, and one that cannot compile refuses logprobs instead of
killing the engine on the first request asking for them (as a CPU image without Python.h once did)."""

from __future__ import annotations

from pathlib import Path

import httpx

from support.server_process import DEMO_MODEL, ServerProcess, require_model

QUESTION = [{"role": "user", "content": "What is the capital of Japan?"}]
COMPILED = "vLLM's logprob helper compiled in"
NOT_COMPILED = "vLLM's logprob helper did not compile"


def test_the_helper_is_compiled_at_start_and_logprobs_are_answered(demo_server: ServerProcess) -> None:
    assert COMPILED in demo_server.log_text()
    response = httpx.post(f"{demo_server.base_url}/v1/chat/completions", timeout=300, json={
        "messages": QUESTION, "max_tokens": 4, "logprobs": True, "top_logprobs": 2})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["logprobs"]["content"]


def test_a_helper_that_cannot_compile_refuses_logprobs_and_serves_the_rest(tmp_path: Path) -> None:
    require_model(DEMO_MODEL)
    # No C++ compiler, and an empty inductor cache so that nothing compiled earlier is loaded instead.
    server = ServerProcess(tmp_path / "serve.log", env={
        "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    try:
        server.wait_ready(timeout=600)
        assert NOT_COMPILED in server.log_text()
        asking = [("chat/completions", {"messages": QUESTION, "logprobs": True}),
                  ("completions", {"prompt": "The capital of Japan is", "logprobs": 2, "echo": True})]
        for route, body in asking:
            response = httpx.post(f"{server.base_url}/v1/{route}", timeout=300, json={"max_tokens": 4, **body})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == "logprobs"
        response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=300,
                              json={"messages": QUESTION, "max_tokens": 4})
        assert response.status_code == 200, response.text
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    finally:
        code = server.stop()
    assert code == 0, server.log_text()[-3000:]
