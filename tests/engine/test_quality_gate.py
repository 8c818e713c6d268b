"""Quality gate: every shipped CPU variant of the demo answers the factual question set about as well as fp32.

Each variant runs as the real `hxp-llm serve` with its own config file (so with the engine arguments the
service derives from it), and the 40 questions of tools/hxp_tools/data/quality_questions.json are asked
greedily through the OpenAI API. The reference is the old default: fp32, eager. The default config
(config/demo-cpu.yaml) must score at least as well; each quantized variant (config/demo-cpu-*.yaml) at
most 3 questions fewer. One server start per distinct variant, stopped before the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import model_quantization
from hxp_enterprise_llm.services.core.cpu_kernels import missing_cpu_kernel, resolve_dtype
from hxp_tools.quality_gate import Score, ask_all, load_questions
from support.figures import record_figure
from support.server_process import REPO, ServerProcess

DEFAULT = "config/demo-cpu.yaml"


def _reference() -> tuple[str, ...]:
    """fp32 eager: the default config itself when it is that here (`auto` on a CPU without native bf16; served
    once, not twice), else with flags."""
    default = OpenChat35Config.load(REPO / DEFAULT).config
    if resolve_dtype(default.dtype, on_cpu=True) == "float32" and default.enforce_eager:
        return (DEFAULT,)
    return (DEFAULT, "--dtype", "float32", "--enforce-eager")


REFERENCE = _reference()
QUANTIZED = sorted(str(p.relative_to(REPO)) for p in (REPO / "config").glob("demo-cpu-*.yaml"))
QUANTIZED_SLACK = 3
# The demo's 30 s request bound is a latency promise, not part of a variant: 40 questions 8 at a time on a
# busy shared host can outlast it (504), and the gate judges answers, not speed.
SERVE_FLAGS = ("--connection-timeout-seconds", "600")

ScoreOf = Callable[..., Score]


@pytest.fixture(scope="module")
def score_of(tmp_path_factory: pytest.TempPathFactory) -> ScoreOf:
    """The gate's score for `hxp-llm serve --config CONFIG FLAGS...`; each variant served (once) on its own."""
    scores: dict[tuple[str, ...], Score] = {}

    def score(config: str, *flags: str) -> Score:
        key = (config, *flags)
        if key not in scores:
            log = tmp_path_factory.mktemp("gate") / "serve.log"
            server = ServerProcess(log, *SERVE_FLAGS, *flags, config=config)
            try:
                server.wait_ready()
                # One question at a time: on vLLM's CPU backend the batch a request shares changes its float results
                # and then a greedy pick, so concurrent questions would make the score vary between runs.
                scores[key] = asyncio.run(ask_all(server.base_url, load_questions(), concurrency=1, timeout_s=900))
                record_figure(f"quality gate {' '.join(key)}: {scores[key]}")
            finally:
                code = server.stop()
            assert code == 0, f"{key}: server did not exit cleanly ({code}):\n{server.log_text()[-3000:]}"
        return scores[key]

    return score


def test_the_shipped_variants_are_the_ones_documented() -> None:
    # A new config/demo-cpu-*.yaml joins the gate automatically; this pins what is shipped today.
    assert QUANTIZED == ["config/demo-cpu-int4.yaml", "config/demo-cpu-int8.yaml"]
    assert all(Path(REPO / config).is_file() for config in [DEFAULT, *QUANTIZED])


def test_default_config_scores_at_least_as_well_as_fp32(score_of: ScoreOf) -> None:
    reference, default = score_of(*REFERENCE), score_of(DEFAULT)
    # A floor for the reference itself, so that a broken pipeline (empty answers) cannot pass as "equal".
    assert reference.correct >= reference.total // 2, reference.report()
    assert default.correct >= reference.correct, (
        f"default {default} < fp32 {reference}\n--- default\n{default.report()}\n--- fp32\n{reference.report()}")


@pytest.mark.parametrize("config", QUANTIZED)
def test_quantized_variant_scores_within_three_of_fp32(score_of: ScoreOf, config: str) -> None:
    why = missing_cpu_kernel(model_quantization(REPO / OpenChat35Config.load(REPO / config).config.model_path))
    if why is not None:  # the service refuses it here (tests/unit/services/test_cpu_kernels.py)
        pytest.skip(f"{config} cannot run on this CPU: {why}")
    reference, variant = score_of(*REFERENCE), score_of(config)
    assert variant.correct >= reference.correct - QUANTIZED_SLACK, (
        f"{config}: {variant} vs fp32 {reference}\n--- {config}\n{variant.report()}\n--- fp32\n{reference.report()}")
