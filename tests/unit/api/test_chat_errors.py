"""Every bad request gets its status and an OpenAI error body; client input never causes a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_harness import CHAT, MODEL, Served, assert_openai_error, chat_body
from jinja2 import TemplateError

from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "hi"}]


async def post_raw(served: Served, body: bytes) -> Any:
    return await served.client.post(CHAT, content=body, headers={"content-type": "application/json"})


async def test_malformed_json_is_400(served: Served) -> None:
    error = assert_openai_error(await post_raw(served, b'{"model": "openchat-3.5", "messages": [}'), 400,
                                code="invalid_json")
    assert error["type"] == "invalid_request_error"


async def test_missing_messages_is_400_naming_messages(served: Served) -> None:
    error = assert_openai_error(await served.chat({"model": MODEL}), 400, param="messages", code="invalid_value")
    assert "messages" in error["message"]


@pytest.mark.parametrize("model", [{}, {"model": None}])
async def test_model_may_be_left_out_and_the_served_model_answers(served: Served, model: dict[str, Any]) -> None:
    # The spec's own validation commands send no model (as vLLM and llama.cpp's servers allow).
    response = await served.chat({"messages": MESSAGES, **model})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", "5"),  # strict: a string is not coerced
    ("max_tokens", 0),
    ("max_tokens", 2.5),
    ("max_completion_tokens", -1),
    ("temperature", 3),
    ("temperature", -0.1),
    ("temperature", "hot"),
    ("top_p", 0),
    ("top_p", 1.5),
    ("top_k", -2),
    ("presence_penalty", 2.5),
    ("frequency_penalty", -3),
    ("stream", "yes"),
    ("seed", "x"),
    ("seed", -1),  # vLLM's "no seed": accepted, the answer would silently not be reproducible
])
async def test_bad_field_is_400_naming_it(served: Served, field: str, value: Any) -> None:
    error = assert_openai_error(await served.chat(chat_body(**{field: value})), 400, param=field,
                                code="invalid_value")
    assert field in error["message"]


async def test_n_above_max_n_is_refused_naming_the_limit(serve_app) -> None:
    async with serve_app(max_n=3) as served:
        error = assert_openai_error(await served.chat(chat_body(n=4)), 400, param="n", code="too_many_choices")
        assert "max_n=3" in error["message"]
        assert served.engine.requests == []


@pytest.mark.parametrize("unsupported", [
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"tool_choice": "required"},
    {"store": True},
    {"parallel_tool_calls": True},
    {"top_logprobs": 3},  # without logprobs
    {"response_format": {"type": "xml"}},
    {"response_format": {"type": "json_schema"}},  # no schema
    {"functions": [{"name": "f"}]},
    {"metadata": {"a": "b"}},
    {"reasoning_effort": "high"},
    {"some_new_field": 1},
])
async def test_fields_that_cannot_do_what_they_say_are_400_naming_them(served: Served,
                                                                        unsupported: dict[str, Any]) -> None:
    (field,) = unsupported
    error = assert_openai_error(await served.chat(chat_body(**unsupported)), 400)
    assert error["param"] is not None
    assert error["param"].split(".")[0] == field, error
    assert served.engine.requests == [], "a refused request reached the engine"


@pytest.mark.parametrize(("unsupported", "param", "code", "message"), [
    ({"store": True}, "store", "unsupported_parameter",
     "store: stored completions are not supported; send false or leave it out"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "invalid_value",
     "response_format: json_schema is required with type 'json_schema' and only then (got {'type': 'json_schema'})"),
], ids=["request-check", "nested-check"])
async def test_a_check_across_fields_names_its_field_once(served: Served, unsupported: dict[str, Any], param: str,
                                                        code: str, message: str) -> None:
    error = assert_openai_error(await served.chat(chat_body(**unsupported)), 400, param=param, code=code)
    assert error["message"] == message


async def test_an_unknown_field_in_a_message_is_refused_not_dropped(served: Served) -> None:
    body = {"messages": [{"role": "user", "content": "hi", "name": "alice"}]}
    assert_openai_error(await served.chat(body), 400, param="messages.0.name", code="unsupported_parameter")


@pytest.mark.parametrize("accepted", [{"tools": []}, {"tool_choice": "none"}, {"store": False},
                                      {"user": "end-user-7"}, {"response_format": {"type": "text"}}])
async def test_openai_fields_in_their_off_state_are_accepted(served: Served, accepted: dict[str, Any]) -> None:
    assert (await served.chat(chat_body(**accepted))).status_code == 200


async def test_empty_messages_is_400(served: Served) -> None:
    assert_openai_error(await served.chat({"model": MODEL, "messages": []}), 400, param="messages",
                        code="invalid_value")


async def test_unknown_role_is_400(served: Served) -> None:
    error = assert_openai_error(await served.chat({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
                                400)
    assert error["param"] is not None
    assert error["param"].startswith("messages")


async def test_non_text_content_part_is_400(served: Served) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    error = assert_openai_error(await served.chat(body), 400)
    assert "image_url" in error["message"]


async def test_text_content_parts_are_accepted(served: Served) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert (await served.chat(body)).status_code == 200


async def test_unknown_model_is_404_naming_model(served: Served) -> None:
    error = assert_openai_error(await served.chat(chat_body(model="gpt-4")), 404, param="model",
                                code="model_not_found")
    assert "gpt-4" in error["message"]


async def test_model_may_be_named_by_its_full_name(served: Served) -> None:
    response = await served.chat(chat_body(model=served.ctx.config.model_name))
    assert response.status_code == 200, response.text


async def test_prompt_plus_max_tokens_over_context_is_400_with_the_numbers(served: Served) -> None:
    response = await served.chat(chat_body(max_tokens=5000))
    error = assert_openai_error(response, 400, code="context_length_exceeded")
    prompt_tokens = len(served.ctx.service.prepare([{"role": "user", "content": "hi"}], max_tokens=1)
                        .prompt_token_ids)
    for number in (4096, 5000, prompt_tokens, prompt_tokens + 5000):
        assert str(number) in error["message"], error["message"]
    assert served.engine.requests == [], "an over-long request reached the engine"


async def test_prompt_alone_over_context_is_400(serve_app) -> None:
    async with serve_app(max_model_len=64) as served:
        response = await served.chat(chat_body("x" * 100))
    error = assert_openai_error(response, 400, code="context_length_exceeded")
    assert "64" in error["message"]


async def test_body_over_limit_is_413(serve_app) -> None:
    async with serve_app(max_request_body_bytes=1024) as served:
        declared = await served.chat(chat_body("x" * 2000))

        async def undeclared_length():  # chunked upload: no content-length to refuse up front
            yield json.dumps(chat_body("y" * 1000))[:600].encode()
            yield b"z" * 1000

        streamed = await served.client.post(CHAT, content=undeclared_length(),
                                            headers={"content-type": "application/json"})
        small = await served.chat(chat_body("fits"))
    assert_openai_error(declared, 413, code="request_too_large")
    assert_openai_error(streamed, 413, code="request_too_large")
    assert small.status_code == 200


async def test_unknown_route_is_404_json(served: Served) -> None:
    assert_openai_error(await served.client.get("/v1/nothing-here"), 404, code="not_found")


async def test_wrong_method_is_405_json(served: Served) -> None:
    assert_openai_error(await served.client.get(CHAT), 405, code="method_not_allowed")


async def test_stream_options_without_stream_is_400(served: Served) -> None:
    assert_openai_error(await served.chat(chat_body(stream_options={"include_usage": True})), 400,
                        param="stream_options", code="unsupported_parameter")


async def test_stream_when_streaming_disabled_is_400(serve_app) -> None:
    async with serve_app(streaming_enabled=False) as served:
        response = await served.chat(chat_body(stream=True))
    assert_openai_error(response, 400, param="stream", code="invalid_value")


async def test_api_is_503_and_health_loading_while_the_model_loads(serve_app) -> None:
    async with serve_app(FakeEngine(start_delay=60), wait_ready=False) as served:
        chat = await served.chat(chat_body())
        stream = await served.chat(chat_body(stream=True))
        health = await served.client.get("/health")
    error = assert_openai_error(chat, 503, code="model_not_ready")
    assert "loading" in error["message"]
    assert chat.headers["retry-after"] == "5"
    assert_openai_error(stream, 503, code="model_not_ready")
    assert health.status_code == 503
    assert health.json()["status"] == "loading"


# Each odd body, the one status and code it gets (all are the client's fault: 400), and the field it names.
HI = b'{"model": "openchat-3.5", "messages": [{"role": "user", "content": "hi"}]'
ODD_BODIES: list[tuple[bytes, str, str | None]] = [
    (b"", "invalid_json", None), (b"null", "invalid_json", None), (b"[]", "invalid_json", None),
    (b'"str"', "invalid_json", None), (b"42", "invalid_json", None), (b"true", "invalid_json", None),
    (b"{", "invalid_json", None), (b"\xff\xfe\x00", "invalid_json", None),
    (b'{"messages": null}', "invalid_value", "messages"),
    (b'{"model": "openchat-3.5", "messages": null}', "invalid_value", "messages"),
    (b'{"model": "openchat-3.5", "messages": "hi"}', "invalid_value", "messages"),
    (b'{"model": "openchat-3.5", "messages": [null]}', "invalid_value", "messages.0"),
    (b'{"model": "openchat-3.5", "messages": [[]]}', "invalid_value", "messages.0"),
    (b'{"model": "openchat-3.5", "messages": [{"role": "user"}]}', "invalid_value", "messages.0.content"),
    (b'{"model": "openchat-3.5", "messages": [{"content": "hi"}]}', "invalid_value", "messages.0.role"),
    (b'{"model": "openchat-3.5", "messages": [{"role": "user", "content": 5}]}', "invalid_value",
     "messages.0.content"),
    (b'{"model": "openchat-3.5", "messages": [{"role": "user", "content": {"text": "hi"}}]}', "invalid_value",
     "messages.0.content"),
    (b'{"model": "openchat-3.5", "messages": [{"role": "user", "content": [{"text": "hi"}]}]}', "invalid_value",
     "messages.0.content"),
    (b'{"model": "openchat-3.5", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
     "invalid_value", "messages.0.content"),  # a text part without its text was an empty message
    (b'{"model": "openchat-3.5", "messages": [{"role": 1, "content": "hi"}]}', "invalid_value", "messages.0.role"),
    (b'{"model": ["openchat-3.5"], "messages": [{"role": "user", "content": "hi"}]}', "invalid_value", "model"),
    (HI + b', "stop": [1, 2]}', "invalid_value", "stop"),
    (HI + b', "stop": ["a","b","c","d","e"]}', "invalid_value", "stop"),
    (HI + b', "stream_options": 1, "stream": true}', "invalid_value", "stream_options"),
    (HI + b', "max_tokens": 1e3}', "invalid_value", "max_tokens"),
    (HI + b', "max_tokens": true}', "invalid_value", "max_tokens"),
    (HI + b', "max_tokens": ' + b"9" * 40 + b"}", "context_length_exceeded", "messages"),
    (HI + b', "temperature": NaN}', "invalid_value", "temperature"),
    (HI + b', "temperature": Infinity}', "invalid_value", "temperature"),
    (HI + b', "n": 0}', "invalid_value", "n"),
    (b'{"model": "openchat-3.5", "messages": ' + b"[" * 200 + b"]" * 200 + b"}", "invalid_value", "messages.0"),
    (HI + b"} trailing", "invalid_json", None),
]


@pytest.mark.parametrize(("body", "code", "param"), ODD_BODIES, ids=range(len(ODD_BODIES)))
async def test_odd_bodies_get_their_400_and_code(served: Served, body: bytes, code: str, param: str | None) -> None:
    response = await post_raw(served, body)
    error = assert_openai_error(response, 400, code=code)
    assert error["param"] == param, error
    assert served.engine.requests == [], "an invalid request reached the engine"


async def test_wrong_method_names_the_allowed_methods(served: Served) -> None:
    response = await served.client.get(CHAT)
    assert response.status_code == 405
    assert response.headers.get("allow") == "POST"


@pytest.mark.parametrize("logit_bias", [{"abc": 1}, {"-5": 1}, {"50": 101}, {"50": "x"}, {str(0x110000 + 3): 1},
                                        # digits to str.isdigit() that int() refuses: a superscript two, a
                                        # circled one, and more digits than Python converts (4,300)
                                        {"\u00b2": 1}, {"\u2460": 1}, {"1" * 5000: 1},
                                        # digits int() reads, but not the decimal id OpenAI's keys are
                                        {"\u0661": 1}, {"\uff15\uff10": 1}, {" 50": 1}, {"5_0": 1}])
async def test_bad_logit_bias_is_400_naming_it(served: Served, logit_bias: dict[str, Any]) -> None:
    error = assert_openai_error(await served.chat(chat_body(logit_bias=logit_bias)), 400)
    assert error["param"] is not None
    assert error["param"].startswith("logit_bias"), error


async def test_an_integer_too_long_to_convert_anywhere_in_the_body_is_400(served: Served) -> None:
    # Python's JSON reader refuses integers over 4,300 digits with a ValueError of its own.
    body = json.dumps(chat_body(max_tokens=16)).replace('"max_tokens": 16', '"max_tokens": ' + "9" * 5000)
    assert "9" * 5000 in body
    assert_openai_error(await served.client.post(CHAT, content=body, headers={"content-type": "application/json"}),
                        400)


@pytest.mark.parametrize("field", ["max-tokens", "int", "options[0]"])
async def test_an_unknown_field_is_named_whatever_its_name_looks_like(served: Served, field: str) -> None:
    # Names that look like the type tags pydantic adds to union paths were dropped: an empty `param`.
    error = assert_openai_error(await served.chat(chat_body(**{field: 5})), 400, code="unsupported_parameter")
    assert error["param"] == field
    assert error["message"].startswith(f"Unrecognized request argument supplied: {field} ")


async def test_a_chat_template_that_refuses_the_messages_is_a_400_naming_them(served: Served) -> None:
    # Mistral's, Llama 2's and Gemma's templates raise "roles must alternate" for two user turns in a row.
    served.engine.get_tokenizer().failure = TemplateError("Conversation roles must alternate user/assistant")
    error = assert_openai_error(await served.chat(chat_body()), 400, param="messages")
    assert error["message"] == ("messages: the model's chat template refused them: Conversation roles must "
                                "alternate user/assistant")


async def test_a_bad_logit_bias_key_with_a_colon_still_names_logit_bias(served: Served) -> None:
    # The request-level check's message starts "logit_bias: ..."; the key's own colon must not move the name.
    error = assert_openai_error(await served.chat(chat_body(logit_bias={"a:b": 1})), 400, param="logit_bias")
    assert error["message"] == "logit_bias: keys must be token ids, got 'a:b'"


async def test_logit_bias_reaches_the_engine(served: Served) -> None:
    assert (await served.chat(chat_body(logit_bias={"50": 5, "72": -100}))).status_code == 200
    assert served.engine.requests[0].sampling.logit_bias == ((50, 5.0), (72, -100.0))


@pytest.mark.parametrize(("body", "message"), [
    (b"[]", "the request body must be a JSON object"),
    (b'{"model": "openchat-3.5", "messages": [{"role": "user"}]}', "'messages.0.content' is a required property"),
    (b"{", "We could not parse the JSON body of your request: EOF while parsing an object at line 1 column 1"),
    (HI + b', "temperature": 3}', "temperature: Input should be less than or equal to 2 (got 3)"),
    (HI + b', "functions": []}', "Unrecognized request argument supplied: functions (this service does not implement "
                                 "it, and does not drop it silently)"),
])
async def test_the_message_says_what_is_wrong(served: Served, body: bytes, message: str) -> None:
    assert assert_openai_error(await post_raw(served, body), 400)["message"] == message


async def test_a_long_bad_value_is_cut_in_the_message(served: Served) -> None:
    error = assert_openai_error(await served.chat(chat_body(stop=["x" * 300] * 5)), 400, param="stop")
    quoted = repr(["x" * 300] * 5)
    assert error["message"] == f"stop: Input should be a valid string (got {quoted[:100]}...)"


async def test_a_bad_value_of_exactly_100_characters_is_quoted_whole(served: Served) -> None:
    stop = ["x" * 16] * 5  # repr: 100 characters, the most that is quoted uncut
    assert len(repr(stop)) == 100
    error = assert_openai_error(await served.chat(chat_body(stop=stop)), 400, param="stop")
    assert error["message"] == f"stop: Input should be a valid string (got {stop!r})"
