"""`/v1/completions` (text or token-id prompts, echo, logprobs, streaming), `/tokenize`, `/detokenize`, `/version`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from api_harness import MODEL, Served, assert_openai_error, chat_body, eventually, sse_chunks
from prometheus_client.parser import text_string_to_metric_families

from hxp_enterprise_llm.api.metrics import render_metrics
from hxp_enterprise_llm.orchestration.service_state import ServiceState
from support.fake_engine import CharTokenizer, FakeEngine

pytestmark = pytest.mark.anyio
TOKENS = CharTokenizer()


async def complete(served: Served, **body: object) -> httpx.Response:
    return await served.client.post("/v1/completions", json=body)


async def test_text_prompt_gets_bos_and_a_legacy_completion_body(served: Served) -> None:
    served.engine.enqueue(*" world")
    response = await complete(served, prompt="Hello", max_tokens=10)
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == " world"  # a raw completion keeps its leading space
    assert body["choices"][0]["finish_reason"] == "stop"
    assert served.engine.requests[-1].prompt_token_ids == TOKENS.encode("Hello", add_special_tokens=True)
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12,
                             "prompt_tokens_details": {"cached_tokens": 0}}


async def test_token_id_prompt_is_sent_as_is(served: Served) -> None:
    ids = TOKENS.encode("abc", add_special_tokens=False)
    await complete(served, prompt=ids, max_tokens=5)
    assert list(served.engine.requests[-1].prompt_token_ids) == ids


async def test_a_batch_of_one_prompt_is_that_prompt_and_larger_batches_are_refused(served: Served) -> None:
    await complete(served, prompt=["abc"], max_tokens=5)
    assert list(served.engine.requests[-1].prompt_token_ids) == TOKENS.encode("abc")
    error = assert_openai_error(await complete(served, prompt=["a", "b"]), 400, param="prompt")
    assert "one prompt per request" in error["message"]


async def test_a_completion_past_the_context_names_its_prompt(served: Served) -> None:
    error = assert_openai_error(await complete(served, prompt="x", max_tokens=5000), 400,
                                param="prompt", code="context_length_exceeded")
    assert "in the prompt" in error["message"]  # a completion request has no messages


async def test_out_of_vocabulary_token_ids_are_400(served: Served) -> None:
    assert_openai_error(await complete(served, prompt=[1, -5]), 400, param="prompt")
    assert_openai_error(await complete(served, prompt=[1, 10**9]), 400, param="prompt")


async def test_echo_with_logprobs_scores_the_prompt_as_evaluation_harnesses_do(served: Served) -> None:
    served.engine.enqueue(*"d")
    body = (await complete(served, prompt="abc", max_tokens=1, echo=True, logprobs=2, temperature=0)).json()
    choice = body["choices"][0]
    assert choice["text"] == "abcd"
    logprobs = choice["logprobs"]
    # BOS, a, b, c from the prompt, then the generated d; the first token has nothing before it.
    assert logprobs["tokens"] == ["", "a", "b", "c", "d"]
    assert logprobs["token_logprobs"][0] is None
    assert all(isinstance(lp, float) for lp in logprobs["token_logprobs"][1:])
    assert logprobs["top_logprobs"][0] is None
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"][1:])
    assert len(logprobs["text_offset"]) == len(logprobs["tokens"])
    sampling = served.engine.requests[-1].sampling
    assert (sampling.logprobs, sampling.prompt_logprobs) == (2, 2)


async def test_sdk_completions_echo_and_logprobs(served: Served) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=served.app), base_url="http://test")
    served.engine.enqueue(*" there")
    async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0) as client:
        completion = await client.completions.create(model=MODEL, prompt="Hi", echo=True, logprobs=1, max_tokens=8)
    assert completion.choices[0].text == "Hi there"
    assert completion.choices[0].logprobs is not None
    assert completion.choices[0].logprobs.tokens[-1] == "e"


async def test_streamed_completion_with_echo_and_usage(served: Served) -> None:
    served.engine.enqueue(*" streamed")
    response = await complete(served, prompt="Text", max_tokens=20, stream=True, echo=True,
                              stream_options={"include_usage": True})
    chunks = sse_chunks(response.text)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "Text streamed"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 9


async def test_completions_default_to_16_tokens_as_openai(served: Served) -> None:
    await complete(served, prompt="x")
    assert served.engine.requests[-1].sampling.max_tokens == 16
    await complete(served, prompt="x", max_tokens=None)  # null is "not given", not "the rest of the context"
    assert served.engine.requests[-1].sampling.max_tokens == 16


async def test_tokenize_counts_agree_with_usage(served: Served) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count me"}]
    tokenized = (await served.client.post("/tokenize", json={"messages": messages})).json()
    usage = (await served.chat({"messages": messages, "max_tokens": 5})).json()["usage"]
    assert tokenized["count"] == len(tokenized["tokens"]) == usage["prompt_tokens"]
    assert tokenized["tokens"] == list(served.engine.requests[-1].prompt_token_ids)
    assert tokenized["max_model_len"] == 4096


async def test_tokenize_a_prompt_and_detokenize_it_back(served: Served) -> None:
    with_bos = (await served.client.post("/tokenize", json={"prompt": "héllo"})).json()
    bare = (await served.client.post("/tokenize", json={"prompt": "héllo", "add_special_tokens": False})).json()
    assert with_bos["tokens"] == [TOKENS.bos_token_id, *bare["tokens"]]
    back = (await served.client.post("/detokenize", json={"tokens": bare["tokens"]})).json()
    assert back == {"prompt": "héllo"}


@pytest.mark.parametrize("body", [{}, {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
                                  {"prompt": "x", "model": "other"}, {"prompt": 5}, {"prompt": "x", "extra": 1}])
async def test_bad_tokenize_requests_are_4xx_openai_errors(served: Served, body: dict[str, object]) -> None:
    response = await served.client.post("/tokenize", json=body)
    assert_openai_error(response, 404 if body.get("model") == "other" else 400)


@pytest.mark.parametrize("body", [{"prompt": "x", "add_generation_prompt": False},
                                  {"prompt": "x", "add_generation_prompt": True},
                                  {"messages": [{"role": "user", "content": "y"}], "add_generation_prompt": False}])
async def test_add_generation_prompt_is_refused_where_it_would_do_nothing(served: Served,
                                                                         body: dict[str, object]) -> None:
    # A prompt is tokenized as it is whatever the flag says; chat messages always open the assistant's turn.
    response = await served.client.post("/tokenize", json=body)
    assert_openai_error(response, 400, param="add_generation_prompt")


async def test_add_generation_prompt_true_with_messages_is_what_a_chat_request_sends(served: Served) -> None:
    messages = [{"role": "user", "content": "y"}]
    plain = (await served.client.post("/tokenize", json={"messages": messages})).json()
    explicit = (await served.client.post("/tokenize", json={"messages": messages, "add_generation_prompt": True}))
    assert explicit.json() == plain


async def test_detokenize_refuses_ids_outside_the_vocabulary(served: Served) -> None:
    assert_openai_error(await served.client.post("/detokenize", json={"tokens": [-1]}), 400, param="tokens")


async def test_version_names_the_service_engine_and_model(served: Served) -> None:
    body = (await served.client.get("/version")).json()
    assert body["version"]
    assert body["engine"] == "fake 1"
    assert body["model"] == MODEL


def test_cli_version_names_the_package_and_vllm() -> None:
    hxp_llm = Path(sys.executable).parent / "hxp-llm"
    result = subprocess.run([str(hxp_llm), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("hxp-llm hxp-enterprise-llm ")
    assert "vllm" in result.stdout


async def test_models_report_the_quantization(served: Served, tmp_path: Path) -> None:
    card = (await served.client.get("/v1/models")).json()["data"][0]
    assert "quantization" in card


async def test_models_read_the_quantization_from_config_json(serve_app, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    async with serve_app(model_path=tmp_path) as served:
        card = (await served.client.get("/v1/models")).json()["data"][0]
        version = (await served.client.get("/version")).json()
    assert card["quantization"] == version["quantization"] == "awq"


# The quantization_config of the int4 demo model (models/smollm2-135m-instruct-w4a16/config.json, trimmed)
# and of an AWQ checkpoint such as TheBloke/openchat-3.5-0106-AWQ.
W4A16_CONFIG = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"group_0": {
    "format": "pack-quantized", "input_activations": None, "targets": ["Linear"],
    "weights": {"group_size": 32, "num_bits": 4, "strategy": "group", "symmetric": False, "type": "int"}}}}
W8A8_CONFIG = {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"group_0": {
    "input_activations": {"dynamic": True, "num_bits": 8, "strategy": "token"}, "targets": ["Linear"],
    "weights": {"group_size": None, "num_bits": 8, "strategy": "channel"}}}}
AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True}


@pytest.mark.parametrize(("quantization_config", "reported"), [
    (W4A16_CONFIG, "compressed-tensors:w4a16-g32"),
    (W8A8_CONFIG, "compressed-tensors:w8a8"),
    (AWQ_CONFIG, "awq:w4-g128"),
    (None, "none"),
])
async def test_quantization_is_reported_everywhere_from_config_json(
        serve_app, tmp_path: Path, quantization_config: dict[str, Any] | None, reported: str) -> None:
    config: dict[str, Any] = {"architectures": ["LlamaForCausalLM"]}
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (tmp_path / "config.json").write_text(json.dumps(config))
    async with serve_app(model_path=tmp_path) as served:
        card = (await served.client.get("/v1/models")).json()["data"][0]
        health = (await served.client.get("/health")).json()
        info = served.ctx.service.get_model_info()
        exposition = render_metrics(served.ctx.metrics.registry).decode()
    (build_info,) = [s for f in text_string_to_metric_families(exposition) if f.name == "openchat_build_info"
                     for s in f.samples]
    assert card["quantization"] == health["quantization"] == info["quantization"] == reported
    assert build_info.labels["quantization"] == reported


async def test_the_dtype_reported_is_the_engine_s_once_loaded_not_the_configured_auto(serve_app) -> None:
    engine = FakeEngine(start_delay=0.2)
    engine.dtype = "bfloat16"  # as a VllmEngine reports `auto` resolved on an AVX512-BF16 CPU
    async with serve_app(engine, wait_ready=False, dtype="auto") as served:
        assert (await served.client.get("/version")).json()["dtype"] == "auto"  # loading: nothing resolved yet
        await eventually(lambda: served.ctx.health.state == ServiceState.READY, "service ready")
        card = (await served.client.get("/v1/models")).json()["data"][0]
        version = (await served.client.get("/version")).json()
        exposition = render_metrics(served.ctx.metrics.registry).decode()
    build_info = [s for f in text_string_to_metric_families(exposition) if f.name == "openchat_build_info"
                  for s in f.samples]
    assert card["dtype"] == version["dtype"] == "bfloat16"
    assert [sample.labels["dtype"] for sample in build_info] == ["bfloat16"]  # the "auto" series is gone


async def test_completion_and_chat_share_admission(serve_app) -> None:
    async with serve_app(concurrent_users=1, max_queue_size=0) as served:
        served.engine.enqueue(*"held", hold_after=0)
        holder = asyncio.create_task(served.client.post("/v1/completions", json={"prompt": "x"},
                                                        headers={"X-Request-ID": "holder"}))
        await served.started("holder")
        refused = await served.chat(chat_body())
        await served.release("holder")
        assert (await holder).status_code == 200
    assert_openai_error(refused, 429, code="queue_full")


@pytest.mark.parametrize(("echo", "logprobs"), [(True, 2), (False, 2), (True, None)])
async def test_a_streamed_completion_carries_what_the_plain_one_does(serve_app, echo: bool,
                                                                      logprobs: int | None) -> None:
    # The plain answer is the oracle: per choice, the streamed texts and logprobs (echo included)
    # put together are the plain choice's, with the text offsets running on across frames.
    request = {"prompt": "Text", "max_tokens": 30, "echo": echo, "logprobs": logprobs, "n": 2, "temperature": 0.7}
    async with serve_app(stream_flush_interval_ms=60_000, response_chunk_size=4) as served:
        served.engine.enqueue(*" a streamed answer")
        plain = (await complete(served, **request)).json()
        served.engine.enqueue(*" a streamed answer")
        chunks = sse_chunks((await complete(served, **request, stream=True)).text)

    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("cmpl-")
    assert {(c["object"], c["model"], c["created"]) for c in chunks} == {("text_completion", MODEL,
                                                                          chunks[0]["created"])}
    for index, expected in enumerate(plain["choices"]):
        frames = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert len(frames) > 2  # (the echo, then) the answer in several frames
        assert "".join(f["text"] for f in frames) == expected["text"] == ("Text" if echo else "") + " a streamed answer"
        assert [f["finish_reason"] for f in frames] == [None] * (len(frames) - 1) + ["stop"]
        if logprobs is None:
            assert expected["logprobs"] is None
            assert [f["logprobs"] for f in frames] == [None] * len(frames)
            continue
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            streamed = [item for f in frames for item in f["logprobs"][key]]
            assert streamed == expected["logprobs"][key], key
        for frame in frames[1 if echo else 0:]:  # each answer frame carries its own tokens' logprobs
            assert "".join(frame["logprobs"]["tokens"]) == frame["text"], frames


def test_legacy_logprob_lists_word_for_word() -> None:
    # The prompt's first token has nothing before it: no logprob, and its text is the one given.
    from hxp_enterprise_llm.services.core.engine import TokenLogprob
    from hxp_enterprise_llm.services.streaming.logprob_format import completion_logprobs

    entries = [None,
               TokenLogprob(1, "Hé", -0.25, (("Hé", -0.25), ("x", -1.0), ("y", -2.0))),
               TokenLogprob(2, "!", -0.5, (("?", -0.4), ("?", -0.6), ("!", -0.5)))]  # "?" twice: the best kept
    lists = completion_logprobs(entries, 2, text_offset=5, none_token="<s>").model_dump()
    assert lists == {"tokens": ["<s>", "Hé", "!"], "token_logprobs": [None, -0.25, -0.5],
                     "top_logprobs": [None, {"Hé": -0.25, "x": -1.0}, {"?": -0.4}], "text_offset": [5, 8, 10]}
