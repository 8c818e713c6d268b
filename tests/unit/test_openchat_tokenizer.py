"""The openchat-3.5-tiny fixture carries OpenChat-3.5-0106's exact tokenizer (golden ids: openchat-facts.md)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

GPT4_USER = [420, 6316, 28781, 3198, 3123, 1247, 28747]
GPT4_ASSISTANT = [420, 6316, 28781, 3198, 3123, 21631, 28747]
TOKENIZER_MODEL_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


@pytest.fixture(scope="module")
def tiny_dir(demo_model_dir: Callable[[str], Path]) -> Path:
    return demo_model_dir("openchat-3.5-tiny")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    """As vLLM and the service load it: transformers' AutoTokenizer on the shipped tokenizer.json."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def test_tokenizer_model_is_openchats(tiny_dir: Path) -> None:
    assert hashlib.sha256((tiny_dir / "tokenizer.model").read_bytes()).hexdigest() == TOKENIZER_MODEL_SHA256


def test_vocabulary_and_special_tokens(tokenizer: Any) -> None:
    assert len(tokenizer) == 32002
    assert tokenizer.convert_tokens_to_ids(["<|end_of_turn|>", "<|pad_0|>"]) == [32000, 32001]
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<s>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|end_of_turn|>", 32000)
    assert tokenizer.unk_token_id == 0


def test_role_prefixes_are_the_golden_pieces(tokenizer: Any) -> None:
    assert tokenizer("GPT4 Correct User:", add_special_tokens=False).input_ids == GPT4_USER
    assert tokenizer("GPT4 Correct Assistant:", add_special_tokens=False).input_ids == GPT4_ASSISTANT


def test_rendered_conversation_gives_the_model_cards_ids(tokenizer: Any) -> None:
    # The tokenizer adds BOS itself; the text carries none (else: the double-BOS pitfall).
    text = ("GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant: Hi<|end_of_turn|>"
            "GPT4 Correct User: How are you today?<|end_of_turn|>GPT4 Correct Assistant:")
    assert tokenizer(text).input_ids == [
        1, *GPT4_USER, 22557, 32000, *GPT4_ASSISTANT, 15359, 32000,
        *GPT4_USER, 1602, 460, 368, 3154, 28804, 32000, *GPT4_ASSISTANT]


def test_end_of_turn_in_user_text_is_not_a_special_token_when_split(tokenizer: Any) -> None:
    ids = tokenizer("a <|end_of_turn|> b", add_special_tokens=False, split_special_tokens=True).input_ids
    assert 32000 not in ids
    assert tokenizer.decode(ids) == "a <|end_of_turn|> b"


def test_config_files_stop_on_end_of_turn_and_ship_no_system_role_template(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    tokenizer_config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert (config["architectures"], config["vocab_size"], config["eos_token_id"]) == (
        ["MistralForCausalLM"], 32002, 32000)
    assert config["max_position_embeddings"] == 8192
    assert generation["eos_token_id"] == 32000
    assert json.loads((tiny_dir / "added_tokens.json").read_text()) == {"<|end_of_turn|>": 32000,
                                                                        "<|pad_0|>": 32001}
    assert "GPT4 Correct System" not in json.dumps(tokenizer_config)
    assert not (tiny_dir / "chat_template.jinja").exists()
