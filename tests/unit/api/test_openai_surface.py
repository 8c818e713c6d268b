"""Every chat request field does what OpenAI or vLLM documents: n, logprobs, response_format, vLLM's
sampling extensions, the model's sampling defaults; and the request schema is published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from api_harness import MODEL, Served, chat_body, content_frames, sse_chunks
from pydantic import BaseModel

from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio


def sdk(served: Served) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=served.app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0)


async def test_n_choices_plain(served: Served) -> None:
    served.engine.enqueue(*"abc")
    response = await served.chat(chat_body(n=3, max_tokens=10))
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in body["choices"]] == ["abc"] * 3
    assert [c["finish_reason"] for c in body["choices"]] == ["stop"] * 3
    assert body["usage"]["completion_tokens"] == 9  # every choice's tokens count
    assert served.engine.requests[-1].sampling.n == 3


async def test_n_choices_streamed_each_with_its_role_text_and_finish(served: Served) -> None:
    served.engine.enqueue(*"abcdef")
    response = await served.chat(chat_body(n=2, max_tokens=10, stream=True,
                                           stream_options={"include_usage": True}))
    chunks = sse_chunks(response.text)
    by_choice: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for chunk in chunks:
        for choice in chunk["choices"]:
            by_choice[choice["index"]].append(choice)
    for frames in by_choice.values():
        assert frames[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(f["delta"].get("content") or "" for f in frames) == "abcdef"
        assert [f["finish_reason"] for f in frames if f["finish_reason"]] == ["stop"]
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert all(len(c["choices"]) <= 1 for c in chunks)  # one choice per chunk, as OpenAI streams them


async def test_logprobs_with_top_alternatives_plain_and_streamed(served: Served) -> None:
    async with sdk(served) as client:
        served.engine.enqueue(*"Hi!")
        plain = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                     logprobs=True, top_logprobs=3)
        served.engine.enqueue(*"Hi!")
        stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                      logprobs=True, top_logprobs=2, stream=True)
        chunks = [c async for c in stream]
    content = plain.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [t.token for t in content] == ["H", "i", "!"]
    assert all(len(t.top_logprobs) == 3 for t in content)
    assert content[0].bytes == list(b"H")
    # The alternatives carry their own bytes, as OpenAI's do (the fake engine's: the token, then alt1, alt2).
    assert [(a.token, a.bytes) for a in content[0].top_logprobs] == [("H", list(b"H")), ("alt1", list(b"alt1")),
                                                                     ("alt2", list(b"alt2"))]
    assert content[0].top_logprobs[0].logprob >= content[0].top_logprobs[1].logprob
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == ["H", "i", "!"]
    assert all(len(t.top_logprobs) == 2 for t in streamed)
    for chunk in chunks:  # each chunk carries its own tokens' logprobs, as OpenAI's chunks do
        if chunk.choices and chunk.choices[0].delta.content:
            assert chunk.choices[0].logprobs is not None
            assert chunk.choices[0].logprobs.content is not None
            assert "".join(t.token for t in chunk.choices[0].logprobs.content) == chunk.choices[0].delta.content
    assert served.engine.requests[-1].sampling.logprobs == 2


async def test_no_logprobs_unless_asked(served: Served) -> None:
    body = (await served.chat(chat_body())).json()
    assert body["choices"][0]["logprobs"] is None
    assert served.engine.requests[-1].sampling.logprobs is None


class Capital(BaseModel):
    country: str
    capital: str


async def test_sdk_parse_with_a_pydantic_response_format(served: Served) -> None:
    served.engine.enqueue(*json.dumps({"country": "France", "capital": "Paris"}))
    async with sdk(served) as client:
        completion = await client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Capital of France?"}], response_format=Capital)
    assert completion.choices[0].message.parsed == Capital(country="France", capital="Paris")
    schema = served.engine.requests[-1].sampling.json_schema
    assert schema is not None
    assert schema["properties"]["capital"]["type"] == "string"


async def test_json_object_response_format_constrains_generation(served: Served) -> None:
    await served.chat(chat_body(response_format={"type": "json_object"}))
    sampling = served.engine.requests[-1].sampling
    assert sampling.json_object is True
    assert sampling.json_schema is None


async def test_vllm_sampling_extensions_reach_the_engine(served: Served) -> None:
    await served.chat(chat_body(top_k=5, min_p=0.1, repetition_penalty=1.2, min_tokens=3,
                                stop_token_ids=[7, 9], seed=42, max_tokens=20))
    sampling = served.engine.requests[-1].sampling
    assert (sampling.top_k, sampling.min_p, sampling.repetition_penalty) == (5, 0.1, 1.2)
    assert (sampling.min_tokens, sampling.ignore_eos, sampling.seed) == (3, False, 42)
    # The model's own end-of-turn id stays: a client's stop ids add to it, never replace it.
    assert sampling.stop_token_ids == (2, 7, 9)


async def test_ignore_eos_leaves_the_models_end_of_turn_out_of_the_stop_ids(served: Served) -> None:
    # vLLM's ignore_eos ignores the model's EOS and generation_config's eos ids, but never a stop id:
    # adding the end of turn to stop_token_ids would stop the answer there anyway (as it did: 8 of 40
    # tokens, finish_reason "stop"). The client's own stop ids still stop it, as under `vllm serve`.
    await served.chat(chat_body(ignore_eos=True, stop_token_ids=[7, 9], max_tokens=20))
    sampling = served.engine.requests[-1].sampling
    assert sampling.ignore_eos is True
    assert sampling.stop_token_ids == (7, 9)


@pytest.mark.parametrize(("field", "value"), [("min_p", 1.5), ("repetition_penalty", 0), ("min_tokens", -1),
                                               ("stop_token_ids", [-1]), ("ignore_eos", "yes"), ("top_logprobs", 21)])
async def test_vllm_extensions_out_of_bounds_are_400(served: Served, field: str, value: Any) -> None:
    extra = {"logprobs": True} if field == "top_logprobs" else {}
    response = await served.chat(chat_body(**{field: value}, **extra))
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith(field)


async def test_sampling_defaults_come_from_the_models_generation_config(serve_app, tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.5, "top_p": 0.9}))
    async with serve_app(model_path=tmp_path) as served:
        await served.chat(chat_body())
        defaults = served.engine.requests[-1].sampling
        await served.chat(chat_body(temperature=0.0, top_p=1.0))
        explicit = served.engine.requests[-1].sampling
    assert (defaults.temperature, defaults.top_p) == (0.5, 0.9)
    assert (explicit.temperature, explicit.top_p) == (0.0, 1.0)


async def test_config_default_temperature_wins_over_the_model(serve_app, tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.5}))
    async with serve_app(model_path=tmp_path, default_temperature=0.2) as served:
        await served.chat(chat_body())
    assert served.engine.requests[-1].sampling.temperature == 0.2


async def test_openai_defaults_without_generation_config(served: Served) -> None:
    await served.chat(chat_body())
    sampling = served.engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (1.0, 1.0, -1)


async def test_request_schemas_are_in_openapi(served: Served) -> None:
    schema = (await served.client.get("/openapi.json")).json()
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["required"] == ["messages"]  # model is optional
    assert {"messages", "logprobs", "n", "response_format", "min_p"} <= set(chat["properties"])
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/ChatCompletionRequest"
    assert "CompletionRequest" in schema["components"]["schemas"]
    docs = await served.client.get("/docs")
    assert docs.status_code == 200


async def test_docs_page_works_offline(served: Served) -> None:
    # FastAPI's default /docs loads Swagger UI from a CDN: blank on an air-gapped host.
    page = (await served.client.get("/docs")).text
    assert "cdn." not in page
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in page
        answer = await served.client.get(asset)
        assert answer.status_code == 200
        assert len(answer.content) > 10_000


async def test_end_user_id_is_logged_with_the_request(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="hxp_enterprise_llm.requests"):
        await served.chat(chat_body(user="end-user-7"))
    fields = [getattr(r, "fields", {}) for r in caplog.records]
    assert any(f.get("end_user") == "end-user-7" for f in fields)


async def test_stream_frames_keep_openai_chunk_fields(served: Served) -> None:
    served.engine.enqueue(*"Hello there")
    chunks = sse_chunks((await served.chat(chat_body(stream=True))).text)
    for chunk in chunks:
        assert set(chunk) >= {"id", "object", "created", "model", "choices"}
        assert chunk["object"] == "chat.completion.chunk"
        for choice in chunk["choices"]:
            assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
    assert content_frames(chunks)


async def test_a_request_for_the_demo_engine_without_model_field_streams(serve_app) -> None:
    async with serve_app(FakeEngine()) as served:
        response = await served.client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Streaming test"}], "max_tokens": 100, "stream": True})
    assert response.status_code == 200
    assert sse_chunks(response.text)[0]["model"] == MODEL


@pytest.mark.parametrize(("field", "value"), [("seed", 2**64), ("seed", -(2**63) - 1), ("seed", 10**30),
                                               ("top_k", 2**70), ("min_tokens", 2**70)])
async def test_integers_beyond_what_the_engine_takes_are_400_not_500(served: Served, field: str,
                                                                     value: int) -> None:
    # Found by the fuzzer: the engine failed on these with a 500.
    response = await served.chat(chat_body(**{field: value}))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
    assert served.engine.requests == []


async def test_top_k_beyond_the_vocabulary_means_off(served: Served) -> None:
    await served.chat(chat_body(top_k=2**31 - 1))
    assert served.engine.requests[-1].sampling.top_k == -1
