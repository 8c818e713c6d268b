"""OpenChat35Service: one leading space stripped with OpenChat's prompt only; its prompt errors are 400s."""

from __future__ import annotations

import pytest

from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.prompt import END_OF_TURN, END_OF_TURN_ID
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio


class OpenChatLikeTokenizer:
    """Just enough of a Hugging Face tokenizer with OpenChat's <|end_of_turn|> for the prompt builder."""

    bos_token_id = 1

    def __len__(self) -> int:
        return END_OF_TURN_ID + 2

    def get_vocab(self) -> dict[str, int]:
        return {END_OF_TURN: END_OF_TURN_ID}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.get_vocab().get(token, 0)

    def __call__(self, text: str, add_special_tokens: bool = False,
                 split_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(ch) + 3 for ch in text]}


class OpenChatFakeEngine(FakeEngine):
    def get_tokenizer(self) -> OpenChatLikeTokenizer:  # type: ignore[override]
        return OpenChatLikeTokenizer()


async def started(engine: FakeEngine, prompt_format: str) -> OpenChat35Service:
    service = OpenChat35Service(OpenChat35Config(prompt_format=prompt_format), engine=engine)
    await service.start()
    return service


@pytest.mark.parametrize(("tokens", "expected"), [
    ([" Hi", " there"], "Hi there"),
    (["  Hi"], " Hi"),  # one space only, as the reference server does
    (["", " Hi", "!"], "Hi!"),  # the first delta with text is the one stripped
    (["Hi", " there"], "Hi there"),
])
async def test_openchat_prompt_strips_one_leading_space(tokens: list[str], expected: str) -> None:
    engine = OpenChatFakeEngine()
    service = await started(engine, "auto")  # auto picks OpenChat's builder from <|end_of_turn|>
    engine.enqueue(*tokens)
    result = await service.chat("Hello", max_tokens=50)
    assert result.text == expected
    assert engine.requests[0].sampling.stop_token_ids == (END_OF_TURN_ID,)
    assert service.get_model_info()["prompt_format"] == "OpenChatPromptBuilder"


async def test_other_models_keep_the_leading_space() -> None:
    engine = FakeEngine()
    service = await started(engine, "chat_template")
    engine.enqueue(" Hi", " there")
    assert (await service.chat("Hello", max_tokens=50)).text == " Hi there"
    engine.enqueue(" Hi", " there")
    assert [text async for text in service.stream_chat("Hello", max_tokens=50)] == [" Hi", " there"]


async def test_stream_chat_strips_only_the_first_piece() -> None:
    engine = OpenChatFakeEngine()
    service = await started(engine, "openchat")
    engine.enqueue(" Hi", " there", " you")
    assert [text async for text in service.stream_chat("Hello", max_tokens=50)] == ["Hi", " there", " you"]


async def test_openchat_format_over_http_strips_and_rejects_a_late_system_message(serve_app) -> None:
    async with serve_app(OpenChatFakeEngine(), prompt_format="openchat") as served:
        served.engine.enqueue(" Hi", " there")
        ok = await served.chat({"model": "openchat-3.5", "messages": [
            {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hello"}]})
        late_system = await served.chat({"model": "openchat-3.5", "messages": [
            {"role": "user", "content": "Hello"}, {"role": "system", "content": "Be brief."}]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"] == "Hi there"
    assert late_system.status_code == 400
    assert late_system.json()["error"]["param"] == "messages"
